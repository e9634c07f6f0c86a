"""Regional compilation: each block's own forward compiled, LayerDrop's gates left outside it.

``torch.compile(model)`` on a model with LayerDrop on traces the gates (Fan et al., 2020, drop
whole blocks at random): each forward's keep-mask becomes a guard, so Dynamo compiles again for
every new mask until its recompile limit (8), and then runs that code eagerly, compiled no more.
:func:`compile_layers` instead compiles the block class's ``forward`` (PyTorch's recipe for
repeated blocks, "regional compilation"): the gate, which decides in Python whether a block is
called at all, is never traced, so masks never recompile, and a skipped block is still never
called. The blocks share that code and their parameters enter the graph as inputs, so one
compilation serves them all, unless the code reads a per-block integer: a decoder's
``layer_idx`` indexes its KV cache, so with a cache each block compiles once (at most as many
compilations as blocks; train without a cache, ``use_cache=False``, for one). Why and how much:
docs/compile.md.
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import Any

import torch
from torch import nn

from layerdrop.errors import InputError

from .arch import find_layers
from .gates import _Gate, is_compiled, state_of

__all__ = ["compile_layers", "is_compiled"]

_OPTIONS = "_layerdrop_compile_options"
"""Attribute of a compiled forward: the ``torch.compile`` options it was compiled with."""

_PER_CALL_LIMIT = "recompile_limit" in inspect.signature(torch.compile).parameters
"""Whether ``torch.compile`` takes its own ``recompile_limit`` (torch 2.13 does; earlier ones do not)."""


def compile_layers(model: nn.Module, *, layers: str | None = None, **options: Any) -> nn.Module:
    """Compile each block's forward of ``model`` in place with ``torch.compile(**options)``; returns ``model``.

    Before or after :func:`layerdrop.apply` (granularity ``"layer"``): the gates call the compiled
    forward, and :func:`layerdrop.remove` leaves it compiled. Module types and state-dict keys do
    not change, and :func:`layerdrop.prune` copies compile with the same code. Calling it again
    with the same options changes nothing. Compilation happens at the first forward. The blocks'
    code may compile up to twice as many times as there are blocks (``torch.compile``'s
    ``recompile_limit``), so that a decoder whose blocks compile one by one (see the module's
    docstring), in training and in eval, stays compiled; Dynamo's global limit is left as it is.

    Args:
        model: The model whose blocks to compile.
        layers: Path of the block list, for architectures outside the table.
        options: Passed to ``torch.compile`` (``backend``, ``mode``, ``dynamic``, ...).

    Raises ``ValueError`` at granularity ``"sublayer"`` or ``"head"`` (their gates are inside the
    blocks, where compiling would trace them), for blocks whose forward another library has
    replaced (e.g. accelerate's hooks), and for blocks compiled before with other options.
    """
    state = state_of(model)
    if state is not None and state.settings.granularity != "layer":
        raise InputError(f"compile_layers compiles whole blocks, and at granularity="
                         f"{state.settings.granularity!r} the gates are inside them, where every mask would "
                         "recompile: use granularity='layer', or compile without LayerDrop's finer masks")
    site = find_layers(model, layers if layers is not None else state.path if state is not None else None)
    targets = []  # (block, gate or None, what its forward is now: None for the class's own)
    for block in site.layers:
        current = block.__dict__.get("forward")
        gate = current if isinstance(current, _Gate) else None
        own = gate.inner if gate is not None else current
        if own is not None and not is_compiled(own):
            raise InputError(f"the forward of a {type(block).__name__} block is replaced by another library "
                             f"({own!r}); compile_layers compiles the class's own forward: compile before adding "
                             "those hooks, or compile the model with torch.compile yourself")
        before = getattr(getattr(own, "__func__", own), _OPTIONS, None)
        if own is not None and before != options:
            raise InputError(f"these blocks are compiled already with {before}, not {options}: "
                             "build the model again to compile it with other options")
        targets.append((block, gate, own))
    compiled: dict[type, Any] = {}  # one compiled function per block class
    for block, gate, own in targets:
        if own is not None:
            continue
        cls = type(block)
        if cls not in compiled:
            compiled[cls] = _compile(cls.forward, options, 2 * len(site.layers))
            setattr(compiled[cls], _OPTIONS, dict(options))
        forward = types.MethodType(compiled[cls], block)  # a bound method: a deep copy binds to the copy
        if gate is not None:
            gate.inner = forward
        else:
            block.forward = forward
    return model


def _compile(forward: Any, options: dict[str, Any], compilations: int) -> Any:
    """``torch.compile(forward, **options)`` allowed at least ``compilations`` compilations (a decoder's
    blocks may each compile once, in training and in eval): through ``torch.compile``'s own
    ``recompile_limit`` where it has one (torch 2.13), else by raising Dynamo's limit while it runs."""
    if _PER_CALL_LIMIT:
        limit = max(options.get("recompile_limit") or 0, compilations)
        return torch.compile(forward, **{**options, "recompile_limit": limit})
    return _with_room(torch.compile(forward, **options), compilations)


def _with_room(compiled: Any, compilations: int) -> Any:
    """``compiled``, called with Dynamo's recompile limit raised to at least ``compilations`` while it
    runs; the limit that other compiled code sees outside these calls is left as it is."""
    @functools.wraps(compiled)  # keeps torch.compile's attributes: is_compiled() still sees it
    def forward(*args: Any, **kwargs: Any) -> Any:
        limit = torch._dynamo.config.recompile_limit
        if limit >= compilations:
            return compiled(*args, **kwargs)
        with torch._dynamo.config.patch(recompile_limit=compilations):
            return compiled(*args, **kwargs)
    return forward
