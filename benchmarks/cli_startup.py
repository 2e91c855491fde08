"""Wall time of the ``evitsam`` command before it does any work: ``--help`` and an input error.

Each command is run N times as a fresh process (as a person types it), hyperfine-style: one
warm-up run, then N timed runs; the median and the minimum are reported. ``python -c pass`` is
measured beside them: the interpreter's own start-up, which no change to evitsam can remove.

    python benchmarks/cli_startup.py [--runs 10] [--evitsam PATH]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str], runs: int) -> tuple[float, float, int]:
    """(median, min) wall seconds over ``runs`` runs after one warm-up, and the exit code."""
    subprocess.run(command, capture_output=True)
    times, code = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        code = subprocess.run(command, capture_output=True).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command (after one warm-up)")
    parser.add_argument("--evitsam", help="the evitsam executable [default: the one beside this Python]")
    args = parser.parse_args()
    script = args.evitsam or shutil.which("evitsam", path=str(Path(sys.executable).parent)) or "evitsam"
    with tempfile.TemporaryDirectory() as tmp:
        missing, out = Path(tmp) / "missing.jpg", Path(tmp) / "out.png"
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "evitsam --help": [script, "--help"],
            "evitsam segment missing.jpg": [script, "segment", str(missing), "--point", "1,1", "-o", str(out)],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        }
        print(f"{'command':32} {'median s':>9} {'min s':>7} {'exit':>5}   ({args.runs} runs each)")
        for name, command in commands.items():
            median, fastest, code = timed(command, args.runs)
            print(f"{name:32} {median:9.3f} {fastest:7.3f} {code:5d}")


if __name__ == "__main__":
    main()
