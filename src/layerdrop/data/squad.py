"""SQuAD-format question answering files (v1.1, and v2.0 with unanswerable questions), and their encoding.

The same JSON is used by CMRC 2018 and DRCD (Chinese). A file is read into a :class:`QADataset`
(one row per question) and split by the one split rule of :mod:`.splits`, with the context as
the row's text: every question on one context stays in one split. :func:`encode_qa` cuts each
question + context into windows of ``max_length`` tokens overlapping by ``stride``, as the
Hugging Face question-answering example does. The format is in ``docs/qa.md``.
"""

from __future__ import annotations

import json
import operator
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from layerdrop.errors import InputError

from .encode import _batched
from .splits import DataError, Splits, check_fractions, split

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["QADataset", "QAEncoding", "encode_qa", "load_qa", "read_squad"]

Answer = tuple[str, int]
"""A gold answer: its text and the character offset where it starts in the context."""


@dataclass(frozen=True)
class QADataset:
    """Questions on contexts with their gold answer spans; a question without answers is unanswerable."""

    name: str
    """Human-readable name, e.g. ``"train.json/valid"``."""
    ids: tuple[str, ...]
    """The question ids of the file."""
    questions: tuple[str, ...]
    """The questions."""
    texts: tuple[str, ...]
    """The context of each question (named ``texts`` so the split rules keep a context's questions together)."""
    answers: tuple[tuple[Answer, ...], ...]
    """Gold answers of each question (several annotators may give several); empty: unanswerable."""
    with_null: bool = False
    """Whether the file it came from has unanswerable questions (SQuAD 2.0): then a prediction may be empty."""

    def __post_init__(self) -> None:
        for field in ("ids", "questions", "texts", "answers"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        if not len(self.ids) == len(self.questions) == len(self.texts) == len(self.answers):
            raise InputError("ids, questions, texts and answers must have one entry per question")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Iterable[int]) -> QADataset:
        """A new dataset with the questions at ``indices`` (in that order)."""
        idx = [operator.index(i) for i in indices]
        return QADataset(self.name, tuple(self.ids[i] for i in idx), tuple(self.questions[i] for i in idx),
                         tuple(self.texts[i] for i in idx), tuple(self.answers[i] for i in idx), self.with_null)


def _get(obj: Any, key: str, where: str, path: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        found = list(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{path}: {where}: missing key {key!r} (found {found}); "
                        "expected SQuAD format {'data': [{'paragraphs': [{'context', 'qas': [{'id', 'question', "
                        "'answers': [{'text', 'answer_start'}]}]}]}]}", path=path)
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"{path}: {where}: {key!r} must be a {names}, got {value!r:.60}", path=path)
    return value


def read_squad(path: str | Path) -> QADataset:
    """Read a SQuAD-format JSON file (v1.1 or v2.0, CMRC 2018, DRCD) into a :class:`QADataset`.

    Raises :class:`DataError` naming the file, the question id (or where in the file) and the
    problem: a missing key, an answer whose ``answer_start`` does not point at its text, a
    repeated id. ``is_impossible: true`` questions are unanswerable whatever answers they list.
    """
    path = Path(path)
    name = str(path)
    try:
        top = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not valid UTF-8 ({e.reason})", path=name) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{name}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno}",
                        path=name, line=e.lineno) from None
    columns: tuple[list[Any], ...] = ([], [], [], [])
    seen: set[str] = set()
    for a, article in enumerate(_get(top, "data", "top level", name, list)):
        for p, paragraph in enumerate(_get(article, "paragraphs", f"data[{a}]", name, list)):
            where = f"data[{a}].paragraphs[{p}]"
            context = _get(paragraph, "context", where, name, str)
            for q, qa in enumerate(_get(paragraph, "qas", where, name, list)):
                qid = str(_get(qa, "id", f"{where}.qas[{q}]", name, (str, int)))
                at = f"question {qid!r}"
                if qid in seen:
                    raise DataError(f"{name}: {at}: the id appears more than once", path=name)
                seen.add(qid)
                question = _get(qa, "question", at, name, str)
                impossible = qa.get("is_impossible", False) is True
                answers = [] if impossible else _get(qa, "answers", at, name, list)
                gold = []
                for answer in answers:
                    text = _get(answer, "text", at, name, str)
                    start = _get(answer, "answer_start", at, name, int)
                    found = context[start:start + len(text)] if start >= 0 else ""
                    if found != text:
                        raise DataError(f"{name}: {at}: answer_start {start} does not match the answer text: "
                                        f"expected {text!r}, found {found!r} in the context", path=name)
                    gold.append((text, start))
                for column, value in zip(columns, (qid, question, context, tuple(gold)), strict=True):
                    column.append(value)
    if not columns[0]:
        raise DataError(f"{name}: no questions (SQuAD format: data[].paragraphs[].qas[])", path=name)
    ids, questions, contexts, answers = columns
    return QADataset(path.name, tuple(ids), tuple(questions), tuple(contexts), tuple(answers),
                     with_null=any(not gold for gold in answers))


def load_qa(path: str | Path, *, seed: int = 0, valid_fraction: float = 0.1, test_fraction: float = 0.1) -> Splits:
    """A SQuAD-format file as train/valid/test :class:`Splits` of :class:`QADataset`.

    Split by :func:`layerdrop.data.splits.split` (the rule of every user file), with the
    context as the text, so no context is shared across splits.
    """
    check_fractions(valid_fraction, test_fraction)
    if not Path(path).is_file():
        raise DataError(f"{path!r}: no such file; question answering reads a SQuAD-format .json file",
                        path=str(path))
    rows = read_squad(path)
    # split() types its rows as a TextDataset; it uses only what a QADataset has as well
    return split(rows, rows.name, seed, valid_fraction, test_fraction)  # type: ignore[arg-type]  # texts, len, subset


@dataclass(frozen=True)
class QAEncoding:
    """A :class:`QADataset` as windows: model rows, and what maps each window back to its question."""

    rows: list[dict[str, Any]]
    """One per window: ``input_ids`` (etc.) and ``start_positions`` / ``end_positions`` (the CLS
    index 0 where the window holds no answer)."""
    example_of: list[int]
    """The question (index into the dataset) of each window."""
    offsets: list[list[tuple[int, int] | None]]
    """Per window and token, its character span in the context; ``None`` outside the context."""
    outside: tuple[int, ...]
    """Answerable questions (indices into the dataset) whose answer lies inside no window (too long for one)."""

    def trainable(self) -> list[dict[str, Any]]:
        """The rows to train on: all but the windows of the questions in :attr:`outside`,
        which would otherwise teach the model that their answer is not there."""
        drop = set(self.outside)
        return [row for row, example in zip(self.rows, self.example_of, strict=True) if example not in drop]


def _span(offsets: list[tuple[int, int] | None], start: int, end: int) -> tuple[int, int] | None:
    """Token indices of the first and last context token covering characters ``[start, end)``."""
    spans = {i: o for i, o in enumerate(offsets) if o is not None and o[1] > o[0]}  # token -> its characters
    tokens = list(spans)
    if not tokens or spans[tokens[0]][0] > start or spans[tokens[-1]][1] < end:
        return None
    first = next(i for i in tokens if spans[i][1] > start)
    last = next(i for i in reversed(tokens) if spans[i][0] < end)
    return (first, last) if first <= last else None


def encode_qa(tokenizer: PreTrainedTokenizerBase, dataset: QADataset, max_length: int, stride: int, *,
              progress: bool = False, desc: str = "tokenizing") -> QAEncoding:
    """Question + context pairs in windows of ``max_length`` tokens sharing ``stride`` context tokens.

    Only the context is cut (``truncation="only_second"``); a window's start/end positions are
    the tokens of the first gold answer, or the CLS token (index 0) where the question is
    unanswerable or its answer is not in that window. Needs a fast tokenizer (offsets).
    Answerable questions whose answer is inside no window are listed in :attr:`QAEncoding.outside`
    and warned about once.
    """
    if not tokenizer.is_fast:
        raise InputError("question answering needs a fast tokenizer (character offsets)")
    rows: list[dict[str, Any]] = []
    example_of: list[int] = []
    all_offsets: list[list[tuple[int, int] | None]] = []
    outside: list[int] = []
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - stride  # question + new context tokens
    for chunk in tqdm(_batched(len(dataset)), desc=desc, disable=not progress, unit="batch"):
        questions = [dataset.questions[i].lstrip() for i in chunk]
        for i, ids in zip(chunk, tokenizer(questions, add_special_tokens=False)["input_ids"], strict=True):
            if len(ids) >= room:  # the tokenizer would panic: no context token would fit a window
                raise DataError(f"{desc}: question {dataset.ids[i]!r} is {len(ids)} tokens long, too long for "
                                f"windows of {max_length} tokens sharing {stride}: raise max_length or lower stride")
        enc = tokenizer(questions, [dataset.texts[i] for i in chunk],
                        truncation="only_second", max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True)
        origin = enc.pop("overflow_to_sample_mapping")
        offsets_all = enc.pop("offset_mapping")
        found: dict[int, bool] = {}
        for j in range(len(enc["input_ids"])):
            example = chunk[origin[j]]
            seq = enc.sequence_ids(j)
            offsets = [tuple(o) if s == 1 else None for o, s in zip(offsets_all[j], seq, strict=True)]
            row = {k: enc[k][j] for k in enc.keys()}
            span = None
            gold = dataset.answers[example]
            if gold:
                text, start = gold[0]
                span = _span(offsets, start, start + len(text))
            row["start_positions"], row["end_positions"] = span or (0, 0)
            found[example] = found.get(example, False) or span is not None or not gold
            rows.append(row)
            example_of.append(example)
            all_offsets.append(offsets)
        outside.extend(e for e, ok in found.items() if not ok)
    if outside:
        ids = [dataset.ids[e] for e in outside[:3]]
        warnings.warn(f"{desc}: {len(outside)} of {len(dataset)} questions have an answer inside no window of "
                      f"{max_length} tokens (ids {ids}...); they are not trained on", stacklevel=2)
    return QAEncoding(rows, example_of, all_offsets, tuple(outside))
