"""Generation at a depth and self-speculative decoding (issue 6, parts 1 and 2)."""

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

import layerdrop
from conftest import make
from layerdrop.cli import main
from layerdrop.cut.prune import view
from layerdrop.models.loading import resolve
from layerdrop.serving.generate import generate


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
    assert result.depth == 2 and result.new_tokens == 6 and result.kept == (0, 3)
    assert generate(lm, tok, "in the beginning", max_new_tokens=1).kept is None  # all layers
    assert result.text == tok.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(layerdrop.find_layers(lm).layers) == 4  # the caller's model is untouched


def test_tokens_stream_as_they_are_produced(lm, tok):
    pieces, progress = [], []
    calls = 0

    def forward_count(module, args, kwargs, output):
        nonlocal calls
        calls += 1

    def on_text(piece):
        pieces.append(piece)
        progress.append(calls)

    handle = lm.register_forward_hook(forward_count, with_kwargs=True)
    try:
        result = generate(lm, tok, "and god said", max_new_tokens=8, on_text=on_text)
    finally:
        handle.remove()
    assert "".join(pieces).strip() == result.text.strip()
    assert len([p for p in pieces if p]) >= 3  # several pieces, not one at the end
    assert progress[0] < calls  # the first piece arrived while the model was still generating


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(lm, tok):
    state = torch.get_rng_state()
    a = generate(lm, tok, "let there be", max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    b = generate(lm, tok, "let there be", max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    assert a.text == b.text and torch.equal(torch.get_rng_state(), state)


def test_sampling_follows_the_temperature_and_the_seed(lm, tok):
    greedy = generate(lm, tok, "let there be", max_new_tokens=8)
    hot = {generate(lm, tok, "let there be", max_new_tokens=8, temperature=5.0, seed=s).text for s in range(4)}
    assert len(hot) > 1 and greedy.text not in hot  # seeds differ, and a hot sample is not the greedy text
    cold = [generate(lm, tok, "let there be", max_new_tokens=8, temperature=1e-4, seed=s).text for s in range(3)]
    assert cold == [greedy.text] * 3  # temperature -> 0 is greedy decoding


def test_a_temperature_too_small_to_divide_by_decodes_greedily(lm, tok):
    """Schemathesis found it: logits / 3e-158 overflow to infinities, whose softmax is NaN, and sampling failed."""
    greedy = generate(lm, tok, "let there be", max_new_tokens=4)
    assert generate(lm, tok, "let there be", max_new_tokens=4, temperature=3.2e-158).text == greedy.text


def test_stop_strings_end_generation(lm, tok):
    free = generate(lm, tok, "the light", max_new_tokens=8)
    first_word = free.text.split()[0]
    stopped = generate(lm, tok, "the light", max_new_tokens=8, stop=[first_word])
    assert first_word not in stopped.text and stopped.new_tokens <= free.new_tokens


def test_generation_stops_right_after_the_stop_string(lm, tok):
    free = generate(lm, tok, "the light", max_new_tokens=12)
    ids = tok("the light", return_tensors="pt").input_ids
    new = lm.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
    words = free.text.split()
    stop = words[len(words) // 2]
    # the fewest tokens whose text holds the stop string: where generation must end
    needed = next(n for n in range(1, len(new) + 1) if stop in tok.decode(new[:n], skip_special_tokens=True))
    stopped = generate(lm, tok, "the light", max_new_tokens=12, stop=[stop])
    assert stopped.new_tokens == needed < free.new_tokens
    assert stopped.text == free.text[: free.text.index(stop)]  # the text ends exactly before the stop string


def test_a_prompt_longer_than_the_context_is_truncated_from_the_start(lm, tok):
    result = generate(lm, tok, "word " * 100, max_new_tokens=4)
    assert result.prompt_truncated and result.new_tokens == 4


def test_a_long_prompt_keeps_its_end(lm, tok):
    prompt = " ".join(f"w{i}" for i in range(60))
    ids = tok(prompt, return_tensors="pt").input_ids  # longer than the 32-token context
    room = lm.config.n_positions - 4
    assert ids.shape[1] > room
    end = ids[:, -room:]
    expected = lm.generate(end, attention_mask=torch.ones_like(end), max_new_tokens=4, do_sample=False,
                           pad_token_id=tok.pad_token_id)[0, room:]
    result = generate(lm, tok, prompt, max_new_tokens=4)
    assert result.prompt_truncated and result.text == tok.decode(expected, skip_special_tokens=True)
    start = ids[:, :room]
    from_start = lm.generate(start, attention_mask=torch.ones_like(start), max_new_tokens=4, do_sample=False,
                             pad_token_id=tok.pad_token_id)[0, room:]
    assert not torch.equal(from_start, expected)  # the check can tell the two ends apart


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


@pytest.mark.parametrize("kwargs", [{}, {"speculative": 2}])
def test_encoder_only_models_are_refused(tok, kwargs):
    with pytest.raises(ValueError, match="encoder-only"):
        generate(make("bert"), tok, "hello", **kwargs)


@pytest.fixture
def saved_lm(tmp_path, lm, tok):
    lm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return tmp_path


def test_generate_cli_streams_the_continuation(saved_lm, capsys):
    assert main(["generate", str(saved_lm), "--prompt", "in the beginning", "--depth", "2",
                 "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("in the beginning") and "4 tokens at depth 2" in captured.err


def test_generation_at_a_depth_runs_the_layers_its_strategy_chooses(lm, tok):
    from layerdrop.cut.strategies import choose

    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 900, (4, 16), generator=g), "attention_mask": torch.ones(4, 16)}]
    chosen = choose("angular", lm, 2, batches=batches).kept
    assert chosen != layerdrop.every_other(4, 2)  # else the check below could not tell them apart
    result = generate(lm, tok, "in the beginning", depth=2, strategy="angular", batches=batches, max_new_tokens=6)
    assert result.text == generate(lm, tok, "in the beginning", keep=chosen, max_new_tokens=6).text
    assert result.kept == chosen
    with pytest.raises(ValueError, match="calibration data"):
        generate(lm, tok, "in the beginning", depth=2, strategy="angular")


def test_cutting_a_model_without_layerdrop_training_says_so_and_what_to_try(saved_lm, tmp_path, capsys):
    assert main(["generate", str(saved_lm), "--prompt", "hi", "--depth", "2", "--max-new-tokens", "2"]) == 0
    note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "no LayerDrop training" in note[0] and "--strategy block-influence" in note[0]
    assert main(["prune", str(saved_lm), "--depth", "2", "--out", str(tmp_path / "cut")]) == 0
    assert "no LayerDrop training" in capsys.readouterr().err
    trained = layerdrop.apply(GPT2LMHeadModel.from_pretrained(saved_lm), rate=0.2)
    trained.save_pretrained(tmp_path / "ld")
    AutoTokenizer.from_pretrained(saved_lm).save_pretrained(tmp_path / "ld")
    for argv in (["generate", str(tmp_path / "ld"), "--prompt", "hi", "--depth", "2", "--max-new-tokens", "2"],
                 ["prune", str(tmp_path / "ld"), "--depth", "2", "--out", str(tmp_path / "ld-cut")]):
        assert main(argv) == 0
        assert "note:" not in capsys.readouterr().err


@pytest.fixture
def calibration_text(tmp_path):
    """A JSON-lines corpus whose validation rows calibrate or score a strategy."""
    text = tmp_path / "calib.jsonl"
    text.write_text("".join(f'{{"text": "in the beginning was the word number {i} and more words"}}\n'
                            for i in range(400)))
    return text


def test_generate_cli_cuts_by_an_importance_strategy_on_calibration_data(saved_lm, calibration_text, capsys):
    text = calibration_text
    assert main(["generate", str(saved_lm), "--prompt", "hi", "--depth", "2", "--max-new-tokens", "2",
                 "--strategy", "block-influence", "--data", str(text)]) == 0
    assert "2 tokens at depth 2 (layers " in capsys.readouterr().err
    assert main(["generate", str(saved_lm), "--prompt", "hi", "--depth", "2", "--strategy", "angular"]) == 2
    assert "pass --data" in capsys.readouterr().err
    assert main(["generate", str(saved_lm), "--prompt", "hi", "--strategy", "angular", "--data", str(text)]) == 2
    assert "pass --depth" in capsys.readouterr().err


def test_generate_cli_searches_layers_on_validation_data(saved_lm, calibration_text, capsys):
    text = calibration_text
    assert main(["generate", str(saved_lm), "--prompt", "hi", "--depth", "2", "--max-new-tokens", "2",
                 "--strategy", "search", "--data", str(text)]) == 0
    assert "2 tokens at depth 2 (layers " in capsys.readouterr().err
    assert main(["generate", str(saved_lm), "--prompt", "hi", "--depth", "2", "--strategy", "search"]) == 2
    err = capsys.readouterr().err
    assert "pass --data" in err and "lambda" not in err  # a command-line answer, not Python advice


@pytest.mark.parametrize("argv, message", [
    (["--depth", "40"], "depth must be an integer from 1 to 4"),
    (["--depth", "2", "--speculative", "3"], "smaller than the 2 layers"),
    (["--max-new-tokens", "4", "--speculative", "2", "--temperature", "0.7"], "greedy"),
])
def test_generate_cli_checks_every_argument_before_its_first_byte(saved_lm, capsys, argv, message):
    assert main(["generate", str(saved_lm), "--prompt", "hi", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # not the prompt, then the error on its line
    assert captured.err.strip().splitlines()[-1].startswith("layerdrop generate: error:") and message in captured.err


# --------------------------------------------------------------------------- self-speculative decoding (part 2)


@pytest.fixture(scope="module")
def decoders(tok):
    """The helpers' tiny GPT-2 and Llama (4 layers), with the tokenizer's vocabulary."""
    models = {}
    for name in ("gpt2", "llama"):
        model = make(name)
        model.resize_token_embeddings(tok.vocab_size, mean_resizing=False)
        models[name] = model.eval()
    return models


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_speculative_greedy_output_is_identical_to_full_depth(decoders, tok, name):
    model = decoders[name]
    for prompt in ("in the beginning", "and god said let there be light"):
        full = generate(model, tok, prompt, max_new_tokens=12)
        for draft_depth in (1, 2, 3):
            for draft_tokens in (1, 3):
                fast = generate(model, tok, prompt, max_new_tokens=12, speculative=draft_depth,
                                draft_tokens=draft_tokens)
                assert (fast.text, fast.new_tokens, fast.token_ids) == (full.text, full.new_tokens, full.token_ids)
                assert fast.draft_depth == draft_depth and fast.depth == 4
        assert len(full.token_ids) == full.new_tokens


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_adaptive_draft_length_keeps_the_greedy_output_and_changes_what_is_drafted(decoders, tok, name):
    model = decoders[name]
    full = generate(model, tok, "in the beginning", max_new_tokens=16)
    drafted = set()
    for draft_depth in (1, 3):
        fixed = generate(model, tok, "in the beginning", max_new_tokens=16, speculative=draft_depth, draft_tokens=3)
        adaptive = generate(model, tok, "in the beginning", max_new_tokens=16, speculative=draft_depth,
                            draft_tokens=3, adaptive_draft=True)
        assert adaptive.token_ids == fixed.token_ids == full.token_ids
        drafted.add((fixed.drafted, adaptive.drafted))
    assert any(f != a for f, a in drafted)  # the schedule moved the draft length somewhere


def _repeats_an_ngram(tokens, n, start=0):
    """Whether an n-gram ending at or after ``tokens[start]`` occurred earlier in ``tokens``."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return any(grams[i] in grams[:i] for i in range(max(0, start - n + 1), len(grams)))


@pytest.mark.parametrize(("name", "prompt"), [("gpt2", "in the beginning"), ("llama", "the the the the")])
def test_no_repeat_ngram_text_equals_hf_generate_and_never_repeats_one(decoders, tok, name, prompt):
    model = decoders[name]
    ids = tok(prompt, return_tensors="pt").input_ids  # (1, T)
    free = generate(model, tok, prompt, max_new_tokens=24)
    assert _repeats_an_ngram(list(free.token_ids), 2)  # these random weights loop here: the ban has work to do
    for n in (1, 2, 3):
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                            no_repeat_ngram_size=n, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        plain = generate(model, tok, prompt, max_new_tokens=24, no_repeat_ngram=n)
        assert plain.token_ids == tuple(hf.tolist())
        assert not _repeats_an_ngram(ids[0].tolist() + list(plain.token_ids), n, start=ids.shape[1])
        for draft_depth, adaptive in ((1, False), (2, True), (3, False)):
            fast = generate(model, tok, prompt, max_new_tokens=24, speculative=draft_depth,
                            draft_tokens=3, adaptive_draft=adaptive, no_repeat_ngram=n)
            assert fast.token_ids == plain.token_ids


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_confidence_threshold_drafts_less_and_keeps_the_greedy_output(decoders, tok, name):
    model = decoders[name]
    full = generate(model, tok, "in the beginning", max_new_tokens=16)
    always = generate(model, tok, "in the beginning", max_new_tokens=16, speculative=2, draft_tokens=4)
    doubtful = generate(model, tok, "in the beginning", max_new_tokens=16, speculative=2, draft_tokens=4,
                        draft_confidence=0.99)  # random weights are never that sure: one token a round
    assert always.token_ids == doubtful.token_ids == full.token_ids
    assert doubtful.drafted < always.drafted
    assert doubtful.drafted <= doubtful.new_tokens  # at most one drafted token per round, a round yields >= 1


def test_speculative_decoding_reports_consistent_acceptance(decoders, tok):
    rejections = 0
    for model in decoders.values():
        result = generate(model, tok, "in the beginning", max_new_tokens=12, speculative=2, draft_tokens=3)
        assert 0 <= result.accepted <= result.drafted <= 3 * result.new_tokens
        assert result.drafted > 0 and result.seconds > 0 and result.tokens_per_second > 0
        assert result.acceptance_rate == result.accepted / result.drafted
        rejections += result.drafted - result.accepted
    assert rejections > 0  # the random Llama disagrees with its draft, so the rejection path ran


def test_the_draft_shares_the_models_weights_and_leaves_it_untouched(decoders):
    model = decoders["llama"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    draft = view(model, 2)
    layers = layerdrop.find_layers(model).layers
    assert list(layerdrop.find_layers(draft).layers) == [layers[0], layers[3]]  # every_other(4, 2)
    pointers = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() in pointers for p in draft.parameters())
    assert {id(p) for p in draft.parameters()} <= {id(p) for p in model.parameters()}
    assert len(layers) == 4 and [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_draft_computes_what_the_pruned_model_computes(decoders):
    ids = torch.randint(3, 99, (1, 7), generator=torch.Generator().manual_seed(0))  # (1, T)
    for model in decoders.values():
        with torch.no_grad():
            drafted = view(model, keep=[0, 2])(input_ids=ids).logits
            pruned = layerdrop.prune(model, keep=[0, 2]).eval()(input_ids=ids).logits
        torch.testing.assert_close(drafted, pruned)


def test_speculative_with_a_depth_equals_greedy_decoding_at_that_depth(decoders, tok):
    model = decoders["llama"]
    cut = generate(model, tok, "and god said", depth=3, max_new_tokens=10)
    fast = generate(model, tok, "and god said", depth=3, max_new_tokens=10, speculative=2)
    assert (fast.text, fast.depth, fast.draft_depth) == (cut.text, 3, 2)


def test_speculative_decoding_streams_and_stops_like_plain_decoding(decoders, tok):
    model = decoders["llama"]
    pieces = []
    fast = generate(model, tok, "in the beginning", max_new_tokens=10, speculative=2, on_text=pieces.append)
    assert "".join(pieces).strip() == fast.text.strip()
    stop = fast.text.split()[1]
    stopped = generate(model, tok, "in the beginning", max_new_tokens=10, stop=[stop])
    fast_stopped = generate(model, tok, "in the beginning", max_new_tokens=10, stop=[stop], speculative=2)
    assert (fast_stopped.text, fast_stopped.new_tokens) == (stopped.text, stopped.new_tokens)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"speculative": 4}, "smaller than the 4 layers"),
        ({"speculative": 0}, "from 1 to 3"),
        ({"speculative": 2, "depth": 2}, "smaller than the 2 layers"),
        ({"speculative": 2, "temperature": 0.7}, "temperature 0"),
        ({"speculative": 2, "draft_tokens": 0}, "draft_tokens must be a positive integer"),
        ({"no_repeat_ngram": -1}, "no_repeat_ngram must be 0"),
        ({"adaptive_draft": True}, "adaptive_draft changes the draft .* pass speculative=K too"),
        ({"draft_confidence": 0.4}, "draft_confidence changes the draft .* pass speculative=K too"),
        ({"speculative": 2, "draft_confidence": 1.0}, "from 0 .off. to below 1"),
        ({"speculative": 2, "no_repeat_ngram": True}, "no_repeat_ngram must be 0"),
    ],
)
def test_bad_speculative_input_is_explained(lm, tok, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(lm, tok, "hello", **kwargs)


def test_a_draft_without_layer_0_is_refused(lm):
    with pytest.raises(ValueError, match="keep layer 0"):
        view(lm, keep=[1, 3])


def test_generate_cli_reports_speculative_acceptance(saved_lm, capsys):
    assert main(["generate", str(saved_lm), "--prompt", "in the beginning", "--speculative", "2",
                 "--max-new-tokens", "6"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("in the beginning")
    assert "at depth 4" in captured.err and "draft of 2 layers" in captured.err and "accepted" in captured.err
    assert main(["generate", str(saved_lm), "--prompt", "in the beginning", "--speculative", "2",
                 "--max-new-tokens", "6", "--adaptive-draft", "--draft-tokens", "1"]) == 0
    assert capsys.readouterr().out == captured.out  # the same greedy text
    assert main(["generate", str(saved_lm), "--prompt", "hi", "--speculative", "4"]) == 2
    assert "smaller than the 4 layers" in capsys.readouterr().err
    assert main(["generate", str(saved_lm), "--prompt", "hi", "--adaptive-draft"]) == 2
    assert "--adaptive-draft changes the draft of --speculative: pass --speculative K too" in capsys.readouterr().err
    assert main(["generate", str(saved_lm), "--prompt", "hi", "--draft-confidence", "0.4"]) == 2
    assert "--draft-confidence changes the draft" in capsys.readouterr().err
    assert main(["generate", str(saved_lm), "--prompt", "in the beginning", "--speculative", "2",
                 "--max-new-tokens", "6", "--draft-confidence", "0.4", "--draft-tokens", "8"]) == 0
    assert capsys.readouterr().out == captured.out


def test_generate_cli_bans_repeated_ngrams_with_or_without_a_draft(saved_lm, capsys):
    args = ["generate", str(saved_lm), "--prompt", "in the beginning", "--max-new-tokens", "16"]
    assert main(args) == 0
    free = capsys.readouterr().out
    assert main([*args, "--no-repeat-ngram", "1"]) == 0
    banned = capsys.readouterr().out
    assert main([*args, "--no-repeat-ngram", "1", "--speculative", "2"]) == 0
    assert capsys.readouterr().out == banned != free
    words = banned.split()[3:]  # the continuation: no word twice (a repeated 1-gram is a repeated token)
    assert len(set(words)) == len(words)
    assert main([*args, "--no-repeat-ngram", "-1"]) == 2
    assert "--no-repeat-ngram must be 0" in capsys.readouterr().err


# ---------------------------------------- generation at a depth shares the model (issue 12, bug 2)


def _snapshot(model):
    return ([(name, id(module)) for name, module in model.named_modules()],
            {name: (p.data_ptr(), p.detach().clone()) for name, p in model.named_parameters()})


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_two_threads_at_different_depths_each_get_their_own_output(lm, decoders, tok, name):
    import threading

    model = lm if name == "gpt2" else decoders[name]  # the helpers' GPT-2 only writes special tokens
    before = _snapshot(model)
    alone_full = generate(model, tok, "the light", max_new_tokens=8).text
    alone_cut = generate(model, tok, "the light", depth=2, max_new_tokens=8).text
    assert alone_full and alone_cut and alone_full != alone_cut  # the depths differ
    results = {"full": [], "cut": []}

    def full():
        for _ in range(6):
            results["full"].append(generate(model, tok, "the light", max_new_tokens=8).text)

    def cut():
        for _ in range(6):
            results["cut"].append(generate(model, tok, "the light", depth=2, max_new_tokens=8).text)

    threads = [threading.Thread(target=full), threading.Thread(target=cut)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"full": [alone_full] * 6, "cut": [alone_cut] * 6}
    after = _snapshot(model)
    assert after[0] == before[0] and after[1].keys() == before[1].keys()
    assert all(p == before[1][k][0] and torch.equal(v, before[1][k][1]) for k, (p, v) in after[1].items())


def test_generation_at_a_depth_copies_nothing(decoders, tok, monkeypatch):
    import copy

    model = decoders["llama"]
    deepcopy = copy.deepcopy
    copied = []

    def watching(obj, memo=None, _nil=None):  # copy.deepcopy's parameters
        if isinstance(obj, (torch.nn.Module, torch.Tensor)):
            copied.append(type(obj).__name__)
        return deepcopy(obj, memo)

    seen = []
    hook = model.register_forward_hook(lambda module, args, out: seen.append(module))
    monkeypatch.setattr(copy, "deepcopy", watching)
    try:
        generate(model, tok, "in the beginning", depth=2, max_new_tokens=3)
    finally:
        hook.remove()
    assert copied == []
    pointers = {p.data_ptr() for p in model.parameters()}
    assert seen and all(p.data_ptr() in pointers for m in seen for p in m.parameters())


def test_generation_with_layers_kept_without_layer_0_equals_the_pruned_model(decoders, tok):
    model = decoders["llama"]
    result = generate(model, tok, "in the beginning", keep=[1, 3], max_new_tokens=6)
    pruned = layerdrop.prune(model, keep=[1, 3]).eval()
    ids = tok("in the beginning", return_tensors="pt").input_ids
    expected = pruned.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                               pad_token_id=tok.pad_token_id)
    assert result.text == tok.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)


def test_generation_at_a_depth_of_a_model_with_layerdrop_applied_equals_the_pruned_model(tok):
    model = make("llama")
    model.resize_token_embeddings(tok.vocab_size, mean_resizing=False)
    model = layerdrop.apply(model, rate=0.5).eval()
    result = generate(model, tok, "in the beginning", depth=3, max_new_tokens=6)
    pruned = layerdrop.prune(model, depth=3).eval()
    ids = tok("in the beginning", return_tensors="pt").input_ids
    expected = pruned.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                               pad_token_id=tok.pad_token_id)
    assert result.text == tok.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)
    assert layerdrop.state_of(model) is not None and len(layerdrop.find_layers(model).layers) == 4


def test_generation_leaves_a_model_in_training_mode_as_it_was(tok):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=4, n_head=2, n_positions=32,
                                       eos_token_id=tok.sep_token_id))
    model.train()
    at_depth = generate(model, tok, "in the beginning", depth=2, max_new_tokens=5)
    full = generate(model, tok, "in the beginning", max_new_tokens=5)
    assert all(module.training for module in model.modules())  # not switched to eval, not even in part
    model.eval()
    assert at_depth.text == generate(model, tok, "in the beginning", depth=2, max_new_tokens=5).text
    assert full.text == generate(model, tok, "in the beginning", max_new_tokens=5).text


def test_generation_at_a_depth_respects_per_layer_attention_types(tok):
    """Qwen2 picks each layer's attention mask by its position in config.layer_types: a cut model
    must run each kept layer with its own type, exactly as the pruned model does."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         use_sliding_window=True, sliding_window=2, max_window_layers=2,
                         eos_token_id=tok.sep_token_id)
    model = Qwen2ForCausalLM(config).eval()
    assert len(set(model.config.layer_types)) == 2, model.config.layer_types  # mixed full and sliding layers
    prompt = "in the beginning god created the heaven and the earth"
    pruned = layerdrop.prune(model, keep=[0, 2]).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    expected = pruned.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    result = generate(model, tok, prompt, keep=[0, 2], max_new_tokens=6)
    assert result.text == tok.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)
