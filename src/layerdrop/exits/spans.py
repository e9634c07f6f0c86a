"""Early exit for extractive question answering: a window leaves when its answer's start and end are both sure.

The stages are those of classification (:func:`layerdrop.exits.run.run_stages`: nested depths resume, the
others run as a cascade); at each exit the model's own span head (``qa_outputs``, as every
``*ForQuestionAnswering`` of the architecture table has) scores the tokens of the windows still running. A rule
of the table (:mod:`layerdrop.exits.rules`) scores the start and the end distributions separately, each a
softmax over the window's tokens, and the window's sureness is the smaller of the two: it leaves when both are
sure (for ``patience``: when both its start and its end token have agreed for that many exits). A question's
answer is decoded from its windows, each at the exit it left by (:func:`layerdrop.evaluation.qa.best_answer`),
and scored by F1: :class:`Spans` gives calibration (:mod:`layerdrop.exits.calibrate`) the questions whose F1 is
below full depth's as its harmful rows, so the guarantee bounds the F1 lost.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from layerdrop.errors import InputError
from layerdrop.evaluation.eval_mode import require_eval
from layerdrop.evaluation.qa import best_answer, f1, is_qa_model, without_targets

from .rules import ExitRule
from .run import Stage, leaving, run_stages

__all__ = ["ExitedSpans", "Spans", "early_exit_spans", "score_spans", "span_head", "span_sureness"]


def span_head(model: nn.Module) -> nn.Linear:
    """The span head of a question-answering model: ``qa_outputs``, two scores per token (start, end)."""
    head = getattr(model, "qa_outputs", None) if is_qa_model(model) else None
    if not isinstance(head, nn.Linear):
        raise InputError(f"early exit for question answering needs a *ForQuestionAnswering model with a qa_outputs "
                         f"head (layerdrop train qa saves one), got {type(model).__name__}")
    if head.out_features != 2:
        raise InputError(f"{type(model).__name__}'s qa_outputs gives {head.out_features} scores per token, not 2 "
                         "(start, end): train it with layerdrop train qa, which sets num_labels=2")
    return head


def span_sureness(logits: torch.Tensor, mask: torch.Tensor, rule: ExitRule) -> torch.Tensor:
    """Each window's sureness from its start and end logits at the exits run so far ``(b, E, 2, T)`` and its
    attention mask ``(b, T)``: the smaller of ``rule``'s scores of the start and of the end distribution, each a
    softmax over the window's own tokens (so padding changes nothing, not even entropy's ``log n``). ``(b,)``.
    Windows with the same mask are scored together (most windows of a QA file are full)."""
    attended = mask.bool()  # (b, T)
    sure = torch.empty(len(mask), device=logits.device)
    patterns, group = torch.unique(attended, dim=0, return_inverse=True)  # (P, T), (b,)
    for g, columns in enumerate(patterns):
        rows = (group == g).nonzero().squeeze(1)  # (g,)
        kept = logits[rows][..., columns]  # (g, E, 2, n): the windows' own tokens
        probs = kept.softmax(-1).transpose(1, 2).flatten(0, 1)  # start and end as rows: (2g, E, n)
        sure[rows] = rule.score(probs).view(len(rows), 2).amin(1)  # (2g,) -> (g, 2) -> (g,)
    return sure


@dataclass(frozen=True)
class ExitedSpans:
    """What early exit answered for a batch of windows."""

    start_logits: torch.Tensor
    """``(B, T)``: each window's start logits at the exit it left by (``-inf`` where padding was trimmed)."""
    end_logits: torch.Tensor
    """``(B, T)``: the same for the end."""
    depth: torch.Tensor
    """``(B,)``: the depth each window left at."""
    layers_run: torch.Tensor
    """``(B,)``: the layers each window ran (a cascade runs some twice)."""
    every: torch.Tensor
    """``(B, E, 2, T)``: start and end logits at every exit; NaN at the exits a window never reached and in the
    padding columns trimmed before an exit it reached."""


@torch.no_grad()
def early_exit_spans(model: nn.Module, batch: Mapping[str, torch.Tensor], stages: Sequence[Stage],
                     rule: ExitRule | None = None, threshold: float = math.inf) -> ExitedSpans:
    """Run the windows ``batch`` (tokenizer outputs; answer positions are ignored) through ``stages``; a window
    leaves at the first exit where ``rule`` scores both its start and its end at least ``threshold``, and at the
    last exit in any case (no rule: every window runs every exit). ``model`` must be in eval mode."""
    head = span_head(model)
    require_eval(model, "early_exit_spans")
    inputs = without_targets(dict(batch))
    first = next(iter(inputs.values()))
    rows, width, device = first.shape[0], first.shape[1], first.device
    mask = inputs.get("attention_mask", torch.ones(rows, width, dtype=torch.long, device=device))  # (B, T)
    out = torch.full((rows, 2, width), -math.inf, device=device)
    depth = torch.zeros(rows, dtype=torch.long, device=device)
    layers_run = torch.zeros(rows, dtype=torch.long, device=device)
    every = torch.full((rows, len(stages), 2, width), math.nan, device=device)

    def at_exit(e: int, stage: Stage, active: torch.Tensor, inputs: Mapping[str, torch.Tensor],
                hidden: torch.Tensor, reached: tuple[int, ...], ran: int, last: bool) -> torch.Tensor:
        logits = head(hidden).float().transpose(1, 2)  # (b, t, 2) -> (b, 2, t)
        every[active, e, :, :logits.shape[-1]] = logits
        leave = leaving(rule, threshold, lambda r: span_sureness(every[active, :e + 1], mask[active], r),
                        len(active), last, device)
        done = active[leave]
        out[done, :, :logits.shape[-1]], depth[done], layers_run[done] = logits[leave], stage.depth, ran
        return leave

    run_stages(model, lambda shell: cast(nn.Module, shell.base_model), inputs, stages, at_exit)
    return ExitedSpans(start_logits=out[:, 0], end_logits=out[:, 1], depth=depth, layers_run=layers_run,
                       every=every)


@dataclass(frozen=True)
class Spans:
    """Question answering's rows for calibration (:class:`layerdrop.exits.calibrate.Scored`): the windows
    (units) scored at every exit, and the questions (rows) their answers are decoded for."""

    logits: torch.Tensor
    """``(U, E, 2, T)``: each window's start and end logits at every exit (``-inf`` in the columns that pad the
    batches to one width)."""
    mask: torch.Tensor
    """``(U, T)``: each window's attention mask."""
    example_of: tuple[int, ...]
    """The question of each window."""
    offsets: tuple[Sequence[tuple[int, int] | None], ...]
    """Each window's character span per token (``None`` outside the context)."""
    contexts: tuple[str, ...]
    """Each question's context."""
    answers: tuple[tuple[str, ...], ...]
    """Each question's gold answers (empty: unanswerable)."""
    with_null: bool = False
    """Whether an empty answer may be given (SQuAD 2.0)."""
    metric: str = "f1"
    """What :meth:`quality` measures."""
    _f1: dict[tuple[int, ...], float] = field(default_factory=dict, init=False, compare=False, repr=False)
    """A memo of a pure function of the fields above: (question, the exit of each of its windows) -> its F1;
    thresholds share most of them. Each instance has its own (``dataclasses.replace`` starts a new one)."""

    def __len__(self) -> int:
        return len(self.contexts)

    def sureness(self, rule: ExitRule) -> torch.Tensor:
        return torch.stack([span_sureness(self.logits[:, :e + 1], self.mask, rule)
                            for e in range(self.logits.shape[1])], 1)  # (U, E)

    @functools.cached_property
    def windows(self) -> tuple[tuple[int, ...], ...]:
        """Each question's windows (indices into the units), derived once from :attr:`example_of`."""
        windows: list[list[int]] = [[] for _ in self.contexts]
        for w, q in enumerate(self.example_of):
            windows[q].append(w)
        return tuple(map(tuple, windows))

    def quality(self, exit_at: torch.Tensor) -> torch.Tensor:
        at = exit_at.tolist()
        scores = []
        for q, ws in enumerate(self.windows):
            key = (q, *(at[w] for w in ws))
            if key not in self._f1:
                tokens = [self.logits[w, at[w]][:, self.mask[w].bool()] for w in ws]  # (2, n) each: its tokens
                spans = [(t[0], t[1], self.offsets[w]) for t, w in zip(tokens, ws, strict=True)]
                answer = best_answer(self.contexts[q], spans, with_null=self.with_null)
                self._f1[key] = f1(answer, self.answers[q])
            scores.append(self._f1[key])
        return torch.tensor(scores)


def score_spans(model: nn.Module, encoding: Any, dataset: Any, collate: Callable[[list[dict[str, Any]]], Any],
                stages: Sequence[Stage], *, batch_size: int = 32, progress: bool = False,
                desc: str = "windows") -> tuple[Spans, list[dict[str, torch.Tensor]]]:
    """Every window of ``encoding`` (:func:`layerdrop.data.encode_qa` of the :class:`layerdrop.data.QADataset`
    ``dataset``) scored at every exit of ``stages``, as :class:`Spans`, and the batches that ran."""
    batches, logits, masks = [], [], []
    for i in tqdm(range(0, len(encoding.rows), batch_size), desc=desc, disable=not progress):
        batch = collate([without_targets(r) for r in encoding.rows[i:i + batch_size]])
        batches.append(batch)
        logits.append(early_exit_spans(model, batch, stages).every.cpu())  # (b, E, 2, T)
        masks.append(batch["attention_mask"].cpu())
    width = max((m.shape[1] for m in masks), default=0)
    logits = [torch.nn.functional.pad(x, (0, width - x.shape[-1]), value=-math.inf) for x in logits]
    masks = [torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]
    return Spans(torch.cat(logits), torch.cat(masks), tuple(encoding.example_of), tuple(encoding.offsets),
                 tuple(dataset.texts), tuple(tuple(text for text, _ in gold) for gold in dataset.answers),
                 dataset.with_null), batches
