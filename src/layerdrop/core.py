"""LayerDrop: structured dropout of whole transformer layers.

Fan, Grave & Joulin, "Reducing Transformer Depth on Demand with Structured
Dropout", ICLR 2020, arXiv:1909.11556.

What is dropped: in training mode, each residual block (one whole transformer
layer: attention and feed-forward) is skipped for the *whole batch* with its
own probability. A skipped block is never called; it passes its input hidden
states through unchanged, so its compute is actually saved. In eval mode every
block runs. Outputs are not rescaled, as in the paper; ``rescale=True`` opts
into stochastic-depth scaling of the kept blocks' updates instead. With
``pattern="every-other"`` the number of kept blocks is drawn the same way, but
they are the ones :func:`layerdrop.every_other` keeps at that depth.

Finer granularities, from the paper's comparison of structured dropouts (see
``docs/granularity.md``): ``granularity="sublayer"`` drops each layer's
attention and feed-forward sublayers independently (a dropped one is never
called); ``granularity="head"`` zeroes attention heads (everything still runs,
no compute is saved). Where the sublayers and head projections are comes from
the architecture table.

How: :func:`apply` puts a gate in each block's instance ``forward`` (and in each
sublayer's, or a pre-hook on each attention output projection), and
forward hooks on the model and on the module that loops over the blocks. The
outermost of them to start a forward draws one keep-mask from a dedicated
``torch.Generator`` (never Python's ``random``, never the global RNG); the
gates read it. Module types, parameters
and state-dict keys stay exactly as they were, so ``save_pretrained`` writes a
vanilla checkpoint. The settings go into ``model.config.layerdrop_settings``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .arch import LayerSite, Sublayer, find_layers
from .depths import every_other
from .rates import layer_rates, validate_rates

__all__ = [
    "CONFIG_KEY",
    "GRANULARITIES",
    "PATTERNS",
    "LayerDropSettings",
    "LayerDropState",
    "apply",
    "arrange_like_pruning",
    "check_keep",
    "check_pattern",
    "find_state",
    "get_rng_state",
    "only_layers",
    "remove",
    "sample_keep_mask",
    "sample_part_mask",
    "scale_rates",
    "set_rng_state",
    "state_of",
    "uninstall",
]

CONFIG_KEY = "layerdrop_settings"
"""Name of the ``model.config`` attribute that records the settings."""

DEFAULT_RATE = 0.2
"""The rate used when none is given or recorded (the paper's usual choice)."""

GRANULARITIES = ("layer", "sublayer", "head")
"""What LayerDrop can drop: whole layers, attention / feed-forward sublayers, or attention heads."""

PATTERNS = ("random", "every-other")
"""Which layers a training forward keeps: each independently, or as many, placed as pruning places them."""


def check_pattern(pattern: str) -> None:
    """Raise ``ValueError`` unless ``pattern`` is one of :data:`PATTERNS`."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern={pattern!r}: not one of {', '.join(map(repr, PATTERNS))}")


@dataclass(frozen=True)
class LayerDropSettings:
    """How a model drops layers. Change with ``dataclasses.replace``."""

    rates: tuple[float, ...]
    """Drop probability of each layer, in [0, 1), one per layer."""

    seed: int = 0
    """Seed of the dedicated mask generator. Equal seeds give equal masks on every process."""

    min_layers: int = 1
    """Fewest layers a training forward runs. If a draw keeps fewer, the dropped layers
    that came closest to being kept are run too. 0 allows dropping every layer."""

    rescale: bool = False
    """Stochastic-depth scaling: in training, scale each kept layer's update
    ``output - input`` by ``1 / (1 - rate)``. Off by default; the paper does not rescale."""

    layers: str | None = None
    """Attribute path of the block list, or ``None`` to find it from the architecture table."""

    granularity: str = "layer"
    """What is dropped, each with its layer's rate. ``"layer"``: whole layers (the paper's
    LayerDrop). ``"sublayer"``: each layer's attention and feed-forward sublayers,
    independently; a dropped one is never called. ``"head"``: each attention head is zeroed
    independently; everything still runs, so no compute is saved. The finer two need an
    architecture-table row that describes them (not a ``layers=`` path)."""

    pattern: str = "random"
    """Which layers a training forward keeps. ``"random"``: each layer independently with its
    rate (the paper). ``"every-other"``: as many layers as that draw keeps, but placed where
    :func:`layerdrop.every_other` places them, so training samples exactly the sub-networks
    that pruning to each depth keeps. Whole layers only."""

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity={self.granularity!r} is not one of {', '.join(map(repr, GRANULARITIES))}"
            )
        check_pattern(self.pattern)
        if self.pattern != "random" and self.granularity != "layer":
            raise ValueError(f"pattern={self.pattern!r} places whole layers; it needs granularity='layer', "
                             f"not {self.granularity!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, as written into ``model.config``."""
        return {**dataclasses.asdict(self), "rates": list(self.rates)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerDropSettings:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown LayerDrop setting(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**{**d, "rates": tuple(d["rates"])})


def sample_keep_mask(rates: torch.Tensor, generator: torch.Generator, min_layers: int = 0) -> torch.Tensor:
    """Draw which layers run: ``keep[i]`` is True with probability ``1 - rates[i]``.

    Always draws exactly ``len(rates)`` numbers, so generators that start equal
    stay equal. If fewer than ``min_layers`` are kept, the dropped layers whose
    draws came closest to their rate are kept as well.
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


class LayerDropState:
    """The live LayerDrop state of one model: settings, generator and current masks."""

    def __init__(self, settings: LayerDropSettings, path: str, parts: int = 1) -> None:
        self.settings = settings
        self.path = path
        """Path of the block list inside the model."""
        self.parts = parts
        """Sublayers or heads per layer that masks are drawn over; 1 for granularity ``"layer"``."""
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(settings.seed)
        self.draws = 0
        """Training forwards sampled so far."""
        self._rates = torch.tensor(settings.rates, dtype=torch.float64)
        self.keep: tuple[bool, ...] = (True,) * len(settings.rates)
        """Per layer, whether it runs (any part of it) in the current (or last) forward."""
        self.sublayer_keep: tuple[tuple[bool, ...], ...] | None = None
        """Granularity ``"sublayer"``: per layer, which sublayers run, in the order of the
        architecture's ``sublayers``. ``None`` at other granularities."""
        self.head_keep: tuple[tuple[bool, ...], ...] | None = None
        """Granularity ``"head"``: per layer, which attention heads are kept (not zeroed).
        ``None`` at other granularities."""
        self.head_scale: torch.Tensor | None = None
        """Granularity ``"head"``, training forwards: ``(L, H)`` multipliers of the heads'
        outputs (0 for a dropped head). ``None`` when every head passes unchanged."""
        self.fixed: tuple[bool, ...] | None = None
        """A mask forced by :func:`only_layers`, used in train and eval mode alike."""
        self.depth = 0
        """How many hooked modules are inside their forward; the mask is drawn at 0 -> 1."""
        self.scale = 1.0
        """Multiplier on the configured rates, set by a schedule (see :func:`scale_rates`)."""
        self.layers_run = 0
        """Layers run (any part of them), summed over all training forwards sampled so far (for logging)."""
        self.learner: Any = None
        """A :class:`layerdrop.learned.LearnedRates` that sets the rates of every sampled
        forward and learns them (the paper's data-driven pruning), or ``None``."""
        self.sampled = False
        """Whether the current (or last) forward's mask was drawn (training, no fixed mask)."""
        self._set_parts(None)

    def begin_forward(self, training: bool) -> None:
        """Set the masks for the forward that is starting."""
        self.sampled = self.fixed is None and training
        if self.sampled:
            rates = self.learner.rates(self.scale) if self.learner is not None else self._rates * self.scale
            granularity = self.settings.granularity
            if granularity == "layer":
                keep = sample_keep_mask(rates, self.generator, self.settings.min_layers)
                if self.settings.pattern == "every-other":
                    keep = arrange_like_pruning(keep)
                self.keep = tuple(keep.tolist())
            else:
                parts = sample_part_mask(rates, self.parts, self.generator, self.settings.min_layers,
                                         min_parts=1 if granularity == "head" else 0)
                self.keep = tuple(parts.any(1).tolist())
                self._set_parts(parts, rates)
            self.draws += 1
            self.layers_run += sum(self.keep)
        else:
            self.keep = self.fixed if self.fixed is not None else (True,) * len(self.settings.rates)
            self._set_parts(None)

    def _set_parts(self, parts: torch.Tensor | None, rates: torch.Tensor | None = None) -> None:
        """Record a drawn ``(L, parts)`` mask, or ``None`` for every part running as is."""
        granularity = self.settings.granularity
        if granularity == "layer":
            return
        full = parts if parts is not None else torch.ones(len(self.settings.rates), self.parts, dtype=torch.bool)
        as_tuples = tuple(tuple(row) for row in full.tolist())
        if granularity == "sublayer":
            self.sublayer_keep = as_tuples
            return
        self.head_keep = as_tuples
        self.head_scale = None
        if parts is not None:
            scale = parts.to(torch.float64)  # (L, H)
            if self.settings.rescale:
                scale = scale / (1.0 - rates)[:, None]
            if not bool((scale == 1.0).all()):  # else the hooks have nothing to do
                self.head_scale = scale

    def runs(self, index: int, part: int | None = None) -> bool:
        """Whether layer ``index`` (or its sublayer ``part``) runs in the current forward."""
        if part is None:
            return self.keep[index]
        return self.sublayer_keep[index][part]

    @property
    def rates(self) -> tuple[float, ...]:
        """The rates in force now: the configured (or learned) ones times :attr:`scale`."""
        if self.learner is not None:
            return tuple(self.learner.rates(self.scale).tolist())
        return tuple(r * self.scale for r in self.settings.rates)

    def __deepcopy__(self, memo: dict[int, Any]) -> LayerDropState:
        new = LayerDropState(self.settings, self.path, self.parts)
        new.generator.set_state(self.generator.get_state())
        new.draws, new.keep, new.fixed = self.draws, self.keep, self.fixed
        new.scale, new.layers_run = self.scale, self.layers_run
        new.learner, new.sampled = self.learner, self.sampled  # the scorer is not part of the model
        new.sublayer_keep, new.head_keep = self.sublayer_keep, self.head_keep
        new.head_scale = None if self.head_scale is None else self.head_scale.clone()
        return new


def _first_parameter(function: Any) -> str:
    for param in inspect.signature(function).parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            return param.name
    return "hidden_states"


class _Gate:
    """Gates one callable: a block's ``forward``, a sublayer's ``forward`` or a block method.

    Installed as the instance attribute of the same name on ``owner``, so that Python finds
    it before the class attribute. Calls the callable, or skips it without calling it and
    returns what a skipped one returns: its first input (``"identity"``) or zeros shaped like
    it (``"zeros"``), as ``(value, None)`` if the callable returns a tuple.
    """

    def __init__(self, owner: nn.Module, name: str, state: LayerDropState, index: int,
                 part: int | None = None, sublayer: Sublayer | None = None) -> None:
        self.owner = owner
        self.name = name
        self.state = state
        self.index = index
        """The layer it belongs to."""
        self.part = part
        """Which of the layer's sublayers it gates; ``None`` for the whole layer."""
        self.skipped = sublayer.skipped if sublayer is not None else "identity"
        self.returns_tuple = sublayer.returns_tuple if sublayer is not None else False
        self.rescales = state.settings.granularity == ("layer" if part is None else "sublayer")
        """Whether it is the unit being dropped, so ``rescale=True`` scales its update."""
        self.inner = owner.__dict__.get(name)
        """A callable some other library had already put on the instance (e.g. accelerate's hooks)."""
        self.input = _first_parameter(getattr(type(owner), name).__get__(owner))
        """Name of the class callable's first parameter: the hidden states a skipped one passes on."""

    def _wrapped(self) -> Any:
        if self.inner is not None:
            return self.inner
        return getattr(type(self.owner), self.name).__get__(self.owner)

    @property
    def __signature__(self) -> inspect.Signature | None:
        """The gated callable's signature, for code that inspects it (e.g. transformers'
        ``apply_chunking_to_forward`` counts the parameters of ``feed_forward_chunk``)."""
        try:
            return inspect.signature(self._wrapped())
        except (TypeError, ValueError):
            return None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs[self.input]
        state = self.state
        runs = state.runs(self.index, self.part)
        if state.learner is not None and state.sampled and self.part is None:
            state.learner.decide(self.index, hidden, runs, state.scale)  # data-driven rates learn from this
        if not runs:
            value = hidden if self.skipped == "identity" else torch.zeros_like(hidden)
            return (value, None) if self.returns_tuple else value
        out = self._wrapped()(*args, **kwargs)
        settings = state.settings
        rate = state.rates[self.index] if settings.rescale else 0.0
        if not (self.rescales and settings.rescale and self.owner.training and rate > 0):
            return out
        first = out[0] if self.returns_tuple else out
        if self.skipped == "identity":
            first = hidden + (first - hidden) / (1.0 - rate)
        else:
            first = first / (1.0 - rate)
        return (first, *out[1:]) if self.returns_tuple else first


class _HeadMask:
    """Forward pre-hook on an attention output projection: zeroes the dropped heads' outputs."""

    def __init__(self, state: LayerDropState, index: int, num_heads: int) -> None:
        self.state = state
        self.index = index
        self.num_heads = num_heads

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        scale = self.state.head_scale
        if scale is None:
            return None
        x = args[0]  # (B, T, H*d)
        if x.shape[-1] % self.num_heads:
            raise ValueError(f"head masking: the input width {x.shape[-1]} of {type(module).__name__} "
                             f"does not split into {self.num_heads} heads")
        mask = scale[self.index].to(device=x.device, dtype=x.dtype)  # (H,)
        heads = x.unflatten(-1, (self.num_heads, -1))  # (B, T, H, d)
        return ((heads * mask[:, None]).flatten(-2), *args[1:])  # (B, T, H*d)


class _BeginPass:
    """Forward pre-hook: the outermost hooked module starting a forward draws the mask."""

    def __init__(self, state: LayerDropState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: Any) -> None:
        if self.state.depth == 0:
            self.state.begin_forward(module.training)
        self.state.depth += 1


class _EndPass:
    """Forward hook, run even if the forward raised: closes what :class:`_BeginPass` opened."""

    def __init__(self, state: LayerDropState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.state.depth -= 1


def state_of(model: nn.Module) -> LayerDropState | None:
    """The live LayerDrop state of ``model``, or ``None`` if LayerDrop is not applied."""
    return model.__dict__.get("layerdrop_state")


def find_state(model: nn.Module) -> tuple[nn.Module, LayerDropState] | None:
    """The (sub)module LayerDrop was applied to and its state, looking inside wrappers
    (DDP, FSDP, a classifier around an encoder); ``None`` if there is none."""
    for module in model.modules():
        state = state_of(module)
        if state is not None:
            return module, state
    return None


def _unsupported(site: LayerSite, granularity: str, why: str) -> ValueError:
    return ValueError(
        f"granularity={granularity!r} is not supported for the blocks at {site.path!r}: {why}. "
        f"Use granularity='layer', which works for any model."
    )


def _sublayer_target(layer: nn.Module, sublayer: Sublayer) -> tuple[nn.Module, str]:
    """The module and attribute name to gate: a submodule's ``forward``, or a method."""
    owner_path, _, attr = sublayer.path.rpartition(".")
    try:
        owner = layer.get_submodule(owner_path) if owner_path else layer
    except AttributeError:
        owner = None
    found = getattr(owner, attr, None)
    if isinstance(found, nn.Module):
        return found, "forward"
    if not callable(found):
        raise ValueError(f"{type(layer).__name__} has no submodule or method {sublayer.path!r} "
                         f"(the {sublayer.name} sublayer of its architecture row)")
    return owner, attr


def _head_projection(layer: nn.Module, path: str) -> nn.Module:
    try:
        return layer.get_submodule(path)
    except AttributeError:
        raise ValueError(f"{type(layer).__name__} has no attention output projection {path!r} "
                         f"(the head_proj of its architecture row)") from None


def _granularity_parts(model: nn.Module, site: LayerSite, granularity: str) -> int:
    """How many parts per layer ``granularity`` draws masks over.

    Raises ``ValueError``, changing nothing, if it is unsupported or a path of the row is missing.
    """
    if granularity == "layer":
        return 1
    arch = site.arch
    if arch is None or not (site.path == arch.layers or site.path.endswith("." + arch.layers)):
        raise _unsupported(site, granularity, "the finer granularities need an architecture-table row "
                           "describing the blocks (see layerdrop.arch.ARCHITECTURES), and a layers= path "
                           "has none")
    if granularity == "sublayer":
        if not arch.sublayers:
            raise _unsupported(site, granularity, f"the {arch.model_types[0]} row has no sublayers column")
        for layer in site.layers:
            for sublayer in arch.sublayers:
                _sublayer_target(layer, sublayer)
        return len(arch.sublayers)
    if arch.head_proj is None:
        raise _unsupported(site, granularity, f"the {arch.model_types[0]} row has no head_proj column")
    num_heads = getattr(getattr(model, "config", None), arch.num_heads, None)
    if not isinstance(num_heads, int) or num_heads < 1:
        raise _unsupported(site, granularity, f"config.{arch.num_heads} gives no number of heads")
    for layer in site.layers:
        _head_projection(layer, arch.head_proj)
    return num_heads


def install(model: nn.Module, settings: LayerDropSettings) -> LayerDropState:
    """Put gates and the mask hooks on `model`; no config record.

    Checks that the granularity is supported and finds every target before changing anything.
    """
    site = find_layers(model, settings.layers)
    parts = _granularity_parts(model, site, settings.granularity)
    state = LayerDropState(settings, site.path, parts)
    gates = []
    for i, layer in enumerate(site.layers):
        gates.append(_Gate(layer, "forward", state, i))
        if settings.granularity == "sublayer":
            for j, sublayer in enumerate(site.arch.sublayers):
                owner, name = _sublayer_target(layer, sublayer)
                gates.append(_Gate(owner, name, state, i, part=j, sublayer=sublayer))
    projections = []
    if settings.granularity == "head":
        projections = [_head_projection(layer, site.arch.head_proj) for layer in site.layers]
    for gate in gates:
        setattr(gate.owner, gate.name, gate)
    for i, projection in enumerate(projections):
        projection.register_forward_pre_hook(_HeadMask(state, i, parts))
    # Hook the model and the module that loops over the blocks: whichever is
    # called first draws the mask, so calling either one directly works.
    for module in {id(model): model, id(site.owner): site.owner}.values():
        module.register_forward_pre_hook(_BeginPass(state))
        module.register_forward_hook(_EndPass(state), always_call=True)
    model.layerdrop_state = state
    return state


def uninstall(model: nn.Module) -> None:
    """Take the gates, hooks and state off ``model``; leave its config record alone."""
    state = state_of(model)
    if state is None:
        return
    site = find_layers(model, state.path)
    for layer in site.layers:
        for module in layer.modules():
            for name, gate in [(n, v) for n, v in vars(module).items() if isinstance(v, _Gate)]:
                if gate.inner is None:
                    delattr(module, name)
                else:
                    setattr(module, name, gate.inner)
            hooks = module._forward_pre_hooks
            for key in [k for k, h in hooks.items() if isinstance(h, _HeadMask)]:
                del hooks[key]
    for module in (model, site.owner):
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, h in hooks.items() if isinstance(h, (_BeginPass, _EndPass))]:
                del hooks[key]
                module._forward_hooks_always_called.pop(key, None)
    del model.layerdrop_state


def _recorded(model: nn.Module) -> dict[str, Any] | None:
    return getattr(getattr(model, "config", None), CONFIG_KEY, None)


def apply(
    model: nn.Module,
    rate: float | None = None,
    *,
    rates: Sequence[float] | None = None,
    per_layer: str = "uniform",
    seed: int | None = None,
    min_layers: int | None = None,
    rescale: bool | None = None,
    layers: str | None = None,
    granularity: str | None = None,
    pattern: str | None = None,
) -> nn.Module:
    """Make ``model`` depth-elastic in place, and return it.

    Args:
        model: A Hugging Face model of a supported architecture, or any module
            whose blocks are given by ``layers``.
        rate: Drop rate, shaped over depth by ``per_layer``.
        rates: One explicit rate per layer instead of ``rate``.
        per_layer: ``"uniform"`` (the paper), ``"linear"`` (stochastic depth) or
            ``"exponential"`` (LayerSkip); see :mod:`layerdrop.rates`.
        seed: Seed of the mask generator (default 0). Equal seeds give equal
            masks on every process, so data-parallel ranks agree.
        min_layers: Fewest layers a training forward runs (default 1).
        rescale: Stochastic-depth scaling of kept layers (default off).
        layers: Attribute path of the ``nn.ModuleList`` of blocks, for
            architectures not in :data:`layerdrop.arch.ARCHITECTURES`.
        granularity: What is dropped (default ``"layer"``): ``"layer"``, ``"sublayer"``
            (attention and feed-forward independently) or ``"head"`` (attention heads
            zeroed; saves no compute). See :attr:`LayerDropSettings.granularity`.
        pattern: Which layers a training forward keeps (default ``"random"``, the paper):
            ``"every-other"`` keeps as many as a random draw, placed as pruning places
            them. See :attr:`LayerDropSettings.pattern`.

    With no ``rate`` and no ``rates``, the settings recorded in
    ``model.config.layerdrop_settings`` are used (re-arming a saved model),
    else a uniform rate of 0.2. Arguments given explicitly override the record.
    Applying again replaces the previous settings, and the generator restarts
    from the seed.
    """
    recorded = _recorded(model)
    base = LayerDropSettings.from_dict(recorded) if recorded else None
    path = layers if layers is not None else (base.layers if base else None)
    site = find_layers(model, path)
    num_layers = len(site.layers)
    if rate is None and rates is None:
        if base is not None:
            resolved = validate_rates(base.rates, num_layers)
        else:
            resolved = layer_rates(num_layers, DEFAULT_RATE, per_layer=per_layer)
    else:
        resolved = layer_rates(num_layers, rate, per_layer=per_layer, rates=rates)
    settings = LayerDropSettings(
        rates=resolved,
        seed=seed if seed is not None else (base.seed if base else 0),
        min_layers=min_layers if min_layers is not None else (base.min_layers if base else 1),
        rescale=rescale if rescale is not None else (base.rescale if base else False),
        layers=path,
        granularity=granularity if granularity is not None else (base.granularity if base else "layer"),
        pattern=pattern if pattern is not None else (base.pattern if base else "random"),
    )
    if not 0 <= settings.min_layers <= num_layers:
        raise ValueError(f"min_layers={settings.min_layers} must be between 0 and the number of layers ({num_layers})")
    _granularity_parts(model, site, settings.granularity)  # fail before the old gates come off
    uninstall(model)
    install(model, settings)
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, CONFIG_KEY, settings.to_dict())
    return model


def remove(model: nn.Module) -> nn.Module:
    """Undo :func:`apply`: remove gates, hook, state and the config record. Returns ``model``."""
    uninstall(model)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)
    return model


def check_keep(keep: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Validate layer indices to keep; return them sorted. Raises ``ValueError``."""
    if isinstance(keep, (str, bytes)) or not isinstance(keep, Sequence):
        raise ValueError(f"keep must be a list of layer indices, got {keep!r}")
    if len(keep) == 0:
        raise ValueError(f"keep is empty: keep at least one of the {num_layers} layers (0..{num_layers - 1})")
    for i in keep:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"layer index {i!r} is not an integer; pass indices like [0, 2, 5]")
        if not 0 <= i < num_layers:
            raise ValueError(f"layer index {i} is out of range: this model has layers 0..{num_layers - 1}")
    dupes = sorted({i for i in keep if list(keep).count(i) > 1})
    if dupes:
        raise ValueError(f"layer indices {dupes} appear more than once in keep={list(keep)}")
    return tuple(sorted(keep))


@contextlib.contextmanager
def only_layers(model: nn.Module, keep: Sequence[int], *, layers: str | None = None) -> Iterator[nn.Module]:
    """Run ``model`` with only the layers ``keep``, in train and eval mode, sharing its weights.

    Nothing is copied. Works whether or not LayerDrop is applied; on exit the
    model is as it was.
    """
    state = state_of(model)
    temporary = state is None
    if temporary:
        path = layers
        num_layers = len(find_layers(model, path).layers)
        state = install(model, LayerDropSettings(rates=(0.0,) * num_layers, layers=path))
    kept = set(check_keep(keep, len(state.settings.rates)))
    previous = state.fixed
    state.fixed = tuple(i in kept for i in range(len(state.settings.rates)))
    try:
        yield model
    finally:
        state.fixed = previous
        if temporary:
            uninstall(model)


def _applied(model: nn.Module) -> LayerDropState:
    state = state_of(model)
    if state is None:
        raise ValueError("LayerDrop is not applied to this model; call layerdrop.apply(model) first")
    return state


def scale_rates(model: nn.Module, factor: float) -> None:
    """Run with ``factor`` times the configured rates, e.g. during a warm-up schedule.

    The configured rates (and the config record) stay as they are; the generator
    is not reset. ``factor`` must be in [0, 1].
    """
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"rate scale factor must be in [0, 1], got {factor!r}")
    _applied(model).scale = float(factor)


def get_rng_state(model: nn.Module) -> dict[str, Any]:
    """The mask generator's state, to save with a training checkpoint."""
    state = _applied(model)
    return {"generator": state.generator.get_state(), "draws": state.draws, "layers_run": state.layers_run}


def set_rng_state(model: nn.Module, rng_state: dict[str, Any]) -> None:
    """Restore :func:`get_rng_state`, so a resumed run draws the same masks."""
    state = _applied(model)
    state.generator.set_state(rng_state["generator"])
    state.draws = int(rng_state["draws"])
    state.layers_run = int(rng_state.get("layers_run", 0))
