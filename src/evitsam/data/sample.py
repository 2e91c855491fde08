"""One training sample: an image and its object masks, plus the per-image mask subset rule."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


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
    """Decode an image file fully (so truncated files fail here, not later in a worker)."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise SampleError(f"cannot read image {path}: {error}") from None


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

    def __getitem__(self, index: int) -> Sample | None:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        try:
            return self.load(index, np.random.default_rng((self.seed, index)))
        except SampleError as error:
            self.skipped += 1
            warnings.warn(f"skipping sample {index}: {error}", stacklevel=2)
            return None


def collate_samples(batch: list[Sample | None]) -> list[Sample]:
    """DataLoader collate: keep the readable samples (images differ in size, so no stacking)."""
    return [sample for sample in batch if sample is not None]
