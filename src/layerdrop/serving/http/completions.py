"""``POST /v1/completions``: OpenAI's completions at a depth (``depth``, ``model: "NAME@K"``) or at the
deepest depth a latency budget allows; ``stream`` sends server-sent events (``sse-starlette``: keep-alive
pings, ``Cache-Control: no-cache`` so that a proxy does not buffer the stream)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from sse_starlette.sse import EventSourceResponse

from ..engine import Completion
from ..generate import Generation
from ..worker import Cancelled, Job
from .errors import ServeError, error_body
from .schemas import ERRORS, CompletionChoice, CompletionRequest, CompletionResponse, Usage
from .service import Pick, Service, service, settle

__all__ = ["router"]

router = APIRouter()

PING_S = 15
"""Seconds between keep-alive comments on an open stream."""


@router.post("/v1/completions", response_model=CompletionResponse, responses={
    **ERRORS, 200: {"content": {"text/event-stream": {}},
                    "description": "the completion, or with stream: server-sent events"}})
async def completions(body: CompletionRequest, request: Request, svc: Service = Depends(service)) -> Any:  # noqa: B008
    """Continue a prompt at a depth (or NAME@K), or at the deepest depth that fits latency_ms."""
    start = svc.clock()
    svc.ready_or_503()
    served, cfg = svc.served, svc.cfg
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    if not prompt.strip():
        raise ServeError(422, "prompt is empty: give some text to continue", param="prompt")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stop) > 4 or any(not s for s in stop):
        raise ServeError(422, "stop: up to 4 non-empty strings", param="stop")
    if body.max_tokens > cfg.max_tokens:
        raise ServeError(422, f"max_tokens {body.max_tokens} is over this server's {cfg.max_tokens} "
                              "(--max-tokens)", param="max_tokens")
    read = svc.clock()
    prompt_tokens = len(served.tokenizer(prompt).input_ids)
    read_ms = (svc.clock() - read) * 1000
    if prompt_tokens > cfg.max_prompt_tokens or prompt_tokens + body.max_tokens > served.max_length:
        raise ServeError(422, f"the prompt's {prompt_tokens} tokens and max_tokens {body.max_tokens} do not fit "
                              f"(at most {cfg.max_prompt_tokens} prompt tokens, {served.max_length} in all): "
                              "shorten the prompt or ask for fewer tokens", param="prompt")
    if body.speculative is not None and body.temperature > 0:
        raise ServeError(422, "speculative decoding is greedy: set temperature to 0", param="speculative")
    pick = svc.pick(body.model, body.depth, body.latency_ms, tokens=prompt_tokens, new_tokens=body.max_tokens,
                    chars=len(prompt), read_ms=read_ms)
    if body.speculative is not None and not body.speculative < pick.depth:
        raise ServeError(422, f"speculative: the draft must have fewer layers than the {pick.depth} that verify it",
                         param="speculative")
    payload = Completion(prompt, body.max_tokens, body.temperature, body.top_p, stop,
                         body.seed if body.seed is not None else secrets.randbelow(2**31), body.speculative,
                         body.no_repeat_ngram, prompt_tokens)
    reply = _Reply(svc, body, pick, start, prompt_tokens)
    loop = asyncio.get_running_loop()
    if not body.stream:
        done: asyncio.Future[Any] = loop.create_future()
        job = Job("complete", pick.depth, pick.own_ms, payload, settle(loop, done))
        svc.submit(job)
        result = await svc.answer(job, done, request)
        reason, usage = reply.finish(result)
        return CompletionResponse(id=reply.id, created=reply.created, model=reply.model, usage=usage,
                                  choices=[CompletionChoice(text=result.text, index=0, finish_reason=reason)],
                                  layerdrop=svc.served_by(pick, start, job))
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    job = Job("complete", pick.depth, pick.own_ms, payload,
              lambda result, err: loop.call_soon_threadsafe(events.put_nowait, ("done", (result, err))),
              on_text=lambda text: loop.call_soon_threadsafe(events.put_nowait, ("text", text)))
    svc.submit(job)
    return EventSourceResponse(reply.stream(job, events), ping=PING_S, sep="\n", shutdown_grace_period=5,
                               headers={"Cache-Control": "no-cache"})


class _Reply:
    """One completion's answer: its id, model name and chunks."""

    def __init__(self, svc: Service, body: CompletionRequest, pick: Pick, start: float, prompt_tokens: int) -> None:
        self.svc, self.body, self.pick, self.start, self.prompt_tokens = svc, body, pick, start, prompt_tokens
        self.id, self.created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.model = f"{svc.served.name}@{pick.depth}"

    def finish(self, result: Generation) -> tuple[str, Usage]:
        reason = "length" if result.new_tokens >= self.body.max_tokens else "stop"
        return reason, Usage(prompt_tokens=self.prompt_tokens, completion_tokens=result.new_tokens,
                             total_tokens=self.prompt_tokens + result.new_tokens)

    def chunk(self, text: str, reason: str | None, **extra: Any) -> str:
        return json.dumps({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                           "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": reason}],
                           **extra})

    async def stream(self, job: Job, events: asyncio.Queue[tuple[str, Any]]) -> AsyncIterator[dict[str, str]]:
        """The text as it comes, then a closing chunk with the usage (or an error event), then ``[DONE]``;
        a client that leaves first cancels the generation."""
        finished = False
        try:
            while True:
                kind, value = await events.get()
                if kind == "text":
                    yield {"data": self.chunk(value, None)}
                    continue
                result, err = value
                finished = True
                if err is not None:
                    code = 503 if isinstance(err, Cancelled) else 500
                    yield {"data": json.dumps(error_body(code, f"generation ended: {err}").model_dump())}
                else:
                    reason, usage = self.finish(result)
                    by = self.svc.served_by(self.pick, self.start, job)
                    yield {"data": self.chunk("", reason, usage=usage.model_dump(), layerdrop=by.model_dump())}
                yield {"data": "[DONE]"}
                return
        finally:
            if not finished:
                job.cancelled.set()
                self.svc.metrics.stream_cancelled()
