"""The FastAPI app of ``layerdrop serve``: one process, one copy of the weights, every request at the
depth it can afford.

A model trained with LayerDrop (Fan et al. 2020, "Reducing Transformer Depth on Demand with
Structured Dropout") works at every depth, so each depth is a view of the same weights
(:mod:`layerdrop.serving.served`). At start-up each served depth is timed on this machine
(:mod:`layerdrop.serving.engine`); a request then names a ``depth`` or a ``latency_ms`` budget, and gets
the deepest depth whose predicted time, the queue's wait included, fits
(:mod:`layerdrop.serving.latency`, :mod:`layerdrop.serving.calibration`). One worker thread runs
everything (:mod:`layerdrop.serving.worker`).

Routes: ``POST /v1/completions`` (OpenAI's shape, plus ``depth`` / ``latency_ms`` / ``speculative`` /
``no_repeat_ngram``; ``model: "NAME@K"`` picks K layers; ``stream`` sends server-sent events),
``POST /v1/classify``, ``GET /v1/depths``, ``/v1/models``, ``/healthz``, ``/readyz``, ``/metrics``
(Prometheus text) and ``/`` (a page to try it). Every error has one shape,
``{"error": {"message", "type", "code", "param"}}``. See docs/serving.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request

from layerdrop.config.recipes import ServeConfig

from ..engine import Engine
from ..served import Served
from ..worker import Worker
from . import classify, completions, info
from .edge import Edge, route_label
from .errors import install_error_handlers
from .metrics import Metrics
from .service import Service

__all__ = ["create_app"]


def create_app(served: Served, cfg: ServeConfig) -> FastAPI:
    """The FastAPI app serving ``served``; its worker starts (and profiles) with the app's lifespan.

    ``app.state`` holds the :class:`~layerdrop.serving.http.service.Service` the routes read, and its
    ``engine``, ``worker`` and ``metrics``."""
    metrics = Metrics()
    engine = Engine(served, cfg, on_stopped=metrics.generation_stopped)
    worker = Worker(engine.run, queue_size=cfg.queue_size, batch_size=cfg.batch_inputs,
                    batch_wait_ms=cfg.batch_wait_ms, startup=engine.startup)
    metrics.queue.set_function(lambda: worker.queue_length)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="layerdrop serve", version="1", lifespan=lifespan,
                  description="One model, one copy of its weights, every request at the depth it can afford.")
    app.state.service = Service(served, cfg, engine, worker, metrics)
    app.state.engine, app.state.worker, app.state.metrics = engine, worker, metrics
    task = classify.router if served.task == "classification" else completions.router  # its own task's route only
    # every route of an APIRouter is an APIRoute, with a path; Starlette types them as BaseRoute, without one
    routes = {route.path for router in (task, info.router) for route in router.routes}  # type: ignore[attr-defined]
    paths = frozenset(routes | {p for p in (app.openapi_url, app.docs_url, app.redoc_url) if p is not None})
    app.add_middleware(Edge, limit=cfg.max_body_bytes, metrics=metrics, paths=paths)
    own = "/v1/completions" if served.task == "generation" else "/v1/classify"

    def count(request: Request) -> None:  # a 500 is answered outside Edge: counted here
        metrics.response(route_label(paths, request.url.path), 500)
    install_error_handlers(app, f"{served.name} is served at {own} (and GET /v1/depths, /v1/models, /healthz, "
                                "/readyz, /metrics, /)", on_internal=count)
    app.include_router(task)
    app.include_router(info.router)
    return app
