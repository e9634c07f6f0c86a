"""One frozen mask per forward, drawn by pure functions (the pattern of timm's ``drop_path``).

LayerDrop (Fan, Grave & Joulin, "Reducing Transformer Depth on Demand with Structured
Dropout", ICLR 2020, arXiv:1909.11556) skips whole transformer layers at random in training.
A :class:`Mask` says what one forward drops: whole layers (never called), or at the finer
granularities a layer's attention / feed-forward sublayers (never called) or its attention
heads (zeroed). :func:`draw_mask` draws a training forward's mask from a dedicated
``torch.Generator``; :func:`full_mask` and :func:`fixed_mask` build the masks of forwards
that drop nothing at random (eval, a fixed sub-network). See ``docs/granularity.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .depths import every_other

__all__ = ["Mask", "arrange_like_pruning", "draw_mask", "fixed_mask", "full_mask", "sample_keep_mask",
           "sample_part_mask"]


@dataclass(frozen=True)
class Mask:
    """What one forward runs. Built whole at the forward's start and never changed."""

    keep: tuple[bool, ...]
    """Per layer, whether it runs at all (any part of it)."""

    sublayers: tuple[tuple[bool, ...], ...] | None = None
    """Granularity ``"sublayer"``: per layer, which sublayers run, in the order of the
    architecture row's ``sublayers``. ``None`` at other granularities."""

    heads: tuple[tuple[bool, ...], ...] | None = None
    """Granularity ``"head"``: per layer, which attention heads are kept (not zeroed).
    ``None`` at other granularities."""

    head_scale: torch.Tensor | None = field(default=None, compare=False, repr=False)
    """Granularity ``"head"``: ``(L, H)`` float64 multipliers of the heads' outputs (0 for a
    dropped head, ``1 / (1 - rate)`` for a kept one under ``rescale``). ``None`` when every
    head passes unchanged. Never modified in place."""

    rates: tuple[float, ...] = ()
    """Each layer's drop rate for this forward: those it was drawn with, or for a forward not
    drawn the rates in force in training (a fixed sub-network still rescales by them) and
    zeros in eval. Empty means zeros."""

    sampled: bool = False
    """Whether it was drawn for a training forward (not eval, not a fixed sub-network)."""

    def runs(self, index: int, part: int | None = None) -> bool:
        """Whether layer ``index`` (or its sublayer ``part``) runs."""
        if part is None:
            return self.keep[index]
        assert self.sublayers is not None  # a part is asked only by the gates of granularity "sublayer"
        return self.sublayers[index][part]

    def rate(self, index: int) -> float:
        """Layer ``index``'s drop rate in this forward (0 if none was given)."""
        return self.rates[index] if self.rates else 0.0


def sample_keep_mask(rates: torch.Tensor, generator: torch.Generator, min_layers: int = 0) -> torch.Tensor:
    """Draw which layers run: ``keep[i]`` is True with probability ``1 - rates[i]``.

    Always draws exactly ``len(rates)`` numbers, so generators that start equal
    stay equal. If fewer than ``min_layers`` are kept, the dropped layers whose
    draws came closest to their rate are kept as well.

    >>> rates = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    >>> sample_keep_mask(rates, torch.Generator().manual_seed(0), min_layers=2).tolist()
    [True, True, False]
    """
    u = torch.rand(rates.shape, generator=generator, dtype=torch.float64)
    keep = u >= rates
    short = min_layers - int(keep.sum())
    if short > 0:
        margin = (u - rates).masked_fill(keep, float("-inf"))  # only dropped layers compete
        keep[margin.topk(short).indices] = True
    return keep


def arrange_like_pruning(keep: torch.Tensor) -> torch.Tensor:
    """Keep as many layers as ``keep`` does, at the places :func:`layerdrop.every_other` keeps.

    >>> arrange_like_pruning(torch.tensor([True, True, False, True, False, False])).tolist()
    [True, False, False, True, False, True]
    """
    count = int(keep.sum())
    arranged = torch.zeros_like(keep)
    if count:
        arranged[list(every_other(len(keep), count))] = True
    return arranged


def sample_part_mask(
    rates: torch.Tensor,
    parts: int,
    generator: torch.Generator,
    min_layers: int = 0,
    min_parts: int = 0,
) -> torch.Tensor:
    """Draw which parts (sublayers or heads) of each layer run, as a bool tensor ``(L, parts)``.

    ``keep[i, j]`` is True with probability ``1 - rates[i]``, independently. Always draws
    exactly ``len(rates) * parts`` numbers, so generators that start equal stay equal.
    Then a layer keeping fewer than ``min_parts`` parts also keeps its dropped parts whose
    draws came closest to their rate, and if fewer than ``min_layers`` layers keep any part,
    the empty layers whose best draw came closest keep that part.
    """
    u = torch.rand((len(rates), parts), generator=generator, dtype=torch.float64)  # (L, P)
    margin = u - rates[:, None]  # (L, P), >= 0 where kept
    keep = u >= rates[:, None]  # (L, P)
    short = (min_parts - keep.sum(1)).clamp(min=0)  # (L,)
    if bool(short.any()):
        order = margin.masked_fill(keep, float("-inf")).argsort(1, descending=True)  # (L, P) dropped, closest first
        keep |= order.argsort(1) < short[:, None]  # each part's rank in that order
    layers_short = min_layers - int(keep.any(1).sum())
    if layers_short > 0:
        best, part = margin.max(1)  # (L,), (L,): each layer's closest draw and its part
        rows = best.masked_fill(keep.any(1), float("-inf")).topk(layers_short).indices
        keep[rows, part[rows]] = True
    return keep


def _rows(parts: torch.Tensor) -> tuple[tuple[bool, ...], ...]:
    return tuple(tuple(row) for row in parts.tolist())


def draw_mask(
    rates: Sequence[float] | torch.Tensor,
    generator: torch.Generator,
    *,
    granularity: str = "layer",
    pattern: str = "random",
    min_layers: int = 0,
    parts: int = 1,
    rescale: bool = False,
) -> Mask:
    """Draw a training forward's mask with these per-layer ``rates``.

    Draws ``len(rates)`` numbers from ``generator`` at granularity ``"layer"``, and
    ``len(rates) * parts`` (sublayers or heads per layer) at the others; a ``"head"`` layer
    keeps at least one head. Arguments mean what the :class:`layerdrop.LayerDropSettings`
    fields of the same names mean.

    >>> m = draw_mask([0.0, 0.9, 0.0], torch.Generator().manual_seed(0))
    >>> m.keep, m.sampled
    ((True, False, True), True)
    """
    rates = torch.as_tensor(rates, dtype=torch.float64, device="cpu")  # (L,)
    drawn = tuple(rates.tolist())
    if granularity == "layer":
        keep = sample_keep_mask(rates, generator, min_layers)
        if pattern == "every-other":
            keep = arrange_like_pruning(keep)
        return Mask(keep=tuple(keep.tolist()), rates=drawn, sampled=True)
    kept = sample_part_mask(rates, parts, generator, min_layers, min_parts=1 if granularity == "head" else 0)
    layer_keep = tuple(kept.any(1).tolist())
    if granularity == "sublayer":
        return Mask(keep=layer_keep, sublayers=_rows(kept), rates=drawn, sampled=True)
    scale = kept.to(torch.float64)  # (L, H)
    if rescale:
        scale = scale / (1.0 - rates)[:, None]
    head_scale = None if bool((scale == 1.0).all()) else scale  # all ones: the hooks have nothing to do
    return Mask(keep=layer_keep, heads=_rows(kept), head_scale=head_scale, rates=drawn, sampled=True)


def fixed_mask(keep: Sequence[bool], *, granularity: str = "layer", parts: int = 1,
               rates: Sequence[float] = ()) -> Mask:
    """The mask of a forward that runs exactly the layers ``keep``, each whole; draws nothing.

    >>> fixed_mask((True, False), granularity="sublayer", parts=2).sublayers
    ((True, True), (True, True))
    """
    keep = tuple(bool(k) for k in keep)
    whole = ((True,) * parts,) * len(keep)
    return Mask(keep=keep, sublayers=whole if granularity == "sublayer" else None,
                heads=whole if granularity == "head" else None, rates=tuple(rates))


def full_mask(num_layers: int, *, granularity: str = "layer", parts: int = 1) -> Mask:
    """The mask of an eval forward: every layer runs whole."""
    return fixed_mask((True,) * num_layers, granularity=granularity, parts=parts)
