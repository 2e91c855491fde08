"""Reading images as people have them: the one image reader of every path (CLI, folders, evaluation,
training data, calibration, the service's uploads). docs/images.md explains the rules.

- **Orientation**: the frame a viewer shows. EXIF orientation (phone photos) is applied
  (``ImageOps.exif_transpose``), so prompts are read and masks are returned in the displayed frame.
- **Bit depth**: 16-bit, 32-bit integer and float images are scaled to 8 bits, by default over their
  nominal range (``high_bit="full"``: 0..65535, floats 0..1), or between two percentiles of the image
  (``high_bit="percentile"``, for microscopy and depth images that use a small part of their range).
- **Modes**: palette, gray, gray+alpha, CMYK, 1-bit and RGBA become RGB (alpha dropped).
- **Size**: images above ``max_pixels`` are refused from their header, before their pixels are decoded
  (decompression bombs); images with a side under ``MIN_SIDE`` are refused (nothing can be segmented there).

Thread safety: the reader changes no global state (Pillow's ``MAX_IMAGE_PIXELS`` is left alone: it is the
process-wide ceiling, above which Pillow itself refuses to decode; :func:`raise_pillow_limit` lifts it
once at start-up for applications that accept larger images).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own default (1024*1024*1024 // 4 // 3 = 89.5 million pixels, e.g. 11000x8000), so that at the
# defaults Pillow never warns about an image the reader accepts. Raise with max_pixels=... (CLI: --max-pixels).
DEFAULT_MAX_PIXELS = 89_478_485
# The smallest side evitsam segments. The encoders' finest features have a stride of 8 input pixels, so an
# image under 8 pixels on a side is less than one feature cell at its own scale: all detail in the
# upscaled encoder input is interpolation, and a 1x1 image gives an empty mask rather than an answer.
MIN_SIDE = 8
# Resizing the long side to the smallest encoder input (256 pixels) leaves the short side at least one pixel.
MAX_ASPECT = 500
HIGH_BIT_MODES = ("full", "percentile")
DEFAULT_PERCENTILES = (0.5, 99.5)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
EXIF_ORIENTATION = 0x0112
# What Pillow raises for files it cannot parse or decode (its own list in Image.open, plus decoder errors).
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError, struct.error)


class ImageReadError(ValueError):
    """A file or upload that cannot be read as an image; the message names it and says why."""


class ImageTooLargeError(ImageReadError):
    """More pixels than the reader's ``max_pixels`` limit (refused before decoding)."""


class ImageTooSmallError(ImageReadError):
    """A side shorter than ``MIN_SIDE`` pixels."""


def image_suffixes() -> frozenset[str]:
    """File name extensions (lower case, with the dot) of the formats Pillow can read."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def check_image_size(height: int, width: int, name: str = "image", min_side: int = MIN_SIDE) -> None:
    """Refuse images with a side under ``min_side`` pixels (a 1x1 image gives an empty mask, not an error) or
    longer than ``MAX_ASPECT`` times their short side."""
    if min(height, width) < min_side:
        raise ImageTooSmallError(
            f"{name} is {width}x{height} pixels; the smallest image evitsam segments is {min_side} pixels on each side"
        )
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise ImageTooSmallError(
            f"{name} is {width}x{height} pixels; its long side may be at most {MAX_ASPECT} times its short side "
            "(resized for the encoder, the short side would vanish)"
        )


def raise_pillow_limit(max_pixels: int | None) -> None:
    """Let Pillow decode images of up to ``max_pixels`` (None: any size), process-wide.

    Pillow refuses images above twice ``PIL.Image.MAX_IMAGE_PIXELS`` (and warns above it) whatever a
    reader asks for. An application that accepts larger images (the CLI's ``--max-pixels``) calls this
    once at start-up, before threads read images; the ceiling is only ever raised, and Pillow's warning
    is silenced, since :func:`read_image` refuses images above its own ``max_pixels`` with a clear error.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and (max_pixels is None or max_pixels > current):
        Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def read_image(
    source: str | os.PathLike | bytes | BinaryIO,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    high_bit: str = "full",
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    name: str | None = None,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """An image file (path, bytes or binary stream) -> HxWx3 uint8 RGB in the orientation viewers show.

    Raises ``FileNotFoundError`` (no such file), ``IsADirectoryError`` (a folder), ``ImageTooLargeError``
    (over ``max_pixels``; ``None`` = no limit of ours) or ``ImageReadError`` (not an image, truncated,
    or too small: ``ImageTooSmallError``). ``name`` is what messages call the source (default: the path,
    or "upload"). A stream passed in is read from its start and left open. ``min_side``: images to segment
    need ``MIN_SIDE``; readers of training pixels may accept less.
    """
    _check_options(max_pixels, high_bit, percentiles)
    if isinstance(min_side, bool) or not isinstance(min_side, int) or min_side < 1:
        raise ValueError(f"min_side must be a positive integer, got {min_side!r}")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = name or str(path)
        if path.is_dir():
            raise IsADirectoryError(f"{name} is a folder, not an image")
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {name}")
        with open(path, "rb") as stream:
            return _read(stream, name, max_pixels, high_bit, percentiles, min_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read(io.BytesIO(source), name or "upload", max_pixels, high_bit, percentiles, min_side)
    if not hasattr(source, "read"):
        raise TypeError(f"read_image takes a path, bytes or a binary stream, got {type(source).__name__}")
    return _read(source, name or "upload", max_pixels, high_bit, percentiles, min_side)


def _check_options(max_pixels: int | None, high_bit: str, percentiles: tuple[float, float]) -> None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    if high_bit not in HIGH_BIT_MODES:
        raise ValueError(f"high_bit must be one of {HIGH_BIT_MODES}, got {high_bit!r}")
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {percentiles!r}")


def _read(
    stream: BinaryIO,
    name: str,
    max_pixels: int | None,
    high_bit: str,
    percentiles: tuple[float, float],
    min_side: int,
) -> np.ndarray:
    with _pillow_errors(name, max_pixels):
        image = _open(stream, name)
        with image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise _too_large(name, f"{width * height / 1e6:.1f} million pixels ({width}x{height})", max_pixels)
            check_image_size(height, width, name, min_side)
            source = image.fp if _is_deep_colour(image) else None  # before load(), which clears the tiles
            image.load()
            deep = _decode_deep_colour(source, image.size) if source is not None else None
            if deep is not None:
                array = orient(scale_to_uint8(deep, high_bit, percentiles), _orientation(image))
            else:
                try:
                    upright = ImageOps.exif_transpose(image)
                except _PILLOW_ERRORS:  # unreadable EXIF: viewers show the stored frame, and so do we
                    upright = image
                array = to_rgb_uint8(upright, high_bit, percentiles)
    check_image_size(*array.shape[:2], name=name, min_side=min_side)
    return array


def _is_deep_colour(image: Image.Image) -> bool:
    """A 16-bit colour file, which Pillow decodes to 8 bits (by the high byte)."""
    if image.mode not in ("RGB", "RGBA", "LA") or not image.tile:
        return False
    args = image.tile[0].args
    rawmode = args if isinstance(args, str) else args[0] if args else ""
    return ";16" in str(rawmode)


def _decode_deep_colour(source: BinaryIO, size: tuple[int, int]) -> np.ndarray | None:
    """The HxWx3 uint16 RGB pixels of a 16-bit colour file, decoded with OpenCV so that both scalings see
    all 16 bits (None where OpenCV reads it otherwise: then Pillow's 8 bits are used)."""
    import cv2

    source.seek(0)
    decoded = cv2.imdecode(np.frombuffer(source.read(), np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.dtype != np.uint16 or decoded.shape[:2] != size[::-1]:
        return None
    if decoded.ndim == 2 or decoded.shape[2] == 2:  # gray (+ alpha)
        return np.repeat(decoded.reshape(*decoded.shape[:2], -1)[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(decoded[:, :, 2::-1])  # OpenCV's BGR(A) -> RGB


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except (*_PILLOW_ERRORS, AttributeError):
        return 1


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels -> the displayed frame for an EXIF orientation (1-8), as ``ImageOps.exif_transpose``."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }.get(orientation, lambda a: a)(pixels)
    return np.ascontiguousarray(turned)


def _open(stream: BinaryIO, name: str) -> Image.Image:
    """``Image.open`` (the header only), with Pillow's errors turned into ours."""
    try:
        return Image.open(stream)
    except UnidentifiedImageError:
        try:
            empty = stream.seek(0, io.SEEK_END) == 0
        except (AttributeError, OSError, ValueError):  # not seekable: Pillow read it whole, so it was not empty
            empty = False
        what = "an empty file" if empty else "not an image file (or a format Pillow does not read)"
        raise ImageReadError(f"cannot read image {name}: {what}") from None


@contextlib.contextmanager
def _pillow_errors(name: str, max_pixels: int | None) -> Iterator[None]:
    """Pillow's bomb refusals -> ImageTooLargeError, its parse and decode errors -> ImageReadError."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        found = re.search(r"\((\d+) pixels\)", str(error))  # Pillow's message names the header's pixel count
        pixels = int(found.group(1)) if found else None
        if max_pixels is not None and (pixels is None or pixels > max_pixels):
            size = f"{pixels / 1e6:.1f} million" if pixels else f"more than {ceiling / 1e6:.1f} million"
            raise _too_large(name, f"{size} pixels", max_pixels) from None
        raise ImageTooLargeError(
            f"{name} is above Pillow's process-wide limit of {ceiling / 1e6:.1f} million pixels "
            "(PIL.Image.MAX_IMAGE_PIXELS); to read it, call evitsam.io.raise_pillow_limit(max_pixels) at start-up "
            "(CLI: --max-pixels)"
        ) from None
    except ImageReadError:
        raise
    except _PILLOW_ERRORS as error:
        raise ImageReadError(f"cannot read image {name}: {_reason(error)}") from None


def _too_large(name: str, size: str, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{name} has {size}, above the limit of {max_pixels / 1e6:.1f} million; raise it with max_pixels "
        "(CLI: --max-pixels) if you trust the file"
    )


def to_rgb_uint8(
    image: Image.Image, high_bit: str = "full", percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> np.ndarray:
    """A decoded PIL image of any mode -> HxWx3 uint8 RGB (see docs/images.md for the rules)."""
    if image.mode in (*SIXTEEN_BIT_MODES, "I", "F"):
        gray = scale_to_uint8(np.asarray(image), high_bit, percentiles)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as error:  # modes Pillow cannot turn into RGB (e.g. LAB)
        raise ImageReadError(f"cannot convert a {image.mode} image to RGB: {_reason(error)}") from None


def nominal_range(values: np.ndarray) -> tuple[float, float]:
    """The range ``high_bit="full"`` maps to 0..255: the type's (16-bit 0..65535, float 0..1), or the
    image's own minimum..maximum when its values fall outside that range (32-bit data, depths in metres)."""
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return 0.0, 1.0
    nominal = (0.0, 1.0) if values.dtype.kind == "f" else (0.0, 65535.0)
    low, high = float(finite.min()), float(finite.max())
    if nominal[0] <= low and high <= nominal[1]:
        return nominal
    return low, high


def scale_to_uint8(
    values: np.ndarray, high_bit: str = "full", percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> np.ndarray:
    """``round(255 * (v - low) / (high - low))`` clipped to 0..255; NaN -> 0. ``low, high``: the nominal
    range (``"full"``, :func:`nominal_range`) or the image's ``percentiles`` (``"percentile"``)."""
    if high_bit == "percentile":
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        low, high = (float(v) for v in np.percentile(finite, percentiles)) if finite.size else (0.0, 1.0)
    else:
        low, high = nominal_range(values)
    values = values.astype(np.float64)
    scale = 255.0 / (high - low) if high > low else 0.0
    with np.errstate(invalid="ignore"):
        scaled = np.nan_to_num((values - low) * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
