"""Texts to model inputs: classification rows (optionally in overlapping windows) and LM blocks.

The rows are plain dicts of token-id lists, ready for a Hugging Face collator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

if TYPE_CHECKING:  # transformers is imported where a collator is built, so `import layerdrop.data` stays light
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from layerdrop.errors import InputError

from .splits import TextDataset

__all__ = ["encode_classification", "encode_lm", "lm_eval_blocks"]


def _batched(n: int, size: int = 512) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def encode_classification(
    tokenizer: PreTrainedTokenizerBase, split: TextDataset, max_length: int, stride: int | None = None, *,
    progress: bool = False, desc: str = "tokenizing",
) -> tuple[list[dict[str, Any]], list[int]]:
    """Tokenize ``split``, truncated to ``max_length``; returns the rows and each row's text index.

    With ``stride`` (an int) every text becomes overlapping windows sharing ``stride`` tokens,
    for long documents whose windows' logits are pooled; ``None`` truncates each text once.
    """
    rows: list[dict[str, Any]] = []
    doc_of: list[int] = []
    windows = stride is not None
    for chunk in tqdm(_batched(len(split)), desc=desc, disable=not progress, unit="batch"):
        enc = tokenizer([split.texts[i] for i in chunk], truncation=True, max_length=max_length,
                        stride=stride if windows else 0, return_overflowing_tokens=windows)
        origin = enc.pop("overflow_to_sample_mapping", list(range(len(chunk))))
        for j in range(len(enc["input_ids"])):
            doc = chunk[origin[j]]
            row = {k: enc[k][j] for k in enc.keys()}
            if split.labels is not None:
                row["labels"] = split.labels[doc]
            rows.append(row)
            doc_of.append(doc)
    return rows, doc_of


def encode_lm(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], block: int, *, progress: bool = False,
              desc: str = "tokenizing") -> list[dict[str, Any]]:
    """Concatenate tokenized texts (separated by EOS or SEP) and cut them into blocks of ``block`` tokens."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    stream: list[int] = []
    for chunk in tqdm(_batched(len(texts)), desc=desc, disable=not progress, unit="batch"):
        for ids in tokenizer([texts[i] for i in chunk], add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            if sep is not None:
                stream.append(sep)
    n = len(stream) // block
    if n == 0:
        raise InputError(f"{desc}: {len(stream)} tokens is less than one block of {block}; use less --max-length")
    return [{"input_ids": stream[i * block:(i + 1) * block]} for i in range(n)]


def lm_eval_blocks(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], block: int,
                   split: str = "valid") -> tuple[list[dict[str, Any]], DataCollatorForLanguageModeling]:
    """Blocks of ``texts`` to score a causal LM on, and the collator that labels them.

    For :func:`layerdrop.evaluation.measure.perplexity`; a tokenizer without a pad token gets EOS as one.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    blocks = encode_lm(tokenizer, texts, block, desc=split)
    from transformers import DataCollatorForLanguageModeling

    return blocks, DataCollatorForLanguageModeling(tokenizer, mlm=False, return_tensors="pt")
