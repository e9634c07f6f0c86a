"""Data-driven pruning: per-layer drop rates learned from the layers' activations.

The paper's third pruning strategy (Fan, Grave & Joulin, ICLR 2020, arXiv:1909.11556, section 4):
instead of one rate for every layer, a small scorer per layer (:class:`RateLearner`) sets each
layer's rate from its input activations, averaging the configured rate; the whole layers are
dropped as in any LayerDrop forward. At inference the layers with the lowest learned rates are
kept. The scorer is trained by REINFORCE, is not part of the model's ``state_dict``, and its rates
are recorded in ``model.config.layerdrop_learned_rates``. Why and how: ``docs/training.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from layerdrop.errors import InputError

from .apply import applied, find_state
from .arch import find_layers

__all__ = [
    "LEARNED_KEY",
    "RateLearner",
    "attach_rate_learner",
    "capped_rates",
    "record_learned_rates",
    "recorded_learned_rates",
]

DATA_DRIVEN_ONE_PROCESS = (
    "data-driven rates train on one process only: each rank would learn its own running scores from its own "
    "rows (and the scorer's gradients are not averaged), so the ranks would draw different masks; run without "
    "torchrun / accelerate launch, or leave --data-driven out")
"""Why data-driven rates refuse several processes, said by the library and, before training, by the command line."""

LEARNED_KEY = "layerdrop_learned_rates"
"""Name of the ``model.config`` attribute that records the learned rates."""


def capped_rates(logits: torch.Tensor, mean: float, cap: float) -> torch.Tensor:
    """Rates proportional to ``softmax(logits)``, averaging ``mean``, none above ``cap``.

    Water-filling: a rate that would exceed the cap is held at it and the excess is shared
    among the others in proportion to their softmax weights, so the mean stays exactly
    ``mean``. The weights are renormalised in log space, so tiny ones stay exact.
    Differentiable in ``logits``.
    """
    if not 0 <= mean <= cap:
        raise ValueError(f"the mean rate {mean} must be between 0 and the cap {cap}")
    n = logits.shape[0]
    capped = torch.zeros(n, dtype=torch.bool, device=logits.device)
    rates = n * mean * logits.softmax(0)
    for _ in range(n):
        new = (rates > cap) & ~capped
        if not bool(new.any()):
            break
        capped |= new
        rest = n * mean - cap * int(capped.sum())
        free = logits.masked_fill(capped, float("-inf")).softmax(0)  # (L,), 0 where capped
        rates = torch.where(capped, torch.full_like(rates, cap), rest * free)
    return rates


class RateLearner(nn.Module):
    """Per-layer scorers that set and learn each layer's drop rate (see ``docs/training.md``).

    Layer ``d``'s score is ``w2_d . tanh(W1_d mean_tokens(h_d) + b1_d) + b2_d`` on the detached
    hidden states ``h_d`` entering it; the rates are ``capped_rates`` of the running mean scores.

    Args:
        num_layers: Layers ``L``.
        hidden_size: Width of the hidden states entering each layer.
        rate: The mean rate ``p`` the learned rates must average.
        width: Hidden width of each layer's scorer.
        momentum: Of the running mean of scores that sets the rates.
        max_rate: Cap on any layer's rate (the softmax could ask for more than 1).
        seed: Initialisation of the scorers.
    """

    mean_score: torch.Tensor
    """Buffer ``(L,)``: the running mean score of each layer, which sets the rates."""
    baseline: torch.Tensor
    """Buffer ``()``: the running mean loss the policy gradient is measured against; NaN until the first loss."""

    def __init__(self, num_layers: int, hidden_size: int, rate: float, *, width: int = 32,
                 momentum: float = 0.95, max_rate: float = 0.9, seed: int = 0) -> None:
        super().__init__()
        if not 0 < rate < 1:
            raise InputError(f"data-driven rates need a mean rate in (0, 1), got {rate}")
        if not rate <= max_rate < 1:
            raise InputError(f"max_rate must be in [rate, 1), got {max_rate}")
        self.num_layers, self.rate, self.momentum, self.max_rate = num_layers, rate, momentum, max_rate
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(num_layers, hidden_size, width, generator=g) / math.sqrt(hidden_size))
        self.b1 = nn.Parameter(torch.zeros(num_layers, width))
        self.w2 = nn.Parameter(torch.zeros(num_layers, width))  # all scores 0: starts as uniform LayerDrop
        self.b2 = nn.Parameter(torch.zeros(num_layers))
        self.register_buffer("mean_score", torch.zeros(num_layers))
        self.register_buffer("baseline", torch.tensor(float("nan")))  # NaN until the first loss
        self._log_probs: list[torch.Tensor] = []

    def score(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Layer ``index``'s score for the hidden states entering it, averaged over the batch (a scalar)."""
        x = hidden.detach().to(self.w1.dtype)
        pooled = x.mean(dim=1) if x.dim() == 3 else x.reshape(-1, x.shape[-1])  # (B, H)
        features = torch.tanh(pooled @ self.w1[index] + self.b1[index])  # (B, width)
        return (features @ self.w2[index] + self.b2[index]).mean()

    def _rates_from(self, logits: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return capped_rates(logits, self.rate * scale, self.max_rate)

    def rates(self, scale: float = 1.0) -> torch.Tensor:
        """The rates in force, from the running mean scores: ``(L,)`` float64, no gradient."""
        return self._rates_from(self.mean_score.detach().double(), scale)

    @torch.no_grad()
    def observe(self, index: int, score: torch.Tensor) -> None:
        """Fold a score of layer ``index`` into its running mean."""
        self.mean_score[index] = self.momentum * self.mean_score[index] + (1 - self.momentum) * score.detach()

    def decide(self, index: int, hidden: torch.Tensor, kept: bool, scale: float = 1.0) -> None:
        """Record the log-probability of layer ``index``'s drawn decision under its live score."""
        score = self.score(index, hidden)
        logits = self.mean_score.detach().clone()
        logits[index] = score
        self.observe(index, score)
        rate = self._rates_from(logits, scale)[index].clamp(1e-6, 1 - 1e-6)
        self._log_probs.append(torch.log(1 - rate) if kept else torch.log(rate))

    def policy_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Surrogate to add to the training loss: ``(loss - baseline) * sum(log-probabilities)``.

        ``loss`` is the (scalar) loss of the sampled forward(s) since the last call; only its
        value is used. Updates the running baseline and clears the recorded decisions.
        Zero (with no gradient) when no sampled forward ran.
        """
        value = float(loss.detach())
        if not self._log_probs:
            return torch.zeros((), device=self.w1.device)
        if torch.isnan(self.baseline):
            self.baseline.fill_(value)
        advantage = value - float(self.baseline)
        with torch.no_grad():
            self.baseline.mul_(self.momentum).add_((1 - self.momentum) * value)
        surrogate = advantage * torch.stack(self._log_probs).sum()
        self._log_probs = []
        return surrogate

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, rate={self.rate}, max_rate={self.max_rate}"


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise InputError(f"cannot tell the hidden size of {type(model).__name__}: pass hidden_size=")


def attach_rate_learner(model: nn.Module, *, hidden_size: int | None = None, **kwargs: Any) -> RateLearner:
    """Make an applied model's rates data-driven; return the scorer, which the caller trains.

    The mean rate is the mean of the rates :func:`layerdrop.apply` set. Only
    ``granularity="layer"`` is supported. Keyword arguments go to :class:`RateLearner`.
    """
    _, state = applied(model)
    if state.settings.granularity != "layer":
        raise InputError(f"data-driven rates drop whole layers; granularity={state.settings.granularity!r} "
                         "is not supported")
    if state.settings.pattern != "random":
        raise InputError(f"data-driven rates learn which layers to drop; pattern={state.settings.pattern!r} "
                         "fixes where the kept layers go. Apply with pattern='random'.")
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        raise InputError(DATA_DRIVEN_ONE_PROCESS)
    rates = state.settings.rates
    learner = RateLearner(len(rates), hidden_size or _hidden_size(model), sum(rates) / len(rates), **kwargs)
    first = next(iter(find_layers(model, state.settings.layers).layers.parameters()), None)
    if first is not None:
        learner.to(first.device)
    state.learner = learner
    return learner


def _learner(model: nn.Module) -> RateLearner | None:
    found = find_state(model)
    return found[1].learner if found is not None else None


def record_learned_rates(model: nn.Module) -> tuple[float, ...]:
    """Write the attached scorer's current rates into ``model.config`` (for saving) and return them."""
    learner = _learner(model)
    if learner is None:
        raise ValueError("no learned rates to record: call layerdrop.attach_rate_learner(model) and train first")
    rates = tuple(round(float(r), 6) for r in learner.rates())
    setattr(model.config, LEARNED_KEY, list(rates))
    return rates


def recorded_learned_rates(model_or_config: Any) -> tuple[float, ...]:
    """The learned rates of a model (its live scorer first, else those recorded in its config) or of a config."""
    learner = _learner(model_or_config) if isinstance(model_or_config, nn.Module) else None
    if learner is not None:
        return tuple(float(r) for r in learner.rates())
    config = getattr(model_or_config, "config", model_or_config)
    recorded: Sequence[float] | None = getattr(config, LEARNED_KEY, None)
    if not recorded:
        raise InputError("this model has no learned rates: train it with data-driven rates "
                         "(`layerdrop train ... --data-driven`, or layerdrop.attach_rate_learner) first")
    return tuple(float(r) for r in recorded)
