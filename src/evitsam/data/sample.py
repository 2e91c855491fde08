"""One training sample: an image and its object masks, plus the per-image mask subset rule."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..io import read_image

T = TypeVar("T")


class SampleError(ValueError):
    """A sample that cannot be read (missing or corrupt image or annotation file)."""


@dataclass
class Sample:
    """``image`` HxWx3 uint8 RGB, ``masks`` KxHxW bool, ``boxes`` Kx4 float32 XYXY in pixels."""

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    image_id: str


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file fully with :func:`evitsam.io.read_image` (upright, 8-bit RGB), so truncated
    files fail here, not later in a worker. Training reads pixels, not answers: any size is taken."""
    try:
        return read_image(path, min_side=1)
    except (OSError, ValueError) as error:
        raise SampleError(" ".join(str(error).split())) from None


def choose_masks(count: int, max_masks: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``max_masks`` annotations, drawn without replacement (all when fewer)."""
    if max_masks is None or count <= max_masks:
        return np.arange(count)
    return np.sort(rng.choice(count, size=max_masks, replace=False))


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight XYXY boxes (x1, y1 exclusive) of KxHxW masks; empty masks get a zero box."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if xs.size:
            boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


class SkippingDataset:
    """Base for datasets over many files: unreadable samples are skipped with a warning and counted.

    ``__getitem__`` returns None for a bad sample so a long run never crashes on one file;
    :func:`collate_samples` drops the Nones. ``skipped`` counts them (per process).
    """

    def __init__(self, max_masks: int | None = None, seed: int = 0) -> None:
        if max_masks is not None and max_masks < 1:
            raise ValueError(f"max_masks must be >= 1 or None, got {max_masks}")
        self.max_masks = max_masks
        self.seed = seed
        self.skipped = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int, rng: np.random.Generator) -> Sample:
        raise NotImplementedError

    def image_path(self, index: int) -> Path:
        raise NotImplementedError

    def image_key(self, index: int) -> str:
        """A stable name for the image (file name without extension), e.g. for embedding caches."""
        return self.image_path(index).stem

    def _skipping(self, index: int, read: Callable[[], T]) -> T | None:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        try:
            return read()
        except SampleError as error:
            self.skipped += 1
            warnings.warn(f"skipping sample {index}: {error}", stacklevel=3)
            return None

    def __getitem__(self, index: int) -> Sample | None:
        return self._skipping(index, lambda: self.load(index, np.random.default_rng((self.seed, index))))

    def read_image(self, index: int) -> np.ndarray | None:
        """Only the image (HxWx3 uint8), without decoding masks; None when unreadable."""
        return self._skipping(index, lambda: read_rgb(self.image_path(index)))


def first_readable(read: Callable[[int], T | None], index: int, pool: list[int]) -> tuple[int, T]:
    """``(index, read(index))``, or the next readable index of ``pool`` (wrapping) when it is unreadable."""
    item = read(index)
    position = pool.index(index) if index in pool else -1
    for _ in range(len(pool)):
        if item is not None:
            return index, item
        position = (position + 1) % len(pool)
        index = pool[position]
        item = read(index)
    if item is None:
        raise RuntimeError("no readable sample left in the dataset")
    return index, item


def collate_samples(batch: list[Sample | None]) -> list[Sample]:
    """DataLoader collate: keep the readable samples (images differ in size, so no stacking)."""
    return [sample for sample in batch if sample is not None]
