"""The pooled :class:`Classifier`: a linear head on a plain Hugging Face encoder, and its heads per depth.

Saving and loading it is :mod:`layerdrop.models.loading`'s business.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from layerdrop.core.arch import find_layers
from layerdrop.core.gates import state_of
from layerdrop.errors import InputError

__all__ = ["NATIVE", "POOLINGS", "Classifier", "heads_key", "is_classifier", "key_layers", "pool"]


POOLINGS = ("mean", "cls", "last")
"""How a :class:`Classifier` turns token states into one vector."""

NATIVE = "native"
"""The ``--pooling`` that trains the architecture's own ``*ForSequenceClassification`` instead of a
:class:`Classifier` (BERT: the [CLS] state through its pooler; GPT-2, Llama: the last token)."""


def is_classifier(model: nn.Module) -> bool:
    """Whether ``model`` classifies sequences: a :class:`Classifier` or a ``*ForSequenceClassification``."""
    return isinstance(model, Classifier) or type(model).__name__.endswith("ForSequenceClassification")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """One vector per sequence from token states ``(B, T, H)`` -> ``(B, H)``.

    ``mean`` averages non-padding tokens (what sentence-embedding models such as
    MiniLM were trained for), ``cls`` takes the first token, ``last`` the last
    non-padding token (for decoder models, assuming right padding).
    """
    if how == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    if how == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if how == "last":
        last = attention_mask.sum(1).clamp(min=1) - 1  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise InputError(f"unknown pooling {how!r}; choose one of {list(POOLINGS)}")


class Classifier(nn.Module):
    """A pooled linear head on a plain Hugging Face encoder (``AutoModel``).

    The encoder stays a vanilla ``PreTrainedModel``: LayerDrop, pruning and
    ``save_pretrained`` work on it as on any model, and plain ``transformers``
    loads the exported encoder. The head is saved beside it.
    """

    accepts_loss_kwargs = False
    """Its loss is the batch's mean, so HF ``Trainer`` scales it for gradient accumulation itself
    (``forward`` takes ``**inputs`` for the encoder, not ``num_items_in_batch``)."""

    def __init__(self, encoder: PreTrainedModel, num_labels: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in POOLINGS:
            raise InputError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
        self.encoder = encoder
        self.config = encoder.config  # lets layerdrop.find_layers see the architecture
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        self.heads = nn.ModuleDict()
        """Heads of sub-networks (``layerdrop heads``), keyed by the layers they read (:func:`heads_key`); empty
        unless fitted, and then only for the layers named in their keys: the full network uses :attr:`head`."""

    def head_at(self, kept: Sequence[int]) -> nn.Linear:
        """The head of the sub-network of layers ``kept``: its own if one was fitted, else the shared one."""
        key = heads_key(kept)
        return cast(nn.Linear, self.heads[key]) if key in self.heads else self.head

    def _running_head(self) -> nn.Linear:
        """The head of the layers this forward runs: :func:`layerdrop.only_layers` fixes them; else every layer."""
        state = state_of(self) if len(self.heads) else None
        if state is None or state.fixed is None or len(state.fixed) != len(find_layers(self).layers):
            return self.head  # no fixed layers, or a view's shallow copy of a model's state (other numbering)
        return self.head_at([i for i, run in enumerate(state.fixed) if run])

    def forward(self, labels: torch.Tensor | None = None, **inputs: torch.Tensor) -> SequenceClassifierOutput:
        out = self.encoder(**inputs)
        hidden = out.last_hidden_state  # (B, T, H)
        head = self._running_head()
        logits = head(self.dropout(pool(hidden, inputs.get("attention_mask"), self.pooling)))  # (B, C)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


def heads_key(kept: Sequence[int]) -> str:
    """The :attr:`Classifier.heads` key of a sub-network's layers (``ModuleDict`` keys cannot hold dots).

    >>> heads_key((0, 1, 2))
    '0_1_2'
    """
    return "_".join(str(int(i)) for i in kept)


def key_layers(key: str) -> tuple[int, ...]:
    """The layers a :func:`heads_key` names.

    >>> key_layers('0_2_4')
    (0, 2, 4)
    """
    return tuple(int(i) for i in key.split("_"))
