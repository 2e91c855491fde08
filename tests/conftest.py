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


@pytest.fixture(scope="module")
def service():
    """The service the API tests run against: the bundled model, small limits so refusals are cheap to reach."""
    from evitsam.service import Service, ServiceConfig

    svc = Service.load(ServiceConfig(cache_mb=64, max_upload_mb=2, max_pixels=5_000_000))
    svc.warm_up()
    return svc


@pytest.fixture(scope="module")
def client(service):
    from fastapi.testclient import TestClient

    from evitsam.service import create_app

    return TestClient(create_app(service))
