"""COCO-format instance data (``images/`` + ``annotations.json``): polygons, RLE and crowd regions."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from .sample import Sample, SampleError, SkippingDataset, choose_masks, read_rgb


def is_coco(root: Path) -> bool:
    return (root / "annotations.json").is_file() and (root / "images").is_dir()


class CocoDataset(SkippingDataset):
    """Images with their instance masks decoded by pycocotools.

    Crowd annotations (``iscrowd=1``) mark groups of objects, not one object, so they are left out
    by default (``include_crowd=True`` keeps them). Images without usable annotations are dropped.
    """

    def __init__(
        self,
        root: str | Path,
        max_masks: int | None = None,
        seed: int = 0,
        include_crowd: bool = False,
        min_area: float = 1.0,
    ) -> None:
        super().__init__(max_masks, seed)
        self.root = Path(root)
        if not is_coco(self.root):
            raise FileNotFoundError(f"{self.root} is not a COCO folder: expected images/ and annotations.json")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            try:
                self.coco = COCO(str(self.root / "annotations.json"))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{self.root / 'annotations.json'} is not a COCO annotation file: {error}") from None
        self.annotations: dict[int, list[dict]] = {}
        for image_id in sorted(self.coco.imgs):
            kept = [
                a
                for a in self.coco.imgToAnns.get(image_id, [])
                if (include_crowd or not a.get("iscrowd", 0)) and a.get("area", 0) >= min_area
            ]
            if kept:
                self.annotations[image_id] = kept
        self.image_ids = list(self.annotations)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return self.root / "images" / self.coco.imgs[self.image_ids[index]]["file_name"]

    def load(self, index: int, rng: np.random.Generator) -> Sample:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        image = read_rgb(self.image_path(index))
        if image.shape[:2] != (info["height"], info["width"]):
            raise SampleError(
                f"image {info['file_name']} is {image.shape[1]}x{image.shape[0]}, annotations say "
                f"{info['width']}x{info['height']}"
            )
        annotations = self.annotations[image_id]
        chosen = [annotations[i] for i in choose_masks(len(annotations), self.max_masks, rng)]
        try:
            masks = np.stack([self.coco.annToMask(a).astype(bool) for a in chosen])
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise SampleError(f"cannot decode masks of image {image_id}: {error}") from None
        boxes = np.array([a["bbox"] for a in chosen], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        return Sample(image, masks, boxes, str(image_id))
