"""`layerdrop serve --replicas N`: the app on Ray Serve replicas behind Ray's proxy, and a replica killed mid-load."""

import asyncio
import json
import os
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from conftest import save_tiny_lm  # noqa: E402
from layerdrop.config.recipes import ServeConfig  # noqa: E402
from layerdrop.errors import InputError  # noqa: E402
from layerdrop.serving.http.replica_lost import LOST, LOST_MIDSTREAM, ReplicaLost  # noqa: E402
from layerdrop.serving.http.replicas import cpus_per_replica  # noqa: E402


def _through(inner) -> list[dict]:
    """The ASGI messages ``ReplicaLost`` sends for one request to ``inner``."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def go() -> None:
        await ReplicaLost(inner)({"type": "http"}, receive, send)
    asyncio.run(go())
    return sent


def test_a_request_whose_replica_died_before_answering_gets_a_502_that_says_so():
    async def died(scope, receive, send):  # what Ray's proxy does then: returns without an answer
        return None
    sent = _through(died)
    assert sent[0]["status"] == 502 and (b"retry-after", b"1") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"] == {"message": LOST, "type": "replica_lost", "code": 502,
                                                    "param": None}


@pytest.mark.parametrize("how", ["returns", "raises"])
def test_a_stream_whose_replica_died_ends_with_an_error_event_and_done(how):
    async def died_midstream(scope, receive, send):  # Ray's proxy returns; raising is handled alike
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        if how == "raises":
            raise RuntimeError("the actor died")
    sent = _through(died_midstream)
    events = sent[-1]["body"].decode().split("\n\n")
    assert json.loads(events[0].removeprefix("data: "))["error"]["message"] == LOST_MIDSTREAM
    assert events[1] == "data: [DONE]" and not sent[-1].get("more_body", False)


def test_rays_plain_text_refusal_gets_the_error_shape_with_its_status_and_words():
    async def queues_full(scope, receive, send):
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"2")]})
        await send({"type": "http.response.body", "body": b"Request dropped due to backpressure"})
    start, body = _through(queues_full)
    assert start["status"] == 503 and (b"retry-after", b"2") in start["headers"]
    assert json.loads(body["body"])["error"] == {"message": "Ray Serve: Request dropped due to backpressure",
                                                 "type": "unavailable", "code": 503, "param": None}


def test_an_answer_the_app_gave_passes_unchanged():
    async def answered(scope, receive, send):
        await send({"type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})
    assert [m.get("status", m.get("body")) for m in _through(answered)] == [500, b"{}"]


def test_more_replicas_than_cores_is_refused_before_any_replica_starts():
    with pytest.raises(InputError, match="--replicas 3 of 1 core each need 3 cores and Ray has 2"):
        cpus_per_replica(ServeConfig(model="m", replicas=3, threads=1), 2.0)
    assert cpus_per_replica(ServeConfig(model="m", replicas=2), 2.0) == 1


def test_negative_replicas_is_refused():
    with pytest.raises(InputError, match="--replicas cannot be negative"):
        ServeConfig(model="m", replicas=-1)


@pytest.fixture(scope="module")
def ray_served(tmp_path_factory, minilm_tokenizer):
    """A tiny LM on 2 Ray Serve replicas of 1 core each, on a local Ray instance started here and stopped after
    (bounded: 120 s to start, 60 s to stop)."""
    pytest.importorskip("ray.serve")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("two replicas of one core need two cores")
    from layerdrop.recipes.serve import run_replicas

    folder = save_tiny_lm(tmp_path_factory.mktemp("lm"), minilm_tokenizer, positions=512, rare_eos=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig(model=folder, port=port, replicas=2, threads=1, profile_reps=1, max_tokens=256,
                      max_prompt_tokens=64)
    stop, lines, failed = threading.Event(), [], []

    def serve() -> None:
        try:
            run_replicas(cfg, lines.append, stop)
        except BaseException as err:  # noqa: BLE001 (reported below)
            failed.append(err)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not any(line.startswith("ready") for line in lines):
        if failed or time.monotonic() > deadline:
            stop.set()
            pytest.fail(f"the replicas never became ready: {failed or lines}")
        time.sleep(0.2)
    yield f"http://127.0.0.1:{port}", folder
    stop.set()
    thread.join(60)
    assert not thread.is_alive(), "Ray Serve did not stop within 60 s"
    assert not failed, failed


def test_replicas_answer_as_one_process_does_at_every_depth(ray_served):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import layerdrop
    from layerdrop.serving.generate import generate

    url, folder = ray_served
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    for depth in (4, 2):
        want = generate(model if depth == 4 else layerdrop.prune(model, depth).eval(), tokenizer, "a good film",
                        max_new_tokens=8).text
        got = httpx.post(url + "/v1/completions", timeout=60,
                         json={"prompt": "a good film", "max_tokens": 8, "temperature": 0, "depth": depth}).json()
        assert (got["choices"][0]["text"], got["layerdrop"]["depth"]) == (want, depth)
    assert httpx.get(url + "/readyz").status_code == 200


def test_a_killed_replica_fails_its_requests_clearly_and_none_is_lost(ray_served):
    """16 requests of 256 tokens (4 of them streams) are sent at once; once the first streamed text arrives, the
    replica holding the most requests is killed. Every request then ends one of three ways, each checked whole:
    a finished completion, a 502 that says its replica failed (also for a stream its replica never began), or a
    stream ending with that error and [DONE].
    Some end the second or third way (the killed replica held requests), and the server answers again after."""
    import ray

    url, _ = ray_served
    outcomes: list[tuple[str, object]] = []
    begun, barrier = threading.Event(), threading.Barrier(16)

    def client(i: int) -> None:
        body = {"prompt": f"a good film {i}", "max_tokens": 256, "temperature": 0, "stream": i % 4 == 0}
        try:
            with httpx.Client(timeout=120) as c:
                barrier.wait()
                if body["stream"]:
                    with c.stream("POST", url + "/v1/completions", json=body) as r:
                        if r.status_code != 200:  # its replica failed before the stream began: a plain error
                            r.read()
                            outcomes.append(("plain", (r.status_code, r.json())))
                            return
                        events = []
                        for line in r.iter_lines():
                            if line.startswith("data: "):
                                events.append(line.removeprefix("data: "))
                                begun.set()
                    outcomes.append(("stream", (r.status_code, events)))
                else:
                    r = c.post(url + "/v1/completions", json=body)
                    outcomes.append(("plain", (r.status_code, r.json())))
        except Exception as err:  # noqa: BLE001 (a transport error is a lost request: reported below)
            outcomes.append(("error", (None, repr(err))))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    assert begun.wait(60), "no stream began"
    replicas = [ray.get_actor(a["name"], namespace=a["namespace"])
                for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA")]
    holding = [ray.get(r.get_num_ongoing_requests.remote()) for r in replicas]  # Ray's own count per replica
    assert max(holding) > 0
    ray.kill(replicas[holding.index(max(holding))], no_restart=True)
    for t in threads:
        t.join(120)
    assert len(outcomes) == 16, "a request never ended"
    lost = 0
    for kind, (status, answer) in outcomes:
        assert kind != "error", answer
        if kind == "plain" and status == 200:
            assert answer["usage"]["completion_tokens"] == 256
        elif kind == "plain":
            assert (status, answer["error"]["type"], answer["error"]["message"]) == (502, "replica_lost", LOST)
            lost += 1
        else:
            assert status == 200 and answer[-1] == "[DONE]"
            last = json.loads(answer[-2])
            if "error" in last:
                assert last["error"]["message"] == LOST_MIDSTREAM
                lost += 1
            else:
                assert last["usage"]["completion_tokens"] == 256
    assert lost > 0, "the killed replica held none of the requests"
    again = httpx.post(url + "/v1/completions", timeout=60, json={"prompt": "after", "max_tokens": 4, "temperature": 0})
    assert again.status_code == 200
