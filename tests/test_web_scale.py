"""The page's mask-scaling kernel: the committed scale.wasm is the assembly of scale.wat (its source), so a change
to one without the other fails here. Its masks are tested in a real browser in test_web.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_scale_wasm.py"


def test_committed_kernel_is_the_assembled_source():
    spec = importlib.util.spec_from_file_location("build_scale_wasm", SCRIPT)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    committed = (build.WEB / "scale.wasm").read_bytes()
    assert committed[:4] == b"\0asm" and committed == build.assemble()
