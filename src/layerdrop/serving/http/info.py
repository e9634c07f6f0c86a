"""What the server serves and how it is: ``/v1/depths``, ``/v1/models``, ``/healthz``, ``/readyz``,
``/metrics`` (Prometheus) and ``/`` (a page to try it)."""

from __future__ import annotations

import dataclasses
from importlib import resources

from fastapi import APIRouter, Depends, Response
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST

from ..calibration import AHEAD_MAX
from .schemas import ERRORS, DepthInfo, DepthProfile, DepthsResponse, ExitsInfo, ModelCard, ModelList
from .service import Service, service

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/depths", response_model=DepthsResponse)
async def depths(svc: Service = Depends(service)) -> DepthsResponse:  # noqa: B008
    """Each served depth: layers kept, parameters, measured latency profile, recorded quality."""
    served, engine = svc.served, svc.engine
    profiles = engine.current_profiles()
    return DepthsResponse(
        model=served.name, task=served.task, metric=served.metric, data=served.data,
        overhead_ms=round(engine.overhead_ms, 3), margin=round(engine.budget_margin(0), 3),
        margins={n: round(engine.budget_margin(n), 3) for n in range(AHEAD_MAX + 1)},
        depths=[DepthInfo(depth=d, layers=list(served.kept[d]), parameters=served.parameters[d],
                          profile=DepthProfile(**{k: round(v, 4) for k, v in dataclasses.asdict(profiles[d]).items()
                                                  if k != "depth"}) if d in profiles else None,
                          quality=served.quality[d]) for d in served.views],
        exits=None if served.exits is None else ExitsInfo(
            rule=served.exits.rule, depths=list(served.exits.depths), max_drops=[d for d, _ in served.exits.thresholds],
            max_drop=served.exits.max_drop, confidence=served.exits.confidence, data=served.exits.data,
            available=served.exits_error is None, why=served.exits_error))


@router.get("/v1/models", response_model=ModelList)
async def models(svc: Service = Depends(service)) -> ModelList:  # noqa: B008
    """The model, and the model at each served depth as NAME@K."""
    name = svc.served.name
    return ModelList(data=[ModelCard(id=name), *[ModelCard(id=f"{name}@{d}") for d in svc.served.views]])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses=ERRORS)
async def readyz(svc: Service = Depends(service)) -> dict[str, str]:  # noqa: B008
    """Ready once every depth is profiled."""
    svc.ready_or_503()
    return {"status": "ready"}


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(svc: Service = Depends(service)) -> Response:  # noqa: B008
    """Prometheus text: queue length, answers by route and code, request seconds per depth, cancelled streams."""
    return Response(svc.metrics.text(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse)
async def page() -> str:
    """A page to try the model at any depth."""
    return resources.files("layerdrop").joinpath("static/serve.html").read_text(encoding="utf-8")
