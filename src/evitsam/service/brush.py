"""Label Studio's brush RLE: the ``rle`` of a ``brushlabels`` result (``label_studio_converter.brush``).

The format is thi.ng's rle-pack over the mask as a flat RGBA byte array (each pixel's value repeated in its 4
channels; Label Studio reads channel 3): a header of 32 bits (number of values), 5 bits (word size - 1) and
4 x 4 bits (the run-length field sizes - 1), then chunks of ``flag | size class (2 bits) | length - 1 | value``,
most significant bit first. A mask is long runs, so every chunk here is a repeat run (flag 1), encoded with
numpy in one pass (no per-pixel Python loop).
"""

from __future__ import annotations

import numpy as np

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)  # bits of (run length - 1) per size class, as label_studio_converter writes them
MAX_RUN = 1 << RLE_SIZES[-1]
CHANNELS = 4


def _bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Each value's lowest ``width`` bits, most significant first, all concatenated."""
    top = int(widths.max())
    shifts = np.arange(top - 1, -1, -1, dtype=np.int64)
    matrix = (values[:, None] >> shifts[None]) & 1
    keep = shifts[None] < widths[:, None]
    return matrix[keep].astype(np.uint8)


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """(H, W) bool -> Label Studio brush RLE bytes (a list of ints 0..255), values 255 inside the mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be shaped (H, W), got {mask.shape}")
    flat = mask.ravel().astype(bool)
    count = flat.size * CHANNELS
    # runs of equal pixels, in values of the RGBA array
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]])) * CHANNELS
    values = np.where(flat[starts], 255, 0).astype(np.int64)
    # split runs longer than the largest length field
    pieces = (lengths + MAX_RUN - 1) // MAX_RUN
    run = np.repeat(np.arange(len(lengths)), pieces)
    first_piece = np.repeat(np.cumsum(pieces) - pieces, pieces)
    piece_lengths = np.minimum(MAX_RUN, lengths[run] - (np.arange(len(run)) - first_piece) * MAX_RUN)
    piece_values = values[run]
    # size class: the smallest field that holds length - 1
    sizes = np.array(RLE_SIZES, dtype=np.int64)
    size_class = np.searchsorted(1 << sizes, piece_lengths, side="left")
    field = sizes[size_class]
    widths = 1 + 2 + field + WORD_SIZE
    chunks = (
        (np.int64(1) << (widths - 1)) | (size_class << (field + WORD_SIZE)) | ((piece_lengths - 1) << WORD_SIZE)
    ) | piece_values
    header_values = np.array([count, WORD_SIZE - 1, *[s - 1 for s in RLE_SIZES]], dtype=np.int64)
    header_widths = np.array([32, 5, 4, 4, 4, 4], dtype=np.int64)
    bits = np.concatenate([_bits(header_values, header_widths), _bits(chunks, widths)])
    return np.packbits(bits).tolist()
