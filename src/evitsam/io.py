"""Reading images as people have them: the one image reader of every path (CLI, folders, evaluation,
training data, the service's uploads).

- **Orientation**: the frame a viewer shows. EXIF orientation (phone photos) is applied
  (``ImageOps.exif_transpose``), so prompts are read and masks are returned in the displayed frame.
- **Bit depth**: 16-bit and float images are scaled to 8 bits, by default over the type's full range
  (``high_bit="full"``: 0..65535 -> 0..255, floats 0..1), or between two percentiles of the image
  (``high_bit="percentile"``, for microscopy and depth images that use a small part of their range).
- **Modes**: palette, gray, gray+alpha, CMYK, 1-bit and RGBA become RGB (alpha dropped).
- **Size**: images above ``max_pixels`` are refused before their pixels are decoded (decompression
  bombs); images with a side under ``MIN_SIDE`` are refused (nothing useful can be segmented there).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP; raise with max_pixels=... (CLI: --max-pixels)
MIN_SIDE = 8  # pixels: one cell of the encoder's 64x64 embedding grid at 512 px is 8 pixels
HIGH_BIT_MODES = ("full", "percentile")
DEFAULT_PERCENTILES = (0.5, 99.5)


class ImageReadError(ValueError):
    """A file or upload that cannot be read as an image; the message names it and says why."""


class ImageTooLargeError(ImageReadError):
    """More pixels than the reader's ``max_pixels`` limit (refused before decoding)."""


def check_image_size(height: int, width: int, name: str = "image") -> None:
    """Refuse images with a side under ``MIN_SIDE`` pixels (a 1x1 image gives an empty mask, not an error)."""
    if min(height, width) < MIN_SIDE:
        raise ValueError(
            f"{name} is {width}x{height} pixels; the smallest image evitsam segments is {MIN_SIDE} pixels on each side"
        )


def read_image(
    source: str | os.PathLike | bytes | BinaryIO,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    high_bit: str = "full",
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    name: str | None = None,
) -> np.ndarray:
    """An image file (path, bytes or binary stream) -> HxWx3 uint8 RGB in the orientation viewers show.

    Raises ``FileNotFoundError`` (no such file), ``IsADirectoryError`` (a folder), ``ImageTooLargeError``
    (over ``max_pixels``; ``None`` = no limit) or ``ImageReadError`` (not an image, truncated, or too small).
    ``name`` is what messages call the source (default: the path, or "upload").
    """
    if high_bit not in HIGH_BIT_MODES:
        raise ValueError(f"high_bit must be one of {HIGH_BIT_MODES}, got {high_bit!r}")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = name or str(path)
        if path.is_dir():
            raise IsADirectoryError(f"{name} is a folder, not an image")
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {name}")
        stream: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed below)
    else:
        name = name or "upload"
        stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with stream, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = _open(stream, name, max_pixels)
            try:
                image.load()
                image = ImageOps.exif_transpose(image)
            except (OSError, SyntaxError, ValueError) as error:
                raise ImageReadError(f"cannot read image {name}: {_reason(error)}") from None
            array = to_rgb_uint8(image, high_bit, percentiles)
    except Image.DecompressionBombWarning:  # only reached with max_pixels=None above Pillow's own limit
        raise ImageTooLargeError(f"{name} is larger than Pillow's decompression-bomb limit") from None
    check_image_size(*array.shape[:2], name=name)
    return array


def _open(stream: BinaryIO, name: str, max_pixels: int | None) -> Image.Image:
    """``Image.open`` (header only) with our pixel limit in place of Pillow's bomb warning/error."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our limit below replaces Pillow's; restored at once
    try:
        image = Image.open(stream)
    except UnidentifiedImageError:
        raise ImageReadError(
            f"cannot read image {name}: not an image file (or a format Pillow does not read)"
        ) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"cannot read image {name}: {_reason(error)}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    pixels = image.width * image.height
    if max_pixels is not None and pixels > max_pixels:
        raise ImageTooLargeError(
            f"{name} has {pixels / 1e6:.1f} million pixels ({image.width}x{image.height}), above the limit of "
            f"{max_pixels / 1e6:.0f} million; raise it with max_pixels (CLI: --max-pixels) if you trust the file"
        )
    return image


def to_rgb_uint8(
    image: Image.Image, high_bit: str = "full", percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> np.ndarray:
    """A decoded PIL image of any mode -> HxWx3 uint8 RGB (see the module docstring for the rules)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            low, high = 0.0, 1.0
        elif image.mode == "I" and values.size and (values.max() > 65535 or values.min() < 0):
            low, high = float(np.iinfo(np.int32).min), float(np.iinfo(np.int32).max)
        else:
            low, high = 0.0, 65535.0
        if high_bit == "percentile" and values.size:
            low, high = (float(v) for v in np.percentile(values, percentiles))
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))
        gray = np.clip(np.nan_to_num(scaled, nan=0.0) + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    return np.asarray(image.convert("RGB"))


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
