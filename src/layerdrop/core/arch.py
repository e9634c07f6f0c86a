"""Where each architecture keeps its residual blocks: one table, one lookup.

Supporting a new architecture means adding a row to :data:`ARCHITECTURES`.
Any other model works when the caller names its ``nn.ModuleList`` of blocks,
e.g. ``layers="encoder.blocks"`` (whole layers only: the finer granularities
need the ``sublayers`` and ``head_proj`` columns of a row).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from layerdrop.errors import InputError

__all__ = ["ARCHITECTURES", "Arch", "LayerSite", "SKIPPED", "Sublayer", "arch_for", "find_layers", "first_input_name"]

SKIPPED = ("identity", "zeros")
"""What a skipped sublayer can return; see :attr:`Sublayer.skipped`."""


@dataclass(frozen=True)
class Sublayer:
    """One part of a block that ``granularity="sublayer"`` drops on its own."""

    name: str
    """What it is: ``"attention"`` or ``"feed_forward"``."""

    path: str
    """Attribute path inside a block. A submodule (its ``forward`` is gated) or a method of
    the block or of a submodule (that method is gated), e.g. BERT's ``"feed_forward_chunk"``."""

    skipped: str
    """What a skipped one returns instead of being called. ``"identity"``: its first input,
    for a sublayer that adds its own residual (and LayerNorm), so that it returns the
    next hidden states. ``"zeros"``: zeros shaped like its first input, for a sublayer
    whose block adds the residual outside it."""

    returns_tuple: bool = False
    """Whether it returns a tuple such as ``(attn_output, attn_weights)``; a skipped one
    then returns ``(value, None)``."""

    modules: tuple[str, ...] = ()
    """Paths inside the block of the submodules whose compute it covers, when ``path`` is a
    method; empty means the submodule at ``path``."""

    def __post_init__(self) -> None:
        if self.skipped not in SKIPPED:
            raise InputError(f"Sublayer {self.name!r}: skipped={self.skipped!r} must be one of {SKIPPED}")

    @property
    def covers(self) -> tuple[str, ...]:
        """Paths of the submodules that do not run when it is skipped."""
        return self.modules or (self.path,)


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

    sublayers: tuple[Sublayer, ...] = ()
    """The parts of a block dropped independently by ``granularity="sublayer"``;
    empty if that granularity is not supported."""

    head_proj: str | None = None
    """Path inside a block of the attention output projection, whose input is the heads'
    outputs side by side, ``(B, T, heads * head_dim)``; ``None`` if
    ``granularity="head"`` is not supported."""

    num_heads: str = "num_attention_heads"
    """Config attribute holding the number of attention heads."""


# Sublayers as the transformers 5 modeling code lays them out:
# - BERT family: BertAttention returns (LayerNorm(dense(ctx) + input), attn_weights), its own
#   residual and LayerNorm; feed_forward_chunk(x) returns LayerNorm(output(intermediate(x)) + x).
# - DistilBERT: the block computes sa_layer_norm(attention(x)[0] + x), then
#   output_layer_norm(ffn(h) + h): the residuals and LayerNorms are outside the sublayers.
# - GPT-2 and Llama family (pre-norm): the block computes x + attn(ln_1(x))[0], then
#   h + mlp(ln_2(h)): the residuals are outside, the norms run before each sublayer.
_BERT_SUBLAYERS = (
    Sublayer("attention", "attention", skipped="identity", returns_tuple=True),
    Sublayer("feed_forward", "feed_forward_chunk", skipped="identity", modules=("intermediate", "output")),
)


def _residual_outside(attention: str, feed_forward: str) -> tuple[Sublayer, ...]:
    return (
        Sublayer("attention", attention, skipped="zeros", returns_tuple=True),
        Sublayer("feed_forward", feed_forward, skipped="zeros"),
    )


ARCHITECTURES: tuple[Arch, ...] = (
    Arch(("bert", "roberta", "xlm-roberta"), layers="encoder.layer", decoder=False,
         sublayers=_BERT_SUBLAYERS, head_proj="attention.output.dense"),
    Arch(("distilbert",), layers="transformer.layer", decoder=False,
         sublayers=_residual_outside("attention", "ffn"), head_proj="attention.out_lin"),
    Arch(("gpt2",), layers="h", decoder=True,
         sublayers=_residual_outside("attn", "mlp"), head_proj="attn.c_proj"),
    Arch(("llama", "mistral", "qwen2"), layers="layers", decoder=True, per_layer_config=("layer_types",),
         sublayers=_residual_outside("self_attn", "mlp"), head_proj="self_attn.o_proj"),
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
            raise InputError(
                f"{name} has no submodule {layers!r}. {_candidates_hint(model)}"
            ) from None
        if not isinstance(found, nn.ModuleList):
            raise InputError(
                f"{layers!r} in {name} is a {type(found).__name__}, not an nn.ModuleList of blocks. "
                f"{_candidates_hint(model)}"
            )
        path, arch = layers, arch_for(model)
    else:
        arch = arch_for(model)
        if arch is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            raise InputError(
                f"layerdrop does not know where {name} (model_type={model_type!r}) keeps its layers. "
                f"Pass the attribute path of its nn.ModuleList of residual blocks, e.g. "
                f"layerdrop.apply(model, rate=0.2, layers='encoder.blocks'). {_candidates_hint(model)}"
            )
        matches = [(n, m) for n, m in model.named_modules()
                   if isinstance(m, nn.ModuleList) and (n == arch.layers or n.endswith("." + arch.layers))]
        if len(matches) != 1:
            raise InputError(
                f"expected one {arch.layers!r} block list in {name}, found {len(matches)}; "
                f"pass layers='...' to choose. {_candidates_hint(model)}"
            )
        path, found = matches[0]
    if len(found) == 0:
        raise InputError(f"{name} has no layers: {path!r} is an empty nn.ModuleList")
    owner_path, _, _ = path.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    return LayerSite(path=path, owner=owner, layers=found, arch=arch)


def first_input_name(function: Callable[..., Any]) -> str:
    """Name of the first positional parameter of ``function`` other than ``self`` (a ``forward``,
    bound or not): the hidden states a block or sublayer takes; ``"hidden_states"`` if none.

    >>> first_input_name(nn.Linear(2, 2).forward), first_input_name(nn.Linear.forward)
    ('input', 'input')
    """
    for param in inspect.signature(function).parameters.values():
        if param.name != "self" and param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            return param.name
    return "hidden_states"
