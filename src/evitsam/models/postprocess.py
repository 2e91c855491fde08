"""Low-res mask logits -> masks at the photo's size: SAM's ``postprocess_masks`` as one resize.

SAM resizes the decoder's low-res logits bilinearly to its 1024 prompt frame, crops the image's part and
resizes that to the original size. Both resizes are linear along each axis, so they compose into one
(out, low) matrix per axis and the whole step is two matrix products: the same values (to float rounding)
without materialising the 1024x1024 frame. Few masks go through banded products (each output pixel reads
at most 3x3 low-res pixels), thresholded band by band while in cache.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from .prompt_encoder import PROMPT_FRAME


def postprocess_masks(
    masks: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    low_res_size: int,
    threshold: float | None = None,
) -> torch.Tensor:
    """Low-res logits (..., h, w) -> 1024 frame -> crop the image's ``input_size`` -> ``original_size``;
    with ``threshold``, the boolean masks ``logits > threshold`` instead of the logits.

    ``low_res_size``: the decoder's full low-res side (256 for the official models). ``masks`` may also be
    only the top-left ``low_res_extent(low_res_size, input_size)`` of the low-res logits (the rest is
    padding the resize never reads).
    """
    low = max(low_res_size, *masks.shape[-2:])
    sizes = (*input_size, *original_size)
    static = all(isinstance(size, int) for size in sizes) and not torch.jit.is_tracing()
    if static and any(n < low and n < _read_extent(low, crop) for n, crop in zip(masks.shape[-2:], input_size)):
        needed = low_res_extent(low_res_size, input_size)
        raise ValueError(f"masks must cover at least the low-res extent {needed}, got {tuple(masks.shape[-2:])}")
    if static and (threshold is not None or masks.shape[:-2].numel() <= BANDED_MASKS):
        # Each output pixel reads at most 3x3 low-res pixels: products restricted to each band's
        # non-zero columns (same sums without the zero terms; 3-4x faster for one to three masks).
        # Many masks' logits keep the dense products, whose big GEMMs use every core; many binary
        # masks are banded too, so their full-size logits (4 bytes a pixel) never exist at once.
        rows = _resize_operator(low, input_size[0], original_size[0], masks.device)
        cols = _resize_operator(low, input_size[1], original_size[1], masks.device)
        with torch.autocast(masks.device.type, enabled=False):  # written in place: in the masks' dtype
            rows, cols = rows.to(masks.dtype), cols.to(masks.dtype)
            return _banded_resize(masks, rows, cols, threshold)
    # Many masks, or sizes read from tensors (a traced, exported graph: sizes stay symbolic): dense.
    rows = _resize_matrix(low, input_size[0], original_size[0], masks.device)[:, : masks.shape[-2]]
    cols = _resize_matrix(low, input_size[1], original_size[1], masks.device)[:, : masks.shape[-1]]
    rows, cols = rows.to(masks.dtype), cols.to(masks.dtype)
    if original_size[0] <= original_size[1]:  # the cheaper order of the two products
        logits = (rows @ masks) @ cols.T
    else:
        logits = rows @ (masks @ cols.T)
    if threshold is None:
        return logits
    return _greater(logits, threshold, torch.empty(logits.shape, dtype=torch.bool, device=logits.device))


def low_res_extent(low_res_size: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """Low-res rows and columns (multiples of 4: whole embedding cells) that ``postprocess_masks`` reads for
    an image of ``input_size``; the others only cover the padding of the 1024 frame."""
    return tuple(min(low_res_size, -(-_read_extent(low_res_size, side) // 4) * 4) for side in input_size)


def _bilinear_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out, in) float64 matrix of ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis.

    Source positions and weights are computed in float32 exactly as PyTorch's CPU kernel does,
    so the only difference from the two-resize reference is the order of float additions.
    """
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    src = (scale * (torch.arange(out_size, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0)
    i0 = src.long()
    frac = (src - i0).clamp(0, 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, i0), (1 - frac).double(), accumulate=True)
    matrix.index_put_((rows, i1), frac.double(), accumulate=True)
    return matrix


@functools.lru_cache(maxsize=32)
def _read_extent(low: int, crop: int) -> int:
    """How many leading low-res pixels the resize to the 1024 frame reads for its first ``crop`` pixels."""
    used = _bilinear_matrix(low, PROMPT_FRAME)[:crop].abs().sum(dim=0).nonzero()
    return int(used.max()) + 1


BAND_ROWS = 64  # output pixels per band of the banded resize products
BANDED_MASKS = 4  # up to this many masks per call use the banded products (interactive prompts)


class _Resize(NamedTuple):
    """One axis of the post-processing resize, cut into bands of ``BAND_ROWS`` outputs."""

    matrix: torch.Tensor  # (out, low), see _resize_matrix
    bands: tuple[tuple[int, int, int, int], ...]  # first, last + 1 output; first, last + 1 non-zero input
    support: torch.Tensor  # (bands, low): 1 where the band reads that input, else 0
    band_of: torch.Tensor  # (out,): each output's band

    def to(self, dtype: torch.dtype) -> _Resize:
        return self._replace(matrix=self.matrix.to(dtype), support=self.support.to(dtype))


def _banded_resize(masks: torch.Tensor, rows: _Resize, cols: _Resize, threshold: float | None = None) -> torch.Tensor:
    """``rows @ masks @ cols.T`` per mask, each band of output rows/columns reading only its non-zero
    inputs; the full-size result is written once, in place, band by band. With ``threshold`` each band
    is compared while it is still in cache and only the boolean mask is written (the full-size logits
    are never stored: 3x faster than resizing, then thresholding), and tiles whose inputs all lie on one
    side of the threshold are filled without a product (``_constant_tiles``).

    Up to ``BANDED_MASKS`` masks at a time sit side by side (input rows ordered (row, mask)), so one
    product per band serves all of them: three masks cost less than three times one (small products
    use two cores poorly), and many masks never hold more than a few masks' intermediates."""
    flat = masks.reshape(-1, *masks.shape[-2:])
    out_dtype = masks.dtype if threshold is None else torch.bool
    out = torch.empty(flat.shape[0], len(rows.band_of), len(cols.band_of), dtype=out_dtype, device=masks.device)
    for start in range(0, flat.shape[0], BANDED_MASKS):
        group = slice(start, start + BANDED_MASKS)
        _banded_group(flat[group], rows, cols, threshold, out[group])
    return out.view(*masks.shape[:-2], *out.shape[-2:])


def _banded_group(flat: torch.Tensor, rows: _Resize, cols: _Resize, threshold: float | None, out: torch.Tensor) -> None:
    """``_banded_resize`` of a few masks (K, h, w) into ``out`` (K, H, W)."""
    if threshold is not None:
        _banded_threshold(flat, rows, cols, threshold, out)
        return
    count = flat.shape[0]
    across = _across(flat, cols, range(len(cols.bands)), 0, flat.shape[-2])
    band = None if count == 1 else flat.new_empty(BAND_ROWS, across.shape[1])
    for r0, r1, k0, k1 in rows.bands:
        if band is None:  # one mask's logits: written in place
            torch.mm(rows.matrix[r0:r1, k0:k1], across[k0:k1], out=out[0, r0:r1])
            continue
        product = torch.mm(rows.matrix[r0:r1, k0:k1], across[k0:k1], out=band[: r1 - r0])
        out[:, r0:r1] = product.view(r1 - r0, count, -1).transpose(0, 1)


def _across(flat: torch.Tensor, cols: _Resize, col_bands: range, k0: int, k1: int) -> torch.Tensor:
    """The column pass for low-res rows k0:k1 and the outputs of ``col_bands``: (k1 - k0, K * columns),
    the K masks side by side per row (one row-pass product then serves them all)."""
    count = flat.shape[0]
    stacked = flat[:, k0:k1].transpose(0, 1).reshape((k1 - k0) * count, -1)
    bands = [cols.bands[j] for j in col_bands]
    across = torch.cat([stacked[:, j0:j1] @ cols.matrix[c0:c1, j0:j1].T for c0, c1, j0, j1 in bands], dim=1)
    return across.view(k1 - k0, -1)


def _banded_threshold(flat: torch.Tensor, rows: _Resize, cols: _Resize, threshold: float, out: torch.Tensor) -> None:
    """``_banded_group`` compared with ``threshold`` band by band while in cache. Tiles whose inputs all lie on
    one side of it are filled (``_constant_tiles``); products run only for the rows and columns of the
    others, which for an object's mask is the band around its outline."""
    count = flat.shape[0]
    above, below = _constant_tiles(flat, rows, cols, threshold)  # (K, row bands, column bands)
    mixed = (~(above | below)).any(dim=0)  # any of the masks needs the product
    if mixed.float().mean() > 0.5:  # mostly outline (noise, texture): filling first would only add a pass
        mixed.fill_(True)
    else:
        torch.index_select(above[:, :, cols.band_of], 1, rows.band_of, out=out)  # every tile's constant value
    needed_rows = mixed.any(dim=1).nonzero().flatten().tolist()
    needed_cols = mixed.any(dim=0).nonzero().flatten().tolist()
    if not needed_rows:
        return
    first, last = needed_cols[0], needed_cols[-1]  # the column pass for this span of column bands only
    a0, b0 = cols.bands[first][0], cols.bands[last][1]
    k_lo = min(rows.bands[i][2] for i in needed_rows)
    k_hi = max(rows.bands[i][3] for i in needed_rows)
    across = _across(flat, cols, range(first, last + 1), k_lo, k_hi).view(k_hi - k_lo, count, b0 - a0)
    buffer = flat.new_empty(BAND_ROWS * count * (b0 - a0))  # one band's products, reused
    for i, flags in zip(needed_rows, mixed[needed_rows].tolist()):
        r0, r1, k0, k1 = rows.bands[i]
        spans = [j for j, flag in enumerate(flags) if flag]
        a, b = cols.bands[spans[0]][0], cols.bands[spans[-1]][1]  # this band's columns that need products
        inputs = across[k0 - k_lo : k1 - k_lo, :, a - a0 : b - a0].reshape(k1 - k0, count * (b - a))
        product = buffer[: (r1 - r0) * count * (b - a)].view(r1 - r0, -1)
        torch.mm(rows.matrix[r0:r1, k0:k1], inputs, out=product)
        _greater(product.view(r1 - r0, count, b - a).transpose(0, 1), threshold, out[:, r0:r1, a:b])


def _constant_tiles(
    flat: torch.Tensor, rows: _Resize, cols: _Resize, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per mask, row band and column band (K, RB, CB): whether every low-res logit the tile reads is above
    ``threshold``, and whether every one is at or below it. The resize weights are non-negative and each
    output's sum to one, so such a tile is all True or all False without its product. A margin well above
    float rounding keeps logits near the threshold (and NaN) in the computed tiles: the result is exactly
    the thresholded logits'. Counted with two small products of 0/1 maps (no per-tile Python)."""
    margin = 1e-5 * max(1.0, abs(threshold), float(flat.abs().max()))
    row_support = rows.support[:, : flat.shape[-2]]
    col_support = cols.support[:, : flat.shape[-1]].T
    not_above = (~(flat > threshold + margin)).to(row_support.dtype)
    not_below = (~(flat <= threshold - margin)).to(row_support.dtype)
    return (row_support @ not_above @ col_support) == 0, (row_support @ not_below @ col_support) == 0


def _greater(logits: torch.Tensor, threshold: float, out: torch.Tensor) -> torch.Tensor:
    """``out[...] = logits > threshold``. On the CPU through NumPy, whose comparison kernel is vectorised:
    torch's float -> bool comparison is ~4x slower there and costs more than the resize itself."""
    numpy_safe = logits.dtype in (torch.float32, torch.float64) and not logits.requires_grad
    if logits.device.type == "cpu" and numpy_safe:  # NumPy views keep the tensors' strides
        np.greater(logits.numpy(), threshold, out=out.numpy())
        return out
    return torch.gt(logits, threshold, out=out)


@functools.lru_cache(maxsize=32)
def _resize_operator(low: int, crop: int, out: int, device: torch.device) -> _Resize:
    """``_resize_matrix`` cut into bands of ``BAND_ROWS`` outputs (see :class:`_Resize`)."""
    matrix = _resize_matrix(low, crop, out, device)
    nonzero = matrix.cpu() != 0
    bands = []
    support = torch.zeros(-(-out // BAND_ROWS), low)
    for i, r0 in enumerate(range(0, out, BAND_ROWS)):
        r1 = min(out, r0 + BAND_ROWS)
        used = nonzero[r0:r1].any(dim=0)
        support[i] = used
        indices = used.nonzero().flatten()  # never empty: every output's bilinear weights sum to one
        bands.append((r0, r1, int(indices.min()), int(indices.max()) + 1))
    band_of = torch.arange(out, device=device) // BAND_ROWS
    return _Resize(matrix, tuple(bands), support.to(device), band_of)


@functools.lru_cache(maxsize=32)
def _resize_matrix(low: int, crop: int, out: int, device: torch.device) -> torch.Tensor:
    """(out, low) matrix: low-res -> PROMPT_FRAME -> keep the first ``crop`` -> ``out``, along one axis."""
    composite = _bilinear_matrix(crop, out) @ _bilinear_matrix(low, PROMPT_FRAME)[:crop]
    return composite.to(device=device, dtype=torch.float32)
