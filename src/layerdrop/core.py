"""LayerDrop: structured dropout of whole transformer layers.

Fan, Grave & Joulin, "Reducing Transformer Depth on Demand with Structured
Dropout", ICLR 2020, arXiv:1909.11556.

What is dropped: in training mode, each residual block (one whole transformer
layer: attention and feed-forward) is skipped for the *whole batch* with its
own probability. A skipped block is never called; it passes its input hidden
states through unchanged, so its compute is actually saved. In eval mode every
block runs. Outputs are not rescaled, as in the paper; ``rescale=True`` opts
into stochastic-depth scaling of the kept blocks' updates instead.

How: :func:`apply` puts a gate in each block's instance ``forward``, and
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .arch import find_layers
from .rates import layer_rates, validate_rates

__all__ = [
    "CONFIG_KEY",
    "LayerDropSettings",
    "LayerDropState",
    "apply",
    "check_keep",
    "get_rng_state",
    "only_layers",
    "remove",
    "sample_keep_mask",
    "scale_rates",
    "set_rng_state",
    "state_of",
    "uninstall",
]

CONFIG_KEY = "layerdrop_settings"
"""Name of the ``model.config`` attribute that records the settings."""

DEFAULT_RATE = 0.2
"""The rate used when none is given or recorded (the paper's usual choice)."""


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


class LayerDropState:
    """The live LayerDrop state of one model: settings, generator and current mask."""

    def __init__(self, settings: LayerDropSettings, path: str) -> None:
        self.settings = settings
        self.path = path
        """Path of the block list inside the model."""
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(settings.seed)
        self.draws = 0
        """Training forwards sampled so far."""
        self._rates = torch.tensor(settings.rates, dtype=torch.float64)
        self.keep: tuple[bool, ...] = (True,) * len(settings.rates)
        """The keep-mask of the current (or last) forward."""
        self.fixed: tuple[bool, ...] | None = None
        """A mask forced by :func:`only_layers`, used in train and eval mode alike."""
        self.depth = 0
        """How many hooked modules are inside their forward; the mask is drawn at 0 -> 1."""
        self.scale = 1.0
        """Multiplier on the configured rates, set by a schedule (see :func:`scale_rates`)."""
        self.layers_run = 0
        """Layers run, summed over all training forwards sampled so far (for logging)."""

    def begin_forward(self, training: bool) -> None:
        """Set the mask for the forward that is starting."""
        if self.fixed is not None:
            self.keep = self.fixed
        elif training:
            mask = sample_keep_mask(self._rates * self.scale, self.generator, self.settings.min_layers)
            self.keep = tuple(mask.tolist())
            self.draws += 1
            self.layers_run += sum(self.keep)
        else:
            self.keep = (True,) * len(self.settings.rates)

    @property
    def rates(self) -> tuple[float, ...]:
        """The rates in force now: the configured ones times :attr:`scale`."""
        return tuple(r * self.scale for r in self.settings.rates)

    def __deepcopy__(self, memo: dict[int, Any]) -> LayerDropState:
        new = LayerDropState(self.settings, self.path)
        new.generator.set_state(self.generator.get_state())
        new.draws, new.keep, new.fixed = self.draws, self.keep, self.fixed
        new.scale, new.layers_run = self.scale, self.layers_run
        return new


class _Gate:
    """Installed as a block's ``forward``: runs the block, or skips it without calling it."""

    def __init__(self, layer: nn.Module, index: int, state: LayerDropState) -> None:
        self.layer = layer
        self.index = index
        self.state = state
        self.inner = layer.__dict__.get("forward")
        """A forward some other library had already put on the instance (e.g. accelerate's hooks)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        if not self.state.keep[self.index]:
            return hidden
        forward = self.inner if self.inner is not None else type(self.layer).forward.__get__(self.layer)
        out = forward(*args, **kwargs)
        rate = self.state.settings.rates[self.index] * self.state.scale
        if self.state.settings.rescale and self.layer.training and rate > 0:
            return hidden + (out - hidden) / (1.0 - rate)
        return out


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


def install(model: nn.Module, settings: LayerDropSettings) -> LayerDropState:
    """Put gates and the mask hook on `model`; no validation, no config record."""
    site = find_layers(model, settings.layers)
    state = LayerDropState(settings, site.path)
    for i, layer in enumerate(site.layers):
        layer.forward = _Gate(layer, i, state)
    # Hook the model and the module that loops over the blocks: whichever is
    # called first draws the mask, so calling either one directly works.
    for module in {id(model): model, id(site.owner): site.owner}.values():
        module.register_forward_pre_hook(_BeginPass(state))
        module.register_forward_hook(_EndPass(state), always_call=True)
    model.layerdrop_state = state
    return state


def uninstall(model: nn.Module) -> None:
    """Take the gates, hook and state off ``model``; leave its config record alone."""
    state = state_of(model)
    if state is None:
        return
    site = find_layers(model, state.path)
    for layer in site.layers:
        gate = layer.__dict__.get("forward")
        if isinstance(gate, _Gate):
            if gate.inner is None:
                del layer.forward
            else:
                layer.forward = gate.inner
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

    With no ``rate`` and no ``rates``, the settings recorded in
    ``model.config.layerdrop_settings`` are used (re-arming a saved model),
    else a uniform rate of 0.2. Arguments given explicitly override the record.
    Applying again replaces the previous settings, and the generator restarts
    from the seed.
    """
    recorded = _recorded(model)
    base = LayerDropSettings.from_dict(recorded) if recorded else None
    path = layers if layers is not None else (base.layers if base else None)
    num_layers = len(find_layers(model, path).layers)
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
    )
    if not 0 <= settings.min_layers <= num_layers:
        raise ValueError(f"min_layers={settings.min_layers} must be between 0 and the number of layers ({num_layers})")
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
