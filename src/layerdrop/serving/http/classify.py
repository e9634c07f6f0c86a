"""``POST /v1/classify``: texts classified at a depth, or at the deepest depth a latency budget allows."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from ..worker import Job
from .errors import ServeError
from .schemas import ERRORS, Classification, ClassifyRequest, ClassifyResponse
from .service import Service, service, settle

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS)
async def classify(body: ClassifyRequest, request: Request, svc: Service = Depends(service)) -> ClassifyResponse:  # noqa: B008
    """Classify one text or a list of texts at a depth, at the deepest that fits latency_ms, or each at its own
    depth ("auto": calibrated early exit)."""
    start = svc.clock()
    svc.ready_or_503()
    served = svc.served
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or len(texts) > svc.cfg.max_inputs:
        raise ServeError(422, f"input: give 1 to {svc.cfg.max_inputs} texts (--max-inputs), got {len(texts)}",
                         param="input")
    read = svc.clock()
    ids = served.tokenizer(texts, truncation=True, max_length=served.max_length)["input_ids"]
    read_ms = (svc.clock() - read) * 1000
    tokens = len(ids) * max(map(len, ids))  # padded to the longest, as the forward runs
    pick = svc.pick(body.model, body.depth, body.latency_ms, tokens=tokens, new_tokens=0,
                    chars=sum(map(len, texts)), read_ms=read_ms, max_drop=body.max_drop)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    job = Job("classify", pick.depth, pick.own_ms, ids, settle(loop, done), size=len(texts), threshold=pick.threshold)
    svc.submit(job)
    probs, _, depths = await svc.answer(job, done, request)
    data = []
    for i, (row, depth) in enumerate(zip(probs, depths, strict=True)):
        best = max(range(len(row)), key=row.__getitem__)
        data.append(Classification(index=i, label=served.labels[best], score=row[best],
                                   scores=dict(zip(served.labels, row, strict=True)), depth=depth))
    return ClassifyResponse(model=f"{served.name}@{pick.depth}", data=data, tokens=tokens,
                            layerdrop=svc.served_by(pick, start, job))
