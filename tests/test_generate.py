"""Generation at a depth (issue 6, first part): greedy/sampling, streaming, stops, bad input."""

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

import layerdrop
from layerdrop.cli import main
from layerdrop.generate import generate
from layerdrop.models import resolve
from conftest import make


@pytest.fixture(scope="module")
def tok():
    t = AutoTokenizer.from_pretrained(resolve("minilm-l6")[0])
    t.eos_token = t.sep_token
    return t


@pytest.fixture(scope="module")
def lm(tok):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=4, n_head=2, n_positions=32,
                                      eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id)).eval()


def test_generation_at_a_depth_equals_the_pruned_model(lm, tok):
    result = generate(lm, tok, "in the beginning", depth=2, max_new_tokens=6)
    pruned = layerdrop.prune(lm, depth=2).eval()
    ids = tok("in the beginning", return_tensors="pt").input_ids
    expected = pruned.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert result.depth == 2 and result.new_tokens == 6
    assert result.text == tok.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(layerdrop.find_layers(lm).layers) == 4  # the caller's model is untouched


def test_tokens_stream_as_they_are_produced(lm, tok):
    pieces = []
    result = generate(lm, tok, "and god said", max_new_tokens=5, on_text=pieces.append)
    assert "".join(pieces).strip() == result.text.strip()


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(lm, tok):
    state = torch.get_rng_state()
    a = generate(lm, tok, "let there be", max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    b = generate(lm, tok, "let there be", max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    assert a.text == b.text and torch.equal(torch.get_rng_state(), state)


def test_stop_strings_end_generation(lm, tok):
    free = generate(lm, tok, "the light", max_new_tokens=8)
    first_word = free.text.split()[0]
    stopped = generate(lm, tok, "the light", max_new_tokens=8, stop=[first_word])
    assert first_word not in stopped.text and stopped.new_tokens <= free.new_tokens


def test_a_prompt_longer_than_the_context_is_truncated_from_the_start(lm, tok):
    result = generate(lm, tok, "word " * 100, max_new_tokens=4)
    assert result.prompt_truncated and result.new_tokens == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"depth": 5}, "from 1 to 4"),
        ({"depth": 0}, "from 1 to 4"),
        ({"max_new_tokens": 40}, "no room for the prompt"),
    ],
)
def test_bad_generation_input_is_explained(lm, tok, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(lm, tok, **{"prompt": "hello", **kwargs})


def test_encoder_only_models_are_refused(tok):
    with pytest.raises(ValueError, match="encoder-only"):
        generate(make("bert"), tok, "hello")


def test_generate_cli_streams_the_continuation(tmp_path, lm, tok, capsys):
    lm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert main(["generate", str(tmp_path), "--prompt", "in the beginning", "--depth", "2",
                 "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("in the beginning") and "4 tokens at depth 2" in captured.err
