"""The image reader: orientation, bit depth, modes, pixel limits (thread-safe), broken files, minimum size.

Every image is built here: oriented JPEGs from a real photo, 16-bit, float and 32-bit files from its
gray values, and headers that claim more pixels than they hold.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps
from support import load_photo

import evitsam
from evitsam.io import (
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT,
    MIN_SIDE,
    ImageReadError,
    ImageTooLargeError,
    ImageTooSmallError,
    orient,
    raise_pillow_limit,
    read_image,
)
from evitsam.transforms import as_rgb_uint8

ORIENTATION = 0x0112


def small_photo(width: int = 240) -> np.ndarray:
    photo = Image.fromarray(load_photo("truck.jpg"))
    return np.asarray(photo.resize((width, round(width * photo.height / photo.width)), Image.BILINEAR))


def stored_pixels(displayed: np.ndarray, orientation: int) -> np.ndarray:
    """What a camera stores for the ``displayed`` picture, by the EXIF table: 3 = turn 180 degrees to view,
    6 = turn 90 degrees clockwise to view, 8 = turn 90 degrees counter-clockwise to view."""
    return {3: np.rot90(displayed, 2), 6: np.rot90(displayed, 1), 8: np.rot90(displayed, -1)}[orientation]


def encode(array: np.ndarray, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    (array if isinstance(array, Image.Image) else Image.fromarray(array)).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def oriented_jpeg(displayed: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(np.ascontiguousarray(stored_pixels(displayed, orientation)), "JPEG", quality=95, exif=exif)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(values: np.ndarray, orientation: int | None = None) -> bytes:
    """A 16-bit RGB (HxWx3) or gray+alpha (HxWx2) PNG written by hand (Pillow writes no 16-bit colour),
    with an eXIf chunk when ``orientation`` is given."""
    height, width, channels = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, {3: 2, 2: 4}[channels], 0, 0, 0))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation or 1
    tags = png_chunk(b"eXIf", exif.tobytes()[6:]) if orientation else b""  # without the "Exif\0\0" prefix
    return b"\x89PNG\r\n\x1a\n" + header + tags + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")


def claimed_size_png(width: int, height: int) -> bytes:
    """A small gray PNG whose header claims ``width`` x ``height`` pixels (a decompression-bomb header)."""
    data = bytearray(encode(np.zeros((16, 16), np.uint8), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def full_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(np.rint((values.astype(np.float64) - low) * 255 / (high - low)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ orientation
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_gives_the_displayed_frame(tmp_path, orientation):
    displayed = small_photo()
    path = tmp_path / f"phone_{orientation}.jpg"
    path.write_bytes(oriented_jpeg(displayed, orientation))
    with Image.open(path) as stored:
        assert stored.size[::-1] == stored_pixels(displayed, orientation).shape[:2]  # the file is stored turned
    image = read_image(path)
    assert image.shape == displayed.shape and image.dtype == np.uint8
    error = np.abs(image.astype(int) - displayed).mean()
    assert error < 4, error  # JPEG noise only
    if orientation == 3:  # same size as stored: the content must be turned, not just the shape
        assert np.abs(np.rot90(image, 2).astype(int) - displayed).mean() > 5 * error


def test_all_eight_orientations_as_pillow_turns_them():
    stored = small_photo(48)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        data = encode(stored, "PNG", exif=exif.tobytes())  # lossless: exact comparisons
        with Image.open(io.BytesIO(data)) as image:
            expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        np.testing.assert_array_equal(read_image(data), expected)
        np.testing.assert_array_equal(orient(stored, orientation), expected)  # the 16-bit colour path's turns


@pytest.mark.slow
def test_predictor_masks_line_up_with_the_displayed_image(tmp_path):
    """A box around an object, given in the displayed frame, gives the same mask for the upright file and
    for phone files that store it turned (masks come back in the displayed frame)."""
    displayed = small_photo(320)
    upright = read_image(encode(displayed, "JPEG", quality=95))
    height, width = displayed.shape[:2]
    box = np.array([0.04 * width, 0.23 * height, 0.96 * width, 0.71 * height])  # the truck
    predictor = evitsam.SamPredictor(evitsam.load_model("nano"))
    predictor.set_image(upright)
    expected = predictor.predict(box=box, multimask_output=False)[0][0]
    assert 0.02 < expected.mean() < 0.9
    for orientation in (3, 6, 8):
        predictor.set_image(read_image(oriented_jpeg(displayed, orientation)))
        mask = predictor.predict(box=box, multimask_output=False)[0][0]
        assert mask.shape == (height, width)
        iou = (mask & expected).sum() / (mask | expected).sum()
        assert iou > 0.9, (orientation, iou)


# ------------------------------------------------------------------------------------- bit depth
def gray_values(scale: float, dtype) -> np.ndarray:
    gray = np.asarray(Image.fromarray(small_photo(96)).convert("L"), dtype=np.float64)
    return (gray * scale).astype(dtype)


def test_16_bit_gray_png_is_scaled_not_saturated():
    values = gray_values(16, np.uint16)  # 12-bit data in a 16-bit file, as microscopes write
    data = encode(values, "PNG")
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode.startswith("I")
        assert (np.asarray(image.convert("RGB")) == 255).mean() > 0.9  # what a plain convert("RGB") gives
    image = read_image(data)
    assert image.shape == (*values.shape, 3) and (image[..., 0] == image[..., 2]).all()
    np.testing.assert_array_equal(image[..., 0], full_range(values, 0, 65535))
    stretched = read_image(data, high_bit="percentile", percentiles=(1, 99))
    low, high = np.percentile(values, (1, 99))
    np.testing.assert_array_equal(stretched[..., 0], full_range(values, low, high))
    assert stretched.std() > 4 * image.std()


def test_16_bit_tiff_and_pgm():
    values = gray_values(200, np.uint16)
    for fmt in ("TIFF", "PPM"):  # Pillow opens these as I;16 and I
        np.testing.assert_array_equal(read_image(encode(values, fmt))[..., 1], full_range(values, 0, 65535))


def test_16_bit_colour_png_keeps_all_16_bits():
    displayed = (small_photo(64).astype(np.uint32) * 16 + 100).astype(np.uint16)  # 12-bit colour
    data = png16(displayed)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB"  # Pillow alone reads 16-bit colour by its high byte
    np.testing.assert_array_equal(read_image(data), full_range(displayed, 0, 65535))
    low, high = np.percentile(displayed, (0.5, 99.5))
    np.testing.assert_array_equal(read_image(data, high_bit="percentile"), full_range(displayed, low, high))
    for orientation in (3, 6, 8):
        stored = np.ascontiguousarray(stored_pixels(displayed, orientation))
        np.testing.assert_array_equal(read_image(png16(stored, orientation)), full_range(displayed, 0, 65535))
    gray = np.stack([displayed[..., 1], np.full_like(displayed[..., 1], 65535)], axis=2)  # gray + alpha
    np.testing.assert_array_equal(read_image(png16(gray))[..., 2], full_range(displayed[..., 1], 0, 65535))


def test_float_tiff_in_0_1_and_in_other_units():
    fraction = gray_values(1 / 255, np.float32)
    np.testing.assert_array_equal(read_image(encode(fraction, "TIFF"))[..., 0], full_range(fraction, 0, 1))
    depth = gray_values(10 / 255, np.float32) + 0.5  # metres: outside 0..1, so the image's own range
    depth[0, 0] = np.nan
    image = read_image(encode(depth, "TIFF"))[..., 0]
    finite = np.isfinite(depth)
    expected = full_range(np.where(finite, depth, np.nanmin(depth)), np.nanmin(depth), np.nanmax(depth))
    np.testing.assert_array_equal(image[finite], expected[finite])
    assert image[0, 0] == 0 and image.max() == 255


def test_32_bit_integer_tiff():
    wide = gray_values(1000, np.int32) - 50_000  # beyond 16 bits and negative: the image's own range
    with Image.open(io.BytesIO(encode(wide, "TIFF"))) as image:
        assert image.mode == "I"
    np.testing.assert_array_equal(read_image(encode(wide, "TIFF"))[..., 0], full_range(wide, wide.min(), wide.max()))
    narrow = gray_values(100, np.int32)  # 16-bit data in a 32-bit file: the 16-bit range
    np.testing.assert_array_equal(read_image(encode(narrow, "TIFF"))[..., 0], full_range(narrow, 0, 65535))


# ----------------------------------------------------------------------------------------- modes
@pytest.mark.parametrize(
    ("mode", "fmt"), [("P", "PNG"), ("P", "GIF"), ("LA", "PNG"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("1", "PNG"),
                      ("RGBA", "PNG"), ("L", "PNG")],
)  # fmt: skip
def test_modes_become_rgb(mode, fmt):
    photo = Image.fromarray(small_photo(64))
    source = photo.convert(mode) if mode != "LA" else photo.convert("L").convert("LA")
    data = encode(source, fmt)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == mode
        expected = np.asarray(image.convert("RGB"))
    image = read_image(data)
    assert image.dtype == np.uint8 and image.shape == (*expected.shape[:2], 3)
    np.testing.assert_array_equal(image, expected)
    assert image.std() > 10  # a picture, not a flat field


def test_pil_images_in_memory_follow_the_same_rules():
    values = gray_values(16, np.uint16)
    in_memory = Image.open(io.BytesIO(encode(values, "PNG")))
    np.testing.assert_array_equal(as_rgb_uint8(in_memory)[..., 0], full_range(values, 0, 65535))


# ------------------------------------------------------------------------------------- pixel limit
def test_bomb_headers_are_refused_before_decoding():
    bomb = claimed_size_png(20_000, 20_000)  # 400 million pixels claimed, 16x16 stored
    with pytest.raises(ImageTooLargeError, match=r"400\.0 million pixels.*limit of 89\.5 million.*--max-pixels"):
        read_image(bomb)  # above Pillow's own refusal level too: Pillow's check answers first
    with pytest.raises(ImageTooLargeError, match=r"100\.0 million pixels \(10000x10000\).*limit of 89\.5 million"):
        with pytest.warns(Image.DecompressionBombWarning):  # Pillow's own, silenced by raise_pillow_limit
            read_image(claimed_size_png(10_000, 10_000))  # our check, from the header
    with pytest.raises(ImageTooLargeError, match="PIL.Image.MAX_IMAGE_PIXELS.*raise_pillow_limit"):
        read_image(bomb, max_pixels=None)  # no limit of ours: Pillow's process-wide one still holds
    photo = encode(small_photo(64), "PNG")
    with pytest.raises(ImageTooLargeError, match="above the limit of 0.0 million"):
        read_image(photo, max_pixels=1000)
    assert read_image(photo, max_pixels=64 * 43).shape == (43, 64, 3)


def test_raise_pillow_limit_lifts_the_ceiling(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    bomb = claimed_size_png(20_000, 20_000)
    with warnings.catch_warnings():
        raise_pillow_limit(10**9)
        assert Image.MAX_IMAGE_PIXELS == 10**9
        raise_pillow_limit(1000)  # never lowered
        assert Image.MAX_IMAGE_PIXELS == 10**9
        with pytest.raises(ImageReadError) as refused:  # past every limit: decoding finds 16x16 of data
            read_image(bomb, max_pixels=None)
    assert not isinstance(refused.value, ImageTooLargeError)


def test_the_reader_changes_no_global_state(monkeypatch):
    """Pillow's limit is process-wide: a reader that swapped it would lift it for every other thread."""
    seen = []
    pillow_open = Image.open
    photo, bomb = encode(small_photo(64), "PNG"), claimed_size_png(20_000, 20_000)

    def watching_open(*args, **kwargs):
        seen.append(Image.MAX_IMAGE_PIXELS)
        return pillow_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", watching_open)
    ceiling = Image.MAX_IMAGE_PIXELS
    read_image(photo, max_pixels=None)
    with pytest.raises(ImageTooLargeError):
        read_image(bomb, max_pixels=None)
    assert seen == [ceiling, ceiling] and Image.MAX_IMAGE_PIXELS == ceiling


def test_concurrent_readers_keep_their_own_limits():
    photo = encode(small_photo(64), "PNG")
    bomb = claimed_size_png(20_000, 20_000)
    start = threading.Barrier(6)
    failures = []

    def reader(kind: int) -> None:
        start.wait()
        for _ in range(30):
            try:
                if kind == 0:
                    assert read_image(photo, max_pixels=None).shape == (43, 64, 3)
                elif kind == 1:
                    with pytest.raises(ImageTooLargeError, match="above the limit"):
                        read_image(photo, max_pixels=100)
                else:
                    with pytest.raises(ImageTooLargeError):
                        read_image(bomb, max_pixels=None)
            except BaseException as error:  # noqa: BLE001 (reported below)
                failures.append(repr(error))

    threads = [threading.Thread(target=reader, args=(i % 3,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# ----------------------------------------------------------------------------------- broken files
def test_broken_inputs_get_one_clear_error(tmp_path):
    jpeg = encode(small_photo(), "JPEG")
    png = encode(small_photo(), "PNG")
    for name, data, message in [
        ("cut.jpg", jpeg[: len(jpeg) // 2], "cannot read image .*cut.jpg: image file is truncated"),
        ("cut.png", png[: len(png) // 2], "cannot read image .*cut.png"),
        ("notes.jpg", b"plain text, not a picture\n" * 10, "notes.jpg: not an image file"),
        ("empty.png", b"", "empty.png: an empty file"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageReadError, match=message):
            read_image(tmp_path / name)
    with pytest.raises(ImageReadError, match="upload: an empty file"):
        read_image(b"")
    with pytest.raises(FileNotFoundError, match="image not found"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_image(tmp_path)
    with pytest.raises(TypeError, match="path, bytes or a binary stream"):
        read_image(12)
    for bad, message in [({"high_bit": "auto"}, "high_bit"), ({"percentiles": (99, 1)}, "percentiles"),
                         ({"max_pixels": 0}, "max_pixels")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            read_image(png, **bad)


def test_streams_are_read_and_left_open():
    stream = io.BytesIO(encode(small_photo(64), "PNG"))
    stream.seek(10)
    assert read_image(stream, name="upload.png").shape == (43, 64, 3)
    assert not stream.closed


# ------------------------------------------------------------------------------------ minimum size
def test_images_under_the_minimum_side_are_refused():
    for size in [(1, 1), (MIN_SIDE - 1, 100), (100, MIN_SIDE - 1)]:
        data = encode(np.full((*size, 3), 128, np.uint8), "PNG")
        with pytest.raises(ImageTooSmallError, match=f"{size[1]}x{size[0]} pixels.*{MIN_SIDE} pixels on each side"):
            read_image(data)
        with pytest.raises(ValueError, match=f"{MIN_SIDE} pixels on each side"):
            as_rgb_uint8(np.zeros((*size, 3), np.uint8))
    assert read_image(encode(np.zeros((MIN_SIDE, MIN_SIDE, 3), np.uint8), "PNG")).shape == (MIN_SIDE, MIN_SIDE, 3)
    assert read_image(encode(np.zeros((1, 2, 3), np.uint8), "PNG"), min_side=1).shape == (1, 2, 3)  # training pixels
    predictor = evitsam.SamPredictor(evitsam.build_model("tiny"))
    with pytest.raises(ValueError, match="smallest image"):
        predictor.set_image(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ValueError, match=f"at most {MAX_ASPECT} times its short side"):
        predictor.set_image(np.zeros((MIN_SIDE, (MAX_ASPECT + 1) * MIN_SIDE, 3), np.uint8))
    assert as_rgb_uint8(np.zeros((MIN_SIDE, MAX_ASPECT * MIN_SIDE), np.uint8)).shape[1] == MAX_ASPECT * MIN_SIDE
    assert DEFAULT_MAX_PIXELS == 1024 * 1024 * 1024 // 4 // 3  # Pillow's own default warning level
