"""`layerdrop serve` on a real uvicorn on loopback: schema fuzzing, faults, and a real browser."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402

from conftest import save_tiny_lm  # noqa: E402
from layerdrop.config.recipes import ServeConfig  # noqa: E402
from layerdrop.evaluation.report import CJK_FONTS  # noqa: E402
from layerdrop.recipes.serve import build_server  # noqa: E402
from layerdrop.serving.http.app import create_app  # noqa: E402
from layerdrop.serving.served import load_served  # noqa: E402

ARTIFACTS = Path(os.environ.get("LAYERDROP_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
"""Where the browser test leaves its screenshot (git ignores it; CI keeps it)."""


class Live:
    """A uvicorn server in a thread on a free loopback port."""

    def __init__(self, app, cfg):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.server = build_server(app, dataclasses.replace(cfg, port=self.port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        for _ in range(600):
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("the server never became ready")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, minilm_tokenizer):
    return save_tiny_lm(tmp_path_factory.mktemp("lm"), minilm_tokenizer, positions=512, rare_eos=True)


def _live(lm_dir, **limits):
    cfg = ServeConfig(model=lm_dir, profile_reps=1, **{"max_tokens": 16, "max_prompt_tokens": 64, **limits})
    return Live(create_app(load_served(cfg), cfg), cfg)


@pytest.fixture(scope="module")
def live(lm_dir):
    with _live(lm_dir) as server:
        yield server


def test_no_route_answers_5xx_or_outside_its_schema(live):
    """schemathesis generates requests for every operation of the OpenAPI schema (a fixed budget each) and
    checks each answer: no 5xx, a documented status, content type and body, and schema-invalid requests
    refused. Not that every schema-valid request succeeds: a budget too small for any depth, a prompt
    over the server's limits or a depth it does not serve are documented 422s the schema cannot express."""
    from hypothesis import given
    from schemathesis.checks import positive_data_acceptance

    api = schemathesis.openapi.from_url(live.url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/depths", "/metrics", "/readyz"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(excluded_checks=[positive_data_acceptance])
        check()


def _metric(url, name):
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_client_that_leaves_mid_stream_frees_the_worker(lm_dir):
    with _live(lm_dir, max_tokens=400) as server:
        before = _metric(server.url, "layerdrop_cancelled_streams_total")
        request = {"prompt": "In the beginning", "max_tokens": 400, "temperature": 0, "stream": True}
        with httpx.Client(timeout=30) as client, client.stream("POST", server.url + "/v1/completions",
                                                               json=request) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first.removeprefix("data: "))["choices"][0]["text"]
        # the connection is closed here, long before 400 tokens
        for _ in range(200):
            if _metric(server.url, "layerdrop_cancelled_streams_total") > before:
                break
            time.sleep(0.05)
        assert _metric(server.url, "layerdrop_cancelled_streams_total") == before + 1
        for _ in range(200):  # the generation itself stopped, long before its 400 tokens
            if _metric(server.url, "layerdrop_generations_stopped_total") == 1:
                break
            time.sleep(0.05)
        assert _metric(server.url, "layerdrop_generations_stopped_total") == 1
        answer = httpx.post(server.url + "/v1/completions", json={"prompt": "next", "max_tokens": 2}, timeout=30)
        assert answer.status_code == 200 and server.app.state.worker.queue_length == 0


def test_shutting_down_during_a_stream_ends_it_cleanly(lm_dir):
    server = _live(lm_dir, max_tokens=300).__enter__()
    events = []
    request = {"prompt": "In the beginning", "max_tokens": 300, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as client, client.stream("POST", server.url + "/v1/completions",
                                                           json=request) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                if len(events) == 1:
                    server.server.should_exit = True  # a shutdown while the stream runs
    server.thread.join(30)
    assert not server.thread.is_alive()
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])  # the generation was cancelled: the stream says so, then ends
    assert last["error"]["code"] == 503 and "shutting down" in last["error"]["message"]


def _chromium():
    return next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)


def test_the_page_streams_an_answer_at_the_chosen_depth_in_a_real_browser(live):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package only)")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium: apt-get install -y chromium (.ci/run installs it)")
    expected = httpx.post(live.url + "/v1/completions", json={"prompt": "And God said", "max_tokens": 12,
                                                              "temperature": 0, "depth": 3}, timeout=30).json()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(live.url + "/")
            page.wait_for_function("document.getElementById('depth-shown').textContent === '4'")
            page.fill("#prompt", "And God said")
            page.fill("#max-tokens", "12")
            page.eval_on_selector("#depth", "el => { el.value = 2; el.dispatchEvent(new Event('input')); }")
            assert page.text_content("#depth-shown") == "3"  # depths 1..4: the slider's third step
            page.click("#send")
            page.wait_for_function("document.getElementById('served-depth').textContent === '3'", timeout=30000)
            assert page.text_content("#answer") == expected["choices"][0]["text"]
            assert page.text_content("#served-layers") == "0, 2, 3"
            assert page.locator("#depths-table tbody tr").count() == 4
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 0


def test_the_pages_chinese_is_drawn_with_a_chinese_font(live):
    """Not as boxes: the bilingual page's Chinese words are drawn by a font that has them (fonts-noto-cjk)."""
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package only)")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium: apt-get install -y chromium (.ci/run installs it)")
    if not subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout.strip():
        pytest.skip("no Chinese font: apt-get install -y fonts-noto-cjk (.ci/run installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(live.url + "/")
            cdp = page.context.new_cdp_session(page)
            cdp.send("DOM.enable")
            cdp.send("CSS.enable")
            root = cdp.send("DOM.getDocument")["root"]["nodeId"]
            node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "label[for=prompt]"})["nodeId"]
            fonts = {f["familyName"]: f["glyphCount"] for f in cdp.send("CSS.getPlatformFontsForNode",
                                                                         {"nodeId": node})["fonts"]}
        finally:
            browser.close()
    drawn = sum(fonts.get(name, 0) for name in CJK_FONTS)  # glyphs each font drew for "输入 / Input"
    assert drawn >= len("输入"), f"the label's Chinese is drawn with {fonts}, not with a Chinese font"


def test_the_command_serves_until_interrupted(lm_dir):
    import signal
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "layerdrop.cli", "serve", lm_dir, "--port", str(port),
                                "--depths", "4,2", "--profile-reps", "1"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        body = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=30,
                          json={"model": f"{Path(lm_dir).name}@2", "prompt": "In the beginning",
                                "max_tokens": 3}).json()
        assert body["layerdrop"]["depth"] == 2
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and f"listening on http://127.0.0.1:{port}" in out and "depths 4, 2" in out
    assert "ready: every depth is timed" in out


def test_an_unmodified_openai_client_picks_a_depth_by_model_name(live):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused")
    name = next(m.id for m in client.models.list() if "@" not in m.id)
    out = client.completions.create(model=f"{name}@2", prompt="In the beginning", max_tokens=4, temperature=0)
    assert out.model_extra["layerdrop"]["depth"] == 2 and out.usage.completion_tokens == 4
    budget = client.completions.create(model=name, prompt="In the beginning", max_tokens=4,
                                       extra_body={"latency_ms": 60000})
    assert budget.model_extra["layerdrop"]["depth"] == 4  # the deepest fits a minute
    text = "".join(chunk.choices[0].text for chunk in client.completions.create(
        model=f"{name}@2", prompt="In the beginning", max_tokens=4, temperature=0, stream=True))
    assert text == out.choices[0].text
