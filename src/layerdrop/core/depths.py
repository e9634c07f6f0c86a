"""Which layers a depth keeps: the every-other rule, the bottom rule, and the layers a model records.

Shared by pruning (:func:`layerdrop.prune`, the default choice of layers), by LayerDrop's
``pattern="every-other"`` (training the very sub-networks that rule keeps), and by training for
named depths (``layerdrop train --depths``), which records each depth's layers in the model's
config so that every later cut, view, sweep and server keeps the same ones. Torch-free.

>>> from types import SimpleNamespace
>>> config = SimpleNamespace()
>>> record_depths(config, {4: (0, 1, 2, 3), 3: (0, 1, 2)}, "top")
>>> layers_at(config, 6, 3), layers_at(config, 6, 2), layers_at(SimpleNamespace(), 6, 3)
((0, 1, 2), (0, 1), (0, 3, 5))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from layerdrop.errors import InputError

__all__ = ["DEPTHS_KEY", "EXITS_KEY", "RULES", "bottom", "check_depth", "every_other", "layers_at", "parse_depths",
           "record_depths", "recorded_depths", "remove_depth_record", "remove_exits_record", "renumbered_record"]

EXITS_KEY = "layerdrop_exits"
"""Name of the ``model.config`` attribute holding the exits calibrated on those depths (``layerdrop exits``,
:mod:`layerdrop.exits.record`): valid only for the weights and layers they were measured on, so training
and cutting take it off (:func:`remove_exits_record`)."""

DEPTHS_KEY = "layerdrop_depths"
"""Name of the ``model.config`` attribute that records the depths a model was trained to serve:
``{"strategy": name, "kept": {"4": [0, 1, 2, 3], ...}}``."""


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


def parse_depths(text: str, num_layers: int | None = None, option: str = "--depths") -> tuple[int, ...]:
    """Comma-separated depths, deepest first. A word that is not a whole number, a repeat, or a depth outside
    1..``num_layers`` (when given) is an error that names the fix (and ``option``, the setting it came from).

    >>> parse_depths("3, 6,4", 6)
    (6, 4, 3)
    """
    words = [w.strip() for w in text.split(",") if w.strip()]
    try:
        depths = [int(w) for w in words]
    except ValueError:
        raise InputError(f"{option} takes comma-separated whole numbers like 6,4,3, got {text!r}") from None
    if not depths:
        raise InputError(f"{option} names no depth in {text!r}: give some, like 6,4,3")
    repeated = sorted({d for d in depths if depths.count(d) > 1})
    if repeated:
        raise InputError(f"{option} {text!r} names {', '.join(map(str, repeated))} twice: name each depth once")
    top = num_layers if num_layers is not None else max(depths)
    outside = [d for d in depths if not 1 <= d <= top]
    if outside:
        raise InputError(f"{option} {text!r}: {', '.join(map(str, outside))} is outside 1..{top}"
                         + (f" (the model has {num_layers} layers)" if num_layers is not None else "")
                         + ": choose depths from 1 to the model's layer count")
    return tuple(sorted(depths, reverse=True))


def bottom(num_layers: int, depth: int) -> tuple[int, ...]:
    """The first ``depth`` layers (the strategy table's ``top``: the top layers dropped). Nested: depth
    ``k`` continues depth ``j < k``'s computation, which early exit needs.

    >>> bottom(6, 3)
    (0, 1, 2)
    """
    check_depth(depth, num_layers)
    return tuple(range(depth))


RULES: dict[str, Callable[[int, int], tuple[int, ...]]] = {"every-other": every_other, "top": bottom}
"""The layer rules that need no data, by their strategy-table names: (layers, depth) -> kept."""


def recorded_depths(config: Any) -> dict[int, tuple[int, ...]]:
    """The depths ``config`` records as trained, each with its layers (``{}`` when none is recorded)."""
    record = getattr(config, DEPTHS_KEY, None) or {}
    return {int(depth): tuple(kept) for depth, kept in (record.get("kept") or {}).items()}


def layers_at(config: Any, num_layers: int, depth: int) -> tuple[int, ...]:
    """The layers ``depth`` keeps for a model with this ``config``: those it was trained to serve at that
    depth, else its recorded rule's when that rule needs no data, else every-other. A view that runs fewer
    layers than its config counts (:func:`layerdrop.view`) numbers them otherwise: only the rule applies."""
    check_depth(depth, num_layers)
    kept = recorded_depths(config).get(depth)
    if kept is not None and getattr(config, "num_hidden_layers", num_layers) == num_layers:
        return kept
    record = getattr(config, DEPTHS_KEY, None) or {}
    return RULES.get(str(record.get("strategy")), every_other)(num_layers, depth)


def record_depths(config: Any, kept: Mapping[int, Sequence[int]], strategy: str | None) -> None:
    """Write into ``config`` the layers of each depth a model is trained to serve, and the strategy that chose
    them (``None`` when they came from elsewhere)."""
    setattr(config, DEPTHS_KEY, _record(kept, strategy))


def _record(kept: Mapping[int, Sequence[int]], strategy: str | None) -> dict[str, Any]:
    """The JSON form of a depth record: each depth's layers, deepest first, and the strategy when known."""
    record: dict[str, Any] = {"kept": {str(d): list(layers) for d, layers in sorted(kept.items(), reverse=True)}}
    if strategy is not None:
        record["strategy"] = strategy
    return record


def remove_depth_record(config: Any) -> None:
    """Take the depth record off ``config``: a run that does not train named depths must not inherit the
    claim from the model it started from."""
    if getattr(config, DEPTHS_KEY, None) is not None:
        delattr(config, DEPTHS_KEY)


def remove_exits_record(config: Any) -> None:
    """Take the calibrated exits off ``config``: new weights or other layers void what was measured."""
    if getattr(config, EXITS_KEY, None) is not None:
        delattr(config, EXITS_KEY)


def renumbered_record(config: Any, keep: Sequence[int]) -> dict[str, Any] | None:
    """The depth record of ``config`` after cutting to the layers ``keep``: each recorded depth whose layers
    all survive, renumbered; the strategy only while it still gives every one of them. ``None`` when no
    recorded depth survives.

    >>> from types import SimpleNamespace
    >>> config = SimpleNamespace(layerdrop_depths={"strategy": "top", "kept": {"6": [0, 1, 2, 3, 4, 5],
    ...                                            "4": [0, 1, 2, 3], "3": [0, 1, 2]}})
    >>> renumbered_record(config, (0, 1, 2, 3))
    {'kept': {'4': [0, 1, 2, 3], '3': [0, 1, 2]}, 'strategy': 'top'}
    """
    index = {old: new for new, old in enumerate(keep)}
    kept = {d: [index[i] for i in layers] for d, layers in recorded_depths(config).items()
            if all(i in index for i in layers)}
    if not kept:
        return None
    strategy = (getattr(config, DEPTHS_KEY, None) or {}).get("strategy")
    rule = RULES.get(strategy) if strategy is not None else None
    fits = rule is not None and all(list(rule(len(keep), d)) == layers for d, layers in kept.items())
    return _record(kept, strategy if fits else None)
