"""LayerDrop across processes: two gloo ranks on the CPU, each run guarded by a timeout.

The multi-process runs are module fixtures (starting two ranks costs seconds); each test checks
one behaviour of a run. A hang fails its fixture after the timeout instead of blocking CI.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import Trainer, TrainingArguments

import layerdrop
from conftest import make, tokens
from layerdrop.core import distributed
from layerdrop.core.distributed import RanksOutOfSync, disagreement, fingerprint
from layerdrop.recipes.train import attach

STEPS = 24
"""Optimizer steps of each DDP run."""
TIMEOUT = 150.0
"""Seconds a two-rank run may take before it counts as hung (it takes well under a minute)."""
SEED = 7
SCENARIOS = ["plain", "accumulation", "checkpointing", "fsdp"]
"""The DDP runs (plain, gradient accumulation of 2, gradient checkpointing) and an FSDP2 run."""


# --------------------------------------------------------------------------- launching two ranks


def _rank_main(rank: int, store: str, worker: Callable[..., None], *args: Any) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    # A gloo collective that waits longer than this raises, a second guard against hangs.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()


def _spawn_two(entry: Callable[..., None], args: tuple[Any, ...], name: str, timeout: float = TIMEOUT) -> None:
    """Run ``entry(rank, *args)`` in two processes; fail (and kill them) if they take longer than ``timeout``."""
    context = mp.start_processes(entry, args=args, nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(f"{name} on two ranks did not finish within {timeout:.0f} s: it hangs")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def _two_ranks(tmp: Path, worker: Callable[..., None], *args: Any) -> None:
    """Run ``worker(rank, *args)`` on two gloo ranks joined through a file store in ``tmp``."""
    _spawn_two(_rank_main, (str(tmp / "store"), worker, *args), worker.__name__)


def _batch(rank: int, step: int) -> dict[str, torch.Tensor]:
    """Different data on each rank, as in data parallelism."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    return {"input_ids": tokens(batch=4, length=8, seed=1000 * rank + step),
            "labels": torch.randint(0, 3, (4,), generator=g)}


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors])


# --------------------------------------------------------------------------- DDP and FSDP runs


def _train(rank: int, out: str, scenario: str) -> None:
    """Train a tiny BERT at rate 0.5 for STEPS steps; save masks, losses, gradients seen and weights."""
    model = layerdrop.apply(make("bert"), rate=0.5, seed=SEED).train()
    accumulate = 2 if scenario == "accumulation" else 1
    if scenario == "checkpointing":
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if scenario == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (2,))
        for layer in layerdrop.find_layers(model).layers:
            fully_shard(layer, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
        distributed.watch(model, every=5)
    else:
        wrapped = distributed.wrap(model, check_every=5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    state, layers = layerdrop.state_of(model), layerdrop.find_layers(model).layers
    masks, losses, grads_as_in_one_process = [], [], []
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        used = [False] * len(layers)
        for micro in range(accumulate):
            last = micro == accumulate - 1
            with contextlib.nullcontext() if last or scenario == "fsdp" else wrapped.no_sync():
                loss = wrapped(**_batch(rank, accumulate * step + micro)).loss / accumulate
                loss.backward()
            masks.append(state.mask.keep)
            losses.append(loss.item())
            used = [u or k for u, k in zip(used, state.mask.keep, strict=True)]
        # As in one process: a layer skipped in every micro-step has no gradient at all.
        grads_as_in_one_process.append(all(
            all((p.grad is not None) == u for p in layer.parameters()) for layer, u in zip(layers, used, strict=True)))
        optimizer.step()
    params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
    torch.save({"masks": masks, "losses": losses, "grads": grads_as_in_one_process, "params": _flat(params)},
               Path(out) / f"{scenario}-{rank}.pt")


def _train_all(rank: int, out: str) -> None:
    for scenario in SCENARIOS:
        _train(rank, out, scenario)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("ddp")
    _two_ranks(tmp, _train_all, str(tmp))
    return {s: [torch.load(tmp / f"{s}-{r}.pt") for r in range(2)] for s in SCENARIOS}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ranks_drop_the_same_layers_at_every_forward(runs, scenario):
    first, second = runs[scenario]
    assert first["masks"] == second["masks"]
    assert len(first["masks"]) == STEPS * (2 if scenario == "accumulation" else 1)
    assert any(not all(m) for m in first["masks"])  # layers really were dropped
    assert len(set(first["masks"])) > 1


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ranks_end_with_identical_weights_and_finite_losses(runs, scenario):
    first, second = runs[scenario]
    assert torch.equal(first["params"], second["params"])
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in (first, second))
    assert first["losses"] != second["losses"]  # the ranks did see different data


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_skipped_layers_keep_no_gradient_as_in_one_process(runs, scenario):
    assert all(all(r["grads"]) for r in runs[scenario])


def test_two_ranks_train_like_one_process_on_both_batches(runs):
    """DDP averages the ranks' gradients: one process on both batches takes the same steps."""
    model = layerdrop.apply(make("bert"), rate=0.5, seed=SEED).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        batches = [_batch(rank, step) for rank in range(2)]
        model(**{k: torch.cat([b[k] for b in batches]) for k in batches[0]}).loss.backward()
        optimizer.step()
    torch.testing.assert_close(_flat(list(model.parameters())), runs["plain"][0]["params"], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- HF Trainer


def _trainer(rank: int, out: str) -> None:
    # What torchrun sets, so that Trainer (through accelerate) runs distributed. The process group
    # is already joined through the file store, which accelerate uses as is: no port to pick.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1")
    model = layerdrop.apply(make("bert"), rate=0.5, seed=SEED)
    masks = []
    model.register_forward_hook(lambda m, a, o: masks.append(m.layerdrop_state.mask.keep) if m.training else None)
    data = [{"input_ids": tokens(batch=1, length=6, seed=i)[0], "labels": torch.tensor(i % 3)} for i in range(64)]
    # Activation checkpointing makes Trainer turn find_unused_parameters off unless LayerDrop sets it.
    args = TrainingArguments(output_dir=str(Path(out) / "trainer"), max_steps=12, per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, activation_checkpointing=True, use_cpu=True,
                             report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
                             learning_rate=1e-3, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    attach(trainer, check_every=4)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    torch.save({"masks": masks, "losses": losses, "params": _flat(list(model.parameters())),
                "find_unused": trainer.model_wrapped.find_unused_parameters,
                "world": dist.get_world_size()}, Path(out) / f"trainer-{rank}.pt")


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("trainer")
    _two_ranks(tmp, _trainer, str(tmp))
    return [torch.load(tmp / f"trainer-{r}.pt") for r in range(2)]


def test_trainer_on_two_ranks_with_checkpointing_and_accumulation_stays_in_step(trainer_runs):
    first, second = trainer_runs
    assert first["world"] == 2 and first["find_unused"] is True
    assert first["masks"] == second["masks"] and len(first["masks"]) == 24
    assert any(not all(m) for m in first["masks"])
    assert torch.equal(first["params"], second["params"])
    assert first["losses"] and all(torch.isfinite(torch.tensor(r["losses"])).all() for r in trainer_runs)


# --------------------------------------------------------------------------- disagreement


def _disagree(rank: int, out: str) -> None:
    """Two ways for ranks to disagree; record what each rank raised."""
    raised = {}
    for case in ("seeds", "forwards"):
        model = layerdrop.apply(make("bert"), rate=0.5, seed=SEED + rank if case == "seeds" else SEED).train()
        if case == "forwards" and rank == 1:
            model(**_batch(rank, 0))  # an extra training forward, on one rank only
        wrapped = distributed.wrap(model, check_every=5)
        try:
            wrapped(**_batch(rank, 0)).loss.backward()
            raised[case] = None
        except RanksOutOfSync as e:
            raised[case] = str(e)
    torch.save(raised, Path(out) / f"disagree-{rank}.pt")


@pytest.fixture(scope="module")
def disagreements(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str | None]]:
    tmp = tmp_path_factory.mktemp("disagree")
    _two_ranks(tmp, _disagree, str(tmp))
    return [torch.load(tmp / f"disagree-{r}.pt") for r in range(2)]


def test_ranks_with_different_seeds_raise_instead_of_hanging(disagreements):
    for raised in disagreements:
        assert raised["seeds"] is not None and "different seeds" in raised["seeds"]
        assert "same seed" in raised["seeds"]


def test_ranks_with_different_forward_counts_raise_instead_of_hanging(disagreements):
    for raised in disagreements:
        assert raised["forwards"] is not None and "different numbers of training forwards" in raised["forwards"]
        assert "different seeds" not in raised["forwards"]


# --------------------------------------------------------------------------- one process


def test_equal_seeds_give_equal_fingerprints_and_different_seeds_do_not():
    a, b, c = (layerdrop.state_of(layerdrop.apply(make("bert"), rate=0.5, seed=s)) for s in (1, 1, 2))
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a)[1] != fingerprint(c)[1] and fingerprint(a)[3] != fingerprint(c)[3]


@pytest.mark.parametrize("low, high, cause", [
    ((3, 1, 5, 9), (3, 2, 5, 8), "different seeds"),
    ((3, 1, 5, 9), (4, 1, 5, 8), "different numbers of training forwards"),
    ((3, 1, 4, 9), (3, 1, 5, 9), "different LayerDrop settings"),
    ((3, 1, 5, 8), (3, 1, 5, 9), "mask-generator states"),
])
def test_disagreement_names_its_cause(low, high, cause):
    assert cause in disagreement(low, high)


def test_agreement_is_not_a_problem():
    assert disagreement((3, 1, 5, 9), (3, 1, 5, 9)) is None


def test_collective_device_follows_the_backend():
    assert distributed.reduce_device("gloo") == torch.device("cpu")
    assert distributed.reduce_device("cpu:gloo,cuda:nccl") == torch.device("cpu")
    assert distributed.reduce_device("undefined") == torch.device("cpu")


def test_check_is_a_no_op_in_one_process():
    model = layerdrop.apply(make("bert"), rate=0.5)
    distributed.check_in_sync(model)
    handle = distributed.watch(model.train(), every=1)
    model(**_batch(0, 0))
    handle.remove()


def test_reentrant_checkpointing_is_found_and_refused_with_advice(tmp_path):
    model = layerdrop.apply(make("bert"), rate=0.5)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    assert distributed.reentrant_checkpointing(model)
    with pytest.raises(ValueError, match="use_reentrant': False"):
        distributed.check_trainer_setup(TrainingArguments(output_dir=str(tmp_path), ddp_find_unused_parameters=True,
                                                          report_to=[]), model)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert distributed.reentrant_checkpointing(model) == []


def test_wrap_without_a_process_group_says_how_to_start_one():
    with pytest.raises(RuntimeError, match="init_process_group"):
        distributed.wrap(layerdrop.apply(make("bert"), rate=0.5))


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_watch_needs_a_positive_whole_number_of_forwards(every):
    with pytest.raises(ValueError, match="positive number"):
        distributed.watch(layerdrop.apply(make("bert"), rate=0.5), every=every)


def test_watch_without_layerdrop_says_to_apply_it():
    with pytest.raises(ValueError, match="layerdrop.apply"):
        distributed.watch(make("bert"))


def test_attach_makes_ddp_tolerate_skipped_layers(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, activation_checkpointing=True)
    trainer = Trainer(model=layerdrop.apply(make("bert"), rate=0.5), args=args)
    assert trainer.accelerator.ddp_handler.find_unused_parameters is False  # Trainer's default here
    attach(trainer)
    assert trainer.args.ddp_find_unused_parameters is True
    assert trainer.accelerator.ddp_handler.find_unused_parameters is True


def test_attach_refuses_ddp_settings_that_break_layerdrop(tmp_path):
    for bad in ({"ddp_find_unused_parameters": False}, {"ddp_static_graph": True}):
        args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **bad)
        trainer = Trainer(model=layerdrop.apply(make("bert"), rate=0.5), args=args)
        with pytest.raises(ValueError, match="cannot be used with LayerDrop"):
            attach(trainer)


def test_trainer_without_attach_under_checkpointing_is_explained(tmp_path):
    model = layerdrop.apply(make("bert"), rate=0.5)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, activation_checkpointing=True)
    with pytest.raises(ValueError, match="layerdrop.training.callback.attach"):
        distributed.check_trainer_setup(args, model)
