"""The ``layerdrop distill`` recipe: a smaller student learns a trained teacher's predictions.

Task-specific knowledge distillation as DistilBERT does it (Sanh et al. 2019): the student is the
teacher cut to fewer layers (``--depth``, with any layer-choice strategy; every-other is
DistilBERT's "one layer out of two") or a model of the user's (``--student``). Each step it learns
``alpha_task`` x its task loss + ``alpha_kd`` x KL to the teacher's softened predictions (times T²),
optionally + ``alpha_cos`` x DistilBERT's cosine loss on the last hidden states + ``alpha_hidden``
x BERT-PKD's matching of each kept layer to its teacher layer. The teacher is frozen and in eval
mode. Distilling a model's cut from its own full depth is *prune-and-heal*.

:func:`run` reads top to bottom; :func:`run_or_reuse` skips a finished run and continues an
unfinished one. The loss and the Trainer are :class:`layerdrop.training.trainer.LayerDropTrainer`'s, the
steps shared with ``layerdrop train`` are in :mod:`layerdrop.recipes.steps`. See docs/training.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import safetensors
import safetensors.torch
import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel

from layerdrop.config.args import DistillConfig
from layerdrop.core.apply import remove
from layerdrop.core.arch import find_layers
from layerdrop.core.depths import every_other
from layerdrop.core.learned import LEARNED_KEY
from layerdrop.cut.prune import PRUNING_KEY
from layerdrop.cut.strategies import lookup
from layerdrop.errors import InputError
from layerdrop.evaluation.eval_mode import require_eval
from layerdrop.evaluation.qa import without_targets
from layerdrop.files import write_bytes, write_json
from layerdrop.models.loading import (
    META_FILE,
    Classifier,
    from_pretrained,
    load_saved,
    local_folder,
    model_folder,
    read_meta,
)
from layerdrop.training.checkpoints import MarkCheckpointComplete, last_complete_checkpoint, seconds_trained
from layerdrop.training.losses import hidden_pairs
from layerdrop.training.teachers import check_labels, check_shapes, check_tokenizers, task_of
from layerdrop.training.trainer import TEACHER_LOGITS, LayerDropTrainer

from .prune_saved import prune_saved
from .steps import (
    Rows,
    changed_settings,
    check_fresh,
    check_inputs,
    encoder,
    export,
    full_depth_metrics,
    splits,
    training_arguments,
)

__all__ = ["DistillResult", "check", "run", "run_or_reuse", "task_of", "teacher_logits"]

SETTINGS_FILE = "distill.json"
"""The run's settings, written when it starts: a resumed run must match them."""
CACHE_FILE = "teacher-logits.safetensors"
"""The teacher's logits on the training rows, computed once (``--cache-teacher``)."""
CACHE_SECONDS = "seconds"
"""The cache's metadata key for the seconds it took to compute, beside the identity it was made for."""
NOT_COMPARED = ("resume", "out", "progress")
"""Settings a continued or moved run may change."""


@dataclass(frozen=True)
class DistillResult:
    """What a finished ``layerdrop distill`` run produced."""

    out: Path
    """The output folder."""
    model_dir: Path
    """The exported student: a plain HF folder (sentence-transformers for a pooled classifier)."""
    kept: tuple[int, ...]
    """The teacher layer each student layer was cut from (or is matched to, for ``--student``)."""
    metrics: dict[str, float]
    """The student's validation and test metrics."""
    teacher_metrics: dict[str, float]
    """The teacher's, on the same rows."""
    steps: int
    """Optimizer steps taken in total."""
    seconds: float
    """Wall time of this call."""
    cache_seconds: float
    """What the teacher's logits cost this run: computed in this call, or as recorded in the cache this call
    reused (0 when not cached)."""
    cache_reused: bool
    """Whether this call read the teacher's logits from the run's cache instead of computing them."""
    resumed_from: Path | None
    """The checkpoint this run continued from, if any."""


def check_for_task(cfg: DistillConfig, task: str) -> None:
    """Raise ``ValueError`` for a setting that ``task`` (known once the teacher is loaded) rejects."""
    check_inputs(task, cfg.optim, cfg.inputs)
    if cfg.optim.label_smoothing > 0 and task != "classification":
        raise InputError(f"--label-smoothing applies to classification; the teacher does {task}")


def check(cfg: DistillConfig) -> None:
    """Raise ``ValueError`` for any setting ``run`` would reject, before anything is loaded."""
    loss = cfg.distill
    if (cfg.depth is None) == (cfg.student is None):
        raise InputError("pass --depth K (the student is the teacher cut to K layers) or --student PATH, "
                         "exactly one of them")
    if cfg.depth is not None and cfg.depth < 1:
        raise InputError(f"--depth must be at least 1, got {cfg.depth}")
    lookup(cfg.strategy)
    if loss.temperature <= 0:
        raise InputError(f"--temperature must be above 0, got {loss.temperature}")
    weights = {"alpha_kd": loss.alpha_kd, "alpha_task": loss.alpha_task, "alpha_cos": loss.alpha_cos,
               "alpha_hidden": loss.alpha_hidden}
    negative = [k for k, v in weights.items() if v < 0]
    if negative:
        raise InputError(f"loss weights cannot be negative: {', '.join(negative)}")
    if not any(weights.values()):
        raise InputError("every loss weight is 0 (--alpha-kd, --alpha-task, --alpha-cos, --alpha-hidden): "
                         "the student would learn nothing")
    check_inputs(None, cfg.optim, cfg.inputs)
    if loss.alpha_hidden and cfg.depth == 1:
        raise InputError("--alpha-hidden matches the student's intermediate layers to the teacher's; a 1-layer "
                         "student has none (--alpha-cos matches its output)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("layerdrop distill runs in one process; launch it without torchrun or accelerate")
    model_folder(cfg.teacher)  # a missing folder, or one without config.json, is named now
    if cfg.student is not None:
        model_folder(cfg.student)


def _settings(cfg: DistillConfig) -> dict[str, Any]:
    """The settings that identify a run, as JSON stores them."""
    return json.loads(json.dumps({k: v for k, v in cfg.flat().items() if k not in NOT_COMPARED}))


def _check_same_run(out: Path, cfg: DistillConfig) -> None:
    """Refuse to continue a run in ``out`` that trained with other settings (one that stopped
    before its first checkpoint has nothing to keep, and starts again)."""
    path = out / SETTINGS_FILE
    started = (out / "model").is_dir() or last_complete_checkpoint(out / "checkpoints") is not None
    if not (path.is_file() and started):
        return
    shown = changed_settings(json.loads(path.read_text()), _settings(cfg))
    if shown:
        raise InputError(f"{out} holds a distillation started with other settings ({shown}): "
                         "run it with its own settings, or choose another --out")


def run_or_reuse(cfg: DistillConfig) -> Path:
    """The exported student of ``cfg``: reused if ``cfg.out`` holds this finished run, continued
    from its last complete checkpoint if it holds an unfinished one, else distilled."""
    out = Path(cfg.out)
    _check_same_run(out, cfg)
    if (out / "model" / META_FILE).is_file():
        return out / "model"
    return run(cfg.replace(resume=last_complete_checkpoint(out / "checkpoints") is not None)).model_dir


def _student(cfg: DistillConfig, teacher: nn.Module, task: str, data_names: Sequence[str] | None,
             tokenizer: Any, teacher_files: str) -> tuple[nn.Module, tuple[int, ...], dict[str, Any] | None]:
    """The student, the teacher layer each of its layers matches, and the pruning record of a cut."""
    n_teacher = len(find_layers(teacher).layers)
    if cfg.depth is not None:
        if cfg.depth > n_teacher:
            raise InputError(f"--depth {cfg.depth} is deeper than the teacher ({n_teacher} layers): a student "
                             "has at most the teacher's layers")
        initial = Path(cfg.out) / "initial-student"
        needs_data = lookup(cfg.strategy).needs_data
        wanted: dict[str, Any] = {"source": str(cfg.teacher), "strategy": cfg.strategy,
                                  "data": cfg.data if needs_data else None,
                                  "calibration_rows": cfg.calibration_rows if needs_data else None, "seed": cfg.seed,
                                  "teacher_files": teacher_files}
        record = read_meta(initial).get("pruning") if (initial / META_FILE).is_file() else None
        if not record or {k: record.get(k) for k in wanted} != wanted or len(record["kept_layers"]) != cfg.depth:
            # the cut is chosen once; a resumed run reuses it
            record = prune_saved(cfg.teacher, initial, depth=cfg.depth, strategy=cfg.strategy, seed=cfg.seed,
                                 data=wanted["data"], rows=cfg.calibration_rows, model=teacher,
                                 extra={k: v for k, v in wanted.items() if k not in ("source", "strategy")})
        return load_saved(str(initial)), _teacher_indices(teacher, record["kept_layers"]), record
    student_dir = model_folder(cfg.student)  # type: ignore[arg-type]  # check(cfg): --student when no --depth
    check_tokenizers(tokenizer, from_pretrained(AutoTokenizer, local_folder(student_dir)), student_dir)
    student = load_saved(student_dir)
    if task_of(student, "student") != task:
        raise InputError(f"the student does {task_of(student, 'student')}, the teacher {task}: give a student "
                         "with the teacher's task head")
    check_shapes(teacher, student, task, hidden=bool(cfg.distill.alpha_cos or cfg.distill.alpha_hidden))
    if task == "classification":
        check_labels(teacher, local_folder(cfg.teacher), data_names, student, local_folder(student_dir))
    n_student = len(find_layers(student).layers)
    if n_student > n_teacher:
        raise InputError(f"the student has {n_student} layers, the teacher {n_teacher}: a student deeper than "
                         "its teacher is not a distillation")
    return student, _matched_layers(teacher, student, n_teacher, n_student), None


def _original(model: nn.Module, num_layers: int) -> tuple[list[int], int]:
    """``model``'s layers as indices of the model it was first cut from, and that model's layer count."""
    cut = getattr(model.config, PRUNING_KEY, None)
    return (list(cut["kept_layers"]), cut["original_num_layers"]) if cut else (list(range(num_layers)), num_layers)


def _teacher_indices(teacher: nn.Module, original: Sequence[int]) -> tuple[int, ...]:
    """Layers named as indices of the teacher's own origin (a cut record chains back to the first
    model), as indices of the teacher itself."""
    mine, _ = _original(teacher, len(find_layers(teacher).layers))
    return tuple(mine.index(i) for i in original)


def _matched_layers(teacher: nn.Module, student: nn.Module, n_teacher: int, n_student: int) -> tuple[int, ...]:
    """The teacher layer each layer of a given student matches: the one it was cut from when both
    come from the same model's layers, else every-other layers of the teacher."""
    theirs, their_origin = _original(student, n_student)
    mine, my_origin = _original(teacher, n_teacher)
    if their_origin == my_origin and set(theirs) <= set(mine):
        return _teacher_indices(teacher, theirs)
    return every_other(n_teacher, n_student)


def _cache_pays(cfg: DistillConfig, task: str, rows: int) -> bool:
    """Whether to compute the teacher's logits once: for classification without the hidden-state
    losses, when the run shows the student each row more than once on average (below that,
    running the teacher on the rows a step sees costs less; docs/benchmarks.md)."""
    loss, opt = cfg.distill, cfg.optim
    if not (loss.cache_teacher and loss.alpha_kd and task == "classification") or loss.alpha_cos or loss.alpha_hidden:
        return False
    seen = opt.max_steps * opt.batch_size * opt.grad_accum if opt.max_steps > 0 else opt.epochs * rows
    return seen > rows


def _fingerprint(folder: str) -> str:
    """A teacher folder's files by name, size and modification time: changes when it is retrained in place."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return hashlib.sha256(repr([(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                                for p in files]).encode()).hexdigest()


def _digest(rows: Sequence[dict[str, Any]]) -> str:
    """The encoded training rows' token ids, hashed: the same rows in the same order."""
    return hashlib.sha256(json.dumps([r["input_ids"] for r in rows]).encode()).hexdigest()


@torch.no_grad()
def teacher_logits(teacher: nn.Module, rows: Sequence[dict[str, Any]], collate: Any,
                   batch_size: int = 64) -> torch.Tensor:
    """The teacher's logits ``(N, C)`` on encoded classification ``rows``, in eval mode."""
    require_eval(teacher, "teacher_logits")
    device = next(teacher.parameters()).device
    out = []
    for i in range(0, len(rows), batch_size):
        batch = collate([without_targets(r) for r in rows[i:i + batch_size]])
        out.append(teacher(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())  # (b, C)
    return torch.cat(out)


def _cached_logits(out: Path, teacher: nn.Module, rows: list[dict[str, Any]], collate: Any, batch_size: int,
                   identity: dict[str, Any]) -> tuple[torch.Tensor, float, bool]:
    """The teacher's logits on ``rows``, the seconds they cost, and whether they were reused: read from
    ``out``'s cache if it was made for the same ``identity`` (teacher, data and encoding), else computed
    and saved (atomically). The cache records its cost, so a resumed run still counts it."""
    path = out / CACHE_FILE
    stamp = {k: json.dumps(v) for k, v in identity.items()}
    if path.is_file():
        with safetensors.safe_open(path, "pt") as f:
            recorded = dict(f.metadata() or {})
            seconds = float(recorded.pop(CACHE_SECONDS, 0.0))  # caches made before it was recorded: 0
            if recorded == stamp:
                return f.get_tensor("logits"), seconds, True
    start = time.time()
    logits = teacher_logits(teacher, rows, collate, batch_size)
    seconds = time.time() - start
    write_bytes(path, safetensors.torch.save({"logits": logits.contiguous()},
                                             metadata={**stamp, CACHE_SECONDS: repr(seconds)}))
    return logits, seconds, False


def _scores(model: nn.Module, task: str, args: Any, evals: dict[str, Any], evaluated: dict[str, Any], collator: Any,
            cfg: DistillConfig) -> dict[str, float]:
    trainer = LayerDropTrainer(model=model, args=args, data_collator=collator)  # evaluates in the rows' order
    return full_depth_metrics(trainer, model, task, evals, evaluated, collator, long_doc=cfg.inputs.long_doc,
                              batch_size=max(cfg.optim.batch_size, 64))


def run(cfg: DistillConfig) -> DistillResult:
    """Distil ``cfg.teacher`` into a student on ``cfg.data``; evaluate both; export the student to ``cfg.out/model``."""
    # 1. validate before loading anything; a resumed run must be the run it continues
    check(cfg)
    start = time.time()
    out, loss, inputs = Path(cfg.out), cfg.distill, cfg.inputs
    ckpt_dir = out / "checkpoints"
    check_fresh(ckpt_dir, cfg.resume)
    _check_same_run(out, cfg)
    resume_from = last_complete_checkpoint(ckpt_dir) if cfg.resume else None
    earlier = seconds_trained(resume_from)  # the invocations before this one, counted in the run's minutes
    write_json(out / SETTINGS_FILE, _settings(cfg))

    # 2. the teacher: frozen, in eval mode
    teacher = load_saved(cfg.teacher).eval().requires_grad_(False)
    task = task_of(teacher)
    check_for_task(cfg, task)
    tokenizer = from_pretrained(AutoTokenizer, local_folder(cfg.teacher))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # 3. data, and the labels the teacher knows
    train_split, valid_split, test_split = splits(task, cfg.data, cfg.seed, inputs)
    data_names = train_split.label_names if task == "classification" else None
    if task == "classification":
        check_labels(teacher, local_folder(cfg.teacher), data_names)

    # 4. the student: the teacher cut to --depth, or --student
    teacher_files = _fingerprint(local_folder(cfg.teacher))  # the cut and the cache are remade when it changes
    student, kept, pruning = _student(cfg, teacher, task, data_names, tokenizer, teacher_files)
    if loss.alpha_hidden and len(kept) < 2:
        raise InputError("--alpha-hidden matches the student's intermediate layers to the teacher's; a 1-layer "
                         "student has none (--alpha-cos matches its output)")
    remove(student)  # trained here at one depth: a LayerDrop record inherited from the teacher would claim otherwise
    if isinstance(student, Classifier):  # heads fitted on the teacher's features, which training changes
        student.heads = nn.ModuleDict().eval()
    if hasattr(student.config, LEARNED_KEY):
        delattr(student.config, LEARNED_KEY)
    student.train().requires_grad_(True)
    if cfg.optim.freeze_embeddings:
        hf_model = student.encoder if isinstance(student, Classifier) else cast(PreTrainedModel, student)
        hf_model.get_input_embeddings().requires_grad_(False)

    # 5. encode; the teacher's logits once, where they can stand in for the teacher
    evaluated = {"valid": valid_split, "test": test_split} if cfg.evaluate else {}
    encode, collator = encoder(task, tokenizer, inputs, cfg.progress)
    train_rows, _ = encode(train_split, "train")
    evals = {name: encode(split, name) for name, split in evaluated.items()}
    args = training_arguments(cfg.optim, ckpt_dir, seed=cfg.seed, save_steps=cfg.save_steps,
                              logging_steps=cfg.logging_steps, progress=cfg.progress, layerdrop_on=False)
    teacher.to(args.device)
    cache_seconds, cache_reused = 0.0, False
    if _cache_pays(cfg, task, len(train_rows)):
        identity = {"teacher": teacher_files, "rows": _digest(train_rows)}
        logits, cache_seconds, cache_reused = _cached_logits(
            out, teacher, train_rows, collator, max(cfg.optim.batch_size, 64), identity)
        train_rows = [{**row, TEACHER_LOGITS: logits[i].tolist()} for i, row in enumerate(train_rows)]

    # 6. distil
    trainer = LayerDropTrainer(
        model=student, args=args, train_dataset=Rows(train_rows), data_collator=collator,
        callbacks=[MarkCheckpointComplete(earlier)], teacher=teacher, task_weight=loss.alpha_task,
        distill_weight=loss.alpha_kd, distill_temperature=loss.temperature, cos_weight=loss.alpha_cos,
        hidden_weight=loss.alpha_hidden, hidden_layers=hidden_pairs(kept), head_lr=cfg.optim.head_lr,
    )
    trained = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    # 7. score the student and, on the same rows, the teacher
    metrics = full_depth_metrics(trainer, student.eval(), task, evals, evaluated, collator, long_doc=inputs.long_doc,
                                 batch_size=max(cfg.optim.batch_size, 64))
    teacher_metrics = _scores(teacher, task, args, evals, evaluated, collator, cfg) if evals else {}

    # 8. export, atomically
    meta: dict[str, Any] = {
        "distilled_with": {k: v for k, v in cfg.flat().items() if k != "progress"},
        "teacher": str(cfg.teacher),
        "kept_layers": list(kept),
        "loss": {"alpha_kd": loss.alpha_kd, "alpha_task": loss.alpha_task, "temperature": loss.temperature,
                 "alpha_cos": loss.alpha_cos, "alpha_hidden": loss.alpha_hidden},
        "metrics": metrics,
        "teacher_metrics": teacher_metrics,
        "train_seconds": round(earlier + trained.metrics["train_runtime"], 1),  # every invocation's
        "teacher_cache_seconds": round(cache_seconds, 1),  # what the run's cache cost, whichever call made it
    }
    if pruning is not None:
        meta["pruning"] = pruning
    if data_names:
        meta["label_names"] = list(data_names)
    export(out, student, tokenizer, task, meta, metrics, inputs.max_length)
    return DistillResult(out=out, model_dir=out / "model", kept=kept, metrics=metrics, teacher_metrics=teacher_metrics,
                         steps=trainer.state.global_step, seconds=time.time() - start, cache_seconds=cache_seconds,
                         cache_reused=cache_reused, resumed_from=resume_from)
