"""``layerdrop serve``: one process, one copy of the weights, every request at the depth it can afford.

A model trained with LayerDrop (Fan et al. 2020, "Reducing Transformer Depth on Demand with
Structured Dropout") works at every depth, so each depth is a *view* of the same weights
(:func:`layerdrop.prune.view`: the every-other layers, no parameter copied). At start-up each
served depth is timed on this machine (:mod:`layerdrop.latency`); a request then names a
``depth`` or a ``latency_ms`` budget, and gets the deepest depth whose predicted time, the
queue's wait included, fits. One worker thread runs everything (:mod:`layerdrop.worker`).

Routes: ``POST /v1/completions`` (OpenAI's shape, plus ``depth`` / ``latency_ms`` / ``speculative`` /
``no_repeat_ngram``; ``model: "NAME@K"`` picks K layers; ``stream`` sends server-sent events),
``POST /v1/classify``, ``GET /v1/depths``, ``/v1/models``, ``/healthz``, ``/readyz``, ``/metrics``
(Prometheus text) and ``/`` (a page to try it). Every error has one shape,
``{"error": {"message", "type", "code", "param"}}``. See docs/serving.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import re
import secrets
import statistics
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn
from transformers import AutoTokenizer

from .args import ServeConfig
from .arch import find_layers
from .depths import every_other
from .evaluate import parameters_at
from .generate import Generation, generate
from .latency import BudgetError, Profile, choose_depth, fit, margin, observe
from .models import BUNDLED_MODELS, from_pretrained, is_classifier, load_saved, local_folder, read_meta
from .prune import view
from .worker import Cancelled, Job, QueueFull, Worker

__all__ = ["Served", "build_server", "create_app", "load_served", "run_server", "served_name"]


# --------------------------------------------------------------------------- the model and its depths


@dataclass(frozen=True)
class Served:
    """A loaded model and its served depths: one view per depth, all sharing the model's weights."""

    name: str
    task: Literal["classification", "generation"]
    model: nn.Module
    tokenizer: Any
    views: dict[int, nn.Module]
    """Depth -> a weight-sharing view running the every-other layers of that depth."""
    kept: dict[int, tuple[int, ...]]
    parameters: dict[int, int]
    quality: dict[int, float | None]
    """Depth -> the recorded quality (``None`` where nothing was measured)."""
    metric: str | None
    data: str | None
    """What :attr:`quality` measured, and on which data."""
    labels: tuple[str, ...] = ()
    max_length: int = 512
    """Tokens per input: a classifier's trained length, or a generator's context."""


def load_served(cfg: ServeConfig) -> Served:
    """Load ``cfg.model`` and build its views; a folder that is not a model is a clear error."""
    model = load_saved(cfg.model).eval()
    folder = local_folder(cfg.model)
    tokenizer = from_pretrained(AutoTokenizer, folder)
    site = find_layers(model)
    num_layers = len(site.layers)
    if is_classifier(model):
        task: Literal["classification", "generation"] = "classification"
    elif site.arch is not None and site.arch.decoder and hasattr(model, "generate"):
        task = "generation"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        raise ValueError(f"{cfg.model} is neither a classifier (layerdrop train classification) nor a causal LM: "
                         "serve has nothing to answer with")
    depths = sorted({int(d) for d in cfg.depths.split(",") if d.strip()} if cfg.depths else range(1, num_layers + 1),
                    reverse=True)
    if not depths or depths[-1] < 1 or depths[0] > num_layers:
        raise ValueError(f"--depths {cfg.depths!r}: choose depths from 1 to the model's {num_layers} layers")
    kept = _choose_layers(cfg, model, tokenizer, depths, num_layers)
    meta = read_meta(folder) if Path(folder).is_dir() else {}
    quality, metric, data = _recorded_quality(cfg.sweep, meta, num_layers, depths, folder)
    config = model.config
    if task == "classification":
        id2label = getattr(config, "id2label", None) or {}
        n = model.head.out_features if hasattr(model, "head") else config.num_labels
        labels = tuple(meta.get("label_names") or [id2label.get(i, f"LABEL_{i}") for i in range(n)])
        length = (meta.get("trained_with") or {}).get("max_length") or min(tokenizer.model_max_length, 512)
    else:
        labels = ()
        length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
    name = cfg.name or served_name(cfg.model, folder)
    return Served(name=name, task=task, model=model, tokenizer=tokenizer,
                  views={d: model if d == num_layers else view(model, keep=kept[d]) for d in depths}, kept=kept,
                  parameters={d: parameters_at(model, kept[d]) for d in depths}, quality=quality, metric=metric,
                  data=data, labels=labels, max_length=int(length))


def _choose_layers(cfg: ServeConfig, model: nn.Module, tokenizer: Any, depths: Sequence[int], num_layers: int
                   ) -> dict[int, tuple[int, ...]]:
    """The layers each depth keeps: every-other, or the ``--strategy`` calibrated on ``--data``'s validation rows.
    A view must keep layer 0 (a KV cache's length is read there)."""
    if cfg.strategy == "every-other":
        return {d: every_other(num_layers, d) for d in depths}
    from .evaluate import calibration_batches
    from .strategies import choose, lookup

    if lookup(cfg.strategy).needs_data and not cfg.data:
        raise ValueError(f"--strategy {cfg.strategy} needs calibration data: pass --data (a dataset name or text file)")
    if cfg.sweep:
        raise ValueError("--sweep records every-other layers; with --strategy, leave --sweep out")
    batches = calibration_batches(model, tokenizer, cfg.data) if cfg.data else None
    kept = {d: choose(cfg.strategy, model, d, batches=batches).kept for d in depths}
    for d, layers in kept.items():
        if layers[0] != 0:
            raise ValueError(f"--strategy {cfg.strategy} drops layer 0 at depth {d} ({list(layers)}); a served depth must "
                             "keep it: choose other --depths or another strategy")
    return kept


def served_name(model: str, folder: str) -> str:
    """The name a model is served under: a bundled name as given (not its cache folder), else the folder's
    name, or its parent's for a run's ``model`` folder.

    >>> served_name("smollm2-135m", "/cache/smollm2-135m-0.1.2"), served_name("runs/rt/model", "runs/rt/model")
    ('smollm2-135m', 'rt')
    """
    path = Path(folder)
    if model in BUNDLED_MODELS:
        return model
    return path.parent.name if path.name == "model" and path.parent.name else path.name or model


def _recorded_quality(sweep: str, meta: dict[str, Any], num_layers: int, depths: Sequence[int], folder: str
                      ) -> tuple[dict[int, float | None], str | None, str | None]:
    """Each depth's quality from a sweep's every-other points, else the full depth's test score recorded
    in ``layerdrop.json``; ``None`` for every depth with no measurement."""
    quality: dict[int, float | None] = dict.fromkeys(depths)
    if sweep:
        path = Path(sweep)
        record = json.loads((path / "sweep.json" if path.is_dir() else path).read_text())
        points = {p["depth"]: p["score"] for p in record["points"].get("every-other", [])}
        if not points:
            raise ValueError(f"{sweep} has no every-other points: run layerdrop sweep with --strategies every-other")
        swept = Path(local_folder(record["config"]["model"]))
        if max(points) != num_layers or (swept.is_dir() and swept.resolve() != Path(folder).resolve()):
            raise ValueError(f"--sweep {sweep} measured {record['config']['model']} ({max(points)} layers), not this "
                             f"model ({folder}, {num_layers} layers): sweep this model (layerdrop sweep MODEL "
                             "--strategies every-other) or leave --sweep out")
        return {d: points.get(d) for d in depths}, record["metric"], record["config"]["data"]
    metrics = meta.get("metrics") or {}
    for key in ("test_accuracy", "test_perplexity", "test_f1"):
        if key in metrics and num_layers in quality:
            quality[num_layers] = metrics[key]
            return quality, key.removeprefix("test_"), (meta.get("trained_with") or {}).get("data")
    return quality, None, None


# --------------------------------------------------------------------------- profiling and running


def _timed_ms(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


@torch.no_grad()
def profile_depths(served: Served, reps: int = 3) -> dict[int, Profile]:
    """Time every served depth on this machine and fit its :class:`~layerdrop.latency.Profile`."""
    token = served.tokenizer.pad_token_id or 0
    lengths = sorted({min(8, served.max_length), min(32, served.max_length), min(96, served.max_length)})
    profiles = {}
    for depth, module in served.views.items():
        def forward(n: int) -> None:
            ids = torch.full((1, n), token, dtype=torch.long)  # (1, T)
            module(input_ids=ids, attention_mask=torch.ones_like(ids))
        for n in lengths:  # warm-up: the first forward at a shape sets up its kernels
            forward(n)
        samples = [(n, _timed_ms(lambda: forward(n), reps)) for n in lengths]
        per_new = 0.0
        if served.task == "generation":
            ids = torch.full((1, 8), token, dtype=torch.long)  # (1, 8)

            def greedy(new: int) -> None:
                module.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                do_sample=False, pad_token_id=served.tokenizer.pad_token_id)
            greedy(2)  # warm-up
            new = 8
            total = _timed_ms(lambda: greedy(new), max(1, reps - 1))
            per_new = max(0.0, (total - fit(depth, samples).predict(8)) / new)
        profiles[depth] = fit(depth, samples, per_new)
    return profiles


@dataclass(frozen=True)
class _Completion:
    prompt: str
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int
    speculative: int | None
    no_repeat_ngram: int


AHEAD_MAX = 3
"""Requests found ahead from which on the budget margin is learned as one (see :meth:`Engine.budget_margin`)."""
AHEAD_HISTORY = 8
"""Answers with as many requests ahead needed before their own margin is used rather than all answers'."""


class Engine:
    """What the worker runs, and the profiles it keeps up to date."""

    def __init__(self, served: Served, cfg: ServeConfig, metrics: Metrics | None = None) -> None:
        self.served, self.cfg, self.metrics = served, cfg, metrics or Metrics()
        self.profiles: dict[int, Profile] = {}
        self.overhead_ms = 0.0
        """What a request costs besides the queue and the forward (tokenizing, HTTP, JSON): a moving average."""
        self.ratios: dict[int, collections.deque[float]] = {}
        """Measured over predicted milliseconds of the last answers, by the requests they found ahead
        (:data:`AHEAD_MAX` or more counted together): their tail is the budgets' margin."""
        self._lock = threading.Lock()

    def startup(self) -> None:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        profiles = profile_depths(self.served, self.cfg.profile_reps)
        with self._lock:
            self.profiles = profiles

    def observe_overhead(self, ms: float, weight: float = 0.2) -> None:
        with self._lock:
            self.overhead_ms += weight * (max(ms, 0.0) - self.overhead_ms)

    def observe_answer(self, predicted_ms: float, measured_ms: float, ahead: int = 0) -> None:
        if predicted_ms > 0 and measured_ms > 0:
            with self._lock:
                self.ratios.setdefault(min(ahead, AHEAD_MAX), collections.deque(maxlen=64)).append(
                    measured_ms / predicted_ms)

    def budget_margin(self, ahead: int = 0) -> float:
        """How far past its prediction a request that finds ``ahead`` requests waiting or running may
        run: the 95th percentile (at least 1) of recent ratios of answers that found as many ahead, or
        of all recent answers while those are fewer than :data:`AHEAD_HISTORY`.

        Under load a request's time grows beyond what its prediction counts (the clients and the event
        loop share the cores with the worker), so requests behind others need a larger margin than a
        lone one, which would otherwise pay for them."""
        with self._lock:
            same = self.ratios.get(min(ahead, AHEAD_MAX), ())
            return margin(list(same) if len(same) >= AHEAD_HISTORY
                          else [r for ratios in self.ratios.values() for r in ratios])

    def observe(self, depth: int, tokens: int, new_tokens: int, ms: float) -> None:
        with self._lock:
            self.profiles = {**self.profiles, depth: observe(self.profiles[depth], tokens, new_tokens, ms)}

    @torch.no_grad()
    def run(self, jobs: Sequence[Job]) -> list[Any]:
        depth = jobs[0].depth
        module = self.served.views[depth]
        start = time.perf_counter()
        if jobs[0].kind == "classify":
            texts = [text for job in jobs for text in job.payload]
            batch = self.served.tokenizer(texts, padding=True, truncation=True, max_length=self.served.max_length,
                                          return_tensors="pt")
            probs = module(**batch).logits.float().softmax(-1)  # (B, C)
            tokens = int(batch["input_ids"].numel())
            self.observe(depth, tokens, 0, (time.perf_counter() - start) * 1000)
            out, i = [], 0
            for job in jobs:
                out.append((probs[i:i + job.size].tolist(), tokens))
                i += job.size
            return out
        (job,) = jobs
        c: _Completion = job.payload

        def on_text(text: str) -> None:
            if job.cancelled.is_set():
                raise Cancelled("the client went away")
            if text and job.on_text is not None:
                job.on_text(text)
        try:
            result = generate(module, self.served.tokenizer, c.prompt, max_new_tokens=c.max_tokens,
                              temperature=c.temperature, top_p=c.top_p if c.temperature > 0 else None, stop=c.stop,
                              seed=c.seed, on_text=on_text, speculative=c.speculative,
                              no_repeat_ngram=c.no_repeat_ngram)
        except Cancelled:
            self.metrics.generation_stopped()
            raise
        prompt_tokens = len(self.served.tokenizer(c.prompt).input_ids)
        self.observe(depth, prompt_tokens, result.new_tokens, (time.perf_counter() - start) * 1000)
        return [result]


# --------------------------------------------------------------------------- the API's shapes


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int
    param: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CompletionRequest(_Strict):
    """OpenAI's ``/v1/completions`` request, plus the depth to run at."""

    model: str | None = Field(None, description="The served model's name, or NAME@K for K layers.")
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(
        description="Text to continue (a list holds exactly one).")
    max_tokens: int = Field(16, ge=1, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0: greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end the text.")
    stream: bool = Field(False, description="Send server-sent events, ending with data: [DONE].")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    depth: int | None = Field(None, ge=1, description="Layers to run (a served depth).")
    latency_ms: float | None = Field(None, gt=0.0, description="Budget: the deepest depth predicted to fit.")
    speculative: int | None = Field(None, ge=1, description="Greedy only: a draft of this many layers.")
    no_repeat_ngram: int = Field(0, ge=0, description="Never repeat an n-gram of this size, prompt included, so "
                                                      "greedy text cannot loop; 0 is off. Works with speculative.")
    # OpenAI's other fields, accepted at the values this server supports (clients send some by default)
    n: Literal[1] = Field(1, description="Completions per prompt: 1 only.")
    best_of: Literal[1] | None = None
    echo: Literal[False] = False
    logprobs: None = Field(None, description="Not supported: null only.")
    suffix: None = None
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="Not supported: 0 only.")
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="Not supported: 0 only.")
    logit_bias: dict[str, float] | None = Field(None, max_length=0, description="Not supported: empty only.")
    user: str | None = Field(None, max_length=256, description="Ignored.")
    stream_options: dict[str, bool] | None = Field(None, description="Ignored: the last chunk carries the usage.")


class ClassifyRequest(_Strict):
    """Texts to classify, at a depth or within a latency budget."""

    input: str | list[str] = Field(description="One text or a list of texts.")
    model: str | None = None
    depth: int | None = Field(None, ge=1)
    latency_ms: float | None = Field(None, gt=0.0)


class ServedBy(BaseModel):
    """Which depth answered, and how long it was predicted to take and took (queue included)."""

    depth: int
    layers: list[int]
    predicted_ms: float
    measured_ms: float


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: str | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    layerdrop: ServedBy


class Classification(BaseModel):
    index: int
    label: str
    score: float
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    object: Literal["classification"] = "classification"
    model: str
    data: list[Classification]
    tokens: int
    layerdrop: ServedBy


class DepthProfile(BaseModel):
    fixed_ms: float
    per_token_ms: float
    per_new_token_ms: float


class DepthInfo(BaseModel):
    depth: int
    layers: list[int]
    parameters: int
    profile: DepthProfile | None
    quality: float | None


class DepthsResponse(BaseModel):
    model: str
    task: str
    metric: str | None
    data: str | None
    overhead_ms: float
    """What a request costs besides the queue and its forward (a moving average), added to every prediction."""
    margin: float
    """A budget must hold the prediction times this (the tail of recent measured/predicted ratios), for a
    request that finds the queue empty."""
    margins: dict[int, float]
    """The same for a request that finds 0, 1, 2 or 3-or-more requests waiting or running."""
    depths: list[DepthInfo]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "layerdrop"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (400, "the body is not a JSON object"), (413, "the body is too large"),
        (422, "a value out of range: the message says which and what to do"),
        (503, "not ready yet, the queue is full, or the queue leaves no depth within the budget (Retry-After)"),
        (500, "an internal error"))}
"""The error answers every route declares in the OpenAPI schema, all with :class:`ErrorBody`."""


class ServeError(Exception):
    """An answer with :class:`ErrorBody`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.retry_after = status, message, param, retry_after


_TYPES = {400: "invalid_request_error", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
          422: "invalid_value", 503: "unavailable", 500: "internal_error"}


def _error(status: int, message: str, param: str | None = None, retry_after: int | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type=_TYPES.get(status, "error"), code=status, param=param))
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


# --------------------------------------------------------------------------- metrics


class Metrics:
    """Counters and per-depth latency histograms, written as Prometheus text."""

    BUCKETS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, math.inf)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.responses: dict[tuple[str, int], int] = {}
        self.cancelled = 0
        self.stopped = 0
        self.latency: dict[int, list[int]] = {}
        self.latency_sum: dict[int, float] = {}

    def response(self, route: str, status: int) -> None:
        with self._lock:
            self.responses[(route, status)] = self.responses.get((route, status), 0) + 1

    def served(self, depth: int, ms: float) -> None:
        with self._lock:
            counts = self.latency.setdefault(depth, [0] * len(self.BUCKETS))
            for i, bound in enumerate(self.BUCKETS):
                counts[i] += ms <= bound
            self.latency_sum[depth] = self.latency_sum.get(depth, 0.0) + ms

    def stream_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def generation_stopped(self) -> None:
        with self._lock:
            self.stopped += 1

    def text(self, queue_length: int) -> str:
        with self._lock:
            lines = ["# TYPE layerdrop_queue_length gauge", f"layerdrop_queue_length {queue_length}",
                     "# TYPE layerdrop_cancelled_streams_total counter",
                     f"layerdrop_cancelled_streams_total {self.cancelled}",
                     "# TYPE layerdrop_generations_stopped_total counter",
                     f"layerdrop_generations_stopped_total {self.stopped}",
                     "# TYPE layerdrop_responses_total counter"]
            lines += [f'layerdrop_responses_total{{route="{route}",code="{code}"}} {n}'
                      for (route, code), n in sorted(self.responses.items())]
            lines.append("# TYPE layerdrop_request_ms histogram")
            for depth, counts in sorted(self.latency.items()):
                for bound, n in zip(self.BUCKETS, counts):
                    le = "+Inf" if math.isinf(bound) else f"{bound:g}"
                    lines.append(f'layerdrop_request_ms_bucket{{depth="{depth}",le="{le}"}} {n}')
                lines.append(f'layerdrop_request_ms_sum{{depth="{depth}"}} {self.latency_sum[depth]:.3f}')
                lines.append(f'layerdrop_request_ms_count{{depth="{depth}"}} {counts[-1]}')
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the app


class _Edge:
    """ASGI middleware at the edge: counts every answer by route and status (streams included, unlike
    Starlette's ``BaseHTTPMiddleware``), and answers 413 to a body over ``limit`` bytes before a route reads it."""

    def __init__(self, app: Any, limit: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = _route(self.app, scope["path"])

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.metrics.response(path, message["status"])
            await send(message)
        too_large = _error(413, f"the body is larger than {self.limit} bytes (--max-body-bytes)")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_large(scope, receive, counted)
        seen = 0

        async def limited() -> Any:  # a body without Content-Length, counted as it arrives
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # an HTTPException: FastAPI re-raises it as is while reading a body
                raise StarletteHTTPException(413, f"the body is larger than {self.limit} bytes (--max-body-bytes)")
            return message
        await self.app(scope, limited, counted)


def create_app(served: Served, cfg: ServeConfig) -> FastAPI:
    """The FastAPI app serving ``served``; its worker starts (and profiles) with the app's lifespan."""
    metrics = Metrics()
    engine = Engine(served, cfg, metrics)
    worker = Worker(engine.run, queue_size=cfg.queue_size, batch_size=cfg.batch_inputs,
                    batch_wait_ms=cfg.batch_wait_ms, startup=engine.startup)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="layerdrop serve", version="1", lifespan=lifespan,
                  description="One model, one copy of its weights, every request at the depth it can afford.")
    app.state.engine, app.state.worker, app.state.metrics = engine, worker, metrics

    app.add_middleware(_Edge, limit=cfg.max_body_bytes, metrics=metrics)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError) -> JSONResponse:
        return _error(err.status, err.message, err.param, err.retry_after)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON: {first.get('msg', '')}")
        if tuple(first.get("loc", ())) == ("body",) and first.get("type") in ("model_attributes_type", "dict_type"):
            return _error(400, "the body must be a JSON object, sent with Content-Type: application/json")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"{where or 'body'}: {first.get('msg', 'invalid')}", where or None)

    other = "/v1/completions" if served.task == "generation" else "/v1/classify"

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            return _error(404, f"no route {request.url.path[:200]}: {served.name} is served at {other} "
                               "(and GET /v1/depths, /v1/models, /healthz, /readyz, /metrics, /)")
        response = _error(err.status_code, str(err.detail))
        response.headers.update(err.headers or {})  # a 405's Allow
        return response

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:  # outside _Edge: counted here
        metrics.response(_route(app, request.url.path), 500)
        return _error(500, f"internal error: {type(err).__name__}: {err}")

    def ready_or_503() -> None:
        if worker.startup_error is not None:
            raise ServeError(503, f"start-up failed: {worker.startup_error}")
        if not worker.ready.is_set():
            raise ServeError(503, "still measuring each depth's latency; retry shortly", retry_after=1)

    def pick(model: str | None, depth: int | None, latency: float | None, tokens: int, new_tokens: int
             ) -> tuple[int, float, float]:
        """The depth a request runs at, its predicted milliseconds with the queue's wait, and without."""
        if model is not None:
            name, at, k = model.partition("@")
            if name != served.name:
                raise ServeError(422, f"model {name!r} is not served here; this server serves {served.name!r} "
                                      f"(ask for K layers with {served.name}@K)", param="model")
            if at:
                if not re.fullmatch(r"[0-9]{1,6}", k):
                    raise ServeError(422, f"model {model!r}: after @ comes a depth, e.g. {served.name}@3",
                                     param="model")
                if depth is not None and depth != int(k):
                    raise ServeError(422, f"model {model!r} and depth={depth} disagree: give one", param="depth")
                depth = int(k)
        if depth is not None and latency is not None:
            raise ServeError(422, "give depth or latency_ms, not both", param="latency_ms")
        wait, ahead = worker.load()
        profiles = engine.profiles
        if depth is not None:
            if depth not in served.views:
                raise ServeError(422, f"depth {depth} is not served; served depths: "
                                      f"{', '.join(map(str, served.views))}", param="depth")
        elif latency is None:
            depth = max(served.views)
        else:
            try:
                depth, _ = choose_depth(profiles, latency, wait_ms=wait, tokens=tokens, new_tokens=new_tokens,
                                        overhead_ms=engine.overhead_ms, margin=engine.budget_margin(ahead),
                                        idle_margin=engine.budget_margin(0))
            except BudgetError as err:
                if err.busy:
                    raise ServeError(503, str(err), param="latency_ms", retry_after=err.retry_after_s) from None
                raise ServeError(422, str(err), param="latency_ms") from None
        own = profiles[depth].predict(tokens, new_tokens) + engine.overhead_ms
        return depth, wait + own, own

    def submit(job: Job) -> None:
        try:
            worker.submit(job)
        except QueueFull as err:
            raise ServeError(503, f"{err}; retry shortly (--queue-size)", retry_after=1) from None

    async def answer(job: Job, done: asyncio.Future[Any], request: Request) -> Any:
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

    def by(depth: int, predicted: float, start: float, job: Job) -> ServedBy:
        measured = (time.perf_counter() - start) * 1000
        if job.ran[1] > 0:  # what was neither waiting nor running: the next predictions include it
            engine.observe_overhead(measured - (job.ran[1] - job.submitted) * 1000)
        engine.observe_answer(predicted, measured, job.ahead)
        metrics.served(depth, measured)
        return ServedBy(depth=depth, layers=list(served.kept[depth]), predicted_ms=round(predicted, 3),
                        measured_ms=round(measured, 3))

    async def classify(body: ClassifyRequest, request: Request) -> ClassifyResponse:
        """Classify one text or a list of texts at a depth, or at the deepest that fits latency_ms."""
        start = time.perf_counter()
        ready_or_503()
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or len(texts) > cfg.max_inputs:
            raise ServeError(422, f"input: give 1 to {cfg.max_inputs} texts (--max-inputs), got {len(texts)}",
                             param="input")
        lengths = [min(len(served.tokenizer(t).input_ids), served.max_length) for t in texts]
        tokens = len(texts) * max(lengths)  # padded to the longest, as the forward runs
        depth, predicted, own = pick(body.model, body.depth, body.latency_ms, tokens, 0)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        job = Job("classify", depth, own, texts, _settle(loop, done), size=len(texts))
        submit(job)
        probs, _ = await answer(job, done, request)
        data = []
        for i, row in enumerate(probs):
            best = max(range(len(row)), key=row.__getitem__)
            data.append(Classification(index=i, label=served.labels[best], score=row[best],
                                       scores=dict(zip(served.labels, row))))
        return ClassifyResponse(model=f"{served.name}@{depth}", data=data, tokens=tokens,
                                layerdrop=by(depth, predicted, start, job))

    async def completions(body: CompletionRequest, request: Request) -> Any:
        """Continue a prompt at a depth (or NAME@K), or at the deepest depth that fits latency_ms."""
        start = time.perf_counter()
        ready_or_503()
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        if not prompt.strip():
            raise ServeError(422, "prompt is empty: give some text to continue", param="prompt")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if len(stop) > 4 or any(not s for s in stop):
            raise ServeError(422, "stop: up to 4 non-empty strings", param="stop")
        if body.max_tokens > cfg.max_tokens:
            raise ServeError(422, f"max_tokens {body.max_tokens} is over this server's {cfg.max_tokens} "
                                  "(--max-tokens)", param="max_tokens")
        prompt_tokens = len(served.tokenizer(prompt).input_ids)
        if prompt_tokens > cfg.max_prompt_tokens or prompt_tokens + body.max_tokens > served.max_length:
            raise ServeError(422, f"the prompt's {prompt_tokens} tokens and max_tokens {body.max_tokens} do not fit "
                                  f"(at most {cfg.max_prompt_tokens} prompt tokens, {served.max_length} in all): "
                                  "shorten the prompt or ask for fewer tokens", param="prompt")
        if body.speculative is not None and body.temperature > 0:
            raise ServeError(422, "speculative decoding is greedy: set temperature to 0", param="speculative")
        depth, predicted, own = pick(body.model, body.depth, body.latency_ms, prompt_tokens, body.max_tokens)
        if body.speculative is not None and not body.speculative < depth:
            raise ServeError(422, f"speculative: the draft must have fewer layers than the {depth} that verify it",
                             param="speculative")
        payload = _Completion(prompt, body.max_tokens, body.temperature, body.top_p, stop,
                              body.seed if body.seed is not None else secrets.randbelow(2**31), body.speculative,
                              body.no_repeat_ngram)
        loop = asyncio.get_running_loop()
        cid, created, name = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time()), f"{served.name}@{depth}"

        def finish(result: Generation) -> tuple[str, Usage]:
            reason = "length" if result.new_tokens >= body.max_tokens else "stop"
            return reason, Usage(prompt_tokens=prompt_tokens, completion_tokens=result.new_tokens,
                                 total_tokens=prompt_tokens + result.new_tokens)

        if not body.stream:
            done: asyncio.Future[Any] = loop.create_future()
            job = Job("complete", depth, own, payload, _settle(loop, done))
            submit(job)
            result = await answer(job, done, request)
            reason, usage = finish(result)
            return CompletionResponse(id=cid, created=created, model=name, usage=usage,
                                      choices=[CompletionChoice(text=result.text, index=0, finish_reason=reason)],
                                      layerdrop=by(depth, predicted, start, job))

        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        job = Job("complete", depth, own, payload,
                  lambda result, err: loop.call_soon_threadsafe(events.put_nowait, ("done", (result, err))),
                  on_text=lambda text: loop.call_soon_threadsafe(events.put_nowait, ("text", text)))
        submit(job)

        def chunk(text: str, reason: str | None, **extra: Any) -> str:
            return "data: " + json.dumps({"id": cid, "object": "text_completion", "created": created, "model": name,
                                          "choices": [{"text": text, "index": 0, "logprobs": None,
                                                       "finish_reason": reason}], **extra}) + "\n\n"

        async def stream() -> AsyncIterator[str]:
            finished = False
            try:
                while True:
                    kind, value = await events.get()
                    if kind == "text":
                        yield chunk(value, None)
                        continue
                    result, err = value
                    finished = True
                    if err is not None:
                        code = 503 if isinstance(err, Cancelled) else 500
                        yield "data: " + json.dumps(ErrorBody(error=ErrorDetail(
                            message=f"generation ended: {err}", type=_TYPES[code], code=code)).model_dump()) + "\n\n"
                    else:
                        reason, usage = finish(result)
                        yield chunk("", reason, usage=usage.model_dump(),
                                    layerdrop=by(depth, predicted, start, job).model_dump())
                    yield "data: [DONE]\n\n"
                    return
            finally:
                if not finished:
                    job.cancelled.set()
                    metrics.stream_cancelled()

        return StreamingResponse(stream(), media_type="text/event-stream")

    if served.task == "classification":  # each model serves its own task's route only
        app.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS)(classify)
    else:
        app.post("/v1/completions", response_model=CompletionResponse, responses={
            **ERRORS, 200: {"content": {"text/event-stream": {}},
                            "description": "the completion, or with stream: server-sent events"}})(completions)

    @app.get("/v1/depths", response_model=DepthsResponse)
    async def depths() -> DepthsResponse:
        """Each served depth: layers kept, parameters, measured latency profile, recorded quality."""
        profiles = engine.profiles
        return DepthsResponse(model=served.name, task=served.task, metric=served.metric, data=served.data,
                              overhead_ms=round(engine.overhead_ms, 3), margin=round(engine.budget_margin(0), 3),
                              margins={n: round(engine.budget_margin(n), 3) for n in range(AHEAD_MAX + 1)}, depths=[
            DepthInfo(depth=d, layers=list(served.kept[d]), parameters=served.parameters[d],
                      profile=DepthProfile(**{k: round(v, 4) for k, v in dataclasses.asdict(profiles[d]).items()
                                              if k != "depth"}) if d in profiles else None,
                      quality=served.quality[d]) for d in served.views])

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        """The model, and the model at each served depth as NAME@K."""
        return ModelList(data=[ModelCard(id=served.name), *[ModelCard(id=f"{served.name}@{d}") for d in served.views]])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses=ERRORS)
    async def readyz() -> dict[str, str]:
        """Ready once every depth is profiled."""
        ready_or_503()
        return {"status": "ready"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        """Prometheus text: queue length, responses by route and code, latency per depth, cancelled streams."""
        return metrics.text(worker.queue_length)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        """A page to try the model at any depth."""
        return resources.files("layerdrop").joinpath("static/serve.html").read_text(encoding="utf-8")

    return app


def _route(app: Any, path: str) -> str:
    """A metrics label: the path of one of the app's routes, or ``other`` (one series per route, not per URL)."""
    while not hasattr(app, "routes") and hasattr(app, "app"):  # through the middleware to the router
        app = app.app
    known = {getattr(route, "path", None) for route in getattr(app, "routes", ())}
    return path if path in known else "other"


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> Any:
    """A worker ``on_done`` that settles ``future`` on its event loop."""
    def done(result: Any, err: BaseException | None) -> None:
        def settle() -> None:
            if future.done():
                return
            if err is not None:
                future.set_exception(err if isinstance(err, Exception) else RuntimeError(str(err)))
            else:
                future.set_result(result)
        loop.call_soon_threadsafe(settle)
    return done


def build_server(app: FastAPI, cfg: ServeConfig, on_ready: Any = None) -> Any:
    """A uvicorn server for ``app`` on ``cfg.host:cfg.port``, watched by a thread that calls ``on_ready()``
    once every depth is profiled, stops the server if profiling fails, and, as soon as a shutdown begins,
    cancels what the worker runs and fails what waits, so open streams end with an error event and
    ``[DONE]`` instead of holding the shutdown."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                           timeout_graceful_shutdown=30))
    worker: Worker = app.state.worker

    def watch() -> None:
        while not worker.ready.wait(0.1):
            if worker.startup_error is not None:
                server.should_exit = True
                return
            if server.should_exit:
                break
        if worker.ready.is_set() and on_ready is not None:
            on_ready()
        while not server.should_exit:
            time.sleep(0.05)
        worker.stop()
    threading.Thread(target=watch, name="layerdrop-shutdown", daemon=True).start()
    return server


def run_server(app: FastAPI, cfg: ServeConfig, on_ready: Any = None) -> None:
    """Serve ``app`` until interrupted (:func:`build_server`); a failed start-up profile is raised here."""
    try:
        build_server(app, cfg, on_ready).run()
    except KeyboardInterrupt:  # uvicorn re-raises the signal it handled: the shutdown is done
        pass
    worker: Worker = app.state.worker
    if worker.startup_error is not None:
        raise RuntimeError(f"measuring each depth's latency failed: {worker.startup_error}") from worker.startup_error
