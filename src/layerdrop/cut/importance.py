"""Importance metrics of layers, read from calibration batches (dicts of model inputs).

- :func:`block_influence`: ShortGPT (Men et al. 2024), how much each layer changes its hidden states.
- :func:`angular_distances`: Gromov et al. 2024, the angle between the input and the output of
  each contiguous block of ``n`` layers.

The strategies that use them are in :mod:`layerdrop.cut.strategies`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from layerdrop.core.arch import find_layers, first_input_name
from layerdrop.errors import InputError

__all__ = ["MIN_CALIBRATION_TOKENS", "angular_distances", "block_influence", "check_calibration"]

MIN_CALIBRATION_TOKENS = 16
"""Fewest real (non-padding) tokens the importance metrics accept over all calibration batches."""

Batch = dict[str, Any]


def _real_tokens(batch: Batch) -> int:
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return int(mask.sum())
    for name in ("input_ids", "inputs_embeds"):
        value = batch.get(name)
        if isinstance(value, torch.Tensor):
            return int(math.prod(value.shape[:2]))
    raise InputError(f"a calibration batch needs input_ids, inputs_embeds or attention_mask; "
                     f"got keys {sorted(batch)}")


def check_calibration(batches: Iterable[Batch] | None) -> list[Batch]:
    """Validate the calibration batches (read once) and return them as a list."""
    hint = (f"pass batches=[dict(input_ids=..., attention_mask=...), ...] with at least "
            f"{MIN_CALIBRATION_TOKENS} real (non-padding) tokens in all")
    if batches is None:
        raise InputError(f"this strategy needs calibration batches: {hint}")
    batches = list(batches)
    if not batches:
        raise InputError(f"the calibration set is empty: {hint}")
    total = sum(_real_tokens(b) for b in batches)
    if total < MIN_CALIBRATION_TOKENS:
        raise InputError(f"the calibration set has {total} real tokens, fewer than the minimum of "
                         f"{MIN_CALIBRATION_TOKENS}: {hint}")
    return batches


def _first(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def _hidden_states(model: nn.Module, batches: list[Batch], layers: str | None
                   ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """Per batch: the hidden states ``h_0..h_L`` (input of each layer, then the last
    layer's output), and per-token weights, 0 at padding.

    Runs forwards without gradients in eval mode: on ``model`` if it is in eval mode, else on a copy (the
    caller's model is never switched); the hooks that read the states are removed after.
    """
    if any(module.training for module in model.modules()):
        model = copy.deepcopy(model).eval()  # scored in eval mode: a copy's, never the caller's model's
    site = find_layers(model, layers)
    num_layers = len(site.layers)
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}

    def hook(index: int, name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            inputs[index] = (args[0] if args else kwargs[name]).detach()
            outputs[index] = _first(output).detach()
        return record

    handles = [layer.register_forward_hook(hook(i, first_input_name(type(layer).forward)), with_kwargs=True)
               for i, layer in enumerate(site.layers)]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in batches:
                inputs.clear()
                outputs.clear()
                moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                model(**moved)
                if len(inputs) < num_layers:
                    missing = sorted(set(range(num_layers)) - set(inputs))
                    raise InputError(f"layers {missing} did not run in the calibration forward")
                states = [inputs[i] for i in range(num_layers)] + [outputs[num_layers - 1]]
                weights = torch.ones(states[0].shape[:-1], device=states[0].device)  # (B, T)
                mask = moved.get("attention_mask")
                if isinstance(mask, torch.Tensor) and mask.shape == weights.shape:
                    weights = mask.to(weights)
                yield states, weights
    finally:
        for handle in handles:
            handle.remove()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1).clamp(-1.0, 1.0)  # (B, T)


def block_influence(model: nn.Module, batches: Iterable[Batch], *, layers: str | None = None
                    ) -> tuple[float, ...]:
    """ShortGPT's Block Influence of each layer (Men et al. 2024), in [0, 2].

    ``BI_i = 1 - mean over real tokens of cos(h_in_i, h_out_i)``: a layer that barely
    changes its hidden states scores near 0. Padding (``attention_mask == 0``) is ignored.
    """
    batches = check_calibration(batches)
    num_layers = len(find_layers(model, layers).layers)
    totals = torch.zeros(num_layers, dtype=torch.float64)
    count = 0.0
    for states, weights in _hidden_states(model, batches, layers):
        for i in range(num_layers):
            totals[i] += float(((1.0 - _cosine(states[i], states[i + 1])) * weights).sum())
        count += float(weights.sum())
    return tuple((totals / count).tolist())


def angular_distances(model: nn.Module, batches: Iterable[Batch], n: int, *,
                      layers: str | None = None) -> tuple[float, ...]:
    """Mean angular distance ``arccos(cos(h_l, h_{l+n})) / pi`` over real tokens, for each
    start ``l = 0..L-n``: between the input of layer ``l`` and the output of layer ``l+n-1``."""
    batches = check_calibration(batches)
    num_layers = len(find_layers(model, layers).layers)
    if not 1 <= n <= num_layers:
        raise InputError(f"block length n must be from 1 to {num_layers}, got {n!r}")
    totals = torch.zeros(num_layers - n + 1, dtype=torch.float64)
    count = 0.0
    for states, weights in _hidden_states(model, batches, layers):
        for start in range(num_layers - n + 1):
            angle = torch.arccos(_cosine(states[start], states[start + n])) / math.pi  # (B, T)
            totals[start] += float((angle * weights).sum())
        count += float(weights.sum())
    return tuple((totals / count).tolist())
