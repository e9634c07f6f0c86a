"""Quality, latency and size at every depth, without copying the model.

A depth sweep runs the full model restricted to the kept layers
(:func:`layerdrop.only_layers`): skipped layers are never called, so the
quality and latency measured are those of the pruned model (the tests check
that the pruned model's outputs are identical). :func:`validation_scorers` builds
the scorers of a saved model on a dataset, for ``layerdrop prune`` and ``layerdrop sweep``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from layerdrop.core.apply import only_layers
from layerdrop.core.arch import find_layers
from layerdrop.core.depths import layers_at
from layerdrop.errors import InputError

from .eval_mode import require_eval
from .timer import median_ms, time_ms

__all__ = [
    "DepthResult",
    "Scorers",
    "accuracy",
    "calibration_batches",
    "depth_sweep",
    "distinct_n",
    "encoded_questions",
    "encoded_rows",
    "higher_is_better",
    "interleaved_latency_ms",
    "latency_ms",
    "parameters_at",
    "perplexity",
    "pooled_accuracy",
    "repeated_ngrams",
    "validation_scorers",
]


@dataclass(frozen=True)
class DepthResult:
    """One point of a sweep."""

    depth: int
    """Layers kept."""
    kept: tuple[int, ...]
    """Which layers (0-based, original numbering)."""
    score: float
    """The metric: accuracy in [0, 1], or perplexity."""
    parameters: int
    """Parameters of the model pruned to these layers."""
    latency_ms: float | None = None
    """Median milliseconds per batch, if measured."""
    precision: str = "float32"
    """The precision it ran at (a name of :data:`layerdrop.cut.precision.PRECISIONS`)."""


def parameters_at(model: nn.Module, kept: Sequence[int], layers: str | None = None) -> int:
    """Parameter count of ``model`` pruned to ``kept``, without pruning it."""
    site = find_layers(model, layers)
    dropped = sum(p.numel() for i, layer in enumerate(site.layers) if i not in set(kept) for p in layer.parameters())
    return sum(p.numel() for p in model.parameters()) - dropped


def _batches(rows: Sequence[dict[str, Any]], size: int,
             collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for i in range(0, len(rows), size):
        yield collate(list(rows[i:i + size]))


@torch.no_grad()
def accuracy(
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    *,
    batch_size: int = 64,
    doc_of: Sequence[int] | None = None,
    doc_labels: Sequence[int] | None = None,
    long_doc: str | None = None,
) -> float:
    """Classification accuracy of ``model`` (in eval mode); with ``doc_of``, window logits are pooled per
    document first."""
    require_eval(model, "accuracy")
    logits, labels = [], []
    for batch in _batches(rows, batch_size, collate):
        labels.append(batch.pop("labels"))
        logits.append(model(**batch).logits.float())
    all_logits = torch.cat(logits)  # (N, C)
    if doc_of is None:
        return float((all_logits.argmax(-1) == torch.cat(labels)).float().mean())
    return pooled_accuracy(all_logits, list(doc_labels or []), doc_of, long_doc)


def pooled_accuracy(logits: torch.Tensor, labels: Sequence[int], doc_of: Sequence[int], how: str | None) -> float:
    """Accuracy per document: the logits ``(N, C)`` of each document's windows are pooled
    (``mean``, the default, or ``max``) before the argmax; ``labels`` are per document."""
    docs = torch.tensor(doc_of)
    n_docs = int(docs.max()) + 1
    if how is None or how == "mean":
        summed = torch.zeros(n_docs, logits.shape[1]).index_add_(0, docs, logits)
        pooled = summed / torch.bincount(docs, minlength=n_docs).clamp(min=1).unsqueeze(1)  # (D, C)
    elif how == "max":
        pooled = torch.full((n_docs, logits.shape[1]), float("-inf")).index_reduce_(0, docs, logits, "amax")
    else:
        raise InputError(f"unknown long-document pooling {how!r}; choose mean or max")
    return float((pooled.argmax(1) == torch.tensor(labels[:n_docs])).float().mean())


@torch.no_grad()
def perplexity(
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    *,
    batch_size: int = 16,
) -> float:
    """Token-weighted perplexity of a language model (in eval mode) over ``rows`` (blocks with labels from
    ``collate``)."""
    require_eval(model, "perplexity")
    total, count = 0.0, 0
    for batch in _batches(rows, batch_size, collate):
        n = int((batch["labels"] != -100).sum())
        total += float(model(**batch).loss) * n
        count += n
    return math.exp(min(total / max(count, 1), 50.0))


def _ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def distinct_n(texts: Sequence[Sequence[int]], n: int) -> float:
    """Distinct ``n``-grams over all ``n``-grams of a set of generated token sequences (Li et al.
    2016): near 1 for varied text, low for text that loops or repeats itself across prompts;
    ``nan`` when no sequence has ``n`` tokens.

    >>> distinct_n([[5, 6, 5, 6], [5, 6, 7]], 2)
    0.6
    """
    grams = [g for ids in texts for g in _ngrams(ids, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repeated_ngrams(ids: Sequence[int], n: int) -> float:
    """Share of the ``n``-grams of one generated token sequence that already occurred earlier in
    it (Welleck et al. 2020's seq-rep-n): 0 when none repeats, near 1 for a loop; ``nan`` for a
    sequence shorter than ``n``.

    >>> repeated_ngrams([5, 6, 5, 6, 5, 6], 2)
    0.6
    """
    grams = _ngrams(ids, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else math.nan


@torch.no_grad()
def latency_ms(model: nn.Module, batch: dict[str, torch.Tensor], *, reps: int = 10, warmup: int = 2) -> float:
    """Median wall milliseconds of one forward of ``model`` (in eval mode) on ``batch``, the device
    synchronised (:func:`layerdrop.evaluation.timer.median_ms`)."""
    require_eval(model, "latency_ms")
    return median_ms(lambda: model(**batch), model, reps=reps, warmup=warmup)


@torch.no_grad()
def interleaved_latency_ms(points: Sequence[tuple[nn.Module, Sequence[int]]], batch: dict[str, torch.Tensor],
                           reps: int) -> list[float]:
    """Median milliseconds of one forward on ``batch`` of each model (as it is: eval mode is the caller's)
    with only the given layers (:func:`~layerdrop.evaluation.timer.time_ms`, the device synchronised),
    timed in rounds of one forward of each point, after a warm-up round, so that the machine's drift
    touches every point alike."""
    times: list[list[float]] = [[] for _ in points]
    for round_ in range(1 + reps):
        for i, (model, kept) in enumerate(points):
            with only_layers(model, kept):
                took = time_ms(lambda: model(**batch), model)  # noqa: B023 (called at once)
            if round_:
                times[i].append(took)
    return [statistics.median(t) for t in times]


def depth_sweep(
    model: nn.Module,
    score: Callable[[nn.Module], float],
    *,
    depths: Sequence[int] | None = None,
    choose: Callable[[int, int], Sequence[int]] | None = None,
    latency_batch: dict[str, torch.Tensor] | None = None,
    latency_reps: int = 10,
    layers: str | None = None,
    progress: bool = False,
    desc: str = "depths",
) -> list[DepthResult]:
    """Score ``model`` at each depth (default 1..L) with the layers ``choose(L, depth)`` keeps (by default those
    the model was trained to serve at that depth, else every-other: :func:`~layerdrop.core.depths.layers_at`)."""
    num_layers = len(find_layers(model, layers).layers)
    config = getattr(model, "config", None)
    results = []
    for depth in tqdm(list(depths or range(1, num_layers + 1)), desc=desc, disable=not progress):
        kept = tuple(choose(num_layers, depth) if choose is not None else layers_at(config, num_layers, depth))
        with only_layers(model, kept, layers=layers):
            value = score(model)
            ms = latency_ms(model, latency_batch, reps=latency_reps) if latency_batch is not None else None
        results.append(DepthResult(depth, kept, value, parameters_at(model, kept, layers), ms))
    return results


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better (accuracy, F1, exact match) or worse (perplexity)."""
    return metric != "perplexity"


@dataclass(frozen=True)
class Scorers:
    """How a model scores on a dataset: validation and test scorers, and calibration batches."""

    metric: str
    """``"accuracy"`` (a classifier), ``"f1"`` (question answering) or ``"perplexity"`` (a language model)."""
    valid: Callable[[nn.Module], float]
    """``valid(model)``: the metric on the validation rows."""
    test: Callable[[nn.Module], float]
    """``test(model)``: the metric on the test rows (held out from a search)."""
    calibration: list[dict[str, Any]]
    """Batches of model inputs (no labels) from the validation rows, for the importance metrics."""

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger metric is better (accuracy, F1) or worse (perplexity)."""
        return higher_is_better(self.metric)


def _encoded(classifier: bool, tokenizer: Any, split: Any, max_length: int, name: str
             ) -> tuple[list[dict[str, Any]], Callable[[list[dict[str, Any]]], dict[str, Any]]]:
    """Rows of ``split`` and their collator: labelled examples, or language-model blocks.

    The one place that calls the encoders of :mod:`layerdrop.data`.
    """
    from transformers import DataCollatorWithPadding

    from layerdrop.data import encode_classification, lm_eval_blocks

    if not classifier:
        return lm_eval_blocks(tokenizer, split.texts, max_length, name)
    rows, _ = encode_classification(tokenizer, split, max_length, desc=name)
    return rows, DataCollatorWithPadding(tokenizer, return_tensors="pt")


def encoded_rows(tokenizer: Any, data: str, *, seed: int = 0, max_length: int = 128, rows: int | None = None,
                 classifier: bool = True
                 ) -> dict[str, tuple[list[dict[str, Any]], Callable[[list[dict[str, Any]]], dict[str, Any]]]]:
    """The validation (``"valid"``) and test rows of ``data``, each with its collator: labelled examples for a
    classifier, else language-model blocks (:func:`_encoded`); the first ``rows`` of each split (``None``: all);
    split by ``seed`` as training split it."""
    from layerdrop.data import load

    splits = load(data, seed=seed, label_column="label" if classifier else None)
    return {name: _encoded(classifier, tokenizer, split.subset(range(len(split) if rows is None else
                                                                       min(rows, len(split)))), max_length, name)
            for name, split in (("valid", splits.valid), ("test", splits.test))}


def encoded_questions(tokenizer: Any, data: str, *, seed: int = 0, max_length: int = 384, stride: int | None = None,
                      rows: int | None = None) -> dict[str, tuple[Any, Any]]:
    """The validation (``"valid"``) and test questions of the SQuAD-format file ``data``, each split with its
    windows (:func:`layerdrop.data.encode_qa`): the first ``rows`` questions of each (``None``: all), split by
    ``seed`` as training split it. ``stride`` ``None``: a quarter of ``max_length``, at most 32 tokens."""
    from layerdrop.data import QADataset, encode_qa, load_qa

    stride = min(32, max_length // 4) if stride is None else stride
    splits = load_qa(data, seed=seed)
    out: dict[str, tuple[Any, Any]] = {}
    for name, split in (("valid", splits.valid), ("test", splits.test)):
        assert isinstance(split, QADataset)  # load_qa splits questions
        part = split.subset(range(len(split) if rows is None else min(rows, len(split))))
        out[name] = (part, encode_qa(tokenizer, part, max_length, stride, desc=name))
    return out


def validation_scorers(
    model: nn.Module,
    tokenizer: Any,
    data: str,
    *,
    rows: int = 500,
    batch_size: int = 32,
    max_length: int = 128,
    calibration_rows: int = 64,
    seed: int = 0,
) -> Scorers:
    """Scorers of ``model`` on ``data`` (a bundled dataset name or a file): accuracy for a
    classifier (:func:`layerdrop.models.is_classifier`), F1 for a question-answering model (on a SQuAD-format
    file, windows of ``max_length`` tokens sharing 32), perplexity otherwise, on the first ``rows``
    rows of the validation and test splits; calibration batches from the first validation rows."""
    from layerdrop.models.loading import is_classifier

    from .qa import is_qa_model

    if is_qa_model(model):
        return _qa_scorers(model, tokenizer, data, rows, batch_size, max_length, calibration_rows, seed)
    classifier = is_classifier(model)
    encoded = encoded_rows(tokenizer, data, seed=seed, max_length=max_length, rows=rows, classifier=classifier)
    metric = "accuracy" if classifier else "perplexity"
    measure = accuracy if classifier else perplexity

    def scorer(name: str) -> Callable[[nn.Module], float]:
        examples, collate = encoded[name]
        return lambda m: measure(m, examples, collate, batch_size=batch_size)

    examples, collate = encoded["valid"]
    calib = examples[:calibration_rows]
    calibration = [{k: v for k, v in collate(calib[i:i + batch_size]).items() if k != "labels"}
                   for i in range(0, len(calib), batch_size)]
    return Scorers(metric, scorer("valid"), scorer("test"), calibration)


def calibration_batches(model: nn.Module, tokenizer: Any, data: str) -> list[dict[str, Any]]:
    """Batches of ``data``'s validation rows (64 rows, 8 per batch, up to 128 tokens or the model's context)
    that calibrate a layer-choice strategy (angular, block-influence) for generation and serving."""
    block = min(128, getattr(model.config, "max_position_embeddings", None) or 128)
    return validation_scorers(model, tokenizer, data, rows=64, batch_size=8, max_length=block).calibration


def _qa_scorers(model: nn.Module, tokenizer: Any, data: str, rows: int, batch_size: int, max_length: int,
                calibration_rows: int, seed: int) -> Scorers:
    """:func:`validation_scorers` of a question-answering model: F1 on questions (windows pooled)."""
    from transformers import DataCollatorWithPadding

    from .qa import qa_scores, without_targets

    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    questions = encoded_questions(tokenizer, data, seed=seed, max_length=max_length, rows=rows)
    parts = {name: part for name, (part, _) in questions.items()}
    encoded = {name: encoding for name, (_, encoding) in questions.items()}

    def scorer(name: str) -> Callable[[nn.Module], float]:
        return lambda m: qa_scores(m, encoded[name], parts[name], collate, batch_size=batch_size)["f1"]

    calib = [without_targets(r) for r in encoded["valid"].rows]
    calib = calib[:calibration_rows]
    calibration = [collate(calib[i:i + batch_size]) for i in range(0, len(calib), batch_size)]
    return Scorers("f1", scorer("valid"), scorer("test"), calibration)
