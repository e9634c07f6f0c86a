"""The live LayerDrop state of a model and the gates and hooks that :func:`layerdrop.apply` installs.

Each block's instance ``forward`` (and each sublayer's, at granularity ``"sublayer"``) is
replaced by a :class:`_Gate` that calls it or skips it; at granularity ``"head"`` a pre-hook on
each attention output projection zeroes the dropped heads. The outermost hooked module to
start a forward sets the state's one :class:`~layerdrop.core.mask.Mask` for that forward; the gates
read it. Module types, parameters and state-dict keys stay the model's own.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from layerdrop.config.settings import LayerDropSettings
from layerdrop.errors import InputError

from .arch import LayerSite, Sublayer, find_layers, first_input_name
from .mask import Mask, draw_mask, fixed_mask, full_mask

__all__ = ["LayerDropState", "granularity_parts", "install", "is_compiled", "state_of", "uninstall"]


class LayerDropState:
    """The live LayerDrop state of one model: settings, generator and the current forward's mask."""

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
        self.layers_run = 0
        """Layers run (any part of them), summed over all training forwards sampled so far (for logging)."""
        self.scale = 1.0
        """Multiplier on the configured rates, passed in by a schedule through
        :func:`layerdrop.core.apply.scale_rates`."""
        self.fixed: tuple[bool, ...] | None = None
        """A sub-network forced by :func:`layerdrop.only_layers`, used in train and eval mode alike."""
        self.learner: Any = None
        """A :class:`layerdrop.core.learned.RateLearner` that sets the rates of every sampled
        forward and learns them (the paper's data-driven pruning), or ``None``."""
        self.depth = 0
        """How many hooked modules are inside their forward; the mask is set at 0 -> 1."""
        self.mask: Mask = self._full_mask()
        """The current (or last) forward's mask; replaced whole at each forward, never changed."""

    def _full_mask(self) -> Mask:
        return full_mask(len(self.settings.rates), granularity=self.settings.granularity, parts=self.parts)

    @property
    def keep(self) -> tuple[bool, ...]:
        """``mask.keep``, read-only (kept for code written before :attr:`mask`)."""
        return self.mask.keep

    @property
    def rates(self) -> tuple[float, ...]:
        """The rates in force now: the configured (or learned) ones times :attr:`scale`."""
        if self.learner is not None:
            return tuple(self.learner.rates(self.scale).tolist())
        return tuple(r * self.scale for r in self.settings.rates)

    def begin_forward(self, training: bool) -> None:
        """Set the mask of the forward that is starting: drawn in training, else fixed or full."""
        settings = self.settings
        if self.fixed is None and training:
            self.mask = draw_mask(self.rates, self.generator, granularity=settings.granularity,
                                  pattern=settings.pattern, min_layers=settings.min_layers, parts=self.parts,
                                  rescale=settings.rescale)
            self.draws += 1
            self.layers_run += sum(self.mask.keep)
        elif self.fixed is not None:
            self.mask = fixed_mask(self.fixed, granularity=settings.granularity, parts=self.parts,
                                   rates=self.rates if training and settings.rescale else ())
        else:
            self.mask = self._full_mask()

    def __deepcopy__(self, memo: dict[int, Any]) -> LayerDropState:
        new = LayerDropState(self.settings, self.path, self.parts)
        new.generator.set_state(self.generator.get_state())
        new.draws, new.layers_run, new.scale, new.fixed = self.draws, self.layers_run, self.scale, self.fixed
        new.learner = self.learner  # the scorer is not part of the model
        new.mask = self.mask  # frozen, never modified: shared
        return new


class _Gate:
    """Gates one callable: a block's ``forward``, a sublayer's ``forward`` or a block method.

    Installed as the instance attribute of the same name on ``owner``, so that Python finds
    it before the class attribute. Calls the callable, or skips it without calling it and
    returns what a skipped one returns: its first input (``"identity"``) or zeros shaped like
    it (``"zeros"``), as ``(value, None)`` if the callable returns a tuple. Reads the state's
    ``mask`` and ``settings``; for the learner hook also its ``learner`` and ``scale``.
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
        self.input = first_input_name(getattr(type(owner), name).__get__(owner))
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
        mask = state.mask
        runs = mask.runs(self.index, self.part)
        if state.learner is not None and mask.sampled and self.part is None:
            state.learner.decide(self.index, hidden, runs, state.scale)  # data-driven rates learn from this
        if not runs:
            value = hidden if self.skipped == "identity" else torch.zeros_like(hidden)
            return (value, None) if self.returns_tuple else value
        out = self._wrapped()(*args, **kwargs)
        rate = mask.rate(self.index)
        if not (self.rescales and state.settings.rescale and self.owner.training and rate > 0):
            return out
        first = out[0] if self.returns_tuple else out
        if self.skipped == "identity":
            first = hidden + (first - hidden) / (1.0 - rate)
        else:
            first = first / (1.0 - rate)
        return (first, *out[1:]) if self.returns_tuple else first


class _HeadMask:
    """Forward pre-hook on an attention output projection: zeroes the dropped heads' outputs (reads ``mask``)."""

    def __init__(self, state: LayerDropState, index: int, num_heads: int) -> None:
        self.state = state
        self.index = index
        self.num_heads = num_heads

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        scale = self.state.mask.head_scale
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
    """Forward pre-hook: the outermost hooked module starting a forward sets the mask."""

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


def is_compiled(fn: Any) -> bool:
    """Whether ``fn`` (a function or a bound method) is ``torch.compile``'s output."""
    return hasattr(getattr(fn, "__func__", fn), "_torchdynamo_orig_callable")


def state_of(model: nn.Module) -> LayerDropState | None:
    """The live LayerDrop state of ``model``, or ``None`` if LayerDrop is not applied."""
    return model.__dict__.get("layerdrop_state")


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
    if owner is None or not callable(found):  # no owner: nothing found on it either
        raise InputError(f"{type(layer).__name__} has no submodule or method {sublayer.path!r} "
                         f"(the {sublayer.name} sublayer of its architecture row)")
    return owner, attr


def _head_projection(layer: nn.Module, path: str) -> nn.Module:
    try:
        return layer.get_submodule(path)
    except AttributeError:
        raise InputError(f"{type(layer).__name__} has no attention output projection {path!r} "
                         f"(the head_proj of its architecture row)") from None


def granularity_parts(model: nn.Module, site: LayerSite, granularity: str) -> int:
    """How many parts per layer ``granularity`` draws masks over.

    Raises ``ValueError``, changing nothing, if it is unsupported or a path of the row is missing.
    """
    if granularity == "layer":
        return 1
    arch = site.arch
    if arch is None or not (site.path == arch.layers or site.path.endswith("." + arch.layers)):
        raise _unsupported(site, granularity, "the finer granularities need an architecture-table row "
                           "describing the blocks (see layerdrop.core.arch.ARCHITECTURES), and a layers= path "
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
    parts = granularity_parts(model, site, settings.granularity)
    if settings.granularity != "layer" and any(is_compiled(layer.__dict__.get("forward")) for layer in site.layers):
        raise InputError(f"the blocks are compiled (layerdrop.compile_layers), and granularity="
                         f"{settings.granularity!r} would put gates inside the compiled code, where every mask "
                         "recompiles: use granularity='layer' on a compiled model")
    state = LayerDropState(settings, site.path, parts)
    arch = site.arch  # a row, at the finer granularities: granularity_parts refused a site without one
    gates = []
    for i, layer in enumerate(site.layers):
        gates.append(_Gate(layer, "forward", state, i))
        if settings.granularity == "sublayer":
            assert arch is not None
            for j, sublayer in enumerate(arch.sublayers):
                owner, name = _sublayer_target(layer, sublayer)
                gates.append(_Gate(owner, name, state, i, part=j, sublayer=sublayer))
    projections = []
    if settings.granularity == "head":
        assert arch is not None and arch.head_proj is not None  # granularity_parts checked the head_proj column
        projections = [_head_projection(layer, arch.head_proj) for layer in site.layers]
    for gate in gates:
        setattr(gate.owner, gate.name, gate)
    for i, projection in enumerate(projections):
        projection.register_forward_pre_hook(_HeadMask(state, i, parts))
    # Hook the model and the module that loops over the blocks: whichever is
    # called first sets the mask, so calling either one directly works.
    for module in {id(model): model, id(site.owner): site.owner}.values():
        module.register_forward_pre_hook(_BeginPass(state))
        module.register_forward_hook(_EndPass(state), always_call=True)
    model.layerdrop_state = state  # type: ignore[assignment]  # Module.__setattr__ types values as tensors or modules
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
