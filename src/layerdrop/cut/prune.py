"""Which layers to keep, and model surgery that keeps only them.

:func:`prune` returns a *new* model with physically fewer blocks: the
parameter count drops, ``config.num_hidden_layers`` and per-layer config lists
are updated, decoder ``layer_idx`` attributes are renumbered so the KV cache
works, and ``config.layerdrop_pruning`` records the original indices kept.
State-dict keys keep their usual form (``...layer.0...``, ``...layer.1...``),
so plain ``transformers`` loads the saved result.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import nn

from layerdrop.core.apply import CONFIG_KEY, check_keep, state_of, uninstall
from layerdrop.core.arch import LayerSite, find_layers
from layerdrop.core.depths import DEPTHS_KEY, layers_at, remove_depth_record, remove_exits_record, renumbered_record
from layerdrop.core.learned import LEARNED_KEY
from layerdrop.errors import InputError
from layerdrop.models.classifier import Classifier, heads_key, key_layers

__all__ = ["PRUNING_KEY", "prune", "view", "with_blocks"]

PRUNING_KEY = "layerdrop_pruning"
"""Name of the ``model.config`` attribute that records a pruning."""


def _renumber(layer: nn.Module, index: int) -> None:
    for module in layer.modules():
        if isinstance(module.__dict__.get("layer_idx"), int):
            module.layer_idx = index  # type: ignore[assignment]  # Module.__setattr__ types values as tensors or modules


def _prune_config(config: Any, keep: tuple[int, ...], num_layers: int, per_layer: tuple[str, ...]) -> None:
    config.num_hidden_layers = len(keep)
    for name in per_layer:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == num_layers:
            setattr(config, name, [values[i] for i in keep])
    previous = getattr(config, PRUNING_KEY, None)
    original = previous["kept_layers"] if previous else list(range(num_layers))
    setattr(config, PRUNING_KEY, {
        "kept_layers": [original[i] for i in keep],
        "original_num_layers": previous["original_num_layers"] if previous else num_layers,
    })
    recorded = getattr(config, CONFIG_KEY, None)
    if recorded:
        setattr(config, CONFIG_KEY, {**recorded, "rates": [recorded["rates"][i] for i in keep]})
    learned = getattr(config, LEARNED_KEY, None)
    if learned and len(learned) == num_layers:
        setattr(config, LEARNED_KEY, [learned[i] for i in keep])
    remove_exits_record(config)  # calibrated against the full depth this cut removes
    if getattr(config, DEPTHS_KEY, None):
        record = renumbered_record(config, keep)
        if record is None:
            remove_depth_record(config)
        else:
            setattr(config, DEPTHS_KEY, record)


def prune(
    model: nn.Module,
    depth: int | None = None,
    *,
    keep: Sequence[int] | None = None,
    layers: str | None = None,
) -> nn.Module:
    """Return a copy of ``model`` with only some of its layers; ``model`` is untouched.

    Args:
        model: The model to cut; LayerDrop may or may not be applied.
        depth: How many layers to keep: those the model was trained to serve at that depth
            (:func:`~layerdrop.core.depths.layers_at`), else every-other.
        keep: The 0-based indices to keep instead (any order; duplicates are an error).
        layers: Path of the block list, for architectures outside the table.

    The copy is a plain model (LayerDrop is not applied to it; ``layerdrop.apply(pruned)``
    re-arms it with the recorded rates of the kept layers). Only the kept blocks are
    copied, so peak memory is the original plus the result.
    """
    state = state_of(model)
    if layers is None and state is not None:
        layers = state.path
    site = find_layers(model, layers)
    num_layers = len(site.layers)
    kept = _kept(num_layers, depth, keep, getattr(model, "config", None))

    pruned = _copy_keeping(model, site.layers, kept)
    uninstall(pruned)
    if isinstance(pruned, Classifier):
        pruned.head, pruned.heads = _heads_keeping(pruned, kept)
    for new_index, layer in enumerate(find_layers(pruned, site.path).layers):
        _renumber(layer, new_index)
    config = getattr(pruned, "config", None)
    if config is not None:
        per_layer = site.arch.per_layer_config if site.arch else ()
        _prune_config(config, kept, num_layers, per_layer)
    return pruned


def _kept(num_layers: int, depth: int | None, keep: Sequence[int] | None, config: Any) -> tuple[int, ...]:
    """The layers of ``depth`` (those ``config`` records for it, else every-other) or ``keep``, exactly one of
    which is given."""
    if depth is not None and keep is None:
        return layers_at(config, num_layers, depth)
    if keep is not None and depth is None:
        return check_keep(keep, num_layers)
    raise InputError("pass exactly one of depth=K or keep=[indices]")


def _copy_keeping(model: nn.Module, blocks: nn.ModuleList, kept: tuple[int, ...]) -> nn.Module:
    """A deep copy of ``model`` whose block list holds copies of the ``kept`` blocks only.

    One deepcopy memo serves the whole copy: the kept blocks are copied first, the block
    list is entered as the new, shorter list, and each dropped block as a placeholder, so
    deepcopy never reaches a dropped block and never sees ``model`` changed.
    """
    memo: dict[int, Any] = {}
    shorter = nn.ModuleList([copy.deepcopy(blocks[i], memo) for i in kept])
    shorter.training = blocks.training  # a new ModuleList starts in training mode
    memo[id(blocks)] = shorter
    dropped = nn.Identity()
    for i, block in enumerate(blocks):
        if i not in kept:
            memo[id(block)] = dropped
    return copy.deepcopy(model, memo)


def view(model: nn.Module, depth: int | None = None, *, keep: Sequence[int] | None = None) -> nn.Module:
    """A view of ``model`` that runs only ``depth`` of its layers (or ``keep``), sharing everything; ``depth``
    keeps the layers the model was trained to serve at it, else every-other, as :func:`prune` does.

    The modules on the path to the block list are shallow copies (so the view can hold its own,
    shorter list); every block, embedding, norm and head is the model's own module, so no
    parameter is copied, and ``model`` is untouched. For generation at a depth and for the
    self-speculative draft; to save a smaller model, use :func:`prune`.

    The blocks keep their ``layer_idx`` and the config still counts every layer, so a KV cache
    has a slot per original layer; its length is read at layer 0, which must be kept
    (:func:`every_other` always keeps it).
    """
    site = find_layers(model)
    num_layers = len(site.layers)
    kept = _kept(num_layers, depth, keep, getattr(model, "config", None))
    if kept[0] != 0:
        raise InputError(f"a view must keep layer 0 (a KV cache's length is read there), got keep={list(kept)}")
    shell = with_blocks(model, [site.layers[i] for i in kept])
    if isinstance(model, Classifier):
        shell._modules["head"], shell._modules["heads"] = _heads_keeping(model, kept)
    return shell


def _heads_keeping(model: Classifier, kept: tuple[int, ...]) -> tuple[nn.Linear, nn.ModuleDict]:
    """The head of the sub-network ``kept`` (its own, if ``model`` has one for those layers, else the shared one),
    and the heads of ``model`` that still apply inside it, keyed by their layers' new numbers; modules shared."""
    new_number = {layer: i for i, layer in enumerate(kept)}
    inside = {}
    for key, head in model.heads.items():
        layers = key_layers(key)
        if layers != kept and all(i in new_number for i in layers):
            inside[heads_key([new_number[i] for i in layers])] = head
    heads = nn.ModuleDict(inside)
    heads.training = model.heads.training  # a new ModuleDict starts in training mode
    return model.head_at(kept), heads


def with_blocks(model: nn.Module, blocks: Sequence[nn.Module], site: LayerSite | None = None) -> nn.Module:
    """A shell of ``model`` whose block list is ``blocks``: the modules on the path to the list are shallow
    copies, everything else (``blocks`` included) is shared, and ``model`` is untouched. :func:`view` passes
    some of the model's own blocks; early exit puts a stand-in for the layers already run before the rest, and
    passes the ``site`` it found once (:func:`layerdrop.core.arch.find_layers` walks every module)."""
    site = site or find_layers(model)
    *parents, leaf = site.path.split(".")
    shell = _shell(model)
    node, original = shell, model
    for name in parents:
        child = original._modules[name]
        assert child is not None  # a module on the path to the block list find_layers found
        original = child
        node._modules[name] = node = _shell(original)
    shorter = node._modules[leaf] = nn.ModuleList(blocks)
    shorter.training = site.layers.training  # not .train(): that would switch the model's own blocks
    return shell


def _shell(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` with its own child, parameter, buffer and hook tables."""
    shell = copy.copy(module)
    for name in ("_modules", "_parameters", "_buffers", "_forward_pre_hooks", "_forward_hooks",
                 "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
        table = module.__dict__.get(name)
        if table is not None:
            shell.__dict__[name] = type(table)(table)
    return shell


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
