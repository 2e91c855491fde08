"""Install the real packages of the tools that use SAM models, so tests can run their own code on ours.

Each client is installed once (``pip install --no-deps --target``) into ``tests/.clients/`` (ignored by
git) and put on ``sys.path``; only the client's own code is needed, its heavy dependencies (GUI
toolkits, training frameworks) are not, and tests stub the few GUI imports a client module pulls in.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLIENTS_DIR = Path(__file__).resolve().parent / ".clients"


def install_client(requirement: str) -> Path:
    """``pip install --no-deps`` ``requirement`` (e.g. ``"samexporter==0.5.0"``) once; returns its folder,
    which is also appended to ``sys.path``: a package the environment has keeps the environment's version, so
    a client's pins never shadow what later tests import (compiled modules of other versions can crash)."""
    folder = CLIENTS_DIR / requirement.replace("==", "-").replace("/", "_")
    marker = folder / ".installed"
    if not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(folder), requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"could not install {requirement}: {result.stderr.strip()[-2000:]}")
        marker.write_text(requirement)
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    return folder
