"""The simulated user of the point-prompt protocol: RITM's distance-transform clicker.

Each click goes where the current prediction is most wrong: at the pixel deepest inside the
larger error region (the interior point farthest from that region's boundary). Click 1 sees an
empty prediction, so it lands at the deepest point of the object. A click is positive when the
false-negative region is strictly deeper than the false-positive one (ties go negative), and
ties between pixels go to the first in row-major order (smallest y, then smallest x). The image
border counts as boundary (the masks are zero-padded by one pixel), and distances are OpenCV's
exact Euclidean transform, as in the official code, made deterministic (see
:func:`squared_distance_to_boundary`).
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np


class Click(NamedTuple):
    x: int
    y: int
    positive: bool


def squared_distance_to_boundary(region: np.ndarray) -> np.ndarray:
    """Exact squared Euclidean distance (int64) of every region pixel to the nearest pixel outside it or the border.

    OpenCV's precise transform is exact up to float rounding, but that rounding varies with the
    array's size and position (sqrt(130) measured one float32 ulp low in alternate calls on the
    same crop), which would make equally deep pixels tie or not at random. A squared distance is
    an integer, so rounding the square recovers it exactly and ties become true ties.
    """
    padded = np.pad(region.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return np.rint(distance.astype(np.float64) ** 2).astype(np.int64)


def deepest_pixel(region: np.ndarray, allowed: np.ndarray) -> tuple[int, int, int]:
    """(squared depth, y, x) of the first (row-major) deepest ``allowed`` pixel of ``region``; (0, 0, 0) if none.

    The transform runs on the region's bounding box only: with the one-pixel zero ring around
    it, every distance is the full-image one (the nearest outside pixel is never farther than
    the ring), and row-major order within the box is the image's. Most objects are small, so
    this is much faster than transforming the whole image.
    """
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    if rows.size == 0:
        return 0, 0, 0
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    depth = squared_distance_to_boundary(region[top:bottom, left:right]) * allowed[top:bottom, left:right]
    index = int(np.argmax(depth))  # the first maximum, row-major
    y, x = divmod(index, depth.shape[1])
    value = int(depth[y, x])
    return (value, int(top + y), int(left + x)) if value > 0 else (0, 0, 0)


class Clicker:
    """Clicks for one object with ground-truth mask ``gt`` (HxW); call :meth:`click` once per round."""

    def __init__(self, gt: np.ndarray) -> None:
        gt = np.asarray(gt)
        if gt.ndim != 2 or gt.size == 0:
            raise ValueError(f"gt must be a non-empty HxW mask, got shape {gt.shape}")
        self.gt = gt.astype(bool)
        self.not_clicked = np.ones_like(self.gt)
        self.clicks: list[Click] = []

    def click(self, prediction: np.ndarray | None = None) -> Click:
        """The next click given the current predicted mask (None or all-False before the first)."""
        pred = np.zeros_like(self.gt) if prediction is None else np.asarray(prediction, dtype=bool)
        if pred.shape != self.gt.shape:
            raise ValueError(f"prediction must have the ground truth's shape {self.gt.shape}, got {pred.shape}")
        fn_depth, fn_y, fn_x = deepest_pixel(self.gt & ~pred, self.not_clicked)
        fp_depth, fp_y, fp_x = deepest_pixel(~self.gt & pred, self.not_clicked)
        positive = fn_depth > fp_depth
        # With nothing left to correct both depths are 0 and the click goes to (0, 0), negative.
        y, x = (fn_y, fn_x) if positive else (fp_y, fp_x)
        click = Click(x, y, positive)
        self.clicks.append(click)
        self.not_clicked[y, x] = False
        return click

    @property
    def coords(self) -> np.ndarray:
        """(N, 2) integer (x, y) pixels of the clicks so far."""
        return np.array([(c.x, c.y) for c in self.clicks], dtype=np.int64).reshape(-1, 2)

    @property
    def labels(self) -> np.ndarray:
        """(N,) labels of the clicks so far: 1 positive, 0 negative."""
        return np.array([int(c.positive) for c in self.clicks], dtype=np.int64)
