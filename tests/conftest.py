"""Fixtures only; the plain helpers the tests share are in support.py (tests/ is on sys.path because of this file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The committed fixture folder, tests/data."""
    return DATA
