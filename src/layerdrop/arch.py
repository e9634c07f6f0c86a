"""Where each architecture keeps its residual blocks: one table, one lookup.

Supporting a new architecture means adding a row to :data:`ARCHITECTURES`.
Any other model works when the caller names its ``nn.ModuleList`` of blocks,
e.g. ``layers="encoder.blocks"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["ARCHITECTURES", "Arch", "LayerSite", "arch_for", "find_layers"]


@dataclass(frozen=True)
class Arch:
    """How one family of Hugging Face models is laid out."""

    model_types: tuple[str, ...]
    """``config.model_type`` values this row covers."""

    layers: str
    """Attribute path of the ``nn.ModuleList`` of blocks, relative to the base model."""

    decoder: bool
    """Whether the model generates text (has a causal LM head and a KV cache)."""

    per_layer_config: tuple[str, ...] = ()
    """Config attributes holding one entry per layer; pruning slices them."""


ARCHITECTURES: tuple[Arch, ...] = (
    Arch(("bert", "roberta", "xlm-roberta"), layers="encoder.layer", decoder=False),
    Arch(("distilbert",), layers="transformer.layer", decoder=False),
    Arch(("gpt2",), layers="h", decoder=True),
    Arch(("llama", "mistral", "qwen2"), layers="layers", decoder=True, per_layer_config=("layer_types",)),
)
"""The architectures found automatically."""


@dataclass(frozen=True)
class LayerSite:
    """A model's block list, found."""

    path: str
    """Dotted path from the model to the ``nn.ModuleList``, e.g. ``"bert.encoder.layer"``."""

    owner: nn.Module
    """The module that holds the list and loops over it in its ``forward``."""

    layers: nn.ModuleList
    """The blocks themselves."""

    arch: Arch | None
    """The table row used, or ``None`` for a caller-given path."""


def arch_for(model: nn.Module) -> Arch | None:
    """The table row for ``model.config.model_type``, if any."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    return None


def _module_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n and len(m) > 0]


def _candidates_hint(model: nn.Module) -> str:
    found = _module_lists(model)
    if not found:
        return "This model contains no non-empty nn.ModuleList."
    listed = ", ".join(f"{n!r} ({len(m)} x {type(m[0]).__name__})" for n, m in found[:8])
    return f"ModuleLists found in this model: {listed}."


def find_layers(model: nn.Module, layers: str | None = None) -> LayerSite:
    """Find the block list of ``model``: from the table, or at the path ``layers``.

    Wrappers that add a prefix (a task head, PEFT, DDP's ``module.``) are
    looked through: the table's path is matched as a suffix of module names.
    """
    name = type(model).__name__
    if layers is not None:
        try:
            found = model.get_submodule(layers)
        except AttributeError:
            raise ValueError(
                f"{name} has no submodule {layers!r}. {_candidates_hint(model)}"
            ) from None
        if not isinstance(found, nn.ModuleList):
            raise ValueError(
                f"{layers!r} in {name} is a {type(found).__name__}, not an nn.ModuleList of blocks. "
                f"{_candidates_hint(model)}"
            )
        path, arch = layers, arch_for(model)
    else:
        arch = arch_for(model)
        if arch is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            raise ValueError(
                f"layerdrop does not know where {name} (model_type={model_type!r}) keeps its layers. "
                f"Pass the attribute path of its nn.ModuleList of residual blocks, e.g. "
                f"layerdrop.apply(model, rate=0.2, layers='encoder.blocks'). {_candidates_hint(model)}"
            )
        matches = [(n, m) for n, m in model.named_modules()
                   if isinstance(m, nn.ModuleList) and (n == arch.layers or n.endswith("." + arch.layers))]
        if len(matches) != 1:
            raise ValueError(
                f"expected one {arch.layers!r} block list in {name}, found {len(matches)}; "
                f"pass layers='...' to choose. {_candidates_hint(model)}"
            )
        path, found = matches[0]
    if len(found) == 0:
        raise ValueError(f"{name} has no layers: {path!r} is an empty nn.ModuleList")
    owner_path, _, _ = path.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    return LayerSite(path=path, owner=owner, layers=found, arch=arch)
