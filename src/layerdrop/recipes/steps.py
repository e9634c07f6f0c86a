"""The steps the training recipes share: ``layerdrop train`` and ``layerdrop distill`` (and the recipes that
work on what they saved: ``layerdrop heads``, ``layerdrop exits``).

Each step is one function: the rows a run uses, their encoding, Trainer's arguments, scoring at
full depth, the atomic export, and loading a saved classifier to record into. A recipe calls them in
order; they hold no state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding, TrainingArguments

from layerdrop import data
from layerdrop.config.args import DataArgs, OptimArgs
from layerdrop.data import encode_classification, encode_lm, encode_qa
from layerdrop.errors import ExistingOutput, InputError
from layerdrop.evaluation.measure import pooled_accuracy
from layerdrop.evaluation.qa import qa_scores
from layerdrop.files import atomic_dir, write_json
from layerdrop.models.loading import META_FILE, Classifier, load_saved, save_classifier

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["LR_SCHEDULES", "Encode", "Rows", "changed_settings", "check_fresh", "check_inputs", "encoder", "export",
           "full_depth_metrics", "saved_classifier", "saved_model", "splits", "training_arguments"]

Encode = Callable[[Any, str], tuple[list[dict[str, Any]], Any]]
"""``encode(split, name)`` -> the encoded rows and, per row, where it came from (text or question)."""


class Rows(torch.utils.data.Dataset):
    """A list of encoded rows as a ``Dataset``."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


LR_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
"""``--lr-schedule`` -> the ``TrainingArguments.lr_scheduler_type`` that runs it after ``--warmup``
(``constant`` needs transformers' ``constant_with_warmup`` for the warm-up to happen).

>>> LR_SCHEDULES["constant"]
'constant_with_warmup'
"""


def check_inputs(task: str | None, opt: OptimArgs, inputs: DataArgs) -> None:
    """Raise ``ValueError`` for optimisation and encoding settings no training recipe accepts;
    ``task=None`` checks what does not depend on the task (a teacher not loaded yet)."""
    if opt.lr_schedule not in LR_SCHEDULES:
        raise InputError(f"unknown learning-rate schedule {opt.lr_schedule!r}; choose one of {list(LR_SCHEDULES)}")
    if inputs.long_doc not in (None, "mean", "max"):
        raise InputError(f"unknown long-document pooling {inputs.long_doc!r}; choose mean or max")
    if task is None:
        return
    if inputs.long_doc and task != "classification":
        raise InputError("--long-doc applies to classification only")
    if (inputs.long_doc or task == "qa") and not 0 <= inputs.stride < inputs.max_length // 2:
        raise InputError(f"stride must be between 0 and max_length / 2 ({inputs.max_length // 2}), "
                         f"got {inputs.stride}")


def changed_settings(before: dict[str, Any], now: dict[str, Any]) -> str:
    """The settings that differ between a run's record and the settings asked for now, as
    ``name before -> now`` (empty when none differ): what a refusal to reuse the run names.

    >>> changed_settings({"lr": 1e-4, "seed": 0}, {"lr": 5e-5, "seed": 0})
    'lr 0.0001 -> 5e-05'
    """
    changed = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
    return ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed)


def check_fresh(ckpt_dir: Path, resume: bool) -> None:
    """Refuse to start over a run's checkpoints unless it is resumed."""
    if not resume and ckpt_dir.is_dir() and any(ckpt_dir.glob("checkpoint-*")):
        raise ExistingOutput(f"{ckpt_dir} already holds checkpoints: pass --resume to continue that run, "
                             "or choose another --out")


def splits(task: str, name: str, seed: int, inputs: DataArgs) -> tuple[Any, Any, Any]:
    """The train, validation and test rows of ``name`` for ``task``, cut to ``inputs``' row counts;
    split by ``inputs.split_seed`` (else ``seed``)."""
    classify = task == "classification"
    seed = seed if inputs.split_seed is None else inputs.split_seed
    if task == "qa":  # a SQuAD-format file: questions, contexts, answer spans
        loaded = data.load_qa(name, seed=seed)
    else:
        loaded = data.load(name, seed=seed, label_column="label" if classify else None)
    train, valid, test = loaded.train, loaded.valid, loaded.test
    if inputs.train_rows:
        train = train.subset(range(min(inputs.train_rows, len(train))))
    if inputs.eval_rows:
        valid = valid.subset(range(min(inputs.eval_rows, len(valid))))
        test = test.subset(range(min(inputs.eval_rows, len(test))))
    if classify and train.labels is None:
        raise InputError(f"{name} has no labels; classification needs a label column")
    return train, valid, test


def encoder(task: str, tokenizer: Any, inputs: DataArgs, progress: bool) -> tuple[Encode, Any]:
    """How ``task`` turns a split into rows, and the collator that batches them.

    Classification truncates (or, with ``long_doc``, windows) each text; QA windows each context
    and trains only on windows that hold their answer; language models cut blocks.
    """
    if task == "classification":
        stride = inputs.stride if inputs.long_doc is not None else None

        def encode_texts(split: Any, name: str) -> tuple[list[dict[str, Any]], Any]:
            return encode_classification(tokenizer, split, inputs.max_length, stride, progress=progress,
                                         desc=f"tokenizing {name}")
        return encode_texts, DataCollatorWithPadding(tokenizer)
    if task == "qa":
        def encode_windows(split: Any, name: str) -> tuple[list[dict[str, Any]], Any]:
            windows = encode_qa(tokenizer, split, inputs.max_length, inputs.stride, progress=progress,
                                desc=f"tokenizing {name}")
            return (windows.trainable() if name == "train" else windows.rows), windows
        return encode_windows, DataCollatorWithPadding(tokenizer)

    def encode(split: Any, name: str) -> tuple[list[dict[str, Any]], Any]:
        return encode_lm(tokenizer, split.texts, inputs.max_length, progress=progress, desc=f"tokenizing {name}"), []
    # MLM masking draws from the global RNG, which Trainer saves and restores on resume.
    return encode, DataCollatorForLanguageModeling(tokenizer, mlm=task == "mlm", mlm_probability=0.15)


def training_arguments(opt: OptimArgs, ckpt_dir: Path, *, seed: int, save_steps: int, logging_steps: int,
                       progress: bool, layerdrop_on: bool) -> TrainingArguments:
    """``TrainingArguments`` from the recipes' optimisation settings."""
    # only when asked: older transformers 5.x lack the argument
    sampling: dict[str, Any] = {"train_sampling_strategy": "group_by_length"} if opt.group_by_length else {}
    return TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=opt.epochs,
        max_steps=opt.max_steps,
        per_device_train_batch_size=opt.batch_size,
        per_device_eval_batch_size=max(opt.batch_size, 64),
        gradient_accumulation_steps=opt.grad_accum,
        learning_rate=opt.lr,
        weight_decay=opt.weight_decay,
        lr_scheduler_type=LR_SCHEDULES[opt.lr_schedule],
        warmup_steps=opt.warmup,
        max_grad_norm=opt.max_grad_norm if opt.max_grad_norm > 0 else 0.0,
        label_smoothing_factor=opt.label_smoothing,
        bf16=opt.bf16,
        # Trainer wants use_cpu explicit for bf16 on CPUs, and for DDP across CPU processes (torchrun sets WORLD_SIZE).
        use_cpu=not torch.cuda.is_available() and (opt.bf16 or int(os.environ.get("WORLD_SIZE", "1")) > 1),
        seed=seed,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        logging_steps=logging_steps,
        report_to="none",
        disable_tqdm=not progress,
        remove_unused_columns=False,
        restore_callback_states_from_checkpoint=False,  # restored by the recipe, keeping the callback first
        dataloader_num_workers=0,
        ddp_find_unused_parameters=True if layerdrop_on else None,  # under DDP, skipped layers get no gradient
        dataloader_pin_memory=torch.cuda.is_available(),
        **sampling,
    )


def full_depth_metrics(trainer: Any, model: nn.Module, task: str, evals: dict[str, tuple[list[dict[str, Any]], Any]],
                       evaluated: dict[str, Any], collator: Any, *, long_doc: str | None,
                       batch_size: int) -> dict[str, float]:
    """``{split}_{metric}`` of the trained ``model`` (in eval mode; ``trainer``'s model) on each
    encoded split of ``evals`` (``evaluated`` holds the splits themselves): accuracy, QA's exact
    match and F1, or LM loss and perplexity."""
    metrics: dict[str, float] = {}
    for name, (rows, doc_of) in evals.items():
        if task == "qa":  # exact match and F1 over questions, from every window of each
            scores = qa_scores(model, doc_of, evaluated[name], collator, batch_size=batch_size)
            metrics.update({f"{name}_{k}": v for k, v in scores.items()})
        elif task == "classification":
            pred = trainer.predict(Rows(rows), metric_key_prefix=name)
            metrics[f"{name}_accuracy"] = pooled_accuracy(torch.as_tensor(pred.predictions),
                                                          evaluated[name].labels, doc_of, long_doc)
        else:
            loss = trainer.evaluate(Rows(rows), metric_key_prefix=name)[f"{name}_loss"]
            metrics[f"{name}_loss"] = loss
            metrics[f"{name}_perplexity"] = math.exp(min(loss, 50.0))
    return metrics


def export(out: Path, model: nn.Module, tokenizer: Any, task: str, meta: dict[str, Any],
           metrics: dict[str, float], max_length: int) -> None:
    """Write ``out/model`` (a plain HF folder, or a sentence-transformers one for a
    :class:`Classifier`, with ``layerdrop.json`` holding ``meta``) and ``out/metrics.json``, atomically."""
    with atomic_dir(out / "model") as tmp:
        if isinstance(model, Classifier):
            save_classifier(model, tmp, extra=meta, max_length=max_length)
        else:
            cast("PreTrainedModel", model).save_pretrained(tmp)  # not a Classifier: an HF model
            write_json(tmp / META_FILE, {"task": task, **meta})
        if task == "classification":  # clients that truncate (pipeline's truncation=True) cut where training did
            tokenizer.model_max_length = max_length
        tokenizer.save_pretrained(tmp)
    write_json(out / "metrics.json", metrics)


def saved_model(model: str, *, record: bool, what: str) -> nn.Module:
    """The model saved at ``model``, in eval mode, for a recipe that records ``what`` into its folder (unless not
    ``record``): a one-line error when there is no folder to record into."""
    if record and not Path(model).is_dir():
        raise InputError(f"{model} is not a model folder, so there is nowhere to record {what}: pass the "
                         "folder layerdrop train wrote, or --no-record")
    return load_saved(model).eval()


def saved_classifier(model: str, *, record: bool, what: str, needs: str) -> Classifier:
    """:func:`saved_model`, which must be a layerdrop classifier; a one-line error otherwise, ending with what the
    recipe ``needs``."""
    loaded = saved_model(model, record=record, what=what)
    if not isinstance(loaded, Classifier):
        raise InputError(f"{model} is not a layerdrop classifier: {needs}")
    return loaded
