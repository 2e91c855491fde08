"""Run the real ``evitsam`` command in a fresh process, as a person would (no in-process runner)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("evitsam")


def command() -> list[str]:
    """The installed console script, or ``python -m evitsam`` (the same ``main``) where it is not installed."""
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "evitsam"]


def evitsam(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1"}  # a model name must never start a download from a test
    return subprocess.run([*command(), *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def imports(*args: object) -> tuple[set[str], subprocess.CompletedProcess]:
    """The top-level packages ``evitsam ARGS`` imports (``python -X importtime``), and the finished process."""
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "evitsam", *map(str, args)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    lines = done.stderr.splitlines()
    modules = {line.split("|")[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    done.stderr = "\n".join(line for line in lines if not line.startswith("import time:")) + "\n"
    return modules, done
