"""``layerdrop serve --replicas N``: the app of :mod:`.app` as N Ray Serve replicas behind Ray's HTTP proxy.

Each replica builds the app itself (:func:`~.app.create_app` on :func:`~layerdrop.serving.served.load_served`):
its own copy of the weights serving every depth, its own worker, queue and start-up profile, so a latency
budget is checked against the queue of the replica that runs the request. A replica counts as started once
every depth is profiled (Ray's first health check waits for it), so the proxy sends it nothing before.
Ray sends a replica at most ``--queue-size`` requests at once (``max_ongoing_requests``, what its own queue
holds) and holds up to as many again per replica in the proxy (``max_queued_requests``); beyond that the
proxy answers 503. What the proxy answers when a replica fails is :mod:`.replica_lost`'s. docs/serving.md,
"Scaling out", says what was tested. Ray is imported only where it is used (``pip install 'layerdrop[ray]'``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from layerdrop.config.recipes import ServeConfig
from layerdrop.errors import InputError

from ..worker import Worker

__all__ = ["application", "cpus_per_replica", "wait_ready"]


def cpus_per_replica(cfg: ServeConfig, cpus: float) -> int:
    """The cores each of ``cfg.replicas`` replicas reserves in Ray, and its torch threads: ``--threads`` where
    given, else an equal share of the ``cpus`` Ray has; an error where they do not fit.

    >>> cpus_per_replica(ServeConfig(model="m", replicas=2), 8.0)
    4
    >>> cpus_per_replica(ServeConfig(model="m", replicas=3), 2.0)
    Traceback (most recent call last):
    ...
    layerdrop.errors.InputError: --replicas 3 of 1 core each need 3 cores and Ray has 2: lower --replicas or --threads
    """
    threads = cfg.threads or max(1, int(cpus) // cfg.replicas)
    if threads * cfg.replicas > cpus:
        raise InputError(f"--replicas {cfg.replicas} of {threads} core{'s' if threads > 1 else ''} each need "
                         f"{threads * cfg.replicas} cores and Ray has {cpus:g}: lower --replicas or --threads")
    return threads


def wait_ready(worker: Worker, poll_s: float = 0.1) -> None:
    """Block until ``worker`` has profiled every depth; its start-up error, if it failed."""
    while not worker.ready.wait(poll_s):
        if worker.startup_error is not None:
            raise RuntimeError(f"measuring each depth's latency failed: {worker.startup_error}") \
                from worker.startup_error


class Replica:
    """One replica: builds the app on the replica (Ray calls ``__serve_build_asgi_app__`` after ``__init__``),
    and passes Ray's health checks once its worker has profiled every depth."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg

    def __serve_build_asgi_app__(self) -> Any:
        from layerdrop.serving.served import load_served

        from .app import create_app

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the worker is the only thread that computes
        return create_app(load_served(self.cfg), self.cfg)

    async def check_health(self) -> None:
        worker: Worker = self.app.state.worker  # type: ignore[attr-defined]  # set by Ray's ingress wrapper
        await asyncio.to_thread(wait_ready, worker)


def application(cfg: ServeConfig) -> Any:
    """The Ray Serve application serving ``cfg.model`` on ``cfg.replicas`` replicas (``serve.run`` it), each
    reserving ``cfg.threads`` cores (:func:`cpus_per_replica` chooses them)."""
    from ray import serve

    if cfg.threads < 1:
        raise InputError("application needs the cores of each replica: set threads with cpus_per_replica")
    replica = serve.deployment(
        name="layerdrop", num_replicas=cfg.replicas, ray_actor_options={"num_cpus": cfg.threads},
        max_ongoing_requests=cfg.queue_size, max_queued_requests=cfg.queue_size * cfg.replicas,
        health_check_period_s=2, graceful_shutdown_timeout_s=30,
    )(serve.ingress()(Replica))
    return replica.bind(cfg)
