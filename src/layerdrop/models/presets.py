"""Models built from scratch: architecture presets, and the tokenizers they need.

A preset names a small randomly initialised Hugging Face model of an architecture that
:func:`layerdrop.find_layers` knows (bert, gpt2, llama), sized to train in minutes on a
few CPU cores, with enough layers that pruning is interesting. Its vocabulary comes from
a tokenizer: one trained on your texts (:func:`train_tokenizer`) or one borrowed from a
bundled or local model (:func:`borrow_tokenizer`). Everything works offline.

>>> from layerdrop import data, presets
>>> texts = data.load("kjv").train.texts                          # doctest: +SKIP
>>> tok = presets.train_tokenizer(texts, "bpe")                    # doctest: +SKIP
>>> model = presets.build("gpt2-tiny", tok, task="clm", seed=0)     # doctest: +SKIP
>>> model = presets.build("bert-tiny", tok2, task="mlm", num_hidden_layers=8)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CONFIG_MAPPING,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from layerdrop.errors import InputError

from .loading import AUTO_CLASSES, BUNDLED_MODELS, local_folder, resolve

__all__ = [
    "PRESETS",
    "TASKS",
    "TOKENIZER_KINDS",
    "Preset",
    "borrow_tokenizer",
    "build",
    "presets_for",
    "train_tokenizer",
]

TASKS: Mapping[str, str] = MappingProxyType({
    "classification": "the bare encoder (AutoModel, e.g. BertModel); the caller adds its pooled head",
    "mlm": "masked language modelling (AutoModelForMaskedLM, e.g. BertForMaskedLM)",
    "clm": "causal language modelling (AutoModelForCausalLM, e.g. GPT2LMHeadModel)",
    "qa": "extractive question answering (AutoModelForQuestionAnswering, e.g. BertForQuestionAnswering)",
})
"""Task name -> what :func:`build` returns for it."""

_TASKS_OF_TYPE: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "bert": ("classification", "mlm", "qa"),
    "gpt2": ("clm",),
    "llama": ("clm",),
})
"""Which tasks each model type is built for: encoders classify and fill masks, decoders generate."""


@dataclass(frozen=True)
class Preset:
    """A from-scratch model: an architecture and its size, without a vocabulary."""

    name: str
    """Short name, e.g. ``"bert-tiny"``."""

    model_type: str
    """``config.model_type`` of the model: ``"bert"``, ``"gpt2"`` or ``"llama"``."""

    config: Mapping[str, Any]
    """Keyword arguments of the HF config class (layers, widths, heads, positions, dropouts).
    Read-only; vocabulary size and special-token ids come from the tokenizer at :func:`build`."""

    description: str
    """One line for ``--help`` and the docs."""

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks of :data:`TASKS` this preset can be built for."""
        return _TASKS_OF_TYPE[self.model_type]

    @property
    def tokenizer_kind(self) -> str:
        """The :data:`TOKENIZER_KINDS` entry its trained tokenizer takes: WordPiece for BERT, else BPE."""
        return "wordpiece" if self.model_type == "bert" else "bpe"

    @property
    def max_positions(self) -> int:
        """Longest sequence the model accepts, in tokens."""
        return int(self.config.get("n_positions", self.config.get("max_position_embeddings", 0)))


def _preset(name: str, model_type: str, description: str, **config: Any) -> Preset:
    return Preset(name, model_type, MappingProxyType(config), description)


_BERT_DROPOUT = dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
_GPT2_DROPOUT = dict(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in (
    _preset("bert-tiny", "bert", "BERT encoder, 6 layers, hidden 128, 4 heads (1.3M parameters + embeddings)",
            num_hidden_layers=6, hidden_size=128, num_attention_heads=4, intermediate_size=512,
            max_position_embeddings=512, **_BERT_DROPOUT),
    _preset("bert-mini", "bert", "BERT encoder, 12 layers, hidden 256, 4 heads (9.7M parameters + embeddings)",
            num_hidden_layers=12, hidden_size=256, num_attention_heads=4, intermediate_size=1024,
            max_position_embeddings=512, **_BERT_DROPOUT),
    _preset("gpt2-tiny", "gpt2", "GPT-2 decoder, 6 layers, width 128, 4 heads, context 256 "
            "(1.2M parameters + embeddings)",
            n_layer=6, n_embd=128, n_head=4, n_positions=256, **_GPT2_DROPOUT),
    _preset("gpt2-mini", "gpt2", "GPT-2 decoder, 12 layers, width 256, 4 heads, context 256 "
            "(9.5M parameters + embeddings)",
            n_layer=12, n_embd=256, n_head=4, n_positions=256, **_GPT2_DROPOUT),
    _preset("llama-tiny", "llama", "Llama decoder, 6 layers, hidden 128, 4 heads / 2 KV heads, context 256 "
            "(1.2M parameters + embeddings)",
            num_hidden_layers=6, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=384, max_position_embeddings=256, tie_word_embeddings=True),
    _preset("llama-mini", "llama", "Llama decoder, 12 layers, hidden 256, 4 heads / 2 KV heads, context 256 "
            "(9.4M parameters + embeddings)",
            num_hidden_layers=12, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=768, max_position_embeddings=256, tie_word_embeddings=True),
)})
"""Preset name -> preset. Embeddings add ``vocab_size x hidden`` parameters (tied with the
output layer): about 1M at hidden 128 and 2M at hidden 256 for an 8000-token vocabulary."""


def presets_for(task: str) -> tuple[str, ...]:
    """Names of the presets that :func:`build` accepts for ``task``."""
    _check_task(task)
    return tuple(name for name, p in PRESETS.items() if task in p.tasks)


# --------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------

TOKENIZER_KINDS: Mapping[str, str] = MappingProxyType({
    "wordpiece": "BERT WordPiece: [PAD] [UNK] [CLS] [SEP] [MASK]; adds [CLS] ... [SEP] (and pairs); lowercases",
    "bpe": "byte-level BPE (GPT-2 style, no unknown tokens): <|endoftext|> is bos and eos and starts "
           "every text, <|pad|> pads; keeps case",
})
"""Tokenizer kind -> what :func:`train_tokenizer` builds."""

_WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_BPE_SPECIALS = ("<|endoftext|>", "<|pad|>")
_WORD_START = "\ue000"
"""Private-use character marking the start of a word while training WordPiece (see below)."""


def _wordpiece_normalizer(lowercase: bool) -> normalizers.Normalizer:
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)


def _train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool, length: int | None) -> Tokenizer:
    """Train a WordPiece vocabulary, deterministically.

    ``tokenizers``' own ``WordPieceTrainer`` numbers the ``##`` pieces in hash-map order,
    which changes from run to run and so changes which merges win ties: two runs on the
    same texts give different vocabularies. Its plain BPE trainer is deterministic, so this
    trains BPE on words marked with a word-start character and renames the pieces the
    WordPiece way: ``<start>ab`` -> ``ab``, ``ab`` -> ``##ab``. That is the same algorithm
    (WordPiece training in ``tokenizers`` is BPE with a continuation prefix).
    """
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.Sequence([_wordpiece_normalizer(lowercase), normalizers.Replace(_WORD_START, "")])
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.BertPreTokenizer(),
        pre_tokenizers.Metaspace(replacement=_WORD_START, prepend_scheme="always", split=True),
    ])
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False), length=length)
    pieces = sorted(bpe.get_vocab().items(), key=lambda item: item[1])
    alphabet = [p for p, _ in pieces if len(p) == 1 and p != _WORD_START]
    if not alphabet:
        raise InputError("cannot train a tokenizer: the texts contain no words")
    vocab: dict[str, int] = {}
    for token in (*_WORDPIECE_SPECIALS, *alphabet, *("##" + c for c in alphabet)):
        vocab.setdefault(token, len(vocab))
    if len(vocab) > vocab_size:
        raise InputError(
            f"vocab_size={vocab_size} is too small: these texts need {len(vocab)} tokens for the "
            f"special tokens and every character (alone and as a '##' continuation)"
        )
    for piece, _ in pieces:  # merges, in the order they were learned
        if len(vocab) >= vocab_size:
            break
        if len(piece) > 1:
            vocab.setdefault(piece[1:] if piece.startswith(_WORD_START) else "##" + piece, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = _wordpiece_normalizer(lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


def _train_bpe(texts: Iterable[str], vocab_size: int, lowercase: bool, length: int | None) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(_BPE_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=length)
    eot = _BPE_SPECIALS[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{eot} $A", pair=f"{eot} $A {eot} $B:1", special_tokens=[(eot, tok.token_to_id(eot))],
    )
    return tok


def train_tokenizer(
    texts: Iterable[str], kind: str, vocab_size: int = 8000, *, lowercase: bool | None = None,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``texts``: ``kind`` is ``"wordpiece"`` (BERT) or ``"bpe"`` (GPT-2, Llama).

    See :data:`TOKENIZER_KINDS`. ``lowercase`` defaults to True for WordPiece (uncased, like
    ``bert-base-uncased``) and False for BPE. The result is deterministic: the same texts
    give the same vocabulary and ids in every run. It pads on the right, has no
    ``model_max_length`` (pass ``max_length`` when truncating), and saves and loads with
    plain ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.

    The BPE tokenizer puts ``<|endoftext|>`` (its bos and eos) before every text, so
    concatenated texts are separated by it and a causal LM learns to end a text with it;
    it returns no ``token_type_ids``.
    """
    if kind not in TOKENIZER_KINDS:
        raise InputError(f"unknown tokenizer kind {kind!r}; choose one of {sorted(TOKENIZER_KINDS)}")
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not one string")
    length = len(texts) if hasattr(texts, "__len__") else None  # type: ignore[arg-type]  # hasattr: it is Sized
    if kind == "wordpiece":
        tok = _train_wordpiece(texts, vocab_size, True if lowercase is None else lowercase, length)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]",
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    tok = _train_bpe(texts, vocab_size, bool(lowercase), length)
    eot, pad = _BPE_SPECIALS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot, pad_token=pad,
        model_input_names=["input_ids", "attention_mask"],
    )


def borrow_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a bundled model (see :mod:`layerdrop.models`) or of a model folder.

    ``"minilm-l6"`` gives its uncased BERT WordPiece tokenizer (30522 tokens);
    ``"smollm2-135m"`` reads the tokenizer from its GGUF file (49152 tokens, a few seconds;
    needs ``gguf``); ``"e5-small"`` gives XLM-R's unigram tokenizer (250002 tokens) from the
    folder :func:`layerdrop.models.local_folder` converts once. A tokenizer without a pad
    token gets its eos token (else its unk token) as pad token, so batches can be padded.
    """
    folder, file = resolve(name_or_path)
    bundled = BUNDLED_MODELS.get(name_or_path)
    if bundled is not None and bundled.gguf_file:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    else:
        tok = AutoTokenizer.from_pretrained(local_folder(name_or_path))
    if tok.pad_token is None:
        fallback = tok.eos_token or tok.unk_token
        if fallback is None:
            raise InputError(f"the tokenizer of {name_or_path!r} has no pad, eos or unk token to pad with")
        tok.pad_token = fallback
    return tok


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------

_FROM_TOKENIZER = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")
_NOT_OVERRIDABLE = frozenset({
    *_FROM_TOKENIZER, "num_labels", "id2label", "label2id", "model_type", "architectures",
    "transformers_version", "dtype", "is_decoder", "is_encoder_decoder", "add_cross_attention",
})


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")


def _canonical_overrides(preset: Preset, config_class: type[PretrainedConfig],
                         overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` with aliases resolved (``num_hidden_layers`` -> ``n_layer`` for GPT-2),
    after checking each names a setting of the config class."""
    aliases = dict(config_class.attribute_map)
    known = set(config_class().to_dict()) | set(preset.config)
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        canonical = aliases.get(key, key)
        if canonical in _NOT_OVERRIDABLE or key in _NOT_OVERRIDABLE:
            why = ("it comes from the tokenizer" if canonical in _FROM_TOKENIZER
                   else "pass num_labels=" if canonical in ("num_labels", "id2label", "label2id")
                   else "it is fixed by the preset and task")
            raise InputError(f"cannot override {key!r} of preset {preset.name!r}: {why}")
        if canonical not in known or canonical.startswith("_"):
            names = ", ".join(sorted({*preset.config, *aliases}))
            raise InputError(
                f"unknown setting {key!r} for preset {preset.name!r} ({config_class.__name__}); "
                f"its settings include {names}"
            )
        if canonical in out:
            raise InputError(f"setting {canonical!r} given twice (as {key!r} and an alias)")
        out[canonical] = value
    return out


def build(
    preset: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    task: str,
    num_labels: int | None = None,
    seed: int = 0,
    auto_class: Any = None,
    **overrides: Any,
) -> PreTrainedModel:
    """A randomly initialised model of ``preset`` for ``task``, sized for ``tokenizer``.

    ``task`` is one of :data:`TASKS`: ``"classification"`` returns the bare encoder
    (``BertModel``, with its pooler; the caller adds its own head, ``num_labels`` is only
    recorded in the config), ``"mlm"`` a masked LM, ``"clm"`` a causal LM; ``auto_class`` builds
    another class instead (``AutoModelForSequenceClassification``: the architecture's own head). The vocabulary
    size is ``len(tokenizer)`` and the pad/bos/eos ids are the tokenizer's. ``overrides``
    replace config settings, e.g. ``num_hidden_layers=4`` or ``hidden_dropout_prob=0.2``
    (GPT-2 accepts the generic names too: ``num_hidden_layers`` sets ``n_layer``).

    Weights are drawn from ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``:
    the same seed gives the same weights, and the caller's global RNG state is untouched.
    The model is returned in training mode, as ``from_config`` leaves it.
    """
    spec = PRESETS.get(preset)
    if spec is None:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    _check_task(task)
    if task not in spec.tasks:
        raise InputError(
            f"preset {preset!r} ({spec.model_type}) cannot be built for task {task!r}; "
            f"presets for {task!r}: {', '.join(presets_for(task))}"
        )
    if num_labels is not None and task != "classification":
        raise InputError(f"num_labels is only for task='classification', not {task!r}")
    config_class = CONFIG_MAPPING[spec.model_type]
    settings = {**spec.config, **_canonical_overrides(spec, config_class, overrides)}
    settings.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if num_labels is not None:
        settings["num_labels"] = num_labels
    config = config_class(**settings)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        auto: Any = auto_class or AUTO_CLASSES[task]  # an HF auto class (AUTO_CLASSES holds them as plain types)
        return auto.from_config(config)
