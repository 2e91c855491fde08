"""The library must never depend on the reference implementations it is tested against."""

from __future__ import annotations

import subprocess
import sys

from support import REPO


def test_library_imports_no_reference_code():
    sources = list((REPO / "src" / "evitsam").rglob("*.py"))
    assert len(sources) > 10
    for path in sources:
        text = path.read_text()
        for oracle in ("efficientsam", "segment_anything", "efficientvit"):
            assert f"import {oracle}" not in text and f"from {oracle}" not in text, (path, oracle)
    code = (
        "import sys, evitsam.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('efficientsam', 'segment_anything')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
