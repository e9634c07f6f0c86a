"""Which layers a depth keeps: the every-other rule.

Shared by pruning (:func:`layerdrop.prune`, the default choice of layers) and by
LayerDrop's ``pattern="every-other"`` (training the very sub-networks that rule keeps).
"""

from __future__ import annotations

from layerdrop.errors import InputError

__all__ = ["check_depth", "every_other"]


def every_other(num_layers: int, depth: int) -> tuple[int, ...]:
    """Evenly spread layers to keep, always including the first and the last.

    Keeps ``round(j * (L - 1) / (depth - 1))`` for ``j = 0 .. depth - 1``
    (halves round up), and layer 0 alone at depth 1. The paper notes that the
    first and last layers matter most, and on every model we measured
    (``docs/results.md``) keeping both ends was best or near-best while each
    one-ended rule failed badly somewhere. When ``L`` is odd, half depth
    ``(L + 1) / 2`` is exactly every other layer, 0, 2, 4, ..., L - 1; when
    ``L`` is even, an exact every-other set cannot hold both ends, so one gap
    is a layer wider.

    >>> every_other(6, 3), every_other(6, 4), every_other(12, 6), every_other(6, 1)
    ((0, 3, 5), (0, 2, 3, 5), (0, 2, 4, 7, 9, 11), (0,))
    """
    check_depth(depth, num_layers)
    if depth == 1:
        return (0,)
    span, steps = num_layers - 1, depth - 1
    # round half up in integers: floor(j * span / steps + 1/2)
    return tuple((2 * j * span + steps) // (2 * steps) for j in range(depth))


def check_depth(depth: int, num_layers: int) -> None:
    """Raise ``ValueError`` unless ``depth`` is an integer from 1 to ``num_layers``."""
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= num_layers:
        raise InputError(f"depth must be an integer from 1 to {num_layers} (the model's layer count), got {depth!r}")
