"""Fixtures only; the plain helpers the tests share are in support.py (tests/ is on sys.path because of this file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from support import DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The committed fixture folder, tests/data."""
    return DATA


@pytest.fixture(autouse=True)
def pillow_limit() -> Iterator[None]:
    """Every test starts from the same process-wide Pillow ceiling: CLI commands run in-process raise it."""
    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit
