"""Evaluation data: a COCO or LVIS annotation file, its image folder, and a detector's boxes.

Reading follows the official EfficientViT-SAM evaluation: COCO images are ``images_dir /
file_name``; LVIS images are ``images_dir / <split folder of coco_url> / <file name>``, where
LVIS v1 (whose images carry no ``file_name``) keeps train2017 and val2017 apart. Every
annotation with ``area >= 1`` is an object, crowd regions included. Ground-truth masks are
decoded with pycocotools from polygons (merged) or RLE.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..io import read_image as read_image_file

DATASETS = ("coco", "lvis")
MIN_AREA = 1.0  # the official protocol skips annotations with area < 1


@dataclass(frozen=True)
class EvalImage:
    """One image to evaluate: its id in the annotation file, file path and size."""

    id: int
    path: Path
    height: int
    width: int


def read_json(name: str, source: str | os.PathLike) -> Any:
    """Parse a JSON file, with errors that name the argument it came from."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{name} file not found: {path}")
    try:
        with path.open() as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{name} {path} is not valid JSON: {error}") from None


def xywh_to_xyxy(bbox: Sequence[float]) -> list[float]:
    """COCO ``[x, y, w, h]`` to ``[x0, y0, x1, y1]``, without rounding (as the official code)."""
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """An HxW bool mask from COCO polygons (merged), uncompressed RLE or compressed RLE."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        rle = segmentation
    else:
        raise ValueError(f"expected polygons or an RLE dict, got {type(segmentation).__name__}")
    mask = mask_utils.decode(rle)
    if mask.shape[:2] != (height, width):
        raise ValueError(f"RLE of size {list(mask.shape[:2])} for an image of size {[height, width]}")
    return mask > 0


def _lvis_path(images_dir: Path, image: dict) -> Path:
    """``images_dir/<split>/<name>`` from ``coco_url``; ``images_dir/<name>`` as a fallback layout."""
    url = image.get("coco_url")
    if url:
        split, name = url.rstrip("/").split("/")[-2:]
        path = images_dir / split / name
        return path if path.is_file() or not (images_dir / name).is_file() else images_dir / name
    return images_dir / image["file_name"]


class EvalDataset:
    """The images and ground-truth objects of a COCO or LVIS annotation file.

    ``annotations`` is a path to the JSON file or the parsed dict. Every image the file lists
    must be in ``images_dir``: a missing file fails at once, listing how many are missing, rather
    than after hours of evaluation.
    """

    def __init__(
        self, images_dir: str | os.PathLike, annotations: str | os.PathLike | dict, dataset: str = "coco"
    ) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
        self.dataset = dataset
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images folder not found: {self.images_dir}")
        data = annotations if isinstance(annotations, dict) else read_json("annotations", annotations)
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
            raise ValueError(
                f"annotations must be a {dataset.upper()} instances file: a JSON object with 'images' and "
                "'annotations' lists"
            )
        self.data = data
        self.images: list[EvalImage] = []
        try:
            for entry in data["images"]:
                path = _lvis_path(self.images_dir, entry) if dataset == "lvis" else self.images_dir / entry["file_name"]
                self.images.append(EvalImage(int(entry["id"]), path, int(entry["height"]), int(entry["width"])))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"annotations: every image needs id, height, width and a file name: {error!r}") from None
        missing = [image.path for image in self.images if not image.path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.images)} images listed in the annotations are not in {self.images_dir}, "
                f"e.g. {missing[0]}"
            )
        known = {image.id for image in self.images}
        self._objects: dict[int, list[dict]] = defaultdict(list)
        for index, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or not {"image_id", "bbox", "area", "segmentation"} <= ann.keys():
                raise ValueError(f"annotations[{index}] must have image_id, bbox, area and segmentation")
            if ann["image_id"] not in known:
                raise ValueError(f"annotations[{index}] refers to image_id {ann['image_id']}, which is not listed")
            if ann["area"] >= MIN_AREA:
                self._objects[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def objects(self, image_id: int) -> list[dict]:
        """The image's annotations with ``area >= 1`` (crowd regions included), in file order."""
        return self._objects.get(image_id, [])

    def read_image(self, image: EvalImage) -> np.ndarray:
        """The image as HxWx3 uint8 RGB, upright (:func:`evitsam.io.read_image`; the official code reads
        ``convert("RGB")`` pixels, which are the same for files without an EXIF orientation)."""
        array = read_image_file(image.path)
        if array.shape[:2] != (image.height, image.width):
            turned = array.shape[:2] == (image.width, image.height)
            hint = "; its EXIF orientation turns it: annotations must be in the frame viewers show" if turned else ""
            raise ValueError(
                f"image {image.path} is {array.shape[1]}x{array.shape[0]} (upright) but the annotations say "
                f"{image.width}x{image.height}{hint}"
            )
        return array

    def masks(self, objects: Sequence[dict], image: EvalImage) -> np.ndarray:
        """(K, H, W) bool ground-truth masks of ``objects`` on ``image``."""
        out = np.zeros((len(objects), image.height, image.width), dtype=bool)
        for i, ann in enumerate(objects):
            try:
                out[i] = decode_mask(ann["segmentation"], image.height, image.width)
            except (ValueError, TypeError, KeyError, IndexError) as error:
                raise ValueError(f"cannot decode the mask of annotation {ann.get('id')}: {error}") from None
        return out


def load_detections(detections: str | os.PathLike | list) -> dict[int, list[dict]]:
    """Detector output in COCO results format, grouped by image id (file order kept).

    Each record needs ``image_id``, ``category_id``, ``score`` and ``bbox`` ``[x, y, w, h]``
    with w, h >= 0. All are used as prompts: no score threshold, as in the paper.
    """
    records = detections if isinstance(detections, list) else read_json("detections", detections)
    if not isinstance(records, list):
        raise ValueError("detections must be a JSON list of {image_id, category_id, bbox, score} records")
    grouped: dict[int, list[dict]] = defaultdict(list)
    for index, det in enumerate(records):
        if not isinstance(det, dict) or not {"image_id", "category_id", "bbox", "score"} <= det.keys():
            raise ValueError(f"detections[{index}] must have image_id, category_id, bbox and score")
        box = det["bbox"]
        valid = isinstance(box, (list, tuple)) and len(box) == 4
        valid = valid and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
        if not valid or box[2] < 0 or box[3] < 0:
            raise ValueError(f"detections[{index}].bbox must be [x, y, w, h] with finite w, h >= 0, got {box!r}")
        grouped[det["image_id"]].append(det)
    return grouped
