"""The API's shapes: OpenAI's ``/v1/completions`` plus the depth to run at, ``/v1/classify``, the depth
listing, and one error body for every 4xx and 5xx answer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from layerdrop.errors import InputError

__all__ = ["ERRORS", "Classification", "ClassifyRequest", "ClassifyResponse", "CompletionChoice",
           "CompletionRequest", "CompletionResponse", "DepthInfo", "DepthProfile", "DepthsResponse", "ErrorBody",
           "ErrorDetail", "ExitsInfo", "ModelCard", "ModelList", "ServedBy", "Usage"]


def _encodable(value: Any) -> Any:
    """Text a tokenizer can read: UTF-8, so no lone surrogate (JSON allows ``\\ud800``; UTF-8 does not)."""
    for text in [value] if isinstance(value, str) else value or ():
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise InputError(f"not valid Unicode text: a lone surrogate at character {err.start}") from None
    return value


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

    _text = field_validator("prompt", "stop", "user")(_encodable)


class ClassifyRequest(_Strict):
    """Texts to classify, at a depth or within a latency budget."""

    input: str | list[str] = Field(description="One text or a list of texts.")
    model: str | None = None
    depth: int | Literal["auto"] | None = Field(
        None, description="Layers to run (a served depth), or auto: each input leaves at the first calibrated exit "
                          "sure of it (layerdrop exits), never past the deepest depth latency_ms allows.")
    latency_ms: float | None = Field(None, gt=0.0)
    max_drop: float | None = Field(None, gt=0.0, lt=100.0, description="With depth auto: accuracy points the exits "
                                                                       "may lose against full depth (a calibrated "
                                                                       "drop; default: the recorded one).")

    _text = field_validator("input")(_encodable)

    @field_validator("depth", mode="before")
    @classmethod
    def _depth(cls, value: Any) -> Any:
        """A served depth or ``"auto"``, said in one message (not one per member of the union)."""
        if value is None or value == "auto" or (type(value) is int and value >= 1):
            return value
        raise InputError(f'give a served depth (an integer, 1 or more) or "auto", got {value!r}')


class ServedBy(BaseModel):
    """Which depth answered, and how long it was predicted to take and took (queue included)."""

    depth: int
    """The depth it ran at; with ``"depth": "auto"``, the deepest it could run (each input says its own)."""
    layers: list[int]
    predicted_ms: float
    measured_ms: float
    guaranteed: bool | None = None
    """With ``"depth": "auto"``: whether the calibrated promise holds, which it does when every exit up to full
    depth was open; false when a latency budget stopped the exits short of it. ``None`` otherwise."""


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
    depth: int
    """The layers this input ran: the request's depth, or with depth auto the exit it left at."""


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


class ExitsInfo(BaseModel):
    """The calibrated early exit that ``"depth": "auto"`` runs (``layerdrop exits``)."""

    rule: str
    """The exit rule (``layerdrop.exits.RULES``)."""
    depths: list[int]
    """The exits, shallowest first; the last is the full depth."""
    max_drops: list[float]
    """The drops (accuracy points) a request may name; the default is :attr:`max_drop`."""
    max_drop: float
    """The drop of a request that names none."""
    confidence: float
    """Probability that each drop holds, over the calibration rows drawn."""
    data: str
    """The dataset whose validation rows calibrated the exits."""
    available: bool
    """False when these exits cannot be served here; :attr:`why` says what to do."""
    why: str | None = None


class DepthsResponse(BaseModel):
    model: str
    task: str
    metric: str | None
    data: str | None
    overhead_ms: float
    """What a request costs besides reading its input, the queue and its forward (a moving average), added to
    every prediction."""
    margin: float
    """A budget must hold the prediction times this (the tail of recent measured/predicted ratios), for a
    request that finds the queue empty."""
    margins: dict[int, float]
    """The same for a request that finds 0, 1, 2 or 3-or-more requests waiting or running."""
    depths: list[DepthInfo]
    exits: ExitsInfo | None = None
    """What ``"depth": "auto"`` runs; ``None`` when the model records no calibrated exits."""


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
