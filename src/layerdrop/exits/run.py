"""Early exit in a batch: each row leaves at its own depth, and only the unfinished rows go on.

A model trained to serve nested depths (``layerdrop train --depths``, the bottom-*k* rule: depth *k*
is the first *k* layers and the shared head) is scored after each served depth. A row whose exit
rule fires (:mod:`layerdrop.exits.rules`) keeps that exit's answer; the others are gathered into a
smaller batch, their padding trimmed where every one of them is padded, and the next stage runs
only the layers between the two depths, starting from the hidden states the last stage ended with
(a stand-in block hands them on in place of the embeddings' output; no layer before it runs again).
Where the next depth's layers do not continue the last depth's (every-other depths), or the model
normalises its last hidden states (a decoder's final norm), the next stage starts again from the
embeddings and runs that depth's layers: a cascade. :func:`plan` says which each stage is.

:func:`early_exit` serves :class:`layerdrop.models.Classifier` heads (what ``layerdrop train classification``
saves): the head is applied to the pooled hidden states at every exit (the depth's own head where ``layerdrop
heads`` fitted one, else the shared one); :mod:`layerdrop.exits.spans` serves question answering with the same
stage loop, :func:`run_stages`. Nothing about the model changes; every stage runs a shell of it
(:func:`layerdrop.cut.prune.with_blocks`) that shares its modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from layerdrop.core.arch import find_layers
from layerdrop.core.depths import check_depth, layers_at, recorded_depths
from layerdrop.cut.prune import with_blocks
from layerdrop.errors import InputError
from layerdrop.evaluation.eval_mode import require_eval
from layerdrop.models.loading import Classifier, pool

from .rules import ExitRule

__all__ = ["AtExit", "Exited", "Stage", "early_exit", "exit_index", "exits_of", "leaving", "plan", "resumable",
           "run_stages", "simulate", "stages_of", "sureness"]


@dataclass(frozen=True)
class Stage:
    """What one exit runs before its head scores the rows still in the batch."""

    depth: int
    """The served depth the stage ends at."""
    blocks: tuple[int, ...]
    """The layers it runs (original numbering)."""
    resumes: bool
    """Whether it continues the previous stage's hidden states (nested depths), or starts again from the
    embeddings (a cascade)."""


def plan(kept: Mapping[int, Sequence[int]], *, can_resume: bool = True) -> tuple[Stage, ...]:
    """The stages of early exit over the depths of ``kept`` (depth -> its layers), shallowest first: a stage
    resumes where its depth's layers begin with the previous depth's and ``can_resume`` allows it.

    >>> [(s.depth, s.blocks, s.resumes) for s in plan({6: range(6), 3: (0, 1, 2), 4: (0, 1, 2, 3)})]
    [(3, (0, 1, 2), False), (4, (3,), True), (6, (4, 5), True)]
    >>> [(s.depth, s.blocks, s.resumes) for s in plan({6: range(6), 3: (0, 3, 5)})]
    [(3, (0, 3, 5), False), (6, (0, 1, 2, 3, 4, 5), False)]
    """
    if not kept:
        raise InputError("early exit needs at least one depth")
    stages: list[Stage] = []
    before: tuple[int, ...] = ()
    for depth in sorted(kept):
        layers = tuple(kept[depth])
        nested = can_resume and bool(before) and layers[:len(before)] == before
        stages.append(Stage(depth, layers[len(before):] if nested else layers, nested))
        before = layers
    return tuple(stages)


def resumable(model: nn.Module) -> bool:
    """Whether a stage can continue the hidden states a shallower one ended with: true for the encoders of the
    architecture table (their block list's output is the last hidden states, with no final norm)."""
    arch = find_layers(model).arch
    return arch is not None and not arch.decoder


def exits_of(model: nn.Module, depths: Sequence[int] | None = None) -> dict[int, tuple[int, ...]]:
    """Each exit's layers: the depths the model records (``layerdrop train --depths``) or ``depths``, and the
    full depth, with the layers the model was trained to serve at each (else every-other)."""
    num_layers = len(find_layers(model).layers)
    config = getattr(model, "config", None)
    named = tuple(depths) if depths else tuple(recorded_depths(config))
    for d in named:
        check_depth(d, num_layers)
    return {d: layers_at(config, num_layers, d) for d in sorted({*named, num_layers})}


def stages_of(model: nn.Module, depths: Sequence[int] | None = None) -> tuple[Stage, ...]:
    """The stages that run the exits of :func:`exits_of` on ``model``: nested depths resume, others run as a
    cascade."""
    return plan(exits_of(model, depths), can_resume=resumable(model))


@dataclass(frozen=True)
class Exited:
    """What early exit answered for a batch."""

    logits: torch.Tensor
    """``(B, C)``: each row's logits at the exit it left by."""
    depth: torch.Tensor
    """``(B,)``: the depth each row left at."""
    layers_run: torch.Tensor
    """``(B,)``: the layers each row ran (a cascade runs some twice)."""
    probs: torch.Tensor
    """``(B, E, C)``: the probabilities at every exit, NaN at the exits a row never reached."""


class _Resume(nn.Module):
    """First block of a resuming stage: hands on the previous stage's hidden states in place of the
    embeddings' output, which it receives and ignores."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden  # (B, T, H), a plain attribute: no parameter, no buffer

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if hidden_states.shape != self.hidden.shape:
            raise RuntimeError(f"resumed hidden states {tuple(self.hidden.shape)} do not fit the batch "
                               f"{tuple(hidden_states.shape)}")
        return self.hidden


def _right_padded_length(mask: torch.Tensor) -> int:
    """Columns to keep: up to the last one any row attends to, when every row is right-padded
    (each row's ones come first); else all of them (left padding shifts positions if cut)."""
    lengths = mask.sum(1)  # (B,)
    columns = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    right = bool(((columns < lengths[:, None]) == mask.bool()).all())
    return int(lengths.max()) if right else mask.shape[1]


AtExit = Callable[[int, Stage, torch.Tensor, Mapping[str, torch.Tensor], torch.Tensor, tuple[int, ...], int, bool],
                  torch.Tensor]
"""What a task does at an exit: ``(exit index, stage, rows still running, their inputs and last hidden states
(b, T, H), the layers those passed through, the layers run so far, whether it is the last exit) -> (b,)``, the rows
that leave there (every one at the last exit). It scores the rows and keeps the answers of those that leave."""


def run_stages(model: nn.Module, body: Callable[[nn.Module], nn.Module], inputs: Mapping[str, torch.Tensor],
               stages: Sequence[Stage], at_exit: AtExit) -> None:
    """The loop every early exit shares: run each stage on the rows still in the batch (``body(shell)`` is the
    part of a shell of ``model`` that returns ``last_hidden_state``), ask ``at_exit`` which rows leave, gather the
    others and trim the padding columns every one of them has, and stop when no row is left."""
    site = find_layers(model)  # once: it walks every module
    layers = site.layers
    first = next(iter(inputs.values()))
    active = torch.arange(first.shape[0], device=first.device)
    hidden: torch.Tensor | None = None
    ran = 0
    reached: tuple[int, ...] = ()  # the layers the stage's hidden states have passed through
    for e, stage in enumerate(stages):
        blocks = [layers[i] for i in stage.blocks]
        reached = (*reached, *stage.blocks) if stage.resumes else stage.blocks
        if stage.resumes:
            assert hidden is not None  # a resuming stage follows one that ran
            blocks = [_Resume(hidden), *blocks]
        hidden = body(with_blocks(model, blocks, site))(**inputs).last_hidden_state  # (b, T, H)
        ran += len(stage.blocks)  # a cascade's row has also run every earlier stage
        stay = ~at_exit(e, stage, active, inputs, hidden, reached, ran, e == len(stages) - 1)  # (b,)
        if not bool(stay.any()):
            break
        active, hidden = active[stay], hidden[stay]
        inputs = {k: v[stay] for k, v in inputs.items()}
        if "attention_mask" in inputs:  # drop the columns every remaining row pads
            length = _right_padded_length(inputs["attention_mask"])
            inputs = {k: v[:, :length] if v.dim() == 2 else v for k, v in inputs.items()}
            hidden = hidden[:, :length]


def leaving(rule: ExitRule | None, threshold: float, sure: Callable[[ExitRule], torch.Tensor], rows: int,
            last: bool, device: torch.device) -> torch.Tensor:
    """Which of ``rows`` leave at an exit: every one at the last, none without a rule, else those whose sureness
    (``sure(rule)``, computed only when asked) reaches ``threshold``. ``(rows,)`` booleans."""
    if last or rule is None:
        return torch.full((rows,), last, dtype=torch.bool, device=device)
    return sure(rule) >= threshold


@torch.no_grad()
def early_exit(model: Classifier, batch: Mapping[str, torch.Tensor], stages: Sequence[Stage],
               rule: ExitRule | None = None, threshold: float = math.inf, *,
               on_leave: Callable[[torch.Tensor, torch.Tensor, int], object] | None = None) -> Exited:
    """Run ``batch`` (tokenizer outputs; labels are ignored) through ``stages``; a row leaves at the first exit
    where ``rule`` scores it at least ``threshold``, and at the last exit in any case (no rule: every row runs
    every exit, which costs one full forward for nested stages). ``on_leave(rows, logits, depth)`` hears of the
    rows that left at each exit while the others go on (a server answers them then). ``model`` must be in eval
    mode."""
    if not isinstance(model, Classifier):
        raise InputError("early exit needs a classifier saved by layerdrop train classification "
                         f"(a pooled head on an encoder), got {type(model).__name__}")
    require_eval(model, "early_exit")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    first = next(iter(inputs.values()))
    rows, device = first.shape[0], first.device
    classes = model.head.out_features
    logits_out = torch.empty(rows, classes, device=device)
    depth = torch.zeros(rows, dtype=torch.long, device=device)
    layers_run = torch.zeros(rows, dtype=torch.long, device=device)
    probs = torch.full((rows, len(stages), classes), math.nan, device=device)

    def at_exit(e: int, stage: Stage, active: torch.Tensor, inputs: Mapping[str, torch.Tensor],
                hidden: torch.Tensor, reached: tuple[int, ...], ran: int, last: bool) -> torch.Tensor:
        head = model.head_at(reached)  # the depth's own head, where one was fitted (layerdrop heads)
        logits = head(pool(hidden, inputs.get("attention_mask"), model.pooling)).float()  # (b, C)
        probs[active, e] = logits.softmax(-1)
        leave = leaving(rule, threshold, lambda r: r.score(probs[active, :e + 1]), len(active), last, device)
        done = active[leave]
        logits_out[done], depth[done], layers_run[done] = logits[leave], stage.depth, ran
        if on_leave is not None and len(done):
            on_leave(done, logits[leave], stage.depth)
        return leave

    run_stages(model, lambda shell: cast(Classifier, shell).encoder, inputs, stages, at_exit)
    return Exited(logits=logits_out, depth=depth, layers_run=layers_run, probs=probs)


def sureness(probs: torch.Tensor, rule: ExitRule) -> torch.Tensor:
    """Each row's sureness at every exit, from its probabilities at every exit ``(N, E, C)``, as
    :func:`early_exit` scores it there (each exit seeing the ones before it): ``(N, E)``."""
    return torch.stack([rule.score(probs[:, :e + 1]) for e in range(probs.shape[1])], 1)


def exit_index(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The first exit whose sureness ``(N, E)`` reaches ``threshold``, else the last: ``(N,)`` exit indices."""
    fires = scores >= threshold
    fires[:, -1] = True
    return fires.float().argmax(1)  # the first True


def simulate(probs: torch.Tensor, rule: ExitRule, threshold: float) -> torch.Tensor:
    """The exit each row leaves at, from its probabilities at every exit ``(N, E, C)``, as :func:`early_exit`
    decides it: the first exit that scores at least ``threshold``, else the last. ``(N,)`` exit indices.

    >>> from layerdrop.exits.rules import RULES
    >>> probs = torch.tensor([[[0.99, 0.01], [0.6, 0.4]], [[0.7, 0.3], [0.8, 0.2]]])
    >>> simulate(probs, RULES["max-prob"], 0.9).tolist()
    [0, 1]
    """
    return exit_index(sureness(probs, rule), threshold)
