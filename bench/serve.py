"""A bounded load test of ``layerdrop serve`` on loopback: latency and throughput per depth, and budgets met.

Starts ``layerdrop serve MODEL`` as a subprocess on 127.0.0.1, then

1. per served depth and concurrency: ``--requests`` requests at that depth from that many clients at
   once; p50 / p99 of the latency each client saw, and requests per second;
2. per concurrency: the same number of requests, each with a ``latency_ms`` budget drawn from what the
   server's own prediction says is feasible (1.5 x a depth's predicted time with the per-request
   overhead, the depth chosen at random); the share of admitted requests that met their budget, as
   the client timed it and as the server did, the 503s, and any answer that is neither a success
   nor a documented refusal (there must be none);
3. for a classifier with calibrated exits (``layerdrop exits``), per concurrency: the same requests with
   ``"depth": "auto"``: their mean latency against full depth's at that concurrency, and the mean layers
   the inputs ran.

With ``--replicas N`` the server is ``layerdrop serve --replicas N`` (N Ray Serve replicas behind Ray's proxy,
``--threads`` cores each), and measuring starts once every replica has timed every depth: run it with N = 1
and N = 2 and compare requests per second at the same concurrency.

Texts are test rows of ``--data`` (classification) or the first words of its test paragraphs
(generation, ``--max-tokens`` new tokens, greedy). Results go to ``OUT/serve.json`` after each
measurement, and a finished measurement is not repeated, so an interrupted run continues.

    python bench/serve.py runs/demo/rt-layerdrop/model --data rotten-tomatoes --out runs/bench-serve-rt
    python bench/serve.py smollm2-135m --data kjv --depths 30,20,15 --max-tokens 16 --out runs/bench-serve-smol
    python bench/serve.py out/demo/rt-elastic-6-3-2/model --data rotten-tomatoes --depths 6 --threads 1 \
        --replicas 2 --out runs/bench-serve-ray2

Results, once measured on a quiet machine: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from transformers import AutoTokenizer

from layerdrop import data
from layerdrop.files import write_json
from layerdrop.models.loading import from_pretrained, local_folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _load(url: str, bodies: list[dict], path: str, concurrency: int) -> tuple[list[dict], float]:
    """Send ``bodies`` from ``concurrency`` clients at once: each answer's status, latency and served-by,
    and the seconds all took."""
    results: list[dict] = []
    lock = threading.Lock()
    pending = list(enumerate(bodies))

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    if not pending:
                        return
                    i, body = pending.pop(0)
                start = time.perf_counter()
                try:
                    response = http.post(url + path, json=body)
                    status, payload = response.status_code, response.json()
                except (httpx.HTTPError, ValueError) as err:  # lost: no documented answer
                    status, payload = -1, {"error": {"message": repr(err)}}
                row = {"i": i, "status": status, "ms": (time.perf_counter() - start) * 1000,
                       "budget": body.get("latency_ms"), "served": payload.get("layerdrop"),
                       "depths": [c["depth"] for c in payload.get("data") or [] if "depth" in c]}
                with lock:
                    results.append(row)
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - begin
    return sorted(results, key=lambda r: r["i"]), seconds


def _describe(row: dict) -> str:
    """One measurement as a line: ``depth 20, 2 clients: ...`` or ``budgets, 2 clients: ...``."""
    clients = f"{row['concurrency']} client{'s' if row['concurrency'] > 1 else ''}"
    where = {"depth": f"depth {row['depth']}, {clients}", "budget": f"budgets, {clients}",
             "auto": f"auto, {clients}"}[row["phase"]]
    ms = (f"p50 {row['p50_ms']:7.0f} ms, p99 {row['p99_ms']:7.0f} ms" if row["ok"] else f"{'no answer':>30}")
    line = (f"{where:<20}: {row['ok']:>3}/{row['requests']} answered ({row['refused_503']} busy 503, "
            f"{row['refused_422']} refused 422, {row['lost']} lost), {ms}, {row['requests_per_s']:5.2f} requests/s")
    if row["phase"] == "auto" and row["ok"]:
        of_full = f"{row['of_full']:.2f} x full depth's" if row.get("of_full") else "full depth not measured"
        line += f"; mean {row['mean_ms']:.0f} ms, {of_full}; mean layers {row['mean_layers']:.2f}"
    if row["phase"] == "budget" and row["ok"]:
        served = " ".join(f"{d}:{n}" for d, n in row["served_depths"].items())
        line += (f"; budgets met {100 * row['met_budget']:.0f} % as the client timed them, "
                 f"{100 * row['met_budget_server']:.0f} % in the server; margin {row['margin']:.2f}; "
                 f"answers per depth {served}")
    return line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--data", required=True, help="bundled dataset or file: its test rows are the inputs")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--depths", default="", help="served depths (default: every depth)")
    p.add_argument("--concurrency", default="1,2,4")
    p.add_argument("--requests", type=int, default=40, help="requests per measurement")
    p.add_argument("--max-tokens", type=int, default=16, help="new tokens per completion (generation)")
    p.add_argument("--queue-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="the server worker's torch threads (0: torch's default)")
    p.add_argument("--replicas", type=int, default=0, help="serve on this many Ray Serve replicas (0: no Ray)")
    p.add_argument("--max-drop", type=float, default=None,
                   help='the "max_drop" of the "depth": "auto" requests (default: the one the model records)')
    p.add_argument("--quick", action="store_true", help="concurrency 1 and 2, 6 requests per point")
    p.add_argument("--json", type=Path, help="also copy OUT/serve.json here when done")
    a = p.parse_args()
    if a.quick:
        a.concurrency, a.requests = "1,2", min(a.requests, 6)
    settings = {k: v for k, v in vars(a).items() if k not in ("out", "json", "quick")
                and not (k in ("replicas", "max_drop") and not v)}  # unset: as runs saved before these options
    path = a.out / "serve.json"
    saved = json.loads(path.read_text()) if path.is_file() else {"settings": settings, "rows": []}
    if saved["settings"] != settings:
        raise SystemExit(f"{path} was measured with other settings; choose another --out")
    done = {(r["phase"], r["depth"], r["concurrency"]) for r in saved["rows"]}

    port = _free_port()
    command = [sys.executable, "-m", "layerdrop.cli", "serve", a.model, "--port", str(port),
               "--queue-size", str(a.queue_size), "--max-tokens", str(max(a.max_tokens, 16)),
               "--threads", str(a.threads)]
    if a.depths:
        command += ["--depths", a.depths]
    if a.replicas:
        command += ["--replicas", str(a.replicas)]
    a.out.mkdir(parents=True, exist_ok=True)
    log = open(a.out / "server.log", "a")  # a pipe nobody reads would fill and stall the server
    logged = log.tell()  # where this server's lines begin (a resumed run appends)
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(6000):
            try:  # with replicas, /readyz answers once one is ready: wait for all of them, as the log says
                if httpx.get(url + "/readyz").status_code == 200 and (
                        not a.replicas or b"ready: every replica" in (a.out / "server.log").read_bytes()[logged:]):
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"layerdrop serve exited; see {a.out / 'server.log'}")
            time.sleep(0.1)
        info = httpx.get(url + "/v1/depths").json()
        generation = info["task"] == "generation"
        texts = data.load(a.data).test.texts
        tokenizer = from_pretrained(AutoTokenizer, local_folder(a.model))
        rng = random.Random(a.seed)
        inputs = [" ".join(t.split()[:12]) if generation else t for t in texts[:a.requests]]
        route = "/v1/completions" if generation else "/v1/classify"

        def body(text: str, **where: object) -> dict:
            if generation:
                return {"prompt": text, "max_tokens": a.max_tokens, "temperature": 0, **where}
            return {"input": text, **where}

        depths = [d["depth"] for d in info["depths"]]
        levels = [int(c) for c in a.concurrency.split(",")]
        plan = [("depth", d, c) for c in levels for d in depths] + [("budget", 0, c) for c in levels]
        exits = info.get("exits")
        if not generation and exits and exits["available"]:  # calibrated early exit, against full depth
            plan += [("auto", 0, c) for c in levels]
        print(f"# bench/serve.py{' --quick' if a.quick else ''}: {a.model} ({info['task']}), depths "
              f"{','.join(map(str, depths))}, {a.requests} requests per line"
              f"{f', {a.replicas} Ray Serve replicas' if a.replicas else ''}"
              f"{f', {a.max_tokens} new tokens each, greedy' if generation else ''}, on 127.0.0.1", flush=True)
        for phase, depth, concurrency in plan:
            if (phase, depth, concurrency) in done:
                saved_row = next(r for r in saved["rows"] if (r["phase"], r["depth"], r["concurrency"]) ==
                                 (phase, depth, concurrency))
                print(f"{_describe(saved_row)} (saved earlier)", flush=True)
                continue
            if phase == "depth":
                bodies = [body(t, depth=depth) for t in inputs]
            elif phase == "auto":
                bodies = [body(t, depth="auto", **({} if a.max_drop is None else {"max_drop": a.max_drop}))
                          for t in inputs]
            else:  # a budget the server's prediction says one depth meets: 1.5 x its predicted time
                now = httpx.get(url + "/v1/depths").json()
                profiles = {d["depth"]: d["profile"] for d in now["depths"]}
                bodies = []
                for t in inputs:
                    prof = profiles[rng.choice(depths)]
                    tokens = len(tokenizer(t).input_ids)  # as the server counts them
                    ms = prof["fixed_ms"] + prof["per_token_ms"] * tokens + prof["per_new_token_ms"] * (
                        a.max_tokens if generation else 0) + now["overhead_ms"]
                    bodies.append(body(t, latency_ms=round(1.5 * ms, 1)))
            results, seconds = _load(url, bodies, route, concurrency)
            ok = [r for r in results if r["status"] == 200]
            row = {"phase": phase, "depth": depth, "concurrency": concurrency, "requests": len(results),
                   "ok": len(ok), "refused_503": sum(r["status"] == 503 for r in results),
                   "refused_422": sum(r["status"] == 422 for r in results),
                   "lost": sum(r["status"] not in (200, 422, 503) for r in results),
                   "p50_ms": _percentile([r["ms"] for r in ok], 0.5) if ok else None,
                   "p99_ms": _percentile([r["ms"] for r in ok], 0.99) if ok else None,
                   "mean_ms": sum(r["ms"] for r in ok) / len(ok) if ok else None,
                   "requests_per_s": len(ok) / seconds}
            if phase == "auto" and ok:
                full = next((r for r in saved["rows"] if (r["phase"], r["depth"], r["concurrency"]) ==
                             ("depth", max(depths), concurrency)), None)
                row["of_full"] = row["mean_ms"] / full["mean_ms"] if full and full.get("mean_ms") else None
                ran = [d for r in ok for d in r["depths"]]
                row["mean_layers"] = sum(ran) / len(ran)
                row["exit_depths"] = {str(d): ran.count(d) for d in sorted(set(ran))}
            if phase == "budget":
                met = [r for r in ok if r["ms"] <= r["budget"]]
                row["met_budget"] = len(met) / len(ok) if ok else None  # as the client saw it
                inside = [r for r in ok if r["served"]["measured_ms"] <= r["budget"]]
                row["met_budget_server"] = len(inside) / len(ok) if ok else None  # arrival to answer, in the server
                row["margin"] = httpx.get(url + "/v1/depths").json()["margin"]
                row["served_depths"] = {str(d): sum(r["served"]["depth"] == d for r in ok) for d in depths}
            saved["rows"].append(row)
            write_json(path, saved)
            print(_describe(row), flush=True)
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    if a.json:
        write_json(a.json, {"script": "bench/serve.py", "quick": a.quick, "date": time.strftime("%Y-%m-%d"), **saved})


if __name__ == "__main__":
    main()
