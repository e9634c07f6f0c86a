"""Choosing layers with a dataset: the validation score search needs and the calibration batches the
importance metrics need, both from one :class:`~layerdrop.evaluation.measure.Scorers`, so that every
strategy of :data:`~layerdrop.cut.strategies.STRATEGIES` works wherever a user can name ``--data``
(``prune``, ``generate``, ``serve``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from layerdrop.errors import InputError
from layerdrop.evaluation.measure import Scorers, validation_scorers

from .strategies import Choice, choose, lookup

__all__ = ["check_data", "choose_with", "strategy_scorers"]

NEEDS = {"score": "data (a validation score)", "batches": "calibration data"}
"""How a strategy's need for data is named in an error."""


def check_data(strategy: str, data: str | None) -> None:
    """Refuse, before anything is loaded, a strategy that needs data when no ``--data`` was given."""
    needs = lookup(strategy).needs
    if needs is not None and not data:
        raise InputError(f"--strategy {strategy} needs {NEEDS[needs]}: pass --data (data=), a dataset name or file "
                         "whose validation rows score or calibrate the choice")


def strategy_scorers(model: nn.Module, tokenizer: Any, data: str, *, rows: int = 64) -> Scorers:
    """Small scorers for choosing layers when generating or serving: ``rows`` validation rows, 8 per batch,
    up to 128 tokens (or the model's context)."""
    block = min(128, getattr(model.config, "max_position_embeddings", None) or 128)
    return validation_scorers(model, tokenizer, data, rows=rows, batch_size=8, max_length=block)


def choose_with(strategy: str, model: nn.Module, depth: int, scorers: Scorers | None, *,
                search_budget: int = 200) -> Choice:
    """:func:`~layerdrop.cut.strategies.choose` with what ``strategy`` needs taken from ``scorers``
    (search: the validation score, its direction, the test score recorded; the importance metrics: the
    calibration batches); a strategy that needs data without ``scorers`` is an error naming ``--data``."""
    check_data(strategy, "given" if scorers is not None else None)
    row = lookup(strategy)
    if scorers is None:
        return choose(strategy, model, depth)
    options: dict[str, Any] = {}
    if row.needs == "score":
        options = {"budget": search_budget, "higher_is_better": scorers.higher_is_better, "test_score": scorers.test}
    return choose(strategy, model, depth, score=scorers.valid, batches=scorers.calibration, **options)
