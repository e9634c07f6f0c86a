"""The server's Prometheus metrics, through ``prometheus_client`` (one registry per app, seconds as
the unit of time, as its conventions say)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
"""Request seconds: from a small classifier's few milliseconds to a long generation."""


class Metrics:
    """Answers by route and status, request seconds per depth, the queue, and streams cut short."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.responses = Counter("layerdrop_responses", "Answers by route and HTTP status.", ["route", "code"],
                                 registry=self.registry)
        self.request_seconds = Histogram("layerdrop_request_seconds", "Seconds from a request's start to its "
                                         "answer, by the depth that answered.", ["depth"], buckets=BUCKETS_S,
                                         registry=self.registry)
        self.cancelled = Counter("layerdrop_cancelled_streams", "Streams the client left before their end.",
                                 registry=self.registry)
        self.stopped = Counter("layerdrop_generations_stopped", "Generations stopped because their client left.",
                               registry=self.registry)
        self.queue = Gauge("layerdrop_queue_length", "Requests waiting for the worker.", registry=self.registry)
        """Read from the worker at each scrape (``queue.set_function``)."""

    def response(self, route: str, status: int) -> None:
        self.responses.labels(route=route, code=str(status)).inc()

    def served(self, depth: int, ms: float) -> None:
        self.request_seconds.labels(depth=str(depth)).observe(ms / 1000)

    def stream_cancelled(self) -> None:
        self.cancelled.inc()

    def generation_stopped(self) -> None:
        self.stopped.inc()

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
