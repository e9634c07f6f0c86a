"""Tiny random models of every supported architecture, built offline in milliseconds."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

VOCAB = 99
NUM_LAYERS = 4

# Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine
# thread contention makes them an order of magnitude slower.
torch.set_num_threads(1)

_BERTLIKE = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=NUM_LAYERS, num_attention_heads=4,
    intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    max_position_embeddings=64, num_labels=3,
)
_LLAMALIKE = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=NUM_LAYERS, num_attention_heads=4,
    num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
)

TINY: dict[str, Callable[[], nn.Module]] = {
    "bert": lambda: BertForSequenceClassification(BertConfig(**_BERTLIKE)),
    "roberta": lambda: RobertaForSequenceClassification(RobertaConfig(**_BERTLIKE, pad_token_id=1)),
    "xlm-roberta": lambda: XLMRobertaForSequenceClassification(XLMRobertaConfig(**_BERTLIKE, pad_token_id=1)),
    "distilbert": lambda: DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=NUM_LAYERS, n_heads=4, hidden_dim=64, dropout=0.0,
        attention_dropout=0.0, seq_classif_dropout=0.0, max_position_embeddings=64, num_labels=3)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=NUM_LAYERS, n_head=4, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**_LLAMALIKE)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**_LLAMALIKE)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**_LLAMALIKE)),
}
"""One tiny model per supported model_type, dropout off so outputs are deterministic."""

DECODERS = ("gpt2", "llama", "mistral", "qwen2")


class Block(nn.Module):
    """A residual MLP block, the shape of any user-defined architecture."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.fc(x))


class Custom(nn.Module):
    """A model outside the architecture table: blocks at ``encoder.blocks``."""

    def __init__(self, dim: int = 8, depth: int = NUM_LAYERS) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.encoder.blocks:
            x = block(x)
        return self.head(x)


def make(name: str, seed: int = 0) -> nn.Module:
    """A tiny model of architecture ``name``, with weights fixed by ``seed``."""
    torch.manual_seed(seed)
    return TINY[name]()


def tokens(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


@pytest.fixture(params=sorted(TINY))
def arch_name(request: pytest.FixtureRequest) -> str:
    """Every architecture in the table, for the contract sweep."""
    return request.param


@pytest.fixture(params=DECODERS)
def decoder_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The real MiniLM tokenizer (from the bundled package), for tiny models saved as folders."""
    from transformers import AutoTokenizer

    from layerdrop.models.loading import resolve

    return AutoTokenizer.from_pretrained(resolve("minilm-l6")[0])


def save_tiny_lm(folder: Path, tokenizer, *, positions: int = 1024, rare_eos: bool = False) -> str:
    """Save a 4-layer GPT-2 (width 32) with ``tokenizer`` in ``folder``. Its end of text is [SEP], or with
    ``rare_eos`` the vocabulary's last token, which a random model seldom draws (generations run their length)."""
    torch.manual_seed(0)
    eos = tokenizer.vocab_size - 1 if rare_eos else tokenizer.sep_token_id
    GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=4, n_head=2, n_positions=positions,
                               eos_token_id=eos, **({"bos_token_id": eos} if rare_eos else {}))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def save_tiny_classifier(folder: Path, tokenizer, **extra) -> str:
    """Save a 4-layer BERT classifier (width 32, two labels) with ``tokenizer`` in ``folder``
    (``extra``: :func:`layerdrop.models.save_classifier`'s keywords)."""
    from transformers import BertModel

    from layerdrop.models.loading import Classifier, save_classifier

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                                   num_attention_heads=2, intermediate_size=64))
    save_classifier(Classifier(encoder, num_labels=2), folder, **extra)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer) -> str:
    """A saved 4-layer GPT-2 (width 32) with the MiniLM tokenizer."""
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), minilm_tokenizer)


CITIES = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Egypt", "Cairo"),
          ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Chile", "Santiago"), ("Cuba", "Havana"),
          ("Greece", "Athens"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Ireland", "Dublin")]
ZH = [("中国", "北京"), ("日本", "东京"), ("法国", "巴黎"), ("英国", "伦敦"), ("韩国", "首尔"), ("泰国", "曼谷")]
FILLER = "The weather there was mild and the markets were busy all year. "


def squad_question(qid, question, context, answer):
    """One SQuAD question (a dict); the answer offset is found in the context (``None``: unanswerable)."""
    if answer is None:
        return {"id": qid, "question": question, "answers": [], "is_impossible": True}
    start = context.find(answer)
    assert start >= 0
    return {"id": qid, "question": question, "answers": [{"text": answer, "answer_start": start}]}


def _squad_paragraphs():
    paragraphs = []
    for i, (country, city) in enumerate(CITIES):
        context = f"{city} is the capital of {country}. It is known for its old squares and its river."
        if i == 0:  # longer than one window of 64 tokens: the answer sits in a later window
            context = FILLER * 12 + context
        paragraphs.append({"context": context, "qas": [
            squad_question(f"en{i}", f"What is the capital of {country}?", context, city),
            squad_question(f"en{i}-none", f"Who founded the river trade of {country}?", context, None),
        ]})
    for i, (country, city) in enumerate(ZH):
        context = f"{city}是{country}的首都，也是一座历史悠久的城市。"
        question = squad_question(f"zh{i}", f"{country}的首都是哪里？", context, city)
        paragraphs.append({"context": context, "qas": [question]})
    return paragraphs


def write_squad(path: Path) -> Path:
    """A small SQuAD 2.0 file at ``path``: capitals in English (one context longer than a window of 64 tokens, an
    unanswerable question on each) and in Chinese."""
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "capitals", "paragraphs": _squad_paragraphs()}]},
                               ensure_ascii=False), encoding="utf-8")
    return path


def padded_batch(rows: int = 6, length: int = 9) -> dict[str, torch.Tensor]:
    """Random ids of ``rows`` texts of several lengths, right-padded to ``length``, with their attention mask."""
    ids = torch.randint(3, 90, (rows, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, used in enumerate((9, 5, 3, 7, 9, 4)[:rows]):
        mask[row, used:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def write_reviews(path: Path, good_label: str = "pos", bad_label: str = "neg") -> str:
    """A small labelled CSV (80 short film reviews, two classes) at ``path``; returns the path."""
    good = ["a good film", "great acting and a great story", "I loved it", "wonderful and moving", "superb"]
    bad = ["a bad film", "awful acting and a dull story", "I hated it", "boring and slow", "terrible"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(8):
            w.writerows([[f"{t} {i}", good_label] for t in good] + [[f"{t} {i}", bad_label] for t in bad])
    return str(path)
