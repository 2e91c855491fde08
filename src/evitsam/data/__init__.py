"""Datasets for training and fine-tuning: SA-1B and COCO layouts, detected from the path, and plain image
folders for distillation."""

from __future__ import annotations

from pathlib import Path

from .coco import CocoDataset, is_coco
from .folder import ImageFolder
from .sa1b import SA1BDataset, is_sa1b
from .sample import Sample, SampleError, SkippingDataset, collate_samples


def open_dataset(
    path: str | Path,
    max_masks: int | None = None,
    seed: int = 0,
    include_crowd: bool = False,
    min_area: float = 1.0,
    images_only: bool = False,
) -> SkippingDataset:
    """COCO (``images/`` + ``annotations.json``) or SA-1B (official or extracted layout), by inspection.

    ``include_crowd``: COCO crowd regions (iscrowd=1) become masks too (SA-1B has none). ``min_area``:
    masks smaller than this (pixels of the original image) are left out. ``images_only`` (distillation,
    which needs no masks): any other folder is read as a plain folder of images (:class:`ImageFolder`).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if is_coco(root):
        return CocoDataset(root, max_masks=max_masks, seed=seed, include_crowd=include_crowd, min_area=min_area)
    if is_sa1b(root):
        return SA1BDataset(root, max_masks=max_masks, seed=seed, min_area=min_area)
    if images_only:
        return ImageFolder(root, seed=seed)
    raise ValueError(
        f"cannot tell the layout of {root}: expected COCO (images/ + annotations.json) or SA-1B "
        "(sa_images_ids.txt + images/ + masks/, or sa_*.jpg with sa_*.json beside them); a plain folder of "
        "images serves distillation only (evitsam distill)"
    )


__all__ = [
    "CocoDataset",
    "ImageFolder",
    "SA1BDataset",
    "Sample",
    "SampleError",
    "SkippingDataset",
    "collate_samples",
    "open_dataset",
]
