"""Text generation at a chosen depth.

``depth=k`` cuts the decoder to ``k`` layers with :func:`layerdrop.prune`
(every-other by default, or ``keep=[...]``) and generates with a KV cache
through Hugging Face ``generate``. Tokens can be streamed as they are produced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from .arch import find_layers
from .prune import prune

__all__ = ["Generation", "generate"]


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


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    *,
    depth: int | None = None,
    keep: Sequence[int] | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    seed: int = 0,
    on_text: Callable[[str], None] | None = None,
) -> Generation:
    """Continue ``prompt`` with ``model`` cut to ``depth`` layers (or to ``keep``).

    ``temperature=0`` is greedy decoding; otherwise sampling with ``top_k`` /
    ``top_p``, seeded by ``seed`` without touching the caller's global RNG.
    ``stop`` strings end generation (the stop string is cut from the text).
    ``on_text`` receives the text as it is produced. A prompt longer than the
    context leaves room for ``max_new_tokens`` by keeping its end; the result
    says so in ``prompt_truncated``.
    """
    arch = find_layers(model).arch
    if arch is None or not arch.decoder or not hasattr(model, "generate"):
        raise ValueError(f"{type(model).__name__} is not a text generator (an encoder-only model?): "
                         "generate needs a causal LM such as GPT-2 or a Llama-family model")
    if not prompt.strip():
        raise ValueError("the prompt is empty: pass some text to continue")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if depth is not None or keep is not None:
        model = prune(model, depth, keep=keep)
    model.eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids  # (1, T)
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    truncated = False
    if context is not None:
        room = context - max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in a "
                             f"context of {context} tokens")
        if ids.shape[1] > room:
            ids, truncated = ids[:, -room:], True
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "use_cache": True,
                              "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                              else tokenizer.eos_token_id}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0)
    else:
        kwargs.update(do_sample=False)
    if stop:
        kwargs["stopping_criteria"] = StoppingCriteriaList([_StopOnStrings(tokenizer, stop, ids.shape[1])])
    if on_text is not None:
        kwargs["streamer"] = _Stream(tokenizer, on_text)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    new = out[0, ids.shape[1]:]
    text = tokenizer.decode(new, skip_special_tokens=True)
    for s in stop:
        if s in text:
            text = text[: text.index(s)]
    return Generation(text=text, new_tokens=int(new.shape[0]), depth=len(find_layers(model).layers),
                      prompt_truncated=truncated)
