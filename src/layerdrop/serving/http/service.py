"""What every route shares, read from ``app.state``: readiness, the depth a request runs at (and
its prediction), the queue, waiting for an answer, and learning from it."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

from fastapi import Request

from layerdrop.config.recipes import ServeConfig
from layerdrop.errors import InputError

from ..engine import Engine
from ..latency import BudgetError, choose_depth
from ..served import Served
from ..worker import Cancelled, Job, QueueFull, Worker
from .errors import ServeError
from .metrics import Metrics
from .schemas import ServedBy

__all__ = ["Pick", "Service", "service", "settle"]


@dataclass(frozen=True)
class Pick:
    """The depth a request runs at, and its predicted milliseconds."""

    depth: int
    predicted_ms: float
    """Reading its input, the queue's wait, the forward and the overhead, as predicted."""
    own_ms: float
    """The forward and the overhead alone: what the job adds to the queue's wait."""
    read_ms: float
    """What reading (tokenizing) its input took, measured."""
    threshold: float | None = None
    """With ``"depth": "auto"``: the early-exit threshold, and :attr:`depth` is the deepest it may run."""


@dataclass(frozen=True)
class Service:
    served: Served
    cfg: ServeConfig
    engine: Engine
    worker: Worker
    metrics: Metrics
    clock: Callable[[], float] = time.perf_counter
    """Seconds: a request's start and end, and its reading, are read from it."""

    def ready_or_503(self) -> None:
        if self.worker.startup_error is not None:
            raise ServeError(503, f"start-up failed: {self.worker.startup_error}")
        if not self.worker.ready.is_set():
            raise ServeError(503, "still measuring each depth's latency; retry shortly", retry_after=1)

    def pick(self, model: str | None, depth: int | str | None, latency: float | None, *, tokens: int,
             new_tokens: int, chars: int, read_ms: float, max_drop: float | None = None) -> Pick:
        """The depth for a request that named ``model`` (``NAME@K``), a ``depth`` (or ``"auto"``: early exit
        within ``max_drop``, up to the depth a budget allows) or a ``latency`` budget, of ``chars`` characters
        of text read in ``read_ms`` into ``tokens`` input tokens, and ``new_tokens`` to generate. Each input is
        charged what it costs: reading by its characters, the forward by its tokens (both profiled at
        start-up, then observed); an early-exit request is charged its deepest depth."""
        try:
            if depth == "auto":
                threshold = self._exit_threshold(model, max_drop)
                return replace(self._pick(model, None, latency, tokens, new_tokens, chars, read_ms),
                               threshold=threshold)
            if max_drop is not None:
                raise ServeError(422, 'max_drop goes with "depth": "auto"', param="max_drop")
            return self._pick(model, cast(int | None, depth), latency, tokens, new_tokens, chars, read_ms)
        finally:  # what reading took is learned after its prediction, admitted or not
            self.engine.observe_reading(chars, read_ms)

    def _exit_threshold(self, model: str | None, max_drop: float | None) -> float:
        served = self.served
        if model is not None and "@" in model:
            raise ServeError(422, f'model {model!r} names a depth and depth is "auto": give one', param="depth")
        if served.exits is None or served.exits_error is not None:
            raise ServeError(422, f'"depth": "auto": {served.exits_error}', param="depth")
        try:
            return served.exits.threshold(max_drop)
        except InputError as err:
            raise ServeError(422, str(err), param="max_drop") from None

    def _pick(self, model: str | None, depth: int | None, latency: float | None, tokens: int, new_tokens: int,
              chars: int, read_ms: float) -> Pick:
        served, engine = self.served, self.engine
        depth = _depth_named(served, model, depth)
        if depth is not None and latency is not None:
            raise ServeError(422, "give depth or latency_ms, not both", param="latency_ms")
        wait, ahead = self.worker.load()
        profiles = engine.current_profiles()
        overhead, reading = engine.overhead_ms, engine.reading_ms(chars)
        if depth is not None:
            if depth not in served.views:
                raise ServeError(422, f"depth {depth} is not served; served depths: "
                                      f"{', '.join(map(str, served.views))}", param="depth")
        elif latency is None:
            depth = max(served.views)
        else:
            try:
                depth, _ = choose_depth(profiles, latency, wait_ms=wait, tokens=tokens, new_tokens=new_tokens,
                                        overhead_ms=overhead + reading, margin=engine.budget_margin(ahead),
                                        idle_margin=engine.budget_margin(0))
            except BudgetError as err:
                if err.busy:
                    raise ServeError(503, str(err), param="latency_ms", retry_after=err.retry_after_s) from None
                raise ServeError(422, str(err), param="latency_ms") from None
        own = profiles[depth].predict(tokens, new_tokens) + overhead
        return Pick(depth, wait + own + reading, own, read_ms)

    def submit(self, job: Job) -> None:
        try:
            self.worker.submit(job)
        except QueueFull as err:
            raise ServeError(503, f"{err}; retry shortly (--queue-size)", retry_after=1) from None

    async def answer(self, job: Job, done: asyncio.Future[Any], request: Request) -> Any:
        """The job's result; a client that leaves first cancels the job (freeing the worker), and a job
        the shutdown cancelled is a 503."""
        async def watch() -> None:
            while not done.done():
                if await request.is_disconnected():
                    job.cancelled.set()
                    return
                await asyncio.sleep(0.05)
        watcher = asyncio.create_task(watch())
        try:
            return await done
        except Cancelled as err:
            raise ServeError(503, f"cancelled: {err}", retry_after=1) from None
        finally:
            if not done.done():  # this request was cancelled itself
                job.cancelled.set()
            watcher.cancel()

    def served_by(self, pick: Pick, started: float, job: Job) -> ServedBy:
        """What answered, learned from: the overhead (the time outside reading the input, the queue and
        the run) and how far past its prediction the answer ran."""
        measured = (self.clock() - started) * 1000
        if pick.threshold is None:  # an early exit runs below its prediction by design: nothing to learn
            if job.ran[1] > 0:  # what was neither reading, waiting nor running: the next predictions include it
                self.engine.observe_overhead(measured - pick.read_ms - (job.ran[1] - job.submitted) * 1000)
            self.engine.observe_answer(pick.predicted_ms, measured, job.ahead)
        self.metrics.served(pick.depth, measured)
        guaranteed = None if pick.threshold is None else pick.depth >= max(self.served.exits.depths if
                                                                              self.served.exits else (0,))
        return ServedBy(depth=pick.depth, layers=list(self.served.kept[pick.depth]),
                        predicted_ms=round(pick.predicted_ms, 3), measured_ms=round(measured, 3),
                        guaranteed=guaranteed)


def service(request: Request) -> Service:
    """The app's :class:`Service` (a FastAPI dependency)."""
    return request.app.state.service


def _depth_named(served: Served, model: str | None, depth: int | None) -> int | None:
    """``depth``, or the K of ``model="NAME@K"``; a model not served here, or a K that disagrees, is a 422."""
    if model is None:
        return depth
    name, at, k = model.partition("@")
    if name != served.name:
        raise ServeError(422, f"model {name!r} is not served here; this server serves {served.name!r} "
                              f"(ask for K layers with {served.name}@K)", param="model")
    if not at:
        return depth
    if not re.fullmatch(r"[0-9]{1,6}", k):
        raise ServeError(422, f"model {model!r}: after @ comes a depth, e.g. {served.name}@3", param="model")
    if depth is not None and depth != int(k):
        raise ServeError(422, f"model {model!r} and depth={depth} disagree: give one", param="depth")
    return int(k)


def settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> Any:
    """A worker ``on_done`` that settles ``future`` on its event loop."""
    def done(result: Any, err: BaseException | None) -> None:
        def set_it() -> None:
            if future.done():
                return
            if err is not None:
                future.set_exception(err if isinstance(err, Exception) else RuntimeError(str(err)))
            else:
                future.set_result(result)
        loop.call_soon_threadsafe(set_it)
    return done
