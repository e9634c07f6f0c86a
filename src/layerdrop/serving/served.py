"""The served model: loaded once, and a view of its weights for every served depth.

A model trained with LayerDrop (Fan et al. 2020, "Reducing Transformer Depth on Demand with
Structured Dropout") works at every depth, so each depth is a *view* of the same weights
(:func:`layerdrop.view`: the layers the model was trained to serve, every-other, or a strategy's; no
parameter copied).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from torch import nn
from transformers import AutoTokenizer

from layerdrop.config.recipes import ServeConfig
from layerdrop.core.arch import find_layers
from layerdrop.core.depths import parse_depths
from layerdrop.cut.prune import view
from layerdrop.cut.strategies import lookup, own_strategy
from layerdrop.errors import InputError
from layerdrop.evaluation.measure import parameters_at
from layerdrop.exits import Exits, Stage, check_served, recorded_exits, stages_of
from layerdrop.models.loading import (
    BUNDLED_MODELS,
    Classifier,
    from_pretrained,
    is_classifier,
    load_saved,
    local_folder,
    read_meta,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["Served", "load_served", "served_name"]


@dataclass(frozen=True)
class Served:
    """A loaded model and its served depths: one view per depth, all sharing the model's weights."""

    name: str
    task: Literal["classification", "generation"]
    model: nn.Module
    tokenizer: Any
    views: dict[int, nn.Module]
    """Depth -> a weight-sharing view running that depth's layers (:attr:`kept`: the strategy's)."""
    kept: dict[int, tuple[int, ...]]
    parameters: dict[int, int]
    quality: dict[int, float | None]
    """Depth -> the recorded quality (``None`` where nothing was measured)."""
    metric: str | None
    data: str | None
    """What :attr:`quality` measured, and on which data."""
    labels: tuple[str, ...] = ()
    max_length: int = 512
    """Tokens per input: a classifier's trained length, or a generator's context."""
    exits: Exits | None = None
    """The calibrated early exit the model records (``layerdrop exits``), for ``"depth": "auto"``."""
    exit_stages: tuple[Stage, ...] = ()
    """The stages that run :attr:`exits` (empty when there are none, or :attr:`exits_error`)."""
    exits_error: str | None = None
    """Why ``"depth": "auto"`` cannot be served, when it cannot."""


def load_served(cfg: ServeConfig) -> Served:
    """Load ``cfg.model`` and build its views; a folder that is not a model is a clear error."""
    model = load_saved(cfg.model).eval()
    folder = local_folder(cfg.model)
    tokenizer = from_pretrained(AutoTokenizer, folder)
    site = find_layers(model)
    num_layers = len(site.layers)
    if is_classifier(model):
        task: Literal["classification", "generation"] = "classification"
    elif site.arch is not None and site.arch.decoder and hasattr(model, "generate"):
        task = "generation"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        raise InputError(f"{cfg.model} is neither a classifier (layerdrop train classification) nor a causal LM: "
                         "serve has nothing to answer with")
    depths = list(parse_depths(cfg.depths, num_layers) if cfg.depths else range(num_layers, 0, -1))
    strategy = cfg.strategy or own_strategy(model)
    kept = _choose_layers(cfg, strategy, model, tokenizer, depths)
    meta = read_meta(folder) if Path(folder).is_dir() else {}
    quality, metric, data = _recorded_quality(cfg.sweep, strategy, meta, num_layers, depths, folder)
    config = model.config
    if task == "classification":
        id2label = getattr(config, "id2label", None) or {}
        if isinstance(model, Classifier):
            n = model.head.out_features
        else:  # an HF *ForSequenceClassification
            num_labels = cast("PreTrainedModel", model).config.num_labels
            assert num_labels is not None  # a config names its labels (PreTrainedConfig makes 2 when given none)
            n = num_labels
        labels = tuple(meta.get("label_names") or [id2label.get(i, f"LABEL_{i}") for i in range(n)])
        length = (meta.get("trained_with") or {}).get("max_length") or min(tokenizer.model_max_length, 512)
    else:
        labels = ()
        length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
    name = cfg.name or served_name(cfg.model, folder)
    exits, stages, why = _exits(model, depths) if task == "classification" else (None, (), None)
    return Served(name=name, task=task, model=model, tokenizer=tokenizer,
                  views={d: model if d == num_layers else view(model, keep=kept[d]) for d in depths}, kept=kept,
                  parameters={d: parameters_at(model, kept[d]) for d in depths}, quality=quality, metric=metric,
                  data=data, labels=labels, max_length=int(length), exits=exits, exit_stages=stages,
                  exits_error=why)


def _exits(model: nn.Module, depths: Sequence[int]) -> tuple[Exits | None, tuple[Stage, ...], str | None]:
    """The model's calibrated exits, their stages, and why they cannot be served (``None`` when they can)."""
    exits = recorded_exits(getattr(model, "config", None))
    if exits is None:
        return None, (), ("this model records no calibrated exits: run layerdrop exits MODEL --data DATA, then "
                          "serve it again")
    if not isinstance(model, Classifier):
        return exits, (), "early exit needs a layerdrop classifier (layerdrop train classification)"
    try:
        check_served(exits, depths)
    except InputError as err:
        return exits, (), str(err)
    return exits, stages_of(model, exits.depths), None


def _choose_layers(cfg: ServeConfig, strategy: str, model: nn.Module, tokenizer: Any, depths: Sequence[int]
                   ) -> dict[int, tuple[int, ...]]:
    """The layers each depth keeps by ``strategy``: one that needs no data (every-other, the layers the model was
    trained to serve, ...), or one calibrated or scored on ``--data``'s validation rows. A view must keep layer 0
    (a KV cache's length is read there)."""
    from layerdrop.cut.scored import check_data, choose_with, strategy_scorers

    check_data(strategy, cfg.data)
    needs_data = lookup(strategy).needs_data
    if cfg.sweep and needs_data:
        raise InputError(f"--sweep measured its own choice of layers; --strategy {strategy} chooses again here: "
                         "leave --sweep out")
    scorers = strategy_scorers(model, tokenizer, cfg.data) if needs_data and cfg.data else None
    kept = {d: choose_with(strategy, model, d, scorers).kept for d in depths}
    for d, layers in kept.items():
        if layers[0] != 0:
            raise InputError(f"--strategy {strategy} drops layer 0 at depth {d} ({list(layers)}); "
                             "a served depth must keep it: choose other --depths or another strategy")
    return kept


def served_name(model: str, folder: str) -> str:
    """The name a model is served under: a bundled name as given (not its cache folder), else the folder's
    name, or its parent's for a run's ``model`` folder.

    >>> served_name("smollm2-135m", "/cache/smollm2-135m-0.1.2"), served_name("runs/rt/model", "runs/rt/model")
    ('smollm2-135m', 'rt')
    """
    path = Path(folder)
    if model in BUNDLED_MODELS:
        return model
    return path.parent.name if path.name == "model" and path.parent.name else path.name or model


def _recorded_quality(sweep: str, strategy: str, meta: dict[str, Any], num_layers: int, depths: Sequence[int],
                      folder: str) -> tuple[dict[int, float | None], str | None, str | None]:
    """Each depth's quality from a sweep's points for ``strategy``, else the test scores recorded in
    ``layerdrop.json`` (the full depth's, and each named depth's); ``None`` for every depth with no measurement."""
    quality: dict[int, float | None] = dict.fromkeys(depths)
    if sweep:
        path = Path(sweep)
        record = json.loads((path / "sweep.json" if path.is_dir() else path).read_text())
        points = {p["depth"]: p["score"] for p in record["points"].get(strategy, [])}
        if not points:
            raise InputError(f"{sweep} has no {strategy} points, the layers served here: run layerdrop sweep "
                             f"with --strategies {strategy}")
        swept = Path(local_folder(record["config"]["model"]))
        if max(points) != num_layers or (swept.is_dir() and swept.resolve() != Path(folder).resolve()):
            raise InputError(f"--sweep {sweep} measured {record['config']['model']} ({max(points)} layers), not this "
                             f"model ({folder}, {num_layers} layers): sweep this model (layerdrop sweep MODEL "
                             f"--strategies {strategy}) or leave --sweep out")
        return {d: points.get(d) for d in depths}, record["metric"], record["config"]["data"]
    metrics = meta.get("metrics") or {}
    for key in ("test_accuracy", "test_perplexity", "test_f1"):
        if key in metrics:  # the full depth's, and each named depth's of a run trained with --depths
            scores = {num_layers: metrics[key], **{d: metrics.get(f"{key}_at_{d}") for d in depths if d < num_layers}}
            return ({d: scores.get(d) for d in depths}, key.removeprefix("test_"),
                    (meta.get("trained_with") or {}).get("data"))
    return quality, None, None
