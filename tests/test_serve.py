"""`layerdrop serve`: every depth a view of one copy of the weights, chosen per request; one error shape."""

import dataclasses
import json
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

import layerdrop  # noqa: E402
from conftest import save_tiny_classifier, save_tiny_lm  # noqa: E402
from layerdrop import cli  # noqa: E402
from layerdrop.config.recipes import ServeConfig  # noqa: E402
from layerdrop.serving.calibration import HALF_LIFE_S, RATIO_TTL_S, RELAX_AFTER_S, Calibration  # noqa: E402
from layerdrop.serving.engine import Completion, Engine  # noqa: E402
from layerdrop.serving.generate import generate  # noqa: E402
from layerdrop.serving.http.app import create_app  # noqa: E402
from layerdrop.serving.http.service import Pick  # noqa: E402
from layerdrop.serving.latency import Profile  # noqa: E402
from layerdrop.serving.served import load_served  # noqa: E402
from layerdrop.serving.worker import Cancelled, Job, QueueFull, Worker  # noqa: E402


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, minilm_tokenizer):
    return save_tiny_lm(tmp_path_factory.mktemp("lm"), minilm_tokenizer, positions=64, rare_eos=True)


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory, minilm_tokenizer):
    return save_tiny_classifier(tmp_path_factory.mktemp("clf"), minilm_tokenizer,
                                extra={"label_names": ["neg", "pos"]}, max_length=32)


def _ready(client):
    for _ in range(600):
        if client.get("/readyz").status_code == 200:
            return client
        time.sleep(0.05)
    raise AssertionError("the server never became ready")


def _serving(model_dir, **settings):
    """``(client, served)`` of an in-process server of ``model_dir``, ready (every depth profiled)."""
    cfg = ServeConfig(model=model_dir, profile_reps=1, **settings)
    served = load_served(cfg)
    with TestClient(create_app(served, cfg)) as client:
        yield _ready(client), served


@pytest.fixture(scope="module")
def lm(lm_dir):
    yield from _serving(lm_dir, max_tokens=24, max_prompt_tokens=40, queue_size=4)


@pytest.fixture(scope="module")
def clf(clf_dir):
    yield from _serving(clf_dir, max_inputs=8, max_body_bytes=4096)


def _events(text):
    """The data lines of a server-sent event stream."""
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block.startswith("data: ")]


# --------------------------------------------------------------------------- views


def test_every_depth_is_a_view_with_no_parameter_of_its_own(lm_dir):
    served = load_served(ServeConfig(model=lm_dir, depths="4,3,2,1"))
    owned = {p.data_ptr() for p in served.model.parameters()}
    for depth, module in served.views.items():
        ptrs = [p.data_ptr() for p in module.parameters()]
        assert set(ptrs) <= owned
        assert sum(p.numel() for p in module.parameters()) == served.parameters[depth]
        assert len(layerdrop.find_layers(module).layers) == depth


def test_a_model_without_layerdrop_is_served_at_the_layers_a_strategy_chooses(lm_dir):
    served = load_served(ServeConfig(model=lm_dir, depths="4,2", strategy="angular", data="kjv"))
    blocks = layerdrop.find_layers(served.model).layers
    kept = served.kept[2]
    assert len(kept) == 2 and kept[0] == 0
    assert list(layerdrop.find_layers(served.views[2]).layers) == [blocks[i] for i in kept]  # those blocks, not copies
    with pytest.raises(ValueError, match="needs calibration data"):
        load_served(ServeConfig(model=lm_dir, strategy="angular"))


def test_a_classification_at_each_depth_equals_the_pruned_models(clf):
    client, served = clf
    texts = ["a wonderful film", "dull and slow, I left early"]
    batch = served.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    for depth in served.views:
        with torch.no_grad():
            expected = layerdrop.prune(served.model, depth).eval()(**batch).logits.softmax(-1)
        body = client.post("/v1/classify", json={"input": texts, "depth": depth}).json()
        assert body["layerdrop"]["depth"] == depth and body["model"] == f"{served.name}@{depth}"
        got = torch.tensor([[row["scores"]["neg"], row["scores"]["pos"]] for row in body["data"]])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        assert [row["label"] for row in body["data"]] == [["neg", "pos"][i] for i in expected.argmax(-1).tolist()]


def test_a_completion_at_a_depth_is_the_pruned_models_greedy_text(lm):
    client, served = lm
    for depth in (4, 2):
        expected = generate(layerdrop.prune(served.model, depth).eval(), served.tokenizer, "In the beginning",
                            max_new_tokens=8)
        body = client.post("/v1/completions", json={"prompt": "In the beginning", "max_tokens": 8, "temperature": 0,
                                                    "model": f"{served.name}@{depth}"}).json()
        assert body["choices"][0]["text"] == expected.text and body["layerdrop"]["depth"] == depth
        assert body["usage"]["completion_tokens"] == expected.new_tokens
        assert body["layerdrop"]["layers"] == list(layerdrop.every_other(4, depth))


def test_a_speculative_completion_with_no_repeated_ngram_is_the_models_own_text(lm):
    client, served = lm
    cut = layerdrop.prune(served.model, 4).eval()
    expected = {ban: generate(cut, served.tokenizer, "In the beginning", max_new_tokens=16, no_repeat_ngram=ban)
                for ban in (0, 2)}
    for ban, plain in expected.items():
        for speculative in (None, 2):
            body = client.post("/v1/completions", json={
                "prompt": "In the beginning", "max_tokens": 16, "temperature": 0, "depth": 4,
                "speculative": speculative, "no_repeat_ngram": ban}).json()
            assert body["choices"][0]["text"] == plain.text, (ban, speculative)
    banned = expected[2].token_ids
    assert len(set(zip(banned, banned[1:], strict=False))) == len(banned) - 1  # no bigram twice (neighbours)
    assert banned != expected[0].token_ids  # the ban changed the tiny LM's looping text


def test_a_stream_sends_the_same_text_in_chunks_and_ends_with_done(lm):
    client, _ = lm
    request = {"prompt": "In the beginning", "max_tokens": 12, "temperature": 0, "depth": 3}
    whole = client.post("/v1/completions", json=request).json()
    response = client.post("/v1/completions", json={**request, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 2 and chunks[0]["choices"][0]["text"]  # text before the closing chunk
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["layerdrop"]["depth"] == 3


def test_two_depths_in_flight_at_once_get_what_each_gets_alone(lm):
    client, _ = lm
    requests = [{"prompt": "And God said", "max_tokens": 10, "temperature": 0, "depth": d} for d in (4, 1)]
    alone = [client.post("/v1/completions", json=r).json()["choices"][0]["text"] for r in requests]
    together = [None, None]

    def ask(i):
        together[i] = client.post("/v1/completions", json=requests[i]).json()["choices"][0]["text"]
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def test_the_model_is_unchanged_by_serving(lm):
    client, served = lm
    before = {k: v.clone() for k, v in served.model.state_dict().items()}
    client.post("/v1/completions", json={"prompt": "Let there be", "max_tokens": 6, "depth": 2, "temperature": 0.8,
                                         "seed": 3})
    after = served.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert len(layerdrop.find_layers(served.model).layers) == 4 and not served.model.training


def test_openais_other_fields_are_accepted_at_the_values_served(lm):
    client, _ = lm
    body = client.post("/v1/completions", json={
        "prompt": ["In the beginning"], "max_tokens": 3, "n": 1, "best_of": 1, "echo": False, "logprobs": None,
        "suffix": None, "presence_penalty": 0.0, "frequency_penalty": 0, "logit_bias": {}, "user": "u-1",
        "stream_options": {"include_usage": True}})
    assert body.status_code == 200 and body.json()["usage"]["completion_tokens"] == 3


def test_a_seeded_sample_repeats(lm):
    client, _ = lm
    request = {"prompt": "Let there be", "max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": 7, "depth": 4}
    first, second = (client.post("/v1/completions", json=request).json()["choices"][0]["text"] for _ in range(2))
    assert first == second


# --------------------------------------------------------------------------- depth from a latency budget


def _pinned(client, served):
    """``pin(overhead_ms=..., ratios=[...], behind={n: [...]}, per_char_ms=0.0)``: the server with 10 ms per
    layer predicted, that overhead and those recent measured/predicted ratios (of answers that found the
    queue empty, and of answers that found ``n`` requests ahead), reading text at ``per_char_ms``, and its
    clock stopped so that nothing it learned is forgotten during the test; its real state comes back after."""
    engine = client.app.state.engine
    real = (engine.profiles, engine.startup_profiles, engine.observed_at, engine.calibration, engine.clock,
            engine.reading, engine.startup_reading)
    engine.clock = lambda: 0.0

    def set_state(overhead_ms: float = 0.0, ratios: tuple[float, ...] = (),
                  behind: dict[int, list[float]] | None = None, per_char_ms: float = 0.0) -> None:
        pinned = {d: Profile(d, 10.0 * d, 0.0) for d in served.views}  # each answer moves them: reset
        engine.profiles, engine.startup_profiles, engine.observed_at = pinned, dict(pinned), {}
        engine.reading = engine.startup_reading = Profile(0, 0.0, per_char_ms)
        engine.calibration = Calibration(overhead_ms, 0.0, tuple(
            (n, r, 0.0) for n, rs in {0: ratios, **(behind or {})}.items() for r in rs))
    yield set_state
    (engine.profiles, engine.startup_profiles, engine.observed_at, engine.calibration, engine.clock,
     engine.reading, engine.startup_reading) = real


@pytest.fixture
def pin(clf):
    yield from _pinned(*clf)


@pytest.fixture(scope="module")
def roomy(clf_dir):
    """The classifier's server, taking bodies of up to 1 MB."""
    yield from _serving(clf_dir, max_inputs=8, max_body_bytes=1_000_000)


@pytest.fixture
def pin_roomy(roomy):
    yield from _pinned(*roomy)


def _classify(client, budget):
    return client.post("/v1/classify", json={"input": "fine", "latency_ms": budget})


def test_a_budget_gets_the_deepest_depth_predicted_to_fit(clf, pin):
    client, _ = clf
    for budget, depth in ((45.0, 4), (35.0, 3), (15.0, 1)):
        pin()  # requests cost nothing besides their forward, and took what they were predicted to
        body = _classify(client, budget).json()
        assert body["layerdrop"]["depth"] == depth and body["layerdrop"]["predicted_ms"] == 10.0 * depth
    pin()
    too_small = _classify(client, 5.0)
    assert too_small.status_code == 422 and "at least 10 ms" in too_small.json()["error"]["message"]


def test_what_a_request_costs_besides_its_forward_is_learned_and_budgeted(clf, pin):
    client, _ = clf
    pin(overhead_ms=8.0)
    body = _classify(client, 45.0).json()
    assert body["layerdrop"]["depth"] == 3 and body["layerdrop"]["predicted_ms"] == 38.0  # 4 layers + 8 > 45
    assert client.app.state.engine.overhead_ms != 8.0  # moved toward what this answer took outside the forward


def test_answers_that_ran_past_their_predictions_make_budgets_keep_a_margin(clf, pin):
    client, _ = clf
    pin(ratios=[1.0] * 10 + [1.5] * 10)  # recent answers: half of them took 1.5x their prediction
    assert client.get("/v1/depths").json()["margin"] == 1.5
    body = _classify(client, 45.0).json()
    assert body["layerdrop"]["depth"] == 3  # 4 layers: 40 ms fits 45, but not 40 x 1.5
    assert body["layerdrop"]["predicted_ms"] == 30.0  # the typical time, without the margin
    pin(ratios=[1.5] * 20)
    refused = _classify(client, 12.0)
    assert refused.status_code == 422 and "ask for at least 15 ms" in refused.json()["error"]["message"]


def test_requests_behind_others_keep_the_margin_their_own_kind_needed(clf, pin, monkeypatch):
    client, _ = clf
    state = {"ratios": [1.0] * 10, "behind": {1: [1.5] * 10, 2: [2.0] * 3}}  # with 2 ahead, too few: all count
    pin(**state)
    assert client.get("/v1/depths").json()["margins"] == {"0": 1.0, "1": 1.5, "2": 2.0, "3": 2.0}
    assert _classify(client, 45.0).json()["layerdrop"]["depth"] == 4  # alone: 40 ms fits 45
    pin(**state)
    monkeypatch.setattr(client.app.state.worker, "load", lambda: (0.0, 1))
    assert _classify(client, 45.0).json()["layerdrop"]["depth"] == 3  # one ahead: 40 x 1.5 does not
    pin(**state)
    busy = _classify(client, 12.0)  # 10 ms fits an empty queue's margin, not one-ahead's: retry, not refused
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1


def test_an_answer_is_learned_with_the_requests_it_found_ahead(clf, pin):
    client, _ = clf
    pin()
    engine = client.app.state.engine
    _classify(client, 1000.0)
    assert sum(map(len, engine.ratios.values())) == len(engine.ratios[0]) == 1  # alone, as this client is
    engine.observe_answer(10.0, 25.0, ahead=1)
    engine.observe_answer(10.0, 30.0, ahead=7)  # 3 or more ahead: one history
    assert list(engine.ratios[1]) == [2.5] and list(engine.ratios[3]) == [3.0]


def test_an_input_is_charged_its_reading_by_its_characters(roomy, pin_roomy):
    client, _ = roomy
    pin_roomy(per_char_ms=0.001)  # 100 kB of text: 100 ms to read, whatever its truncated forward costs
    text = "word " * 20_000
    body = client.post("/v1/classify", json={"input": text, "latency_ms": 200.0}).json()
    assert body["layerdrop"]["depth"] == 4 and body["layerdrop"]["predicted_ms"] == 140.0
    pin_roomy(per_char_ms=0.001)
    refused = client.post("/v1/classify", json={"input": text, "latency_ms": 105.0})
    assert refused.status_code == 422 and "at least 110 ms" in refused.json()["error"]["message"]
    pin_roomy(per_char_ms=0.001)
    small = client.post("/v1/classify", json={"input": "a fine film", "latency_ms": 15.0}).json()
    assert small["layerdrop"]["depth"] == 1  # its 11 characters cost next to nothing


def test_reading_an_input_is_not_learned_as_overhead(clf, pin):
    client, _ = clf
    pin()
    svc = client.app.state.service
    now = time.perf_counter()
    job = Job("classify", 4, 40.0, None, lambda r, e: None)
    job.submitted, job.ran = now - 0.6, (now - 0.5, now - 0.1)  # half a second in the queue and the run
    answered = dataclasses.replace(svc, clock=lambda: now)
    answered.served_by(Pick(4, 9540.0, 40.0, read_ms=9000.0), started=now - 10.0, job=job)  # 9 s of reading
    assert svc.engine.overhead_ms == pytest.approx(0.2 * 500.0)  # 10 s - 9 s reading - 0.5 s worker, averaged in
    assert svc.engine.ratios[0] == [pytest.approx(10_000 / 9540)]


def test_after_a_burst_of_large_inputs_a_small_budget_is_admitted_again(roomy, pin_roomy):
    client, served = roomy
    engine = client.app.state.engine
    clock = [0.0]
    pin_roomy()
    engine.profiles, engine.startup_profiles = dict(engine.startup_profiles), dict(engine.startup_profiles)
    engine.clock = lambda: clock[0]
    for _ in range(6):  # large inputs, each learned from: whatever they teach is forgotten in bounded time
        assert client.post("/v1/classify", json={"input": "word " * 20_000, "depth": 4}).status_code == 200
    engine.calibration = dataclasses.replace(engine.calibration, overhead_ms=34.0,  # as the issue saw
                                             ratios=tuple((n, 4.4, 0.0) for n in range(4) for _ in range(10)))
    clock[0] = RATIO_TTL_S + RELAX_AFTER_S + 20 * HALF_LIFE_S  # a quiet while, no answer since
    assert client.get("/v1/depths").json()["margin"] == 1.0
    fastest = engine.startup_profiles[1].predict(64)  # a bound on its tokens' forward at start-up
    budget = 2 * (fastest + engine.reading_ms(11)) + 1.0
    answer = client.post("/v1/classify", json={"input": "a fine film", "latency_ms": budget})
    assert answer.status_code == 200, answer.json()


def test_a_job_records_the_requests_it_found_ahead():
    gate = threading.Event()
    worker = Worker(lambda jobs: [None] * len(jobs), startup=gate.wait)
    jobs = [Job("complete", 2, 1.0, None, lambda r, e: None) for _ in range(5)]
    for job in jobs:
        worker.submit(job)
    assert [job.ahead for job in jobs] == [0, 1, 2, 3, 4] and worker.load() == (5.0, 5)
    worker.start()
    gate.set()
    worker.stop()


def test_a_budget_the_queue_breaks_is_503_with_retry_after(clf, pin, monkeypatch):
    client, _ = clf
    monkeypatch.setattr(client.app.state.worker, "wait_ms", lambda: 2500.0)
    pin()
    response = _classify(client, 100.0)
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["param"] == "latency_ms"


def test_every_depth_is_profiled_and_listed(lm):
    client, served = lm
    body = client.get("/v1/depths").json()
    assert [d["depth"] for d in body["depths"]] == [4, 3, 2, 1] and body["task"] == "generation"
    for d in body["depths"]:
        assert d["profile"]["per_new_token_ms"] > 0 and d["quality"] is None  # nothing measured: null
    models = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert models == [served.name] + [f"{served.name}@{d}" for d in (4, 3, 2, 1)]


def _sweep(folder, model, depths):
    points = [{"depth": d, "kept": list(layerdrop.every_other(4, d)), "score": 0.5 + d / 10, "parameters": 1}
              for d in depths]
    (folder / "sweep.json").write_text(json.dumps({"metric": "accuracy", "config": {"data": "reviews.csv",
                                                                                      "model": model},
                                                   "points": {"every-other": points}}))
    return str(folder)


def test_a_sweep_gives_each_depth_its_measured_quality(clf_dir, tmp_path):
    served = load_served(ServeConfig(model=clf_dir, sweep=_sweep(tmp_path, clf_dir, (4, 2))))
    assert served.quality == {4: 0.9, 3: None, 2: 0.7, 1: None}
    assert (served.metric, served.data) == ("accuracy", "reviews.csv")


def test_a_sweep_of_another_model_is_refused(clf_dir, lm_dir, tmp_path):
    with pytest.raises(ValueError, match="not this model"):
        load_served(ServeConfig(model=clf_dir, sweep=_sweep(tmp_path, lm_dir, (4, 2))))


# --------------------------------------------------------------------------- bad input, one shape


def _is_error(response, status):
    body = response.json()
    assert response.status_code == status, body
    assert set(body) == {"error"} and body["error"]["code"] == status and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("request_, status, words", [
    ({"prompt": "hi", "depth": 2, "latency_ms": 50}, 422, "not both"),
    ({"prompt": "hi", "depth": 7}, 422, "served depths: 4, 3, 2, 1"),
    ({"prompt": "hi", "max_tokens": 25}, 422, "--max-tokens"),
    ({"prompt": "word " * 50}, 422, "shorten the prompt"),
    ({"prompt": "hi", "speculative": 1, "temperature": 0.7}, 422, "temperature to 0"),
    ({"prompt": "hi", "no_repeat_ngram": -1}, 422, "no_repeat_ngram"),
    ({"prompt": "hi", "model": "other"}, 422, "not served here"),
    ({"prompt": "hi", "model": "lm@x"}, 422, "after @ comes a depth"),
    ({"prompt": "   "}, 422, "prompt is empty"),
    ({"prompt": "hi", "max_tokens": "3"}, 422, "max_tokens"),
    ({"prompt": "hi", "colour": "red"}, 422, "colour"),
    ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 422, "up to 4"),
    ({"prompt": "hi", "model": "lm@²"}, 422, "after @ comes a depth"),
    ({"prompt": "hi", "n": 2}, 422, "n"),
    ({"prompt": ["one", "two"]}, 422, "prompt"),
    ({"prompt": "hi", "frequency_penalty": 0.5}, 422, "frequency_penalty"),
])
def test_a_bad_completion_request_is_named(lm, request_, status, words):
    client, served = lm
    request_ = {**request_, "model": request_["model"].replace("lm@", f"{served.name}@")} \
        if "model" in request_ else request_
    assert words in _is_error(client.post("/v1/completions", json=request_), status)["message"]


@pytest.mark.parametrize("body, status", [
    (b'{"input": "\\ud800 x"}', 422),  # a lone surrogate: valid JSON, not valid Unicode text
    (b'{"input": ["fine", "\\udfff"]}', 422),
    (b'{"input": "a\\u0000b"}', 200),  # NUL is text
    (('{"input": "' + "word " * 20_000 + '"}').encode(), 200),  # 100 kB: truncated to the trained length
])
def test_text_a_string_fuzzer_would_not_make_is_a_4xx_naming_the_field_or_an_answer(roomy, body, status):
    client, _ = roomy
    response = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.json()
    if status == 422:
        error = _is_error(response, 422)
        assert error["param"].startswith("input") and "surrogate" in error["message"]


def test_a_lone_surrogate_in_a_prompt_or_stop_is_named(lm):
    client, _ = lm
    for body, field in ((b'{"prompt": "\\ud800"}', "prompt"), (b'{"prompt": "hi", "stop": "\\udc00"}', "stop")):
        response = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert _is_error(response, 422)["param"] == field


def test_malformed_json_is_400_and_a_large_body_413(clf):
    client, _ = clf
    assert "not valid JSON" in _is_error(client.post("/v1/classify", content=b'{"input": ',
                                                     headers={"content-type": "application/json"}), 400)["message"]
    assert "JSON object" in _is_error(client.post("/v1/classify", content=b"input=x"), 400)["message"]
    assert "--max-body-bytes" in _is_error(client.post("/v1/classify", json={"input": "x" * 5000}), 413)["message"]

    def chunked():  # no Content-Length: counted as it arrives
        yield b'{"input": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'
    assert "--max-body-bytes" in _is_error(client.post("/v1/classify", content=chunked(),
                                                       headers={"content-type": "application/json"}), 413)["message"]


def test_a_model_serves_its_own_tasks_route_and_unknown_routes_share_the_shape(clf, lm):
    assert "/v1/classify" in _is_error(clf[0].post("/v1/completions", json={"prompt": "x"}), 404)["message"]
    assert "/v1/completions" in _is_error(lm[0].post("/v1/classify", json={"input": "x"}), 404)["message"]
    assert "8 texts" in _is_error(clf[0].post("/v1/classify", json={"input": ["x"] * 9}), 422)["message"]
    _is_error(clf[0].get("/v1/nothing"), 404)


def test_a_full_queue_is_503_with_retry_after(clf, monkeypatch):
    client, _ = clf

    def full(job):
        raise QueueFull("4 requests are waiting")
    monkeypatch.setattr(client.app.state.worker, "submit", full)
    response = client.post("/v1/classify", json={"input": "x"})
    assert "--queue-size" in _is_error(response, 503)["message"] and response.headers["retry-after"] == "1"


def test_every_route_declares_the_error_shape(lm, clf):
    for client, path in ((lm[0], "/v1/completions"), (clf[0], "/v1/classify")):
        responses = client.app.openapi()["paths"][path]["post"]["responses"]
        for code in ("400", "413", "422", "503", "500"):
            assert responses[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


def test_a_folder_that_is_not_a_model_is_refused_at_start_up(tmp_path, minilm_tokenizer, capsys):
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        load_served(ServeConfig(model=str(tmp_path)))
    BertModel(BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "enc")
    minilm_tokenizer.save_pretrained(tmp_path / "enc")
    with pytest.raises(ValueError, match="neither a classifier"):
        load_served(ServeConfig(model=str(tmp_path / "enc")))
    assert cli.main(["serve", str(tmp_path / "nothing")]) == 2
    assert "no model folder" in capsys.readouterr().err


def test_metrics_count_answers_by_route_and_code(clf):
    client, _ = clf
    client.post("/v1/classify", json={"input": "x", "depth": 9})
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(client.get("/metrics").text) for s in family.samples}
    assert samples[("layerdrop_responses_total", (("code", "422"), ("route", "/v1/classify")))] >= 1
    assert samples[("layerdrop_queue_length", ())] == 0
    assert samples[("layerdrop_request_seconds_bucket", (("depth", "4"), ("le", "+Inf")))] >= 1


def test_the_page_is_served(clf):
    page = clf[0].get("/")
    assert page.status_code == 200 and 'id="depth"' in page.text and "/v1/depths" in page.text


# --------------------------------------------------------------------------- the worker


def test_classify_jobs_at_one_depth_run_as_one_batch_in_arrival_order():
    batches = []
    gate = threading.Event()
    worker = Worker(lambda jobs: batches.append([j.payload for j in jobs]) or [None] * len(jobs),
                    batch_size=8, batch_wait_ms=1.0, startup=gate.wait)
    done = threading.Semaphore(0)
    jobs = [Job("classify", depth, 1.0, name, lambda r, e: done.release())
            for name, depth in (("a", 2), ("b", 3), ("c", 2), ("d", 2))]
    for job in jobs:
        worker.submit(job)
    assert [job.ahead for job in jobs] == [0, 1, 2, 3] and worker.ahead() == 4
    worker.start()
    gate.set()
    for _ in range(4):
        assert done.acquire(timeout=10)
    worker.stop()
    assert batches == [["a", "c", "d"], ["b"]]


def test_a_finished_batch_no_longer_counts_as_ahead_when_its_requests_hear_of_it():
    """A request sent after an answer arrived must not find that answer's batch still running (a 503 on
    an idle server, once, under load)."""
    seen = []
    told = threading.Event()
    worker = Worker(lambda jobs: [None] * len(jobs))

    def on_done(result, err):
        seen.append(worker.load())
        told.set()
    worker.start()
    worker.submit(Job("classify", 2, 40.0, None, on_done))
    assert told.wait(10)
    worker.stop()
    assert seen == [(0.0, 0)]


def test_a_runner_that_answers_the_wrong_number_of_jobs_fails_them_and_the_worker_goes_on():
    told = []
    done = threading.Semaphore(0)
    answers = iter([[], ["fine"]])  # the first batch gets no answer at all: a bug in the runner
    worker = Worker(lambda jobs: next(answers))

    def on_done(result, err):
        told.append((result, type(err).__name__ if err else None))
        done.release()
    worker.start()
    worker.submit(Job("complete", 2, 1.0, None, on_done))
    assert done.acquire(timeout=10)
    worker.submit(Job("complete", 2, 1.0, None, on_done))
    assert done.acquire(timeout=10)
    worker.stop()
    assert told == [(None, "RuntimeError"), ("fine", None)]


def test_the_queue_is_bounded_and_its_wait_predicted():
    worker = Worker(lambda jobs: [None] * len(jobs), queue_size=2)  # not started: jobs stay queued
    for _ in range(2):
        worker.submit(Job("complete", 2, 40.0, None, lambda r, e: None))
    assert worker.wait_ms() == 80.0
    with pytest.raises(QueueFull):
        worker.submit(Job("complete", 2, 40.0, None, lambda r, e: None))


def test_a_cancelled_generation_stops_within_a_few_tokens(lm):
    _, served = lm
    engine = Engine(served, ServeConfig(model="x"))
    engine.profiles = {d: Profile(d, 1.0, 0.0, 1.0) for d in served.views}
    pieces = []
    job = Job("complete", 4, 1.0, None, lambda r, e: None)
    job.on_text = lambda text: (pieces.append(text), job.cancelled.set())
    job.payload = Completion("In the beginning", 24, 0.0, 1.0, (), 0, None, 0, 3)
    with pytest.raises(Cancelled):
        engine.run([job])
    assert len(pieces) == 1


def test_shutting_down_fails_what_waits():
    errors = []
    worker = Worker(lambda jobs: [None] * len(jobs))
    worker.submit(Job("complete", 2, 1.0, None, lambda r, e: errors.append(e)))
    worker.stop()
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)


def test_the_doctests_hold():
    import doctest

    import layerdrop.serving.calibration
    import layerdrop.serving.latency

    for module in (layerdrop.serving.latency, layerdrop.serving.calibration):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("change, message", [
    ({"queue_size": 0}, "--queue-size must be at least 1"),
    ({"profile_reps": 0}, "--profile-reps"),
    ({"max_inputs": 64, "batch_inputs": 32}, "one request must fit in one forward"),
    ({"depths": "6,a"}, "comma-separated layer counts"),
])
def test_bad_serve_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(model="m", **change)


def test_a_port_in_use_is_a_one_line_error(lm_dir, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert cli.main(["serve", lm_dir, "--port", str(busy.getsockname()[1])]) == 2
    assert "choose another --port" in capsys.readouterr().err


def test_the_served_name_doctest_holds():
    import doctest

    import layerdrop.serving.served

    result = doctest.testmod(layerdrop.serving.served)
    assert result.attempted > 0 and result.failed == 0


def test_serve_settings_change_by_replace():
    cfg = dataclasses.replace(ServeConfig(model="m"), port=9000)
    assert cfg.host == "127.0.0.1" and cfg.port == 9000
