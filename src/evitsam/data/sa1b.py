"""SA-1B data: the official layout (ids file + images/ + masks/) or extracted tar folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from .sample import Sample, SampleError, SkippingDataset, choose_masks, read_rgb


def _pairs_official(root: Path) -> list[tuple[Path, Path]]:
    ids = [line.strip() for line in (root / "sa_images_ids.txt").read_text().splitlines() if line.strip()]
    return [(root / "images" / f"sa_{i}.jpg", root / "masks" / f"sa_{i}.json") for i in ids]


def _pairs_extracted(root: Path) -> list[tuple[Path, Path]]:
    """``sa_XXXXXX/sa_<id>.{jpg,json}`` folders (or one such folder): every image with a JSON beside it."""
    return [
        (jpg, jpg.with_suffix(".json")) for jpg in sorted(root.rglob("*.jpg")) if jpg.with_suffix(".json").is_file()
    ]


def is_sa1b(root: Path) -> bool:
    return (root / "sa_images_ids.txt").is_file() or bool(_pairs_extracted(root))


class SA1BDataset(SkippingDataset):
    """Images with their SA-1B masks (COCO RLE), up to ``max_masks`` per image."""

    def __init__(self, root: str | Path, max_masks: int | None = None, seed: int = 0, min_area: float = 0.0) -> None:
        super().__init__(max_masks, seed)
        self.min_area = min_area
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"SA-1B folder not found: {self.root}")
        official = (self.root / "sa_images_ids.txt").is_file()
        self.layout = "official" if official else "extracted"
        self.pairs = _pairs_official(self.root) if official else _pairs_extracted(self.root)
        if not self.pairs:
            raise ValueError(f"{self.root} holds no SA-1B image/JSON pairs (sa_images_ids.txt or *.jpg + *.json)")

    def __len__(self) -> int:
        return len(self.pairs)

    def image_path(self, index: int) -> Path:
        return self.pairs[index][0]

    def load(self, index: int, rng: np.random.Generator) -> Sample:
        image_path, json_path = self.pairs[index]
        try:
            record = json.loads(json_path.read_text())
            annotations = record["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SampleError(f"cannot read annotations {json_path}: {error}") from None
        image = read_rgb(image_path)
        annotations = [a for a in annotations if a.get("area", 0) >= self.min_area]
        chosen = [annotations[i] for i in choose_masks(len(annotations), self.max_masks, rng)]
        height, width = image.shape[:2]
        try:
            rles = [a["segmentation"] for a in chosen]
            if any(tuple(rle["size"]) != (height, width) for rle in rles):
                raise SampleError(f"{json_path}: mask size differs from the image's {height}x{width}")
            masks = (
                mask_utils.decode(rles).transpose(2, 0, 1).astype(bool) if rles else np.zeros((0, height, width), bool)
            )
        except (KeyError, TypeError, ValueError) as error:
            raise SampleError(f"cannot decode masks in {json_path}: {error}") from None
        boxes = np.array([a["bbox"] for a in chosen], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
        return Sample(image, masks, boxes, image_path.stem)
