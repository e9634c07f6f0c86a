"""How long ``layerdrop --help`` and ``layerdrop train --help`` take to answer (target: under 1 s each).

Each command runs as a fresh process, the commands interleaved, ``--reps`` times; the
median and the spread (min-max) of the wall time are printed, and whether the help path
imported torch (it must not: importing torch alone costs about 2 s on 2 cores).

    python bench/cli_startup.py [--quick] [--reps 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 1.0
COMMANDS = (["--help"], ["train", "--help"], ["prune", "--help"])
PROBE = ("import sys, runpy; sys.argv = ['layerdrop', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('layerdrop.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")


def _script() -> list[str]:
    found = shutil.which("layerdrop") or str(Path(sys.executable).with_name("layerdrop"))
    if not Path(found).exists():
        raise SystemExit("no `layerdrop` console script: install the package first (make setup)")
    return [found]


def _imports_torch(command: list[str]) -> bool:
    probe = subprocess.run([sys.executable, "-c", PROBE, *command], capture_output=True, text=True)
    return probe.stderr.strip().splitlines()[-1] == "TORCH"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, help="fresh processes per command (default 7, quick 3)")
    parser.add_argument("--quick", action="store_true", help="3 processes per command")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    args.reps = (3 if args.quick else 7) if args.reps is None else args.reps
    script = _script()
    times: dict[str, list[float]] = {" ".join(c): [] for c in COMMANDS}
    for _ in range(args.reps):
        for command in COMMANDS:
            start = time.perf_counter()
            subprocess.run([*script, *command], check=True, capture_output=True)
            times[" ".join(command)].append(time.perf_counter() - start)
    torch_loaded = {" ".join(c): _imports_torch(c) for c in COMMANDS}
    print(f"# bench/cli_startup.py: {platform.machine()}, Python {platform.python_version()}, "
          f"median of {args.reps} fresh processes, interleaved")
    print(f"{'command':<28} {'median s':>9} {'min-max s':>13}  torch imported  target < {TARGET_S:.0f} s")
    result = {}
    for name, values in times.items():
        med = statistics.median(values)
        ok = "met" if med < TARGET_S else "NOT met"
        print(f"layerdrop {name:<18} {med:>9.2f} {min(values):>6.2f}-{max(values):<6.2f}  "
              f"{'yes' if torch_loaded[name] else 'no':<14}  {ok}")
        result[name] = {"median_s": med, "min_s": min(values), "max_s": max(values),
                        "torch_imported": torch_loaded[name]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
