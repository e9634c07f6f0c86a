"""Every benchmark under bench/, one after the other: ``make bench`` (quick) and ``make bench-full``.

Each script runs as its own process (so one's threads and memory do not colour the next), with
``--quick`` unless ``--full`` is given and with ``--json OUT/<name>.json``; its printed figures go
to the terminal and to ``OUT/<name>.txt``, next to the JSON. A script that fails is reported and the
others still run; the exit status says whether all succeeded. Run them one at a time on a quiet
machine: on 2 cores a second heavy process slows every figure.

    python bench/all.py [--full] [--out runs/bench] [--only core,compile]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent

BENCHMARKS: dict[str, list[str]] = {
    "cli_startup": [],
    "load_times": [],
    "core": [],
    "compile": [],
    "freeze_embeddings": [],
    "teacher_cache": [],
    "ddp": [],
    "generate": ["--prompts", "4"],  # varied prompts: acceptance over a set, not over one loop
    "serve": ["smollm2-135m", "--data", "kjv", "--depths", "30,20,15"],
    "cuda": [],  # skipped where there is no CUDA device
}
"""Every benchmark script (bench/<name>.py) and the arguments it always gets."""


def _noise(line: str) -> bool:
    """torch's and transformers' warnings, progress bars and training logs: kept in the .txt, not shown."""
    return (line.startswith(("W1", "Loading weights", "Writing model shards", "  warnings.warn", "{'"))
            or "Warning:" in line or not line.strip())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="the long runs whose figures docs/benchmarks.md shows")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="where the .json and .txt files go")
    p.add_argument("--only", default="", help="comma-separated names of the benchmarks to run (default: all)")
    a = p.parse_args()
    names = [n.strip() for n in a.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    failed, begin = [], time.perf_counter()
    for name in names:
        command = [sys.executable, str(HERE / f"{name}.py"), *BENCHMARKS[name], "--json", str(a.out / f"{name}.json")]
        if name == "serve":  # it continues a run found in --out: start afresh
            shutil.rmtree(a.out / "serve", ignore_errors=True)
            command += ["--out", str(a.out / "serve")]
        if not a.full:
            command.append("--quick")
        print(f"\n$ python {' '.join([os.path.relpath(command[1]), *command[2:]])}", flush=True)
        start = time.perf_counter()
        with open(a.out / f"{name}.txt", "w") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in process.stdout:
                log.write(line)
                if not _noise(line):
                    print(line, end="", flush=True)
            code = process.wait()
        took = time.perf_counter() - start
        print(f"[{name}: {'ok' if code == 0 else f'FAILED (exit {code})'}, {took:.0f} s]", flush=True)
        if code:
            failed.append(name)
    minutes = (time.perf_counter() - begin) / 60
    print(f"\n{len(names) - len(failed)} of {len(names)} benchmarks ran in {minutes:.1f} min; "
          f"figures in {a.out}/" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
