"""Tests for layerdrop.models.presets: from-scratch models and the tokenizers trained or borrowed for them."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertModel,
    GPT2LMHeadModel,
    LlamaForCausalLM,
)

import layerdrop
from layerdrop.models import presets
from layerdrop.models.presets import PRESETS, TASKS, borrow_tokenizer, build, presets_for, train_tokenizer

TEXTS = (
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good: and God divided the light from the darkness.",
    "And God called the light Day, and the darkness he called Night.",
    "And the evening and the morning were the first day.",
    "Train once with LayerDrop, then prune the transformer to any depth without retraining.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9: accents, digits 1234 and punctuation!?",
)
VOCAB = 300
KINDS = ("wordpiece", "bpe")
CASES = [(name, task) for name, p in PRESETS.items() for task in p.tasks]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and spinning threads slow to a crawl when
    other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizers():
    return {kind: train_tokenizer(TEXTS, kind, VOCAB) for kind in KINDS}


def _tokenizer_for(name: str, tokenizers):
    return tokenizers["wordpiece" if PRESETS[name].model_type == "bert" else "bpe"]


# --------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------


def test_wordpiece_wraps_texts_and_pairs_in_cls_and_sep(tokenizers):
    tok = tokenizers["wordpiece"]
    assert tok.convert_ids_to_tokens(tok("the light").input_ids) == ["[CLS]", "the", "light", "[SEP]"]
    pair = tok("the light", "the darkness")
    assert tok.convert_ids_to_tokens(pair.input_ids) == ["[CLS]", "the", "light", "[SEP]", "the", "darkness", "[SEP]"]
    assert pair.token_type_ids == [0, 0, 0, 0, 1, 1, 1]
    assert [tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token] == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert tok.decode(tok("And God said").input_ids, skip_special_tokens=True) == "and god said"


def test_wordpiece_splits_unseen_words_into_continuation_pieces(tokenizers):
    tok = tokenizers["wordpiece"]
    pieces = tok.tokenize("lightness")
    assert pieces[0] == "light" and all(p.startswith("##") for p in pieces[1:])
    assert tok.unk_token not in pieces


def test_bpe_pads_batches_with_its_own_pad_token(tokenizers):
    tok = tokenizers["bpe"]
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.bos_token == tok.eos_token == "<|endoftext|>"
    batch = tok(["light", "And God said, Let there be light"], padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch.input_ids[:, 0].tolist() == [tok.bos_token_id] * 2
    short = batch.attention_mask[0]
    assert batch.input_ids[0, short == 0].eq(tok.pad_token_id).all() and short[-1] == 0
    assert batch.attention_mask[1].all()


def test_bpe_encodes_any_text_without_unknown_tokens_and_keeps_case(tokenizers):
    tok = tokenizers["bpe"]
    text = "Zebra \u00fcber \u4e2d\u6587 \U0001f600"  # characters never seen in training
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_lowercase_defaults_to_true_for_wordpiece_and_false_for_bpe(tokenizers):
    assert tokenizers["wordpiece"].tokenize("God") == ["god"]
    assert tokenizers["bpe"].tokenize("God") == ["God"]
    cased = train_tokenizer(TEXTS, "wordpiece", VOCAB, lowercase=False)
    assert cased.tokenize("God") == ["God"]
    lower_bpe = train_tokenizer(TEXTS, "bpe", VOCAB, lowercase=True)
    assert lower_bpe.decode(lower_bpe("God").input_ids, skip_special_tokens=True) == "god"


@pytest.mark.parametrize("kind", KINDS)
def test_trained_tokenizer_round_trips_through_save_pretrained_and_auto_tokenizer(kind, tokenizers, tmp_path):
    tok = tokenizers[kind]
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    batch = list(TEXTS[:3]) + ["unseen words: zebra quagga"]
    assert loaded(batch, padding=True).data == tok(batch, padding=True).data
    assert loaded.all_special_tokens == tok.all_special_tokens
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    assert len(loaded) == len(tok)


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_training_is_deterministic(kind):
    # tokenizers' own WordPieceTrainer gives a different vocabulary on most runs of this test
    runs = {train_tokenizer(iter(TEXTS * 3), kind, VOCAB).backend_tokenizer.to_str() for _ in range(4)}
    assert len(runs) == 1


@pytest.mark.parametrize(("kind", "size"), [("wordpiece", 150), ("bpe", 300)])
def test_tokenizer_has_the_requested_vocab_size_when_texts_allow(kind, size):
    assert len(train_tokenizer(TEXTS, kind, size)) == size


def test_tokenizer_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'.*'bpe', 'wordpiece'"):
        train_tokenizer(TEXTS, "sentencepiece")
    with pytest.raises(ValueError, match="vocab_size=20 is too small"):
        train_tokenizer(TEXTS, "wordpiece", 20)
    with pytest.raises(ValueError, match="no words"):
        train_tokenizer(["", "   "], "wordpiece")
    with pytest.raises(TypeError, match="not one string"):
        train_tokenizer("a text", "bpe")


def test_borrow_tokenizer_gives_a_folder_tokenizer_a_pad_token(tokenizers, tmp_path):
    tok = train_tokenizer(TEXTS, "bpe", VOCAB)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    borrowed = borrow_tokenizer(str(tmp_path))
    assert borrowed.pad_token == borrowed.eos_token == "<|endoftext|>"
    assert borrowed("light").input_ids == tokenizers["bpe"]("light").input_ids


# --------------------------------------------------------------------------------------
# presets and build
# --------------------------------------------------------------------------------------


EXPECTED_CLASS = {
    ("bert", "classification"): BertModel,
    ("bert", "mlm"): BertForMaskedLM,
    ("bert", "qa"): BertForQuestionAnswering,
    ("gpt2", "clm"): GPT2LMHeadModel,
    ("llama", "clm"): LlamaForCausalLM,
}


def test_required_presets_exist_with_at_least_six_layers():
    assert {"bert-tiny", "bert-mini", "gpt2-tiny", "llama-tiny"} <= set(PRESETS)
    for p in PRESETS.values():
        layers = p.config.get("num_hidden_layers", p.config.get("n_layer"))
        assert layers >= 6 and p.max_positions >= 128 and p.description
    assert presets_for("clm") == tuple(n for n, p in PRESETS.items() if p.model_type in ("gpt2", "llama"))
    assert presets_for("mlm") == presets_for("classification") == ("bert-tiny", "bert-mini")


@pytest.mark.parametrize(("name", "task"), CASES)
def test_every_preset_builds_applies_layerdrop_and_trains_a_step(name, task, tokenizers):
    tok = _tokenizer_for(name, tokenizers)
    model = build(name, tok, task=task, seed=0)
    assert type(model) is EXPECTED_CLASS[PRESETS[name].model_type, task]
    assert model.config.vocab_size == len(tok) == model.get_input_embeddings().num_embeddings
    assert model.config.pad_token_id == tok.pad_token_id
    assert (model.config.bos_token_id, model.config.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    site = layerdrop.find_layers(model)
    assert len(site.layers) >= 6

    layerdrop.apply(model, rate=0.2)
    model.train()
    batch = tok(list(TEXTS[:3]), padding=True, return_tensors="pt")
    if task == "classification":
        hidden = model(**batch).last_hidden_state
        assert hidden.shape == (3, batch.input_ids.shape[1], model.config.hidden_size)
        loss = hidden[:, 0].pow(2).mean()
    elif task == "qa":
        loss = model(**batch, start_positions=torch.ones(3, dtype=torch.long),
                     end_positions=torch.full((3,), 2)).loss
    else:
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        loss = model(**batch, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.get_input_embeddings().parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert layerdrop.state_of(model).draws == 1


def test_build_leaves_the_global_rng_untouched(tokenizers):
    before = torch.random.get_rng_state()
    expected_next = torch.rand(3)
    torch.random.set_rng_state(before)
    build("llama-tiny", tokenizers["bpe"], task="clm", seed=123)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(torch.rand(3), expected_next)


def test_same_seed_gives_identical_weights_and_other_seeds_differ(tokenizers):
    def weights(seed: int) -> dict[str, torch.Tensor]:
        return build("gpt2-tiny", tokenizers["bpe"], task="clm", seed=seed).state_dict()

    a, b, c = weights(7), weights(7), weights(8)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.h.0.attn.c_attn.weight"], c["transformer.h.0.attn.c_attn.weight"])


def test_overrides_change_the_config_and_accept_generic_names_for_gpt2(tokenizers):
    bert = build("bert-tiny", tokenizers["wordpiece"], task="mlm", num_hidden_layers=4, hidden_dropout_prob=0.2)
    assert len(layerdrop.find_layers(bert).layers) == 4 and bert.config.hidden_dropout_prob == 0.2
    gpt2 = build("gpt2-tiny", tokenizers["bpe"], task="clm", num_hidden_layers=8, n_embd=64)
    assert gpt2.config.n_layer == 8 and len(gpt2.transformer.h) == 8 and gpt2.config.n_embd == 64
    assert PRESETS["gpt2-tiny"].config["n_layer"] == 6  # the preset itself is unchanged


def test_classification_records_num_labels(tokenizers):
    model = build("bert-tiny", tokenizers["wordpiece"], task="classification", num_labels=5)
    assert model.config.num_labels == 5


def test_unknown_preset_lists_the_presets(tokenizers):
    with pytest.raises(ValueError, match="unknown preset 'bert-huge'; choose one of bert-tiny, bert-mini, gpt2-tiny"):
        build("bert-huge", tokenizers["wordpiece"], task="mlm")


@pytest.mark.parametrize(("name", "task", "valid"), [
    ("bert-tiny", "clm", "gpt2-tiny, gpt2-mini, llama-tiny, llama-mini"),
    ("gpt2-tiny", "mlm", "bert-tiny, bert-mini"),
    ("llama-tiny", "classification", "bert-tiny, bert-mini"),
])
def test_wrong_task_for_a_preset_lists_the_presets_for_that_task(name, task, valid, tokenizers):
    with pytest.raises(ValueError, match=f"cannot be built for task '{task}'; presets for '{task}': {valid}$"):
        build(name, tokenizers["bpe"], task=task)


def test_unknown_task_lists_the_tasks(tokenizers):
    with pytest.raises(ValueError,
                       match="unknown task 'seq2seq'; choose one of \\['classification', 'clm', 'mlm', 'qa'\\]"):
        build("bert-tiny", tokenizers["wordpiece"], task="seq2seq")
    assert set(TASKS) == {"classification", "clm", "mlm", "qa"}


def test_bad_overrides_are_clear_errors(tokenizers):
    wp, bpe = tokenizers["wordpiece"], tokenizers["bpe"]
    with pytest.raises(ValueError, match="unknown setting 'num_layers' for preset 'bert-tiny' \\(BertConfig\\)"):
        build("bert-tiny", wp, task="mlm", num_layers=3)
    with pytest.raises(ValueError, match="unknown setting 'hidden_dropout_prob' for preset 'gpt2-tiny'.*resid_pdrop"):
        build("gpt2-tiny", bpe, task="clm", hidden_dropout_prob=0.2)
    with pytest.raises(ValueError, match="cannot override 'vocab_size'.*comes from the tokenizer"):
        build("llama-tiny", bpe, task="clm", vocab_size=100)
    with pytest.raises(ValueError, match="cannot override 'id2label'.*pass num_labels="):
        build("bert-tiny", wp, task="classification", id2label={0: "a"})
    with pytest.raises(ValueError, match="given twice"):
        build("gpt2-tiny", bpe, task="clm", n_layer=4, num_hidden_layers=5)
    with pytest.raises(ValueError, match="num_labels is only for task='classification'"):
        build("bert-tiny", wp, task="mlm", num_labels=2)


def test_presets_are_read_only():
    with pytest.raises(TypeError):
        PRESETS["gpt2-tiny"].config["n_layer"] = 2  # type: ignore[index]  # read-only: what the test checks
    with pytest.raises(TypeError):
        presets.PRESETS["mine"] = PRESETS["gpt2-tiny"]  # type: ignore[index]  # read-only: what the test checks


# --------------------------------------------------------------------------------------
# bundled tokenizers
# --------------------------------------------------------------------------------------


@pytest.mark.real
def test_borrow_tokenizer_minilm_gives_its_bert_wordpiece_and_builds_a_bert(tmp_path):
    tok = borrow_tokenizer("minilm-l6")
    assert len(tok) == 30522 and tok.pad_token == "[PAD]"
    assert tok.convert_ids_to_tokens(tok("depth on demand").input_ids) == ["[CLS]", "depth", "on", "demand", "[SEP]"]
    model = build("bert-tiny", tok, task="mlm")
    assert model.config.vocab_size == 30522 and model.config.pad_token_id == tok.pad_token_id


@pytest.mark.real
def test_borrow_tokenizer_smollm2_reads_the_gguf_tokenizer_offline_and_builds_a_llama():
    tok = borrow_tokenizer("smollm2-135m")  # its load time: bench/load_times.py
    assert len(tok) == 49152 and tok.pad_token is not None
    batch = tok(["Hello world", "Depth on demand, without retraining"], padding=True, return_tensors="pt")
    model = build("llama-tiny", tok, task="clm", num_hidden_layers=2)
    assert model.config.vocab_size == 49152
    out = model(**batch, labels=batch.input_ids.masked_fill(batch.attention_mask == 0, -100))
    assert torch.isfinite(out.loss)


def test_preset_tasks_are_the_tasks_of_the_one_auto_class_table():
    from layerdrop.models.loading import AUTO_CLASSES
    from layerdrop.recipes.train import TASKS

    assert set(presets.TASKS) == set(AUTO_CLASSES) == set(TASKS)
