"""Depth per input: easy inputs leave early, with a calibrated guarantee on what that costs.

A classifier or a question-answering model trained to serve nested depths (``layerdrop train --depths 6,4,3``)
is scored after each served depth, and a row leaves at the first exit whose rule fires (:mod:`.rules`); in a
batch only the unfinished rows go on (:mod:`.run`; a question's windows: :mod:`.spans`). ``layerdrop exits``
chooses each rule's threshold on validation rows so that the accuracy (F1) lost against full depth is at most a
stated drop with a stated confidence (:mod:`.bound`, :mod:`.calibrate`) and records it in the model
(:mod:`.record`); :func:`exit_predict`, :func:`exit_spans` and the server's ``"depth": "auto"`` use that record.
``docs/early-exit.md`` explains and measures it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from layerdrop.errors import InputError
from layerdrop.evaluation.qa import is_qa_model
from layerdrop.models.loading import Classifier

from .bound import binomial_cdf, calibrate
from .calibrate import Labelled, Outcome, Scored, calibrate_rule, outcome
from .record import EXITS_KEY, Exits, check_served, record_exits, recorded_exits
from .rules import RULES, ExitRule, lookup
from .run import Exited, Stage, early_exit, exit_index, exits_of, plan, resumable, simulate, stages_of, sureness
from .spans import ExitedSpans, Spans, early_exit_spans, score_spans, span_sureness

__all__ = ["EXITS_KEY", "RULES", "ExitRule", "Exited", "ExitedSpans", "Exits", "Labelled", "Outcome", "Scored",
           "Spans", "Stage", "binomial_cdf", "calibrate", "calibrate_rule", "check_served", "early_exit",
           "early_exit_spans", "exit_index", "exit_predict", "exit_spans", "exits_of", "lookup", "outcome", "plan",
           "record_exits", "recorded_exits", "resumable", "score_spans", "simulate", "span_sureness", "stages_of",
           "sureness"]


def _recorded(model: nn.Module) -> Exits:
    """The calibrated exits ``model`` records; a one-line error that says how to calibrate where there are none."""
    exits = recorded_exits(getattr(model, "config", None))
    if exits is None:
        raise InputError("this model records no calibrated exits: run layerdrop exits MODEL --data DATA "
                         "(on the data it was trained on) first")
    return exits


def exit_predict(model: nn.Module, batch: Mapping[str, torch.Tensor], *, max_drop: float | None = None) -> Exited:
    """Early exit with the rule and threshold the model records (``layerdrop exits``), for a tolerated drop of
    ``max_drop`` accuracy points (default: the one it was calibrated for). ``model`` must be in eval mode."""
    exits = _recorded(model)
    if not isinstance(model, Classifier):
        raise InputError(f"early exit needs a layerdrop classifier, got {type(model).__name__}"
                         f"{' (for question answering: exit_spans)' if is_qa_model(model) else ''}")
    return early_exit(model, batch, stages_of(model, exits.depths), lookup(exits.rule), exits.threshold(max_drop))


def exit_spans(model: nn.Module, batch: Mapping[str, torch.Tensor], *, max_drop: float | None = None) -> ExitedSpans:
    """:func:`exit_predict` for a question-answering model's windows: each leaves at the exit the recorded rule
    allows for ``max_drop`` F1 points; decode the answers from its start and end logits as usual."""
    exits = _recorded(model)
    return early_exit_spans(model, batch, stages_of(model, exits.depths), lookup(exits.rule),
                            exits.threshold(max_drop))
