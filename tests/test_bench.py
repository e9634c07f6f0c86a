"""bench/generate.py's side-by-side with Hugging Face's own early-exit drafting, on tiny random models."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import DECODERS, make
from layerdrop.serving.generate import generate

_spec = importlib.util.spec_from_file_location("bench_generate", Path(__file__).parents[1] / "bench" / "generate.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("name", DECODERS)
def test_hf_early_exit_is_checked_to_run_only_the_first_layers(name):
    model = make(name).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Llama's family slices its layers by config.num_hidden_layers; GPT-2's forward runs every block regardless
    assert bench._hf_exit_runs_first_layers(model, 2) is (name != "gpt2")
    assert model.config.num_hidden_layers == 4 and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.real
def test_hf_early_exit_decodes_the_greedy_text_and_counts_what_it_drafted():
    model, tokenizer = bench._load("random")  # a tiny random Llama of 6 layers with MiniLM's tokenizer
    before = copy.deepcopy(model.generation_config)
    prompt = "in the beginning"
    out = bench._hf_early_exit(model, tokenizer, prompt, new_tokens=12, k=3, draft_tokens=3)
    greedy = generate(model, tokenizer, prompt, max_new_tokens=12)
    assert out.token_ids == greedy.token_ids and out.new_tokens == 12 and out.draft_depth == 3
    rounds = out.new_tokens - out.accepted  # each round yields its accepted tokens and one of the model's
    # 3 drafted a round, as asked (HF's own default, up to 20 cut by a confidence stop, drafts 1 on a random model),
    # fewer only where the round would pass the last token
    assert 0 <= out.accepted <= out.drafted and 3 * (rounds - 2) <= out.drafted <= 3 * rounds
    assert model.config.num_hidden_layers == 6 and not model._forward_pre_hooks  # the counting hook is gone
    assert model.generation_config.num_assistant_tokens == before.num_assistant_tokens  # and its config is back
