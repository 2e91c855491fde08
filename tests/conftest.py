"""Fixtures only; the plain helpers the tests share are in support.py (tests/ is on sys.path because of this file)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFile
from support import DATA

PILLOW_DEFAULTS = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)  # as this process started


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The committed fixture folder, tests/data."""
    return DATA


@pytest.fixture(autouse=True)
def pillow_limit() -> Iterator[None]:
    """Every test starts from Pillow's process-wide settings as they were: CLI commands run in-process raise the
    pixel ceiling, and client packages (clients.py) switch on loading truncated images."""
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = PILLOW_DEFAULTS
    yield
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = PILLOW_DEFAULTS


@pytest.fixture(autouse=True)
def default_sigchld() -> Iterator[None]:
    """A DataLoader with workers installs a SIGCHLD handler that checks its worker processes; a test that ends
    such a loader early leaves the handler behind, and a later test's child process exiting must not run it."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    yield
