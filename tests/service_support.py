"""What the service tests have in common: upload bytes, COCO RLE decoding, checks of refusals (the fixtures
``service`` and ``client`` are in conftest.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_coco(segmentation: dict) -> np.ndarray:
    rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def upload(client, data: bytes, name: str = "photo.jpg"):
    return client.post("/v1/images", files={"file": (name, data, "application/octet-stream")})


def assert_error(response, status: int, field: str, *words: str) -> None:
    """A refused request: the status, the JSON error naming ``field``, and the words its message must hold."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["field"] == field, error
    for word in words:
        assert word in error["message"], error
