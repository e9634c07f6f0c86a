"""The numeric precisions a model can run at: one table, one lookup.

Cutting layers is one way to make a CPU model faster; lowering its precision is another, and
``layerdrop sweep --dtype float32,bfloat16,int8`` measures the two together, depth by precision.
:func:`at_precision` returns the model at a precision as a new model (the given one is never
changed), with the same module tree above the linear layers, so :func:`layerdrop.only_layers` and
:func:`layerdrop.find_layers` work on it as on the original.

>>> sorted(PRECISIONS)
['bfloat16', 'float32', 'int8']
>>> lookup("fp16")
Traceback (most recent call last):
...
ValueError: unknown precision 'fp16'; choose from float32, bfloat16, int8
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from layerdrop.errors import InputError

__all__ = ["PRECISIONS", "Precision", "at_precision", "lookup"]


@dataclass(frozen=True)
class Precision:
    """One row of :data:`PRECISIONS`."""

    name: str
    """What ``--dtype`` calls it."""
    what: str
    """What changes, in a few words."""
    convert: Callable[[nn.Module], nn.Module]
    """Returns the model at this precision; a copy unless nothing changes."""


def _same(model: nn.Module) -> nn.Module:
    return model


def _bfloat16(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(torch.bfloat16)


def _int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every linear layer (GPT-2's ``Conv1D`` ones first become
    ``nn.Linear``, which they are, with the weight transposed)."""
    from torch.ao.quantization import quantize_dynamic

    model = copy.deepcopy(model)
    _conv1d_to_linear(model)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise InputError(f"{type(model).__name__} has no linear layer for int8 dynamic quantization to act on")
    with warnings.catch_warnings():  # torch deprecates torch.ao.quantization in favour of torchao; it still works
        warnings.filterwarnings("ignore", message=r"(?s).*(deprecated|torchao)")
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def _conv1d_to_linear(model: nn.Module) -> None:
    """Replace transformers' ``Conv1D`` (``y = x @ W + b``, W of shape (in, out)) by ``nn.Linear``, in place."""
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                if child._forward_hooks or child._forward_pre_hooks:
                    raise InputError(f"{name} has hooks (LayerDrop's head masking?) that int8 would drop: "
                                     "convert a model without them")
                linear = nn.utils.skip_init(nn.Linear, child.weight.shape[0], child.weight.shape[1])  # no RNG drawn
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())  # (out, in)
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("float32", "as trained", _same),
    Precision("bfloat16", "weights and activations in bfloat16", _bfloat16),
    Precision("int8", "torch's dynamic quantization: int8 linear weights, activations quantized per batch", _int8),
)}
"""Every precision ``--dtype`` accepts, by name."""


def lookup(name: str) -> Precision:
    """The row of :data:`PRECISIONS` called ``name``; a ``ValueError`` listing them otherwise."""
    if name not in PRECISIONS:
        raise InputError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def at_precision(model: nn.Module, name: str) -> nn.Module:
    """``model`` at precision ``name``: the model itself for ``float32``, a converted copy otherwise."""
    return lookup(name).convert(model)
