"""Distillation losses: soft targets (Hinton et al. 2015; DistilBERT), DistilBERT's cosine loss on the
last hidden states, and BERT-PKD's intermediate-layer matching. One KD loss serves self-distillation
(the full network teaches its sampled sub-network) and distillation from another model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["cosine_loss", "hidden_loss", "hidden_pairs", "kd_loss", "output_kd_loss", "stand_for_pairs"]


def _real(mask: torch.Tensor | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` ``(B, T, ...)`` at the positions where ``mask`` ``(B, T)`` is true, ``(N, ...)``; all of
    them without a mask."""
    return tensors if mask is None else tuple(t[mask.bool()] for t in tensors)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Knowledge distillation: KL(teacher || student) on softened predictions, times ``T**2``.

    Logits are ``(..., C)``; the KL is averaged over the predictions (those where ``mask``, of the
    logits' leading shape, is true: a language model's real tokens) and the teacher gets no
    gradient. The teacher may be the full network (self-distillation) or another model.
    """
    student_logits, teacher_logits = _real(mask, student_logits, teacher_logits)
    s = (student_logits / temperature).flatten(0, -2).log_softmax(-1)  # (N, C)
    t = (teacher_logits.detach() / temperature).flatten(0, -2).log_softmax(-1)  # (N, C)
    return nn.functional.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def output_kd_loss(student: Any, teacher: Any, temperature: float = 1.0,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`kd_loss` between two model outputs: on ``logits``, or for question answering the
    mean of the start and end logits' losses (as its task loss averages the two). ``mask`` ``(B, T)``
    selects the tokens of per-token logits ``(B, T, V)``; it is ignored for one prediction per row."""
    if getattr(student, "logits", None) is not None:
        per_token = mask is not None and student.logits.dim() == 3
        return kd_loss(student.logits, teacher.logits, temperature, mask if per_token else None)
    return (kd_loss(student.start_logits, teacher.start_logits, temperature)
            + kd_loss(student.end_logits, teacher.end_logits, temperature)) / 2


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DistilBERT's cosine loss: ``1 - cos`` between the student's and the teacher's hidden states
    ``(B, T, H)``, averaged over the tokens where ``mask`` ``(B, T)`` is true."""
    student, teacher = _real(mask, student, teacher)  # (N, H)
    return (1 - nn.functional.cosine_similarity(student, teacher.detach(), dim=-1)).mean()


def hidden_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], pairs: Sequence[tuple[int, int]],
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Intermediate-layer matching (BERT-PKD): the mean squared distance between L2-normalised
    hidden states, averaged over ``pairs`` of (student, teacher) indices into the two models'
    ``hidden_states`` and over the tokens where ``mask`` is true."""
    losses = []
    for i, j in pairs:
        s, t = _real(mask, student[i], teacher[j].detach())  # (N, H)
        diff = nn.functional.normalize(s, dim=-1) - nn.functional.normalize(t, dim=-1)
        losses.append(diff.pow(2).sum(-1).mean())
    return torch.stack(losses).mean()


def hidden_pairs(kept: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Which ``hidden_states`` :func:`hidden_loss` pairs for a student made of the teacher's layers
    ``kept``: the output of the student's layer ``i`` and of the teacher's layer ``kept[i]``, for
    every student layer but the last (whose output a final norm may follow; the cosine loss covers it).

    >>> hidden_pairs((0, 2, 4, 7, 9, 11))
    ((1, 1), (2, 3), (3, 5), (4, 8), (5, 10))
    """
    return tuple((i + 1, k + 1) for i, k in enumerate(kept[:-1]))


def stand_for_pairs(kept: Sequence[int], num_layers: int, teacher_layers: int) -> tuple[tuple[int, int], ...]:
    """Which ``hidden_states`` :func:`hidden_loss` pairs for a sub-network that runs the layers ``kept`` of a
    ``num_layers``-layer model (its ``hidden_states`` counted as the whole model's: a skipped layer passes its
    input on) against a teacher of ``teacher_layers`` layers: the output of its ``j``-th layer against that of
    the teacher's layer ``(j + 1) * L / depth`` stands for (TinyBERT's and DynaBERT's uniform mapping), and its
    last state, after any final norm, against the teacher's.

    >>> stand_for_pairs((0, 1, 2), 6, 6), stand_for_pairs((0, 3, 5), 6, 6)
    (((1, 2), (2, 4), (6, 6)), ((1, 2), (4, 4), (6, 6)))
    """
    depth = len(kept)
    return (*((k + 1, (j + 1) * teacher_layers // depth) for j, k in enumerate(kept[:-1])),
            (num_layers, teacher_layers))
