"""A head for each served depth: a logistic regression on the frozen sub-network's pooled features.

A model trained for nested depths (``layerdrop train --depths``) shares one head among them, so the head
must read layer 2's outputs and layer 11's alike; a model trained for one depth has a head of its own.
After training, ``layerdrop heads`` fits each sub-network its own linear head on the pooled features
of the training rows (full-batch L-BFGS, cross-entropy plus ``l2`` times the squared weights, started from
the shared head), with every other weight frozen: a few hidden-size-by-labels parameters per depth, one
pass of the sub-networks over the training rows. Where the fitted heads are used (views, cuts, early exit,
:func:`layerdrop.only_layers`) is :class:`layerdrop.models.Classifier`'s business. Why and how much it
helps: docs/comparison.md.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from layerdrop.cut.prune import view
from layerdrop.evaluation.eval_mode import require_eval
from layerdrop.models.loading import Classifier, pool

__all__ = ["fit_head", "head_accuracy", "pooled_features"]

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
