"""A head for each served depth: a logistic regression on the frozen sub-network's pooled features.

A model trained for nested depths (``layerdrop train --depths``) shares one head among them, so the head
must read layer 2's outputs and layer 11's alike; a model trained for one depth has a head of its own.
After training, :func:`fit_depth_heads` fits each sub-network its own linear head on the pooled features
of the training rows (full-batch L-BFGS, cross-entropy plus ``l2`` times the squared weights, started from
the shared head), with every other weight frozen: a few hidden-size-by-labels parameters per depth, one
pass of the sub-networks over the training rows. Where the fitted heads are used (views, cuts, early exit,
:func:`layerdrop.only_layers`) is :class:`layerdrop.models.Classifier`'s business. Why and how much it
helps: docs/comparison.md.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn

from layerdrop.cut.prune import view
from layerdrop.evaluation.eval_mode import require_eval
from layerdrop.models.classifier import Classifier, heads_key, pool

__all__ = ["DepthHead", "fit_depth_heads", "fit_head", "head_accuracy", "pooled_features"]

Rows = Sequence[Mapping[str, Any]]


@torch.no_grad()
def pooled_features(model: Classifier, rows: Rows, collate: Callable[[list[dict[str, Any]]], Mapping[str, Any]],
                    kept: Sequence[int], *, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled hidden states ``(N, H)`` of the sub-network of layers ``kept`` for ``rows``, and their labels
    ``(N,)``; ``model`` (in eval mode) is untouched."""
    require_eval(model, "pooled_features")
    encoder = cast(Classifier, view(model, keep=kept)).encoder
    device = next(model.parameters()).device
    features, labels = [], []
    for start in range(0, len(rows), batch_size):
        batch = collate([dict(r) for r in rows[start:start + batch_size]])
        labels.append(torch.as_tensor(batch["labels"]))
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        hidden = encoder(**inputs).last_hidden_state  # (B, T, H)
        features.append(pool(hidden, inputs.get("attention_mask"), model.pooling).float())  # (B, H)
    return torch.cat(features), torch.cat(labels).to(device)


def fit_head(features: torch.Tensor, labels: torch.Tensor, start: nn.Linear, *, l2: float = 1e-3,
             max_iter: int = 200) -> nn.Linear:
    """A new linear head fitted to ``features`` ``(N, H)`` and ``labels`` ``(N,)`` from a copy of ``start``:
    full-batch L-BFGS on mean cross-entropy plus ``l2`` times the sum of the squared weights (deterministic)."""
    head = copy.deepcopy(start).float().requires_grad_(True)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = nn.functional.cross_entropy(head(features), labels) + l2 * head.weight.pow(2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    return head.requires_grad_(False)


@torch.no_grad()
def head_accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of rows ``head`` labels right."""
    return float((head(features).argmax(-1) == labels).float().mean())


@dataclass(frozen=True)
class DepthHead:
    """One depth's own head against the shared one."""

    depth: int
    """The served depth."""
    layers: tuple[int, ...]
    """Its layers (original numbering)."""
    shared: float
    """Validation accuracy with the shared head."""
    own: float
    """Validation accuracy with its own head."""
    train: float
    """Training accuracy with its own head (how far the fit went)."""
    kept: bool
    """Whether its own head is kept."""


def fit_depth_heads(model: Classifier, train_rows: Rows, valid_rows: Rows,
                    collate: Callable[[list[dict[str, Any]]], Mapping[str, Any]], kept: Mapping[int, Sequence[int]],
                    *, l2: float = 1e-3, keep: Literal["better", "all"] = "better", batch_size: int = 64
                    ) -> tuple[tuple[DepthHead, ...], dict[str, nn.Linear]]:
    """For each depth of ``kept`` (depth -> its layers), a head fitted on ``train_rows`` (:func:`fit_head`, from the
    shared head, so a second fit gives the same one) and scored on ``valid_rows`` beside the shared head; returns
    what each scored, and the heads to keep (``keep="better"``: where better than the shared head) keyed for
    :attr:`Classifier.heads`. ``model`` (in eval mode) is untouched."""
    report, chosen = [], {}
    for depth, layers in kept.items():
        train_x, train_y = pooled_features(model, train_rows, collate, layers, batch_size=batch_size)
        head = fit_head(train_x, train_y, model.head, l2=l2)
        valid_x, valid_y = pooled_features(model, valid_rows, collate, layers, batch_size=batch_size)
        shared, own = head_accuracy(model.head, valid_x, valid_y), head_accuracy(head, valid_x, valid_y)
        keep_it = keep == "all" or own > shared
        report.append(DepthHead(depth, tuple(layers), shared, own, head_accuracy(head, train_x, train_y), keep_it))
        if keep_it:
            chosen[heads_key(layers)] = head
    return tuple(report), chosen
