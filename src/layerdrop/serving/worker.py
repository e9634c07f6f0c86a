"""One inference thread behind a bounded queue: how a small CPU machine serves many depths at once.

Every request becomes a :class:`Job` at the depth chosen for it. One thread runs them in
arrival order, because two forwards on 2 cores only slow each other; classify jobs at the same
depth that arrive within a few milliseconds run as one batch. The queue's predicted wait (the
jobs ahead, by their own predictions) is what a latency budget is checked against. A job can be
cancelled while it runs (a client that went away): its ``on_text`` raises :class:`Cancelled`, so
a generation stops within a few tokens and frees the thread.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from layerdrop.errors import InputError

__all__ = ["Cancelled", "Job", "QueueFull", "Worker", "tell_now"]


class QueueFull(RuntimeError):
    """The queue holds as many jobs as it may; the request should be retried later."""


class Cancelled(Exception):
    """Raised inside a running job whose client went away."""


@dataclass(eq=False)
class Job:
    """One request's work at one depth."""

    kind: str
    """``classify`` (batched with others at its depth) or ``complete`` (one at a time)."""
    depth: int
    predicted_ms: float
    """Its own predicted service time, without the wait."""
    payload: Any
    """What the run function needs (texts, or a prompt and its settings)."""
    on_done: Callable[[Any, BaseException | None], object]
    """Called from the worker thread with the result, or with the error that ended the job."""
    size: int = 1
    """Inputs it holds (texts of a classify request), counted against the batch size."""
    on_text: Callable[[str], object] | None = None
    """Streaming: called from the worker thread with each new piece of text."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    ran: tuple[float, float] = (0.0, 0.0)
    """When its batch started and ended (``time.perf_counter``), set by the worker."""
    ahead: int = 0
    """Jobs waiting or running when it was queued (a running batch counts once), set by the worker."""
    threshold: float | None = None
    """A classify job's early-exit threshold (``"depth": "auto"``; its depth is the deepest it may run), or
    ``None``; batched only with jobs of the same."""
    told: threading.Event = field(default_factory=threading.Event)
    """Set once ``on_done`` has been called: by :func:`tell_now` while its batch still runs (every input of an
    early-exit job has left), or by the worker when the batch ends. ``on_done`` is called once."""


class Worker:
    """Runs jobs on one thread: ``run(jobs)`` gets a batch (one kind, one depth) and returns one
    result per job. ``startup()`` runs first on that thread (profiling); :attr:`ready` is set after it."""

    def __init__(self, run: Callable[[Sequence[Job]], Sequence[Any]], *, queue_size: int = 16,
                 batch_size: int = 32, batch_wait_ms: float = 5.0,
                 startup: Callable[[], None] | None = None) -> None:
        if queue_size < 1 or batch_size < 1:
            raise InputError("queue_size and batch_size must be at least 1")
        self._run, self._startup = run, startup
        self.queue_size, self.batch_size, self.batch_wait_ms = queue_size, batch_size, batch_wait_ms
        self._jobs: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._running: list[Job] = []
        self._started_at = 0.0
        self._stopping = False
        self.ready = threading.Event()
        self.startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="layerdrop-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what runs, fail what waits, and end the thread."""
        with self._cv:
            self._stopping = True
            waiting, self._jobs = list(self._jobs), collections.deque()
            for job in self._running:
                job.cancelled.set()
            self._cv.notify_all()
        for job in waiting:
            _tell(job, None, Cancelled("the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue ``job``; :class:`QueueFull` when ``queue_size`` jobs already wait."""
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._jobs) >= self.queue_size:
                raise QueueFull(f"{len(self._jobs)} requests are waiting, the most this server queues")
            job.ahead = self.ahead()  # the lock is re-entrant
            self._jobs.append(job)
            self._cv.notify_all()

    @property
    def queue_length(self) -> int:
        return len(self._jobs)

    def ahead(self) -> int:
        """Jobs a job submitted now would find waiting or running (a running batch counts once)."""
        with self._cv:
            return len(self._jobs) + bool(self._running)

    def load(self) -> tuple[float, int]:
        """:meth:`wait_ms` and :meth:`ahead`, read together."""
        with self._cv:
            return self.wait_ms(), self.ahead()

    def wait_ms(self) -> float:
        """Predicted milliseconds before a job submitted now would start."""
        with self._cv:
            ahead = sum(job.predicted_ms for job in self._jobs)
            running = sum(job.predicted_ms for job in self._running)  # a batch: one forward over all its inputs
            elapsed = (time.perf_counter() - self._started_at) * 1000 if self._running else 0.0
        return ahead + max(0.0, running - elapsed)

    def _next_batch(self) -> list[Job] | None:
        with self._cv:
            while not self._jobs and not self._stopping:
                self._cv.wait()
            if self._stopping:
                return None
            first = self._jobs.popleft()
            batch, size = [first], first.size
            self._running, self._started_at = batch, time.perf_counter()  # counted while the batch gathers
            deadline = time.perf_counter() + self.batch_wait_ms / 1000
            while first.kind == "classify" and size < self.batch_size and not self._stopping:
                same = next((j for j in self._jobs if j.kind == "classify" and j.depth == first.depth
                             and j.threshold == first.threshold and size + j.size <= self.batch_size), None)
                if same is not None:
                    self._jobs.remove(same)
                    batch.append(same)
                    size += same.size
                    continue
                left = deadline - time.perf_counter()
                if left <= 0 or not self._jobs:  # nothing else waits: run now rather than hold a lone request
                    break
                self._cv.wait(left)
            return batch

    def _loop(self) -> None:
        try:
            if self._startup is not None:
                self._startup()
        except Exception as err:  # reported by /readyz and the server's start-up
            self.startup_error = err
            return
        self.ready.set()
        while (batch := self._next_batch()) is not None:
            live = [job for job in batch if not job.cancelled.is_set()]
            for job in batch:
                if job.cancelled.is_set():
                    _tell(job, None, Cancelled("cancelled before it ran"))
            begin = time.perf_counter()
            try:
                results: Sequence[Any] = self._run(live) if live else []
                error: BaseException | None = None
                if len(results) != len(live):  # a bug in the runner must fail its requests, not the worker
                    raise RuntimeError(f"the runner answered {len(results)} of {len(live)} jobs")
            except Exception as err:  # one request's failure must not end the worker
                results, error = [None] * len(live), err
                if isinstance(err, Cancelled) and self._stopping:
                    error = Cancelled("the server is shutting down")
            end = time.perf_counter()
            with self._cv:  # done before anyone hears of it: a request sent after an answer finds it gone
                self._running = []
            for job, result in zip(live, results, strict=True):
                if error is None:
                    job.ran = (begin, end)
                _tell(job, result, error)


def tell_now(job: Job, result: Any) -> None:
    """Answer ``job`` before its batch ends (a runner whose job's inputs have all left early); the worker then
    leaves it alone."""
    _tell(job, result, None)


def _tell(job: Job, result: Any, err: BaseException | None) -> None:
    """``job.on_done``, once, and never ending the worker (its event loop may be gone at shutdown)."""
    if job.told.is_set():
        return
    job.told.set()
    try:
        job.on_done(result, err)
    except RuntimeError:
        pass
