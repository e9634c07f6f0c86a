"""Extractive question answering: span decoding over windows, and exact match / F1 scoring.

Pure functions, plus :func:`qa_scores`, which runs a model over encoded windows
(:func:`layerdrop.data.encode_qa`) and is the score of :func:`layerdrop.evaluation.measure.depth_sweep`
for a question-answering model. English is scored as the SQuAD script does (lowercase, no
punctuation, no articles, bag of words); a question whose gold answer has a CJK character as
the CMRC 2018 script does (each CJK character a token, punctuation dropped, longest common
substring). Scores are fractions in [0, 1]. See ``docs/qa.md``.

>>> round(f1("the Eiffel tower", ["Eiffel Tower!"]), 3), exact_match("The  Tower.", ["tower"])
(1.0, 1.0)
>>> round(f1("北京大学", ["北京"]), 3)
0.667
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .eval_mode import require_eval

__all__ = ["best_answer", "exact_match", "f1", "is_qa_model", "normalize_answer", "qa_scores", "tokens",
           "without_targets"]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def _is_punct(ch: str) -> bool:
    return ch in _PUNCT or unicodedata.category(ch).startswith("P") or ch in "～＋＝￥"


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF
            or 0x20000 <= code <= 0x2FA1F)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, drop punctuation and the articles a/an/the, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def tokens(text: str, cjk: bool) -> list[str]:
    """The tokens an answer is scored on: SQuAD's words, or (``cjk``) CMRC 2018's mixed
    segmentation: every CJK character alone, other runs lowercased, punctuation and spaces dropped."""
    if not cjk:
        return normalize_answer(text).split()
    out, word = [], ""
    for ch in text.lower():
        if _is_cjk(ch) or _is_punct(ch) or ch.isspace():
            if word:
                out.append(word)
            word = ""
            if _is_cjk(ch):
                out.append(ch)
        else:
            word += ch
    return out + ([word] if word else [])


def _cjk(golds: Sequence[str]) -> bool:
    return any(_is_cjk(ch) for gold in golds for ch in gold)


def _longest_common_run(a: list[str], b: list[str]) -> int:
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        row = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                row[j + 1] = prev[j] + 1
                best = max(best, row[j + 1])
        prev = row
    return best


def _f1_one(pred: list[str], gold: list[str], cjk: bool) -> float:
    if not pred or not gold:
        return float(pred == gold)
    common = _longest_common_run(pred, gold) if cjk else sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _golds(answers: Sequence[str]) -> list[str]:
    return list(answers) or [""]  # unanswerable: only the empty prediction is right


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if ``prediction`` equals one gold answer after normalisation; ``answers`` empty means
    unanswerable (only an empty prediction matches)."""
    golds = _golds(answers)
    cjk = _cjk(golds)
    return float(any(tokens(prediction, cjk) == tokens(g, cjk) for g in golds))


def f1(prediction: str, answers: Sequence[str]) -> float:
    """Best F1 of ``prediction`` against the gold answers (word overlap; for CJK answers, the
    longest common run of characters, as CMRC 2018 scores)."""
    golds = _golds(answers)
    cjk = _cjk(golds)
    return max(_f1_one(tokens(prediction, cjk), tokens(g, cjk), cjk) for g in golds)


def best_answer(
    context: str,
    windows: Sequence[tuple[Sequence[float] | torch.Tensor, Sequence[float] | torch.Tensor,
                            Sequence[tuple[int, int] | None]]],
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    with_null: bool = False,
    null_threshold: float = 0.0,
) -> str:
    """The answer to one question from its windows' ``(start_logits, end_logits, offsets)``.

    In each window the ``n_best`` start and end tokens inside the context form the candidate
    spans (end not before start, at most ``max_answer_length`` tokens); the span with the
    highest start + end logit over all windows wins. With ``with_null`` (SQuAD 2.0) the answer
    is empty when the smallest null score (CLS start + end, over windows) beats that span's
    score by more than ``null_threshold``, or when no span is possible.
    """
    best, best_span = float("-inf"), (0, 0)
    null = float("inf")
    for start_logits, end_logits, offsets in windows:
        start = torch.as_tensor(start_logits, dtype=torch.float32)
        end = torch.as_tensor(end_logits, dtype=torch.float32)
        null = min(null, float(start[0] + end[0]))
        inside = torch.tensor([o is not None for o in offsets] + [False] * (len(start) - len(offsets)))
        k = min(n_best, int(inside.sum()))
        if k == 0:
            continue
        starts = start.masked_fill(~inside, float("-inf")).topk(k).indices.tolist()
        ends = end.masked_fill(~inside, float("-inf")).topk(k).indices.tolist()
        for s in starts:
            for e in ends:
                if s <= e < s + max_answer_length:
                    score = float(start[s] + end[e])
                    if score > best:
                        best, best_span = score, (offsets[s][0], offsets[e][1])
    if with_null and (best == float("-inf") or null - best > null_threshold):
        return ""
    return context[best_span[0]:best_span[1]]


def without_targets(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` (an encoded example or a batch) without what a model is trained toward: ``labels``
    and question answering's ``start_positions`` / ``end_positions``; the model's inputs only."""
    return {k: v for k, v in row.items() if k != "labels" and not k.endswith("_positions")}


def is_qa_model(model: nn.Module) -> bool:
    """Whether ``model`` is an extractive question-answering model (``*ForQuestionAnswering``)."""
    return type(model).__name__.endswith("ForQuestionAnswering")


@torch.no_grad()
def qa_scores(
    model: nn.Module,
    encoding: Any,
    dataset: Any,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    *,
    batch_size: int = 32,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float = 0.0,
) -> dict[str, float]:
    """Exact match and F1 of ``model`` on ``dataset`` (a :class:`layerdrop.data.QADataset`)
    from its windows ``encoding`` (:func:`layerdrop.data.encode_qa`), averaged over questions."""
    require_eval(model, "qa_scores")
    device = next(model.parameters()).device
    per_example: dict[int, list[tuple[Any, Any, Any]]] = {i: [] for i in range(len(dataset))}
    rows = encoding.rows
    for i in range(0, len(rows), batch_size):
        batch = collate([without_targets(r) for r in rows[i:i + batch_size]])
        out = model(**{k: v.to(device) for k, v in batch.items()})
        for j in range(out.start_logits.shape[0]):
            n = len(rows[i + j]["input_ids"])
            per_example[encoding.example_of[i + j]].append(
                (out.start_logits[j, :n].float().cpu(), out.end_logits[j, :n].float().cpu(), encoding.offsets[i + j]))
    em = f = 0.0
    for i, windows in per_example.items():
        pred = best_answer(dataset.texts[i], windows, n_best=n_best, max_answer_length=max_answer_length,
                           with_null=dataset.with_null, null_threshold=null_threshold)
        golds = [text for text, _ in dataset.answers[i]]
        em += exact_match(pred, golds)
        f += f1(pred, golds)
    n = max(len(per_example), 1)
    return {"exact_match": em / n, "f1": f / n}
