"""The ``layerdrop train`` recipe: validate, load data, load the model, LayerDrop, encode, train, evaluate, export.

:func:`run` reads top to bottom; :func:`run_or_reuse` skips a finished run and continues an
unfinished one. The Trainer components it uses (callback, trainer, losses, checkpoint
markers) are in :mod:`layerdrop.training.trainer`; the settings in :mod:`layerdrop.config.args`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from layerdrop.config.args import EACH_STEP, DepthArgs, TrainConfig
from layerdrop.config.settings import DEFAULT_RATE
from layerdrop.core.apply import LayerDropSettings, apply, only_layers, remove
from layerdrop.core.arch import find_layers
from layerdrop.core.depths import parse_depths, record_depths, remove_depth_record, remove_exits_record
from layerdrop.core.learned import DATA_DRIVEN_ONE_PROCESS, attach_rate_learner, record_learned_rates
from layerdrop.core.masklog import MASK_FILE, MaskLogCallback
from layerdrop.core.rates import SCHEDULES, layer_rates
from layerdrop.errors import ExistingOutput, InputError
from layerdrop.models.loading import (
    AUTO_CLASSES,
    META_FILE,
    NATIVE,
    POOLINGS,
    Classifier,
    from_pretrained,
    load_saved,
    local_folder,
    model_folder,
    read_meta,
)
from layerdrop.training.callback import attach
from layerdrop.training.checkpoints import MarkCheckpointComplete, last_complete_checkpoint, seconds_trained
from layerdrop.training.heads import DepthHead, fit_depth_heads
from layerdrop.training.teachers import check_labels, check_shapes, check_tokenizers, task_of
from layerdrop.training.trainer import LayerDropTrainer

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

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TASKS", "TrainResult", "check", "finished_run", "load_model", "rate_of", "run", "run_or_reuse"]

TASKS = tuple(AUTO_CLASSES)
"""What ``layerdrop train`` trains."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished ``layerdrop train`` run produced."""

    out: Path
    """The output folder."""
    model_dir: Path
    """The exported model (plain HF folder, plus the classifier head for classification)."""
    metrics: dict[str, float]
    """Validation and test metrics at full depth."""
    steps: int
    """Optimizer steps taken in total."""
    seconds: float
    """Wall time of this call."""
    resumed_from: Path | None
    """The checkpoint this run continued from, if any."""
    main_process: bool = True
    """Whether this process wrote the files; under several processes only rank 0 does."""


def rate_of(cfg: TrainConfig) -> float:
    """The LayerDrop rate ``cfg`` trains with: ``--rate``, else 0.2, or 0 with ``--depths`` (which trains named
    sub-networks in place of random ones)."""
    if cfg.layerdrop.rate is not None:
        return cfg.layerdrop.rate
    return 0.0 if cfg.served.depths is not None else DEFAULT_RATE


def check(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` for any setting ``run`` would reject, before anything is loaded."""
    ld, opt, inputs = cfg.layerdrop, cfg.optim, cfg.inputs
    rate = rate_of(cfg)
    if cfg.task not in TASKS:
        raise InputError(f"unknown task {cfg.task!r}; choose one of {list(TASKS)}")
    if ld.schedule not in SCHEDULES:
        raise InputError(f"unknown rate schedule {ld.schedule!r}; choose one of {list(SCHEDULES)}")
    check_inputs(cfg.task, opt, inputs)
    if ld.data_driven and (rate <= 0 or ld.granularity != "layer"):
        raise InputError("--data-driven learns per-layer rates that average --rate: it needs --rate > 0 "
                         "and --granularity layer")
    if rate > 0:
        layer_rates(1, rate, per_layer=ld.per_layer)  # the rate and its profile
    LayerDropSettings((0.0,), granularity=ld.granularity, pattern=ld.pattern)  # and how they combine
    if cfg.task == "classification" and cfg.pooling not in (*POOLINGS, NATIVE):
        raise InputError(f"unknown pooling {cfg.pooling!r}; choose one of {[*POOLINGS, NATIVE]}")
    if ld.data_driven and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # set by torchrun and accelerate launch
        raise InputError(DATA_DRIVEN_ONE_PROCESS)
    if ld.data_driven and ld.pattern != "random":
        raise InputError("--data-driven learns which layers to drop; --pattern every-other fixes where the kept "
                         "layers go. Use one or the other.")
    from layerdrop.models.presets import PRESETS

    if opt.freeze_embeddings and cfg.model in PRESETS:
        raise InputError(f"--freeze-embeddings keeps pretrained word embeddings; {cfg.model!r} is built from scratch "
                         "with random ones: train it without the flag")
    if cfg.served.depths is not None:
        _check_depths(cfg)
    elif cfg.served != DepthArgs():
        given = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(DepthArgs)
                 if getattr(cfg.served, f.name) != f.default]
        raise InputError(f"{', '.join(given)} set how named depths train: give them with --depths (e.g. --depths "
                         "6,4,3), or leave them out")
    if ld.self_distill and rate <= 0:
        raise InputError("--self-distill trains LayerDrop sub-networks: it needs --rate > 0")
    if cfg.task == "qa" and opt.label_smoothing > 0:
        raise InputError("--label-smoothing applies to classification, not to qa's start/end positions")
    if cfg.record_masks and rate <= 0:
        raise InputError("--record-masks records the masks LayerDrop draws: it needs --rate > 0")


def _check_depths(cfg: TrainConfig) -> None:
    """The settings of training for named depths (``--depths``), before anything is loaded."""
    from layerdrop.cut.strategies import lookup

    served, ld = cfg.served, cfg.layerdrop
    assert served.depths is not None
    parse_depths(served.depths)
    if ld.rate:
        raise InputError("--depths trains the named depths' sub-networks in place of LayerDrop's random ones: "
                         "leave --rate out")
    if ld.self_distill or ld.data_driven:
        raise InputError("--depths has its own distillation and layer choice: leave --self-distill and "
                         "--data-driven out")
    if served.each_step not in EACH_STEP:
        raise InputError(f"--each-step {served.each_step!r}: choose one of {', '.join(EACH_STEP)}")
    if served.sandwich < 0:
        raise InputError(f"--sandwich {served.sandwich}: how many other depths a step draws, 0 or more")
    if lookup(served.strategy).needs == "score" or served.strategy in ("data-driven", "trained"):
        raise InputError(f"--strategy {served.strategy} chooses layers from a trained model, and --depths chooses "
                         "them before training: choose top, every-other, angular or block-influence")
    if served.temperature <= 0:
        raise InputError(f"--temperature must be above 0, got {served.temperature}")
    weights = {"alpha_kd": served.alpha_kd, "alpha_task": served.alpha_task, "alpha_hidden": served.alpha_hidden}
    if any(v < 0 for v in weights.values()) or not any(weights.values()):
        raise InputError(f"--alpha-kd, --alpha-task and --alpha-hidden are 0 or more, and one above 0; got {weights}")
    if served.teacher is not None:
        model_folder(served.teacher)  # a missing folder, or one without config.json, is named now
    if served.depth_heads and not _pooled_classifier(cfg):
        raise InputError("--depth-heads fits a pooled classifier's head per depth: it needs the classification "
                         "task without --pooling native or --long-doc; leave it out")


def _pooled_classifier(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` trains a :class:`Classifier` on one window per text, whose heads per depth can be fitted."""
    return cfg.task == "classification" and cfg.pooling != NATIVE and cfg.inputs.long_doc is None


def _fits_heads(cfg: TrainConfig) -> bool:
    """Whether the run ends by fitting each named depth its own head (``--depth-heads``, on by default)."""
    return cfg.served.depths is not None and cfg.served.depth_heads is not False and _pooled_classifier(cfg)


def _recorded(cfg: TrainConfig) -> dict[str, Any]:
    """The flat ``trained_with`` record of ``layerdrop.json``: every setting but those that do not
    change the model (``progress``, ``record_masks``), with the rate the run used."""
    return {**{k: v for k, v in cfg.flat().items() if k not in ("progress", "record_masks")}, "rate": rate_of(cfg)}


def run_or_reuse(cfg: TrainConfig) -> Path:
    """The exported model of ``cfg``: reused if ``cfg.out`` already holds this finished run,
    continued from the last complete checkpoint if it holds an unfinished one, else trained.

    A finished run with other settings is a ``FileExistsError`` (:func:`finished_run`).
    """
    done = finished_run(cfg)
    if done is not None:
        return done
    resume = last_complete_checkpoint(Path(cfg.out) / "checkpoints") is not None
    return run(cfg.replace(resume=resume)).model_dir


def finished_run(cfg: TrainConfig) -> Path | None:
    """The exported model if ``cfg.out`` holds this finished run, ``None`` if it holds no finished run. A finished
    run with other settings is a ``FileExistsError`` naming them; ``resume`` and ``out`` do not count, and a
    setting the run's record lacks (added in a later version) counts as its default. A recipe that trains several
    runs asks this of each before it trains the first."""
    out = Path(cfg.out)
    if (out / "model" / META_FILE).is_file():
        defaults = _recorded(TrainConfig(task=cfg.task, model=cfg.model, data=cfg.data, out=cfg.out))
        trained = {**defaults, **(read_meta(out / "model").get("trained_with") or {})}
        trained, wanted = json.loads(json.dumps([trained, _recorded(cfg)]))  # as JSON stores it: tuples become lists
        ignored = ("resume", "out")  # a continued run, or a run folder moved elsewhere, is the same run
        shown = changed_settings({k: v for k, v in trained.items() if k not in ignored},
                                 {k: v for k, v in wanted.items() if k not in ignored})
        if not shown and _fits_heads(cfg) and "depth_heads_fit" not in read_meta(out / "model"):
            shown = "depth_heads: not fitted (a run from before they existed) -> fitted"
        if shown:
            raise ExistingOutput(f"{out} holds a run with other settings ({shown}); choose another --out or delete it")
        return out / "model"
    return None


def _dropout_overrides(config: Any, p: float) -> dict[str, float]:
    names = [k for k, v in config.to_dict().items()
             if isinstance(v, float) and "layerdrop" not in k
             and (k.endswith("dropout") or k.endswith("dropout_prob") or k.endswith("_pdrop"))]
    return {k: p for k in names}


def load_model(cfg: TrainConfig, label_names: Sequence[str] | None, texts: Sequence[str]) -> tuple[nn.Module, Any]:
    """The model and tokenizer ``cfg`` trains: a preset built on ``texts``, or a saved model.

    A classifier is a :class:`Classifier` on the bare encoder, or with ``--pooling native`` the
    architecture's own ``*ForSequenceClassification``, its labels named in the config.
    """
    from layerdrop.models import presets

    dropout = cfg.optim.dropout
    classify, native = cfg.task == "classification", cfg.task == "classification" and cfg.pooling == NATIVE
    labels = list(label_names or ("0", "1")) if classify else []
    names: dict[str, Any] = {"id2label": dict(enumerate(labels)),
                             "label2id": {name: i for i, name in enumerate(labels)}}
    auto_class = AutoModelForSequenceClassification if native else AUTO_CLASSES[cfg.task]
    if cfg.model in presets.PRESETS:
        preset = presets.PRESETS[cfg.model]
        if cfg.tokenizer in (None, "train"):
            tokenizer: PreTrainedTokenizerBase = presets.train_tokenizer(texts, preset.tokenizer_kind,
                                                                         vocab_size=cfg.vocab_size)
        else:
            tokenizer = presets.borrow_tokenizer(cfg.tokenizer)
        overrides: dict[str, Any] = {}
        if dropout is not None:
            overrides = _dropout_overrides(AutoConfig.for_model(preset.model_type, **preset.config), dropout)
        model = presets.build(cfg.model, tokenizer, task=cfg.task, num_labels=len(labels) or None, seed=cfg.seed,
                              auto_class=auto_class, **overrides)
        if native:  # our own new model: its labels are named here
            model.config.id2label, model.config.label2id = names["id2label"], names["label2id"]
        if not classify or native:
            return model, tokenizer
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)  # its head is drawn under the seed too, as a pretrained model's is
            return Classifier(model, len(labels), cfg.pooling), tokenizer

    path = model_folder(cfg.model)
    tokenizer = from_pretrained(AutoTokenizer, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    overrides = _dropout_overrides(from_pretrained(AutoConfig, path), dropout) if dropout is not None else {}
    if native:  # a decoder's head finds each row's last token by the pad id
        overrides.update(names, num_labels=len(labels), pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)  # new weights (a head) are seeded without touching the caller's RNG
        model = from_pretrained(auto_class, path, **overrides)
        dense = getattr(getattr(model.base_model, "pooler", None), "dense", None)
        if native and isinstance(dense, nn.Linear) and not dense.weight.any():
            # a checkpoint without a pooler (e5-small's is zeros): new weights, seeded, as BERT initialises them
            nn.init.normal_(dense.weight, std=getattr(model.config, "initializer_range", 0.02))
            nn.init.zeros_(dense.bias)
        if classify and not native:  # its head is drawn under the seed too
            return Classifier(model, len(labels), cfg.pooling), tokenizer
    return model, tokenizer


def run(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` with LayerDrop on ``cfg.data``; evaluate; export to ``cfg.out/model``."""
    # 1. validate everything before loading anything
    check(cfg)
    ld, inputs = cfg.layerdrop, cfg.inputs
    rate = rate_of(cfg)
    layerdrop_on = rate > 0
    classify, qa = cfg.task == "classification", cfg.task == "qa"
    start = time.time()
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    resume_from = last_complete_checkpoint(ckpt_dir) if cfg.resume else None
    earlier = seconds_trained(resume_from)  # the invocations before this one, counted in the run's minutes
    check_fresh(ckpt_dir, cfg.resume)

    # 2. data
    train_split, valid_split, test_split = splits(cfg.task, cfg.data, cfg.seed, inputs)

    # 3. model
    vocabulary_text = (*train_split.texts, *train_split.questions) if qa else train_split.texts
    model, tokenizer = load_model(cfg, train_split.label_names if classify else None, vocabulary_text)
    if cfg.optim.freeze_embeddings:
        hf_model = model.encoder if isinstance(model, Classifier) else cast("PreTrainedModel", model)
        hf_model.get_input_embeddings().requires_grad_(False)

    # 4. LayerDrop: every setting this recipe owns is passed, so none is inherited from a saved record
    learner = None
    if layerdrop_on:
        apply(model, rate, per_layer=ld.per_layer, seed=cfg.seed, granularity=ld.granularity, pattern=ld.pattern,
              min_layers=1, rescale=False)  # the two this recipe does not expose: their defaults, not a record's
        if ld.data_driven:
            learner = attach_rate_learner(model, seed=cfg.seed)
    else:  # a record inherited from the loaded folder would claim that this run used LayerDrop
        remove(model)

    # 4b. named depths: each one's layers, recorded in the model (an explicit --depths replaces a record)
    depths = _depth_layers(cfg, model, tokenizer) if cfg.served.depths is not None else {}
    if depths:
        num_layers = len(find_layers(model).layers)
        record_depths(model.config, {num_layers: tuple(range(num_layers)), **depths}, cfg.served.strategy)
    else:  # a record inherited from the loaded folder would claim that this run trained those depths
        remove_depth_record(getattr(model, "config", None))
    remove_exits_record(getattr(model, "config", None))  # calibrated on other weights

    # 5. encode
    evaluated = {"valid": valid_split, "test": test_split} if cfg.evaluate else {}
    encode, collator = encoder(cfg.task, tokenizer, inputs, cfg.progress)
    train_rows, _ = encode(train_split, "train")
    evals = {name: encode(split, name) for name, split in evaluated.items()}

    # 6. Trainer: LayerDrop's losses, or the named depths' (each learning from the teacher)
    args = training_arguments(cfg.optim, ckpt_dir, seed=cfg.seed, save_steps=cfg.save_steps,
                              logging_steps=cfg.logging_steps, progress=cfg.progress, layerdrop_on=layerdrop_on)
    served = cfg.served
    losses: dict[str, Any] = dict(self_distill=ld.self_distill, distill_weight=ld.distill_weight,
                                  distill_temperature=ld.distill_temperature)
    if depths:
        teacher = _teacher(cfg, model, tokenizer, train_split.label_names if classify else None, args.device)
        losses = dict(depths=depths, each_step=served.each_step, sandwich=served.sandwich, teacher=teacher,
                      task_weight=served.alpha_task, distill_weight=served.alpha_kd,
                      distill_temperature=served.temperature, hidden_weight=served.alpha_hidden)
    trainer = LayerDropTrainer(
        model=model, args=args, train_dataset=Rows(train_rows), data_collator=collator,
        callbacks=[MarkCheckpointComplete(earlier)], head_lr=cfg.optim.head_lr, rate_learner=learner,
        rate_lr=ld.rate_lr,
        **losses,
    )
    if layerdrop_on:
        callback = attach(trainer, schedule=ld.schedule, warmup_steps=ld.rate_warmup_steps, gamma=ld.pld_gamma)
        if resume_from:
            callback.restore(resume_from)
        if cfg.record_masks:  # written before a checkpoint is marked complete, so a resume finds every mask
            callbacks = trainer.callback_handler.callbacks
            marker = next(i for i, c in enumerate(callbacks) if isinstance(c, MarkCheckpointComplete))
            callbacks.insert(marker, MaskLogCallback(out / MASK_FILE, resume=resume_from is not None))
    trained = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    # 6b. each named depth's own head: fitted on the training rows, kept where it beats the shared head on the
    #     validation rows (layerdrop heads), before anything is scored
    heads: tuple[DepthHead, ...] = ()
    heads_seconds = 0.0
    if depths and _fits_heads(cfg):
        started = time.time()
        valid_rows = evals["valid"][0] if "valid" in evals else encode(valid_split, "valid")[0]
        heads, chosen = fit_depth_heads(cast(Classifier, model.eval()), train_rows, valid_rows, collator, depths,
                                        batch_size=max(cfg.optim.batch_size, 64))
        model.heads = nn.ModuleDict(chosen).eval()
        heads_seconds = time.time() - started

    # 7. evaluate at full depth, and at each named depth
    def scores() -> dict[str, float]:
        return full_depth_metrics(trainer, model.eval(), cfg.task, evals, evaluated, collator,
                                  long_doc=inputs.long_doc, batch_size=max(cfg.optim.batch_size, 64))

    metrics = scores()
    for depth, kept in depths.items():
        with only_layers(model, kept):
            metrics.update({f"{name}_at_{depth}": value for name, value in scores().items()})

    # 8. export, atomically (under several ranks, rank 0 writes the files)
    main_process = trainer.is_world_process_zero()
    if main_process:
        _export(cfg, model, tokenizer, metrics, learner, train_split.label_names if classify else None,
                train_seconds=earlier + trained.metrics["train_runtime"] + heads_seconds, heads=heads)
    return TrainResult(out=out, model_dir=out / "model", metrics=metrics, steps=trainer.state.global_step,
                       seconds=time.time() - start, resumed_from=resume_from, main_process=main_process)


def _depth_layers(cfg: TrainConfig, model: nn.Module, tokenizer: Any) -> dict[int, tuple[int, ...]]:
    """The layers of each named depth below the full one, by ``--strategy`` (calibrated ones on the
    validation rows of ``--data``); every depth keeps layer 0, as a served view must."""
    served = cfg.served
    assert served.depths is not None
    site = find_layers(model)
    num_layers = len(site.layers)
    shallower = [d for d in parse_depths(served.depths, num_layers) if d < num_layers]
    if not shallower:
        raise InputError(f"--depths {served.depths!r} names only the full depth ({num_layers} layers): name the "
                         f"shallower depths to serve too, like {num_layers},{max(num_layers * 2 // 3, 1)},"
                         f"{max(num_layers // 2, 1)}")
    from layerdrop.cut.scored import choose_with, strategy_scorers
    from layerdrop.cut.strategies import lookup

    scorers = strategy_scorers(model, tokenizer, cfg.data) if lookup(served.strategy).needs_data else None
    kept = {d: choose_with(served.strategy, model, d, scorers).kept for d in shallower}
    dropped = {d: list(layers) for d, layers in kept.items() if layers[0] != 0}
    if dropped:
        raise InputError(f"--strategy {served.strategy} drops layer 0 at depth(s) {dropped}; a served depth keeps it "
                         "(a view of the model, and a decoder's KV cache, read it there): choose top or every-other")
    return kept


def _teacher(cfg: TrainConfig, model: nn.Module, tokenizer: Any, label_names: Sequence[str] | None,
             device: Any) -> nn.Module | None:
    """``--teacher``, frozen in eval mode on ``device``, once it is known to do this run's task with its labels,
    tokenizer and output vocabulary (and width, to match hidden states); ``None`` without one (the full network
    teaches in the same step)."""
    if cfg.served.teacher is None:
        return None
    folder = local_folder(cfg.served.teacher)
    teacher = load_saved(cfg.served.teacher).eval().to(device).requires_grad_(False)
    task = task_of(teacher)
    if task != cfg.task:
        raise InputError(f"the teacher {cfg.served.teacher} does {task}, this run {cfg.task}: give a teacher "
                         f"trained for {cfg.task}")
    check_tokenizers(from_pretrained(AutoTokenizer, folder), tokenizer, cfg.model)
    if label_names is not None:
        check_labels(teacher, folder, label_names)
    check_shapes(teacher, model, task, hidden=cfg.served.alpha_hidden > 0)
    return teacher


def _export(cfg: TrainConfig, model: nn.Module, tokenizer: Any, metrics: dict[str, float], learner: Any,
            label_names: Sequence[str] | None, *, train_seconds: float, heads: Sequence[DepthHead] = ()) -> None:
    """Export the run with its ``layerdrop.json`` record; ``train_seconds`` is the run's training time,
    every invocation of a resumed run and fitting the ``heads`` included."""
    meta: dict[str, Any] = {"trained_with": _recorded(cfg), "metrics": metrics,
                            "train_seconds": round(train_seconds, 1)}
    if heads:  # what each depth's own head scored against the shared one
        meta["depth_heads_fit"] = [dataclasses.asdict(h) for h in heads]
    if learner is not None:  # into the config too, so the data-driven strategy finds them
        meta["learned_rates"] = list(record_learned_rates(model))
    if label_names:
        meta["label_names"] = list(label_names)
    export(Path(cfg.out), model, tokenizer, cfg.task, meta, metrics, cfg.inputs.max_length)
