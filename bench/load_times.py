"""Load times of the bundled data and tokenizers: the targets that tests must not time.

Prints one line per item: seconds to load it cold (caches cleared, in a fresh process each),
median of ``--runs``. Targets: a bundled dataset under 3 s (rotten-tomatoes), the GGUF
tokenizer of smollm2-135m under 15 s. Results: docs/benchmarks.md.

    python bench/load_times.py [--runs 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys

ITEMS = {
    "data.load('rotten-tomatoes')": "from layerdrop import data; data.load('rotten-tomatoes')",
    "data.load('kjv')": "from layerdrop import data; data.load('kjv')",
    "data.load('20newsgroups')": "from layerdrop import data; data.load('20newsgroups')",
    "presets.borrow_tokenizer('smollm2-135m')": "from layerdrop import presets; presets.borrow_tokenizer('smollm2-135m')",
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
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per item; the median is printed")
    args = parser.parse_args()
    print(f"# bench/load_times.py: python {platform.python_version()}, {platform.machine()}, "
          f"median of {args.runs} fresh processes")
    for name, statement in ITEMS.items():
        times = [_seconds(statement) for _ in range(args.runs)]
        print(f"{name:45s} {statistics.median(times):6.2f} s")


if __name__ == "__main__":
    main()
