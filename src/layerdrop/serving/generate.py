"""Text generation at a chosen depth, and self-speculative decoding.

``depth=k`` runs the model on a weight-sharing :func:`layerdrop.view` of ``k`` layers
(every-other, or ``keep=[...]``): nothing is copied and the model is untouched. ``speculative=K``
drafts with a ``K``-layer view and verifies with every layer, so the text is the model's own
greedy text. Why our loop rather than HF's ``assistant_model``: docs/generation.md.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from transformers import (
    DynamicCache,
    NoRepeatNGramLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from layerdrop.core.apply import check_keep
from layerdrop.core.arch import find_layers
from layerdrop.cut.prune import prune, view
from layerdrop.errors import InputError

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel

__all__ = ["GREEDY_BELOW", "Generation", "adapt_draft_tokens", "generate"]

GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily, sampling's limit as the temperature goes to 0: dividing the
logits by a temperature near 0 would overflow to infinities, and their softmax to NaN."""


@dataclass(frozen=True)
class Generation:
    """The result of :func:`generate`."""

    text: str
    """The generated continuation (without the prompt)."""
    new_tokens: int
    """Tokens generated."""
    depth: int
    """Layers the model ran with."""
    prompt_truncated: bool
    """Whether the prompt was cut to fit the context."""
    seconds: float = 0.0
    """Wall-clock time of the generation, prompt processing included."""
    draft_depth: int | None = None
    """Layers of the draft with ``speculative=K`` (``K``); ``None`` without it."""
    drafted: int = 0
    """Tokens the draft proposed (speculative decoding)."""
    accepted: int = 0
    """Of the drafted tokens, those the full model agreed with; ``0 <= accepted <= drafted``."""
    kept: tuple[int, ...] | None = None
    """The model's layers that ran, by their original index (``None``: all of them)."""
    token_ids: tuple[int, ...] = ()
    """The generated tokens (before any stop string is cut): what repetition measures count."""

    @property
    def tokens_per_second(self) -> float:
        """New tokens over :attr:`seconds`."""
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        """:attr:`accepted` over :attr:`drafted` (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0


class _StopOnStrings(StoppingCriteria):
    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_len: int) -> None:
        self.tokenizer, self.stops, self.prompt_len = tokenizer, list(stops), prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        text = self.tokenizer.decode(input_ids[0, self.prompt_len:], skip_special_tokens=True)
        done = any(s in text for s in self.stops)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class _Stream(TextStreamer):
    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.on_text(text)


def adapt_draft_tokens(n: int, all_accepted: bool) -> int:
    """The next round's number of drafted tokens: 2 more after a round whose every drafted token was
    accepted, 1 fewer (at least 1) after one with a rejection; the schedule of HF's
    ``num_assistant_tokens_schedule="heuristic"``.

    >>> adapt_draft_tokens(4, True), adapt_draft_tokens(4, False), adapt_draft_tokens(1, False)
    (6, 3, 1)
    """
    return n + 2 if all_accepted else max(1, n - 1)


@torch.no_grad()
def _speculative(
    model: nn.Module,
    draft: nn.Module,
    ids: torch.Tensor,
    max_new_tokens: int,
    draft_tokens: int,
    emit: Callable[[int], bool],
    adaptive: bool = False,
    no_repeat_ngram: int = 0,
    confidence: float = 0.0,
) -> tuple[int, int]:
    """Greedy decoding of ``model`` after ``ids``, drafted by ``draft``; returns ``(drafted, accepted)``.

    Each new token goes to ``emit``, in order, which returns ``True`` to stop
    (at the latest at the ``max_new_tokens``-th token). With ``adaptive``, ``draft_tokens`` is only
    the first round's count, then :func:`adapt_draft_tokens` sets each next one. With
    ``no_repeat_ngram`` ``n``, no token may complete an ``n``-gram already in the text (HF's
    ``no_repeat_ngram_size``), for the draft and the model alike. A round stops drafting after a
    token the draft gives a probability below ``confidence``, after the ban (HF's
    ``assistant_confidence_threshold``).
    """
    ban = NoRepeatNGramLogitsProcessor(no_repeat_ngram) if no_repeat_ngram else None

    def allowed(logits: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """``logits`` (1, P, V) of the last ``P`` positions of ``seq``, each with the ban after its prefix."""
        if ban is None:
            return logits
        first = seq.shape[1] - logits.shape[1] + 1  # the prefix each position's logits continue
        return torch.stack([ban(seq[:, :first + j], logits[:, j]) for j in range(logits.shape[1])], dim=1)

    # Both caches have a slot per original layer: the draft's blocks fill theirs by their own layer_idx.
    config = cast("PreTrainedModel", model).config
    full_cache, draft_cache = DynamicCache(config=config), DynamicCache(config=config)
    logits = model(input_ids=ids, cache=full_cache, use_cache=True, logits_to_keep=1).logits
    seq = torch.cat([ids, allowed(logits[:, -1:], ids).argmax(-1)], dim=1)  # (1, T + 1)
    drafted = accepted = 0
    if emit(int(seq[0, -1])):
        return drafted, accepted
    while True:
        start = seq.shape[1]
        proposal = seq
        # a round yields at most n + 1 tokens: never draft past max_new_tokens (nor the context)
        n = min(draft_tokens, max_new_tokens - (start - ids.shape[1]) - 1)
        for _ in range(n):
            # the draft catches up on every token it has not seen: after a fully accepted round, two
            new = proposal[:, draft_cache.get_seq_length():]
            logits = draft(input_ids=new, cache=draft_cache, use_cache=True, logits_to_keep=1).logits
            row = allowed(logits[:, -1:], proposal)[:, -1]  # (1, V)
            token = row.argmax(-1, keepdim=True)  # (1, 1)
            proposal = torch.cat([proposal, token], dim=1)
            if confidence and float(row[0].softmax(-1)[token[0, 0]]) < confidence:
                break  # a doubtful draft token: verify what there is rather than build on it
        candidates = proposal[:, start:]  # (1, n)
        # one forward of the full model scores the last kept token and every candidate
        logits = model(input_ids=proposal[:, full_cache.get_seq_length():], cache=full_cache, use_cache=True).logits
        wanted = allowed(logits, proposal).argmax(-1)  # (1, n + 1): the full model's token after each input
        agree = int((candidates == wanted[:, :-1]).int().cumprod(dim=-1).sum())
        drafted, accepted = drafted + candidates.shape[1], accepted + agree
        if adaptive:
            draft_tokens = adapt_draft_tokens(draft_tokens, agree == candidates.shape[1])
        kept = torch.cat([candidates[:, :agree], wanted[:, agree:agree + 1]], dim=1)  # (1, agree + 1)
        seq = torch.cat([seq, kept], dim=1)
        for cache in (full_cache, draft_cache):
            # drop rejected candidates: a cache holds at most ``seq`` without its last token
            extra = cache.get_seq_length() - (seq.shape[1] - 1)
            if extra > 0:
                cache.crop(-extra)
        for token in kept[0].tolist():
            if emit(token):
                return drafted, accepted


def _at_depth(model: nn.Module, kept: tuple[int, ...] | None) -> nn.Module:
    """``model`` (or its ``kept`` layers, checked) in eval mode, never changing ``model`` itself.

    A weight-sharing view where one serves: the model is in eval mode already (a view shares its
    modules, so switching it to eval would switch the caller's model), the view keeps layer 0 (a
    KV cache's length is read there) and the kept layers' per-layer config entries (Qwen2's
    ``layer_types``) match the positions they run at. Otherwise a copy (:func:`prune`), which is
    ours to switch to eval.
    """
    site = find_layers(model)
    training = any(module.training for module in model.modules())
    if kept is None:
        return copy.deepcopy(model).eval() if training else model
    num_layers = len(site.layers)
    config = getattr(model, "config", None)
    per_layer = [getattr(config, name, None) for name in (site.arch.per_layer_config if site.arch else ())]
    shifted = any(isinstance(v, (list, tuple)) and len(v) == num_layers and [v[i] for i in kept] != list(v[:len(kept)])
                  for v in per_layer)
    if training or kept[0] != 0 or shifted:
        return prune(model, keep=kept).eval()
    return view(model, keep=kept)


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    *,
    depth: int | None = None,
    keep: Sequence[int] | None = None,
    strategy: str = "",
    batches: Sequence[dict[str, torch.Tensor]] | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    seed: int = 0,
    on_text: Callable[[str], None] | None = None,
    speculative: int | None = None,
    draft_tokens: int = 4,
    adaptive_draft: bool = False,
    no_repeat_ngram: int = 0,
    draft_confidence: float = 0.0,
) -> Generation:
    """Continue ``prompt`` with ``model`` cut to ``depth`` layers (or to ``keep``).

    ``strategy`` chooses the ``depth`` layers (a row of :data:`layerdrop.cut.strategies.STRATEGIES`;
    empty: the model's own, the layers it was trained to serve, else every-other; ``angular`` and
    ``block-influence`` need calibration ``batches``, and cut a model trained without LayerDrop far
    better than every-other does). The draft of ``speculative`` is :func:`layerdrop.view`'s.

    ``temperature=0`` (or below :data:`GREEDY_BELOW`) is greedy decoding; otherwise sampling with ``top_k`` /
    ``top_p``, seeded by ``seed`` without touching the caller's global RNG.
    ``stop`` strings end generation (the stop string is cut from the text).
    ``on_text`` receives the text as it is produced. A prompt longer than the
    context leaves room for ``max_new_tokens`` by keeping its end; the result
    says so in ``prompt_truncated``.

    ``speculative=K`` decodes greedily with self-speculative decoding: a draft of
    ``K`` of the layers (:func:`layerdrop.view`, the same weights) proposes
    ``draft_tokens`` tokens at a time and the model verifies them, so the text is
    the model's own greedy output, produced in fewer full forwards. With ``depth``
    (or ``keep``) too, the model is cut first and the draft is ``K`` layers of the
    cut model, whose greedy output the result then equals. Speculative decoding
    needs ``temperature=0``; the result reports ``drafted`` and ``accepted``. With
    ``adaptive_draft``, ``draft_tokens`` only starts the count, which then grows by 2 after a
    fully accepted round and shrinks by 1 after a rejection (:func:`adapt_draft_tokens`).
    ``draft_confidence=q`` ends a round's drafting early, after a token the draft gives a
    probability below ``q`` (HF's ``assistant_confidence_threshold``); ``draft_tokens`` is then the
    most a round drafts.

    ``no_repeat_ngram=n`` forbids any token that would repeat an ``n``-gram of the text, prompt
    included (HF's ``no_repeat_ngram_size``): greedy text then cannot loop. Speculative decoding
    applies it to the draft and the verification alike, so its text stays the model's own.

    ``model`` is never changed: at a depth it runs as a weight-sharing view; a model in training
    mode is copied first (switching it to eval would switch the caller's model), so pass
    ``model.eval()`` to avoid the copy.
    """
    arch = find_layers(model).arch
    if arch is None or not arch.decoder or not hasattr(model, "generate"):
        raise InputError(f"{type(model).__name__} is not a text generator (an encoder-only model?): "
                         "generate needs a causal LM such as GPT-2 or a Llama-family model")
    if not prompt.strip():
        raise InputError("the prompt is empty: pass some text to continue")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if speculative is not None and temperature >= GREEDY_BELOW:
        raise InputError("speculative decoding here is greedy: use temperature 0 (the default) with speculative")
    if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or draft_tokens < 1:
        raise InputError(f"draft_tokens must be a positive integer, got {draft_tokens!r}")
    if (isinstance(draft_confidence, bool) or not isinstance(draft_confidence, (int, float))
            or not 0 <= draft_confidence < 1):
        raise InputError(f"draft_confidence must be a probability from 0 (off) to below 1, got {draft_confidence!r}")
    if isinstance(no_repeat_ngram, bool) or not isinstance(no_repeat_ngram, int) or no_repeat_ngram < 0:
        raise InputError(f"no_repeat_ngram must be 0 (off) or an n-gram size of at least 1, got {no_repeat_ngram!r}")
    if (adaptive_draft or draft_confidence) and speculative is None:
        option = "adaptive_draft" if adaptive_draft else "draft_confidence"
        raise InputError(f"{option} changes the draft of speculative decoding: pass speculative=K too")
    if depth is not None and keep is None:  # the strategy's layers (the model's own by default)
        from layerdrop.cut.strategies import choose, lookup, own_strategy

        strategy = strategy or own_strategy(model)
        if lookup(strategy).needs_data and any(module.training for module in model.modules()):
            model = copy.deepcopy(model).eval()  # scoring switches to eval: ours, not the caller's
        keep = choose(strategy, model, depth, batches=batches).kept
    kept = None if keep is None else check_keep(keep, len(find_layers(model).layers))
    model = _at_depth(model, kept)
    draft = None
    if speculative is not None:
        num_layers = len(find_layers(model).layers)
        if isinstance(speculative, bool) or not isinstance(speculative, int) or not 1 <= speculative < num_layers:
            raise InputError(f"the speculative draft depth must be smaller than the {num_layers} layers that verify "
                             f"it: an integer from 1 to {num_layers - 1}, got {speculative!r}")
        draft = view(model, speculative)
    ids = tokenizer(prompt, return_tensors="pt").input_ids  # (1, T)
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    truncated = False
    if context is not None:
        room = context - max_new_tokens
        if room < 1:
            raise InputError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in a "
                             f"context of {context} tokens")
        if ids.shape[1] > room:
            ids, truncated = ids[:, -room:], True
    begin = time.perf_counter()
    if draft is not None:
        result = _generate_speculative(model, draft, tokenizer, ids, truncated, begin, max_new_tokens=max_new_tokens,
                                       draft_tokens=draft_tokens, stop=stop, on_text=on_text, adaptive=adaptive_draft,
                                       no_repeat_ngram=no_repeat_ngram, confidence=draft_confidence)
        return dataclasses.replace(result, kept=kept)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "use_cache": True,
                              "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                              else tokenizer.eos_token_id,
                              "no_repeat_ngram_size": no_repeat_ngram}  # 0 overrides the model's generation_config
    if temperature >= GREEDY_BELOW:
        kwargs.update(do_sample=True, temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0)
    else:
        kwargs.update(do_sample=False)
    if stop:
        kwargs["stopping_criteria"] = StoppingCriteriaList([_StopOnStrings(tokenizer, stop, ids.shape[1])])
    if on_text is not None:
        kwargs["streamer"] = _Stream(tokenizer, on_text)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        out = cast("GenerationMixin", model).generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    new = out[0, ids.shape[1]:]
    text = _cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), stop)
    return Generation(text=text, new_tokens=int(new.shape[0]), depth=len(find_layers(model).layers),
                      prompt_truncated=truncated, seconds=time.perf_counter() - begin, kept=kept,
                      token_ids=tuple(new.tolist()))


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    for s in stop:
        if s in text:
            text = text[: text.index(s)]
    return text


def _generate_speculative(
    model: nn.Module,
    draft: nn.Module,
    tokenizer: Any,
    ids: torch.Tensor,
    truncated: bool,
    begin: float,
    *,
    max_new_tokens: int,
    draft_tokens: int,
    stop: Sequence[str],
    on_text: Callable[[str], None] | None,
    adaptive: bool = False,
    no_repeat_ngram: int = 0,
    confidence: float = 0.0,
) -> Generation:
    """:func:`generate`'s speculative path; ends where HF ``generate`` would (EOS, a stop string, the length)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    streamer = _Stream(tokenizer, on_text) if on_text is not None else None
    if streamer is not None:
        streamer.put(ids)  # the prompt, which it skips
    new: list[int] = []

    def emit(token: int) -> bool:
        new.append(token)
        if streamer is not None:
            streamer.put(torch.tensor([token]))
        text = tokenizer.decode(new, skip_special_tokens=True) if stop else ""
        return token in eos_ids or len(new) >= max_new_tokens or any(s in text for s in stop)

    drafted, accepted = _speculative(model, draft, ids, max_new_tokens, draft_tokens, emit, adaptive, no_repeat_ngram,
                                      confidence)
    if streamer is not None:
        streamer.end()
    text = _cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), stop)
    return Generation(text=text, new_tokens=len(new), depth=len(find_layers(model).layers),
                      prompt_truncated=truncated, seconds=time.perf_counter() - begin,
                      draft_depth=len(find_layers(draft).layers), drafted=drafted, accepted=accepted,
                      token_ids=tuple(new))
