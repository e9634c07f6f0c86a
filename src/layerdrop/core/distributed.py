"""LayerDrop with data parallelism: DDP (``torchrun``, ``accelerate launch``, HF ``Trainer``) and FSDP2.

Agreement without communication. Each rank draws its keep-masks from its own dedicated
generator (see :mod:`layerdrop.core`), seeded by ``apply(seed=...)``. Ranks that use the same
seed and run the same number of training forwards therefore drop the same layers at every
forward. That covers gradient accumulation (every ``no_sync`` micro-step is a forward on every
rank) and gradient checkpointing: transformers checkpoints a layer's class ``forward``, which
the gate (the instance ``forward``) calls only for a kept layer, so the recomputation in
backward replays the kept layer without reading or drawing a mask.

Skipped layers under DDP. A skipped layer's parameters take no part in the loss, which plain
``DistributedDataParallel`` reports as an error at the next step ("Expected to have finished
reduction in the prior iteration"). LayerDrop needs ``find_unused_parameters=True``; with masks
that agree, a skipped layer is unused on every rank, so DDP leaves its gradient ``None`` and
the optimizer skips it, exactly as in one process. The alternative, a zero-weighted "touch" of
the skipped parameters, was measured slower (``bench/ddp.py``) and changes the optimizer's
semantics (``grad = 0`` instead of ``None``: AdamW still applies momentum and weight decay); see
``docs/distributed.md``. :func:`wrap` builds such a DDP; :func:`configure_trainer` sets up HF
``Trainer`` (``layerdrop.training.callback.attach`` calls it).

Disagreement. Different seeds, settings or numbers of training forwards on different ranks make
the masks differ, and DDP then hangs or averages gradients of different sub-networks. :func:`check_in_sync`
compares a fingerprint of every rank's LayerDrop state with a single all-reduce of eight integers
and raises :class:`RanksOutOfSync` naming the cause; :func:`watch` runs it at the first training
forward and every ``every`` training forwards after that.

FSDP2: ``torch.distributed.fsdp.fully_shard`` works as is, on the whole model or on each layer
too (see ``docs/distributed.md`` for what a skipped sharded layer still costs).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

from layerdrop.errors import InputError

from .apply import LayerDropState, applied, state_of

__all__ = [
    "DEFAULT_CHECK_EVERY",
    "RanksOutOfSync",
    "check_in_sync",
    "check_trainer_setup",
    "configure_trainer",
    "disagreement",
    "fingerprint",
    "reduce_device",
    "reentrant_checkpointing",
    "watch",
    "world_size",
    "wrap",
]

DEFAULT_CHECK_EVERY = 100
"""Training forwards between two agreement checks of :func:`watch` (the first forward is always checked)."""

_BITS = (1 << 62) - 1  # fingerprints fit int64 with room to negate them (min via max of -x)


class RanksOutOfSync(RuntimeError):
    """The ranks' LayerDrop states differ, so they would drop different layers."""


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & _BITS


def fingerprint(state: LayerDropState) -> tuple[int, int, int, int]:
    """What must be equal on every rank: ``(draws, seed, settings digest, generator digest)``.

    The settings digest covers everything but the seed (``min_layers``, granularity, ...) and the
    rates in force now (after a schedule's scale, or learned); the generator digest is a hash of
    its state. Each value fits in 62 bits.
    """
    settings = {k: v for k, v in state.settings.to_dict().items() if k != "seed"}
    settings_digest = _digest(json.dumps([settings, list(state.rates), state.fixed], sort_keys=True).encode())
    generator_digest = _digest(state.generator.get_state().numpy().tobytes())
    return state.draws & _BITS, state.settings.seed & _BITS, settings_digest, generator_digest


def disagreement(low: Sequence[int], high: Sequence[int]) -> str | None:
    """Why ranks disagree, given the elementwise min and max of their :func:`fingerprint`; ``None`` if they agree."""
    (draws_lo, seed_lo, settings_lo, gen_lo), (draws_hi, seed_hi, settings_hi, gen_hi) = low, high
    causes = []
    if seed_lo != seed_hi:
        causes.append(f"different seeds (from {seed_lo} to {seed_hi}): pass the same seed to layerdrop.apply "
                      "on every rank (seed data order per rank if you like, never the LayerDrop seed)")
    if settings_lo != settings_hi:
        causes.append("different LayerDrop settings or current rates: apply the same rates, min_layers, "
                      "granularity and rescale on every rank, and drive any rate schedule by the shared "
                      "optimizer step")
    if draws_lo != draws_hi:
        causes.append(f"different numbers of training forwards (from {draws_lo} to {draws_hi} masks drawn): every "
                      "rank must run the same training-mode forwards; run extra ones (logging, probing) in eval "
                      "mode or under layerdrop.only_layers, and restore a checkpoint's mask generator on every rank")
    if not causes and gen_lo != gen_hi:
        causes.append("different mask-generator states, with equal seeds and forward counts: a generator state "
                      "(layerdrop.set_rng_state or a resumed checkpoint) was restored on some ranks only, or from "
                      "different checkpoints; restore the same one on every rank")
    if not causes:
        return None
    return "LayerDrop masks differ across ranks, which would train different sub-networks: " + "; ".join(causes)


def world_size(group: Any = None) -> int:
    """Ranks in ``group`` (default: the default group); 1 when ``torch.distributed`` is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def reduce_device(backend: str) -> torch.device:
    """Where a tensor for a collective of ``backend`` has to live: the CPU for gloo and MPI, else the accelerator.

    ``backend`` is what ``torch.distributed.get_backend()`` returns, e.g. ``"nccl"``, ``"gloo"``,
    ``"cpu:gloo,cuda:nccl"`` or ``"undefined"`` (a group made without naming a backend, which has
    gloo for CPU tensors); the last two take CPU tensors.
    """
    names = backend.lower()
    if "gloo" in names or "mpi" in names or names == "undefined":
        return torch.device("cpu")
    if "nccl" in names:
        return torch.device("cuda", torch.cuda.current_device())  # the rank's own GPU, set by torch.cuda.set_device
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is None:
        raise InputError(f"no device for a {backend!r} collective: this process sees no accelerator")
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


def check_in_sync(model: nn.Module, group: Any = None) -> None:
    """Raise :class:`RanksOutOfSync` unless every rank's LayerDrop state matches; a collective.

    Every rank of ``group`` must call it at the same point. Costs one all-reduce of eight integers.
    Does nothing without ``torch.distributed`` or with a single rank.
    """
    _, state = applied(model)
    if world_size(group) <= 1:
        return
    values = torch.tensor(fingerprint(state), dtype=torch.int64)
    both = torch.cat([values, -values]).to(reduce_device(dist.get_backend(group)))  # max of -x is -min
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    reduced = both.cpu().tolist()
    problem = disagreement([-x for x in reduced[4:]], reduced[:4])
    if problem is not None:
        raise RanksOutOfSync(f"rank {dist.get_rank(group)} of {world_size(group)}: {problem}")


class _Watch:
    """Forward pre-hook: :func:`check_in_sync` at the first training forward and every ``every`` after."""

    def __init__(self, every: int, group: Any) -> None:
        self.every = every
        self.group = group
        self.forwards = 0
        """Training forwards seen since the hook was put on; the same on every rank, so checks line up."""

    def __call__(self, module: nn.Module, args: Any) -> None:
        state = state_of(module)
        if state is None or not module.training or state.fixed is not None:
            return  # no mask is drawn, nothing can drift
        if self.forwards % self.every == 0:
            check_in_sync(module, self.group)
        self.forwards += 1


def watch(model: nn.Module, every: int = DEFAULT_CHECK_EVERY, group: Any = None) -> RemovableHandle:
    """Check agreement at the first training forward of ``model`` and every ``every`` training forwards.

    Put it on every rank, at the same point (before training). Returns the hook's handle;
    ``handle.remove()`` stops the checks. Costs one small all-reduce per check.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise InputError(f"every must be a positive number of training forwards, got {every!r}")
    module, _ = applied(model)
    return module.register_forward_pre_hook(_Watch(every, group))


def reentrant_checkpointing(model: nn.Module) -> list[str]:
    """Names of the submodules of ``model`` that Hugging Face checkpoints with ``use_reentrant=True``.

    DDP with ``find_unused_parameters=True`` cannot work with reentrant checkpointing
    ("Expected to mark a variable ready only once"); torch's default is still reentrant.
    """
    found = []
    for name, module in model.named_modules():
        function = module.__dict__.get("_gradient_checkpointing_func")
        if not getattr(module, "gradient_checkpointing", False) or function is None:
            continue
        keywords = function.keywords if isinstance(function, functools.partial) else {}
        if keywords.get("use_reentrant", True) is not False:
            found.append(name or type(module).__name__)
    return found


def _refuse_reentrant(model: nn.Module) -> None:
    names = reentrant_checkpointing(model)
    if names:
        raise InputError(
            f"gradient checkpointing of {names[0]!r} is reentrant (use_reentrant=True, or unset, torch's default), "
            "which DDP with find_unused_parameters=True, needed by LayerDrop, cannot handle. Enable it with "
            "model.activation_checkpointing_enable(activation_checkpointing_kwargs={'use_reentrant': False}) "
            "(gradient_checkpointing_enable(gradient_checkpointing_kwargs=...) in older transformers), or "
            "TrainingArguments(activation_checkpointing_kwargs={'use_reentrant': False})"
        )


def wrap(model: nn.Module, *, check_every: int = DEFAULT_CHECK_EVERY, group: Any = None,
         **ddp_kwargs: Any) -> nn.parallel.DistributedDataParallel:
    """``DistributedDataParallel(model, find_unused_parameters=True, ...)``, with agreement checks.

    Call it on every rank after ``layerdrop.apply(model, ..., seed=<same on every rank>)`` and after
    enabling any gradient checkpointing. ``ddp_kwargs`` go to ``DistributedDataParallel``
    (e.g. ``device_ids=[local_rank]``); ``group`` is its ``process_group``. Puts :func:`watch` on
    the model with ``check_every``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised: call torch.distributed.init_process_group() "
                           "first, in a script launched by torchrun or accelerate launch")
    if ddp_kwargs.pop("find_unused_parameters", True) is not True:
        raise InputError("find_unused_parameters must stay True with LayerDrop: a skipped layer's parameters "
                         "get no gradient, which DDP otherwise reports as an error at the next step")
    if ddp_kwargs.get("static_graph"):
        raise InputError("static_graph=True cannot be used with LayerDrop: the set of layers that run "
                         "changes at every forward; leave static_graph off")
    applied(model)
    _refuse_reentrant(model)
    watch(model, every=check_every, group=group)
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=True, process_group=group,
                                               **ddp_kwargs)


def configure_trainer(trainer: Any) -> None:
    """Make a Hugging Face ``Trainer`` set up DDP for LayerDrop: ``find_unused_parameters=True``.

    ``Trainer`` turns it off by default under activation checkpointing, and builds its
    ``Accelerator`` (which keeps the setting) in ``__init__``, so both are updated here.
    Raises ``ValueError`` if the arguments explicitly ask for what cannot work.
    """
    args = trainer.args
    if args.ddp_find_unused_parameters is False:
        raise InputError("TrainingArguments(ddp_find_unused_parameters=False) cannot be used with LayerDrop: a "
                         "skipped layer's parameters get no gradient, which DDP then reports as an error. "
                         "Leave it unset (LayerDrop sets it to True) or set it to True")
    if args.ddp_static_graph:
        raise InputError("TrainingArguments(ddp_static_graph=True) cannot be used with LayerDrop: the layers "
                         "that run change at every forward; leave it unset")
    args.ddp_find_unused_parameters = True
    handler = getattr(getattr(trainer, "accelerator", None), "ddp_handler", None)
    if handler is not None:
        handler.find_unused_parameters = True


def check_trainer_setup(args: Any, model: nn.Module) -> None:
    """Raise ``ValueError`` if a ``Trainer`` with these ``TrainingArguments`` would set up DDP wrongly for LayerDrop.

    Mirrors how ``Trainer`` picks ``find_unused_parameters`` when it is unset: off under
    activation checkpointing of a ``PreTrainedModel``, on otherwise.
    """
    find_unused = args.ddp_find_unused_parameters
    if find_unused is None:
        checkpointing = bool(getattr(args, "activation_checkpointing", False)
                             or getattr(model, "is_activation_checkpointing", False))
        find_unused = not (checkpointing and hasattr(model, "is_activation_checkpointing"))
    if not find_unused or args.ddp_static_graph:
        raise InputError(
            "this Trainer sets up DDP without find_unused_parameters (or with a static graph), which fails on the "
            "layers LayerDrop skips. Add the callback with layerdrop.training.callback.attach(trainer), "
            "which sets DDP up, or pass TrainingArguments(ddp_find_unused_parameters=True)"
        )
    _refuse_reentrant(model)
