"""Load times of the bundled data and tokenizers: the targets that tests must not time.

Prints one line per item: seconds to load it cold (caches cleared, in a fresh process each),
median of ``--runs``. Targets: a bundled dataset under 3 s (rotten-tomatoes), the GGUF
tokenizer of smollm2-135m under 15 s. Results: docs/benchmarks.md.

    python bench/load_times.py [--quick] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ITEMS = {
    "data.load('rotten-tomatoes')": "from layerdrop import data; data.load('rotten-tomatoes')",
    "data.load('kjv')": "from layerdrop import data; data.load('kjv')",
    "data.load('20newsgroups')": "from layerdrop import data; data.load('20newsgroups')",
    "presets.borrow_tokenizer('smollm2-135m')":
        "from layerdrop.models import presets; presets.borrow_tokenizer('smollm2-135m')",
}
"""What is timed -> the statement that loads it (imports are done before the clock starts)."""

_TIMER = """
import time
{imports}
start = time.perf_counter()
{statement}
print(time.perf_counter() - start)
"""


def _seconds(statement: str) -> float:
    imports, _, call = statement.partition("; ")
    done = subprocess.run([sys.executable, "-c", _TIMER.format(imports=imports, statement=call)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="fresh processes per item (default 3, quick 1); the median is printed")
    parser.add_argument("--quick", action="store_true", help="one process per item")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    args.runs = (1 if args.quick else 3) if args.runs is None else args.runs
    print(f"# bench/load_times.py: python {platform.python_version()}, {platform.machine()}, "
          f"median of {args.runs} fresh processes, spread min-max")
    result = {}
    for name, statement in ITEMS.items():
        times = [_seconds(statement) for _ in range(args.runs)]
        print(f"{name:45s} {statistics.median(times):6.2f} s ({min(times):.2f}-{max(times):.2f})")
        result[name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    if args.json:
        from layerdrop.files import write_json

        write_json(args.json, {"script": "bench/load_times.py", "quick": args.quick, "runs": args.runs,
                               "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "items": result})


if __name__ == "__main__":
    main()
