"""``layerdrop prune``: load a saved model, choose its layers, write the cut as a plain checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from torch import nn
from transformers import AutoTokenizer

from layerdrop.core.apply import only_layers, trained_with_layerdrop
from layerdrop.cut.prune import PRUNING_KEY, n_params, prune
from layerdrop.cut.scored import check_data, choose_with
from layerdrop.cut.strategies import own_strategy
from layerdrop.errors import InputError
from layerdrop.evaluation.eval_mode import require_eval
from layerdrop.evaluation.measure import validation_scorers
from layerdrop.files import atomic_dir, write_json
from layerdrop.models.loading import (
    META_FILE,
    Classifier,
    ModelFileError,
    from_pretrained,
    load_saved,
    local_folder,
    read_meta,
    save_classifier,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["prune_saved"]


def prune_saved(
    source: str,
    out: str | Path,
    *,
    depth: int | None = None,
    keep: Sequence[int] | None = None,
    strategy: str = "",
    data: str | None = None,
    rows: int = 500,
    search_budget: int = 200,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """``layerdrop prune``: load a saved model, choose its layers, and write a plain checkpoint
    plus ``layerdrop.json`` to ``out`` (atomically).

    Args:
        source: A saved model folder (or bundled name).
        out: The output folder.
        depth: Layers to keep, chosen by ``strategy`` (:func:`layerdrop.cut.strategies.choose`).
        keep: The 0-based layers to keep instead (``depth`` and ``strategy`` are then ignored).
        strategy: A name of :data:`layerdrop.cut.strategies.STRATEGIES`; empty: the model's own
            (:func:`~layerdrop.cut.strategies.own_strategy`: the layers it was trained to serve, else every-other).
        data: A dataset (name or file) whose validation rows score the choice and calibrate
            the importance metrics (:func:`layerdrop.evaluation.measure.validation_scorers`); search and
            the importance metrics need it.
        rows: Validation (and test) rows scored.
        search_budget: Most score evaluations of ``"search"``.
        seed: Seed of the data splits.
        extra: More entries for the record.
        model: ``source`` already loaded, if the caller has it (saves loading it again).

    Returns the record also written to ``layerdrop.json`` under ``"pruning"``: the kept layers
    (original indices), the strategy and its record, parameters before and after, and with
    ``data`` the validation quality of the kept layers.
    """
    if depth is None and keep is None:
        raise InputError("pass --depth K (depth=K, layers chosen by the strategy) or --keep 0,2,5 (keep=[...])")
    if keep is not None:
        depth = None
    elif strategy:
        check_data(strategy, data)  # before loading anything
    path = local_folder(source)
    if model is None:
        model = load_saved(source).eval()  # ours: scored in eval mode
    elif data is not None:
        require_eval(model, "prune_saved with data")
    strategy = strategy or own_strategy(model)
    chosen: dict[str, Any] = {"strategy": "keep"}
    if depth is not None:
        scorers = None
        if data is not None:
            scorers = validation_scorers(model, from_pretrained(AutoTokenizer, path), data, rows=rows, seed=seed)
        choice = choose_with(strategy, model, depth, scorers, search_budget=search_budget)
        chosen = {"strategy": strategy, "strategy_record": choice.record}
        if scorers is not None:
            with only_layers(model, choice.kept):
                chosen[f"validation_{scorers.metric}"] = scorers.valid(model)
        keep = choice.kept
    small = prune(model, keep=keep)
    pruning = getattr(small.config, PRUNING_KEY)
    record: dict[str, Any] = {
        "source": str(source),
        "kept_layers": pruning["kept_layers"],
        "original_num_layers": pruning["original_num_layers"],
        "strategy": chosen.pop("strategy"),
        "parameters_before": n_params(model),
        "parameters_after": n_params(small),
        "trained_with_layerdrop": trained_with_layerdrop(model),
        **chosen,
        **(extra or {}),
    }
    with atomic_dir(out) as tmp:
        meta = read_meta(path)
        meta["pruning"] = record
        if isinstance(small, Classifier):
            save_classifier(small, tmp, extra=meta)
        else:
            cast("PreTrainedModel", small).save_pretrained(tmp)  # a saved HF model, cut
            write_json(tmp / META_FILE, meta)
        try:
            tokenizer = from_pretrained(AutoTokenizer, path)
        except ModelFileError:
            raise
        except (OSError, ValueError):
            tokenizer = None  # a model saved without its tokenizer stays without one
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return record
