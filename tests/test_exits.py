"""Early exit: each row leaves at its own depth in a batch, the calibrated threshold keeps its promise, and the
record travels with the model to every command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import BertConfig, BertModel

from conftest import TINY, padded_batch, write_reviews
from layerdrop.config.recipes import ExitsConfig
from layerdrop.core.depths import record_depths
from layerdrop.cut.prune import view
from layerdrop.errors import InputError
from layerdrop.exits import RULES, early_exit, exit_predict, exits_of, lookup, plan, recorded_exits, resumable, simulate
from layerdrop.exits.bound import calibrate
from layerdrop.exits.run import _right_padded_length
from layerdrop.models.loading import Classifier, load_saved, save_classifier

NESTED = {1: (0,), 2: (0, 1), 4: (0, 1, 2, 3)}


def _classifier(name: str) -> Classifier:
    torch.manual_seed(0)
    return Classifier(TINY[name]().base_model, num_labels=3).eval()


def _at_depth(model: Classifier, batch: dict[str, torch.Tensor], keep: tuple[int, ...]) -> torch.Tensor:
    with torch.no_grad():
        return view(model, keep=keep)(**batch).logits


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_exit_gives_what_the_model_gives_at_that_depth(name):
    model, batch = _classifier(name), padded_batch()
    out = early_exit(model, batch, plan(NESTED, can_resume=resumable(model)))
    for e, keep in enumerate(NESTED.values()):
        torch.testing.assert_close(out.probs[:, e], _at_depth(model, batch, keep).softmax(-1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_row_leaves_where_its_rule_fires_with_that_exits_answer(name):
    model, batch = _classifier(name), padded_batch()
    stages = plan(NESTED, can_resume=resumable(model))
    every = early_exit(model, batch, stages).probs
    threshold = float(every[:, 0].amax(-1).median())  # about half the rows leave at the first exit
    out = early_exit(model, batch, stages, RULES["max-prob"], threshold)
    expected = simulate(every, RULES["max-prob"], threshold)
    depths = torch.tensor([s.depth for s in stages])
    assert out.depth.tolist() == depths[expected].tolist()
    assert 0 < int((out.depth == 1).sum()) < len(out.depth)  # some leave, some go on
    for row, depth in enumerate(out.depth.tolist()):
        torch.testing.assert_close(out.logits[row], _at_depth(model, batch, NESTED[depth])[row], atol=1e-5, rtol=1e-4)


def test_encoders_resume_and_decoders_run_a_cascade():
    assert [s.resumes for s in plan(NESTED, can_resume=resumable(_classifier("bert")))] == [False, True, True]
    assert [s.resumes for s in plan(NESTED, can_resume=resumable(_classifier("llama")))] == [False, False, False]
    assert [s.resumes for s in plan({2: (0, 3), 4: (0, 1, 2, 3)})] == [False, False]  # every-other does not nest


def test_a_layer_runs_only_for_the_rows_that_reach_it_and_never_twice():
    model, batch = _classifier("bert"), padded_batch()
    seen: dict[int, list[int]] = {i: [] for i in range(4)}
    handles = [layer.register_forward_hook(lambda _m, args, _o, i=i: seen[i].append(args[0].shape[0]))
               for i, layer in enumerate(model.encoder.encoder.layer)]
    stages = plan(NESTED, can_resume=True)
    every = early_exit(model, batch, stages).probs
    threshold = float(every[:, 0].amax(-1).median())
    seen = {i: [] for i in range(4)}
    out = early_exit(model, batch, stages, RULES["max-prob"], threshold)
    for handle in handles:
        handle.remove()
    assert seen[0] == [6]
    assert seen[1] == [int((out.depth > 1).sum())]
    assert seen[2] == seen[3] == ([int((out.depth == 4).sum())] if (out.depth == 4).any() else [])
    assert out.layers_run.tolist() == out.depth.tolist()  # nested: a row runs exactly its depth


def test_a_cascade_counts_the_layers_it_runs_again():
    model, batch = _classifier("bert"), padded_batch()
    out = early_exit(model, batch, plan({2: (0, 3), 4: (0, 1, 2, 3)}))  # no rule: every row reaches the end
    assert out.layers_run.tolist() == [6] * 6


def test_early_exit_leaves_the_model_as_it_was():
    model, batch = _classifier("bert"), padded_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = list(model.encoder.encoder.layer)
    early_exit(model, batch, plan(NESTED), RULES["entropy"], -0.5)
    assert list(model.encoder.encoder.layer) == layers
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_padding_is_trimmed_only_where_every_row_pads_on_the_right():
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert _right_padded_length(right) == 3
    assert _right_padded_length(left) == 4


def test_early_exit_refuses_a_model_that_is_not_a_classifier_or_in_training_mode():
    with pytest.raises(InputError, match="classifier"):
        early_exit(TINY["bert"]().eval(), padded_batch(), plan(NESTED))
    with pytest.raises(InputError, match="eval mode"):
        early_exit(_classifier("bert").train(), padded_batch(), plan(NESTED))


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_is_surer_on_a_sharper_answer(name):
    rule = lookup(name)
    vague = torch.tensor([[[0.4, 0.35, 0.25], [0.3, 0.5, 0.2]]])  # the exits disagree
    sharp = torch.tensor([[[0.9, 0.05, 0.05], [0.97, 0.02, 0.01]]])
    assert float(rule.score(sharp)) > float(rule.score(vague))
    assert list(rule.grid) == sorted(rule.grid, reverse=True)  # strictest first


def test_an_unknown_rule_lists_the_table():
    with pytest.raises(InputError, match="max-prob, entropy, patience"):
        lookup("confidence")


def test_the_calibrated_threshold_keeps_its_promise_on_fresh_rows():
    """A population where a row of sureness s leaves at threshold <= s and is harmful with probability
    0.05 (1 - s): the harmful rate at threshold t is 0.025 (1 - t)^2, at most 0.005 for t >= 0.553. Over many
    calibrations on 1,000 rows at 90 % confidence, at most about 10 % may choose a threshold below that."""
    generator = torch.Generator().manual_seed(0)
    grid = [1 - i / 100 for i in range(101)]  # strictest first
    max_drop, trials, violations, chosen = 0.005, 300, 0, []
    for _ in range(trials):
        sure = torch.rand(1000, generator=generator)
        harmful = torch.rand(1000, generator=generator) < 0.05 * (1 - sure)
        counts = [int((harmful & (sure >= t)).sum()) for t in grid]
        index = calibrate(counts, rows=1000, max_drop=max_drop, confidence=0.9)
        threshold = 1.0 if index is None else grid[index]
        chosen.append(threshold)
        violations += 0.025 * (1 - threshold) ** 2 > max_drop
    assert violations / trials <= 0.12
    assert sum(chosen) / trials < 0.8  # and it is not vacuous: most rows may leave


def _saved_elastic(folder, tokenizer) -> str:
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                                   num_attention_heads=2, intermediate_size=64))
    record_depths(encoder.config, {2: (0, 1), 1: (0,)}, "top")
    save_classifier(Classifier(encoder, num_labels=2), folder, extra={"trained_with": {"max_length": 16, "seed": 0}})
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_layerdrop_exits_records_a_rule_that_exit_predict_and_a_reload_use(tmp_path, minilm_tokenizer):
    from layerdrop.recipes.exits import run_exits

    model_dir = _saved_elastic(tmp_path / "model", minilm_tokenizer)
    data = write_reviews(tmp_path / "reviews.csv")
    cfg = ExitsConfig(model=model_dir, data=data, out=str(tmp_path / "exits"), max_drop=50, more_drops="90",
                      confidence=0.5, progress=False, latency_reps=1, timing_batches=1)
    result = run_exits(cfg)
    assert [s.depth for s in result.stages] == [1, 2, 4]
    assert {r.rule for r in result.rules} == set(RULES)
    assert (tmp_path / "exits" / "exits.md").is_file() and (tmp_path / "exits" / "exit_depths.png").is_file()
    saved = json.loads((tmp_path / "exits" / "exits.json").read_text())
    assert saved["recorded"]["rule"] == result.recorded.rule
    model = load_saved(model_dir).eval()
    exits = recorded_exits(model.config)
    assert exits == result.recorded and exits.depths == (1, 2, 4) and [d for d, _ in exits.thresholds] == [50, 90]
    batch = minilm_tokenizer(["a good film", "boring and slow, a bad film"], return_tensors="pt", padding=True)
    out = exit_predict(model, dict(batch))
    expected = early_exit(model, dict(batch), plan(exits_of(model, exits.depths)), lookup(exits.rule),
                          exits.threshold())
    assert out.depth.tolist() == expected.depth.tolist()


def test_exits_without_record_leave_the_model_folder_untouched(tmp_path, minilm_tokenizer):
    from layerdrop.recipes.exits import run_exits

    model_dir = _saved_elastic(tmp_path / "model", minilm_tokenizer)
    before = (tmp_path / "model" / "config.json").read_text()
    run_exits(ExitsConfig(model=model_dir, data=write_reviews(tmp_path / "r.csv"), out=str(tmp_path / "x"),
                          max_drop=50, more_drops="", confidence=0.5, record=False, progress=False, latency_reps=1,
                          timing_batches=1))
    assert (tmp_path / "model" / "config.json").read_text() == before


@pytest.mark.parametrize(("change", "message"), [
    ({"max_drop": 0.0}, "must be in \\(0, 100\\)"),
    ({"max_drop": 100.0}, "must be in \\(0, 100\\)"),
    ({"more_drops": "1,x"}, "--more-drops"),
    ({"rules": "max-prob,confidence"}, "unknown exit rule"),
    ({"confidence": 1.0}, "--confidence"),
    ({"more_drops": "0,1"}, "--more-drops is in points of accuracy"),
    ({"rows": -1}, "--rows must be 0 or more"),
    ({"latency_reps": 0}, "at least 1"),
])
def test_bad_settings_are_one_line_errors(tmp_path, minilm_tokenizer, change, message):
    from layerdrop.recipes.exits import run_exits

    model_dir = _saved_elastic(tmp_path / "model", minilm_tokenizer)
    cfg = ExitsConfig(model=model_dir, data=write_reviews(tmp_path / "r.csv"), out=str(tmp_path / "x"), **change)
    with pytest.raises(InputError, match=message):
        run_exits(cfg)


def test_a_model_with_no_depths_to_exit_at_says_how_to_train_one(tmp_path, minilm_tokenizer):
    from conftest import save_tiny_classifier
    from layerdrop.recipes.exits import run_exits

    model_dir = save_tiny_classifier(tmp_path / "plain", minilm_tokenizer)
    with pytest.raises(InputError, match="--depths"):
        run_exits(ExitsConfig(model=model_dir, data=write_reviews(tmp_path / "r.csv"), out=str(tmp_path / "x")))


def test_exit_predict_without_a_record_says_how_to_calibrate():
    with pytest.raises(InputError, match="layerdrop exits MODEL --data DATA"):
        exit_predict(_classifier("bert"), padded_batch())


def test_no_exit_rule_means_every_row_runs_full_depth():
    model, batch = _classifier("bert"), padded_batch()
    out = early_exit(model, batch, plan(NESTED), RULES["max-prob"], math.inf)
    assert out.depth.tolist() == [4] * 6


def test_the_module_doctests_hold():
    import doctest

    import layerdrop.exits.bound
    import layerdrop.exits.calibrate
    import layerdrop.exits.record
    import layerdrop.exits.rules
    import layerdrop.exits.run

    for module in (layerdrop.exits.bound, layerdrop.exits.calibrate, layerdrop.exits.record, layerdrop.exits.rules,
                   layerdrop.exits.run):
        assert doctest.testmod(module).failed == 0, module.__name__


# --------------------------------------------------------------------------- served: "depth": "auto"


def _calibrated(folder, tokenizer, depths=(1, 2, 4)) -> str:
    """A saved 4-layer classifier whose config records served depths 1 and 2 (nested) and exits whose default
    threshold sends about half of :data:`TEXTS` out at the first exit."""
    from layerdrop.exits import Exits, record_exits

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                                   num_attention_heads=2, intermediate_size=64))
    record_depths(encoder.config, {2: (0, 1), 1: (0,)}, "top")
    model = Classifier(encoder, num_labels=2).eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    sure = early_exit(model, dict(batch), plan(exits_of(model, depths))).probs[:, 0].amax(-1)  # (B,)
    middle = float(sure.sort().values[len(TEXTS) // 2])
    record_exits(encoder.config, Exits("max-prob", depths, ((0.5, middle), (2.0, 0.5)), 0.5, 0.9, "reviews", 80))
    save_classifier(model, folder, extra={"label_names": ["neg", "pos"], "trained_with": {"max_length": 32}})
    tokenizer.save_pretrained(folder)
    return str(folder)


def _serve(model_dir, **settings):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from layerdrop.config.recipes import ServeConfig
    from layerdrop.serving.http.app import create_app
    from layerdrop.serving.served import load_served

    cfg = ServeConfig(model=model_dir, profile_reps=1, **settings)
    served = load_served(cfg)
    client = TestClient(create_app(served, cfg))
    client.__enter__()
    for _ in range(600):
        if client.get("/readyz").status_code == 200:
            return client, served
        import time

        time.sleep(0.05)
    raise AssertionError("the server never became ready")


TEXTS = ["a wonderful film", "dull and slow, I left early", "not bad", "超级好看的电影"]


@pytest.fixture(scope="module")
def auto(tmp_path_factory, minilm_tokenizer):
    client, served = _serve(_calibrated(tmp_path_factory.mktemp("auto"), minilm_tokenizer))
    yield client, served
    client.__exit__(None, None, None)


def test_auto_answers_each_input_at_the_depth_exit_predict_gives_it(auto):
    client, served = auto
    batch = served.tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    for max_drop in (None, 2.0):
        expected = exit_predict(served.model, dict(batch), max_drop=max_drop)
        body = client.post("/v1/classify", json={"input": TEXTS, "depth": "auto",
                                                 **({"max_drop": max_drop} if max_drop else {})}).json()
        assert [row["depth"] for row in body["data"]] == expected.depth.tolist()
        got = torch.tensor([[row["scores"]["neg"], row["scores"]["pos"]] for row in body["data"]])
        torch.testing.assert_close(got, expected.logits.softmax(-1), atol=1e-5, rtol=1e-4)
        assert body["layerdrop"]["depth"] == 4 and body["layerdrop"]["guaranteed"] is True  # no budget
        if max_drop is None:  # the recorded threshold splits the rows: the gather path ran in the server
            assert len({row["depth"] for row in body["data"]}) >= 2
    info = client.get("/v1/depths").json()["exits"]
    assert info["available"] and info["rule"] == "max-prob" and info["max_drops"] == [0.5, 2.0]


def test_a_fixed_depth_answer_names_its_depth_for_every_input(auto):
    client, _ = auto
    body = client.post("/v1/classify", json={"input": TEXTS, "depth": 2}).json()
    assert [row["depth"] for row in body["data"]] == [2] * len(TEXTS)


def test_auto_never_runs_past_the_depth_a_budget_allows():
    from layerdrop.config.recipes import ServeConfig
    from layerdrop.serving.engine import Engine
    from layerdrop.serving.worker import Job

    class Served:  # what the engine reads of a served model
        pass

    model = _classifier("bert")
    from layerdrop.exits import Exits

    served = Served()
    served.model, served.views = model, {2: view(model, keep=(0, 1)), 4: model}
    served.exits = Exits("max-prob", (1, 2, 4), ((0.5, math.inf),), 0.5, 0.9, "x", 1)
    served.exit_stages = plan(NESTED)
    served.tokenizer = type("Pad", (), {"pad": staticmethod(lambda d, return_tensors: padded_batch())})()
    engine = Engine(served, ServeConfig(model="x"))
    job = Job("classify", 2, 1.0, [[1]] * 6, lambda r, e: None, size=6, threshold=math.inf)
    (probs, _, depths), = engine.run([job])
    assert depths == [2] * 6  # no row is sure (threshold inf): each stops at the deepest the budget allows
    torch.testing.assert_close(torch.tensor(probs), _at_depth(model, padded_batch(), (0, 1)).softmax(-1), atol=1e-5,
                               rtol=1e-4)


def test_a_request_whose_inputs_all_left_is_answered_before_the_batch_goes_deeper():
    from layerdrop.config.recipes import ServeConfig
    from layerdrop.exits import Exits
    from layerdrop.serving.engine import Engine
    from layerdrop.serving.worker import Job

    model = _classifier("bert")
    every = early_exit(model, padded_batch(), plan(NESTED)).probs[:, 0].amax(-1)  # (6,) sureness at the first exit
    order = every.argsort(descending=True)
    batch = {k: v[order] for k, v in padded_batch().items()}  # the two surest rows first
    threshold = float(every[order[1]])  # they leave at the first exit; the others (less sure) go on

    class Served:  # what the engine reads of a served model
        pass

    served = Served()
    served.model, served.views = model, {4: model}
    served.exits = Exits("max-prob", (1, 2, 4), ((0.5, threshold),), 0.5, 0.9, "x", 1)
    served.exit_stages = plan(NESTED)
    served.tokenizer = type("Pad", (), {"pad": staticmethod(lambda d, return_tensors: batch)})()
    engine = Engine(served, ServeConfig(model="x"))
    events, answers = [], {}

    def told(name):
        return lambda result, err: (events.append(name), answers.setdefault(name, result))
    first = Job("classify", 4, 1.0, [[1]] * 2, told("first"), size=2, threshold=threshold)
    second = Job("classify", 4, 1.0, [[1]] * 4, told("second"), size=4, threshold=threshold)
    hook = model.encoder.encoder.layer[3].register_forward_pre_hook(lambda m, args: events.append("layer 3"))
    try:
        results = engine.run([first, second])
    finally:
        hook.remove()
    assert events == ["first", "layer 3", "second"]  # the first answered while the second's inputs went on
    assert [answers["first"], answers["second"]] == results and answers["first"][2] == [1, 1]
    assert 4 in answers["second"][2]


def test_the_worker_tells_a_job_once_even_when_the_runner_answered_it_early():
    import threading

    from layerdrop.serving.worker import Job, Worker, tell_now

    calls = []
    done = threading.Event()
    worker = Worker(lambda jobs: [tell_now(jobs[0], "early"), "late"][1:] * len(jobs))
    worker.start()
    worker.submit(Job("classify", 4, 1.0, "x", lambda r, e: (calls.append(r), done.set())))
    assert done.wait(10)
    worker.stop()
    assert calls == ["early"]


def test_jobs_with_different_exit_thresholds_never_share_a_batch():
    import threading

    from layerdrop.serving.worker import Job, Worker

    batches = []
    gate = threading.Event()
    worker = Worker(lambda jobs: batches.append([j.payload for j in jobs]) or [None] * len(jobs), batch_size=8,
                    batch_wait_ms=1.0, startup=gate.wait)
    done = threading.Semaphore(0)
    for name, threshold in (("a", 0.9), ("b", 0.5), ("c", 0.9), ("d", None)):
        worker.submit(Job("classify", 4, 1.0, name, lambda r, e: done.release(), threshold=threshold))
    worker.start()
    gate.set()
    for _ in range(4):
        assert done.acquire(timeout=10)
    worker.stop()
    assert batches == [["a", "c"], ["b"], ["d"]]


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"depth": "auto", "max_drop": 0.25}, "max_drop", "below every drop the exits were calibrated for (0.5, 2)"),
    ({"depth": 2, "max_drop": 1.0}, "max_drop", 'max_drop goes with "depth": "auto"'),
    ({"depth": "auto", "max_drop": 100}, "max_drop", "less than 100"),
    ({"depth": "deep"}, "depth", 'give a served depth (an integer, 1 or more) or "auto", got \'deep\''),
    ({"depth": 0}, "depth", "got 0"),
    ({"depth": "auto", "model": "@2"}, "depth", 'names a depth and depth is "auto"'),
])
def test_a_bad_auto_request_is_a_422_naming_the_field(auto, body, param, words):
    client, served = auto
    if "model" in body:
        body = {**body, "model": served.name + body["model"]}
    response = client.post("/v1/classify", json={"input": "a film", **body})
    error = response.json()["error"]
    assert response.status_code == 422 and error["param"] == param and words in error["message"], error


def test_auto_on_a_model_without_exits_says_how_to_calibrate(tmp_path, minilm_tokenizer):
    from conftest import save_tiny_classifier

    client, _ = _serve(save_tiny_classifier(tmp_path / "plain", minilm_tokenizer))
    try:
        response = client.post("/v1/classify", json={"input": "a film", "depth": "auto"})
        message = response.json()["error"]["message"]
        assert response.status_code == 422 and "layerdrop exits MODEL --data DATA" in message
        assert client.get("/v1/depths").json()["exits"] is None
    finally:
        client.__exit__(None, None, None)


def test_exits_for_depths_the_server_does_not_serve_are_refused_with_the_fix(tmp_path, minilm_tokenizer):
    client, _ = _serve(_calibrated(tmp_path / "m", minilm_tokenizer), depths="4,1")
    try:
        response = client.post("/v1/classify", json={"input": "a film", "depth": "auto"})
        message = response.json()["error"]["message"]
        assert response.status_code == 422 and "--depths 4,2,1" in message and "layerdrop exits" in message
        assert client.get("/v1/depths").json()["exits"]["available"] is False
    finally:
        client.__exit__(None, None, None)


def test_the_page_offers_auto_and_shows_each_inputs_depth(auto):
    page = auto[0].get("/").text
    assert 'id="mode-auto"' in page and "c.depth" in page


def test_a_cut_or_a_new_training_takes_the_calibrated_exits_off(tmp_path, minilm_tokenizer):
    from layerdrop.core.depths import EXITS_KEY, remove_exits_record
    from layerdrop.cut.prune import prune

    model = load_saved(_calibrated(tmp_path / "m", minilm_tokenizer))
    assert recorded_exits(model.config) is not None
    assert recorded_exits(prune(model, keep=(0, 1)).config) is None
    assert recorded_exits(model.config) is not None  # the model cut is untouched
    remove_exits_record(model.config)  # what layerdrop train does to the model it starts from
    assert not hasattr(model.config, EXITS_KEY)


def test_a_calibration_that_keeps_nothing_takes_an_older_record_out(tmp_path, minilm_tokenizer):
    from layerdrop.recipes.exits import run_exits

    model_dir = _calibrated(tmp_path / "m", minilm_tokenizer)
    result = run_exits(ExitsConfig(model=model_dir, data=write_reviews(tmp_path / "r.csv"), out=str(tmp_path / "x"),
                                   progress=False, timing_batches=0))  # 8 validation rows cannot show 0.5 points
    assert result.recorded is None and all(r.threshold is None for r in result.rules)
    assert "layerdrop_exits" not in json.loads((tmp_path / "m" / "config.json").read_text())
    assert "needs ≥ 679 rows" in result.table and "nothing is recorded" in (tmp_path / "x" / "exits.md").read_text()


def test_a_drop_that_kept_no_threshold_is_recorded_as_full_depth(tmp_path, minilm_tokenizer):
    from layerdrop.recipes.exits import run_exits

    model_dir = _saved_elastic(tmp_path / "model", minilm_tokenizer)
    result = run_exits(ExitsConfig(model=model_dir, data=write_reviews(tmp_path / "r.csv"), out=str(tmp_path / "x"),
                                   max_drop=50, more_drops="0.5", confidence=0.5, progress=False, timing_batches=0))
    exits = result.recorded
    assert exits is not None and dict(exits.thresholds)[0.5] is None and exits.threshold(0.5) == math.inf
    assert all(r.throughput is None for r in result.rules)  # --timing-batches 0: nothing timed


def test_serve_says_at_start_up_what_auto_runs_or_why_it_cannot(tmp_path, minilm_tokenizer):
    from layerdrop.config.recipes import ServeConfig
    from layerdrop.recipes.serve import exits_line
    from layerdrop.serving.served import load_served

    folder = _calibrated(tmp_path / "m", minilm_tokenizer)
    line = exits_line(load_served(ServeConfig(model=folder)))
    assert line.startswith('"depth": "auto": max-prob exits at 1, 2, 4, calibrated on reviews for drops of 0.5, 2')
    off = exits_line(load_served(ServeConfig(model=folder, depths="4,1")))
    assert off.startswith('"depth": "auto" is off: the exits were calibrated at depths 1, 2, 4')
