"""What to label: the image collection and, optionally, a detector's boxes for it.

An image collection is a folder (searched recursively), a text file with one path per line, or a
COCO JSON whose ``images`` list names the files. Every image gets a ``file_name`` (its path relative
to the collection's root: the key that makes a rerun find finished work) and an integer ``id`` (the
COCO id, or the position in the sorted list). Detections are COCO results records that name their
image by ``image_id`` or ``file_name``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

# The category of every mask of "segment everything", which has no classes.
EVERYTHING_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


@dataclass(frozen=True)
class ImageEntry:
    """One image of the collection: its COCO id, its key (relative path) and where it is read from."""

    id: int
    file_name: str
    path: Path


@dataclass
class Collection:
    """The images, sorted by ``file_name`` (the order they are dealt to processes in), and their categories."""

    images: list[ImageEntry]
    categories: list[dict] | None = None

    def fingerprint(self) -> str:
        """Changes whenever the list of images (names or ids) changes."""
        digest = hashlib.sha1()
        for entry in self.images:
            digest.update(f"{entry.id}\t{entry.file_name}\n".encode())
        return digest.hexdigest()


def _read_json(what: str, path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is not valid JSON: {error}") from None


def _folder(root: Path) -> list[tuple[str, Path]]:
    extensions = set(Image.registered_extensions())
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    return [(p.relative_to(root).as_posix(), p) for p in files]


def _list_file(path: Path) -> list[tuple[str, Path]]:
    items = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            file = Path(line) if Path(line).is_absolute() else path.parent / line
            items.append((line, file))
    return items


def _coco(path: Path, image_root: Path | None) -> tuple[list[ImageEntry], list[dict] | None]:
    data = _read_json("IMAGES", path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"IMAGES {path}: a COCO JSON needs an 'images' list of {{id, file_name}}")
    entries = []
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str) or "id" not in image:
            raise ValueError(f"IMAGES {path}: images[{index}] needs 'id' and 'file_name'")
        entries.append((int(image["id"]), image["file_name"]))
    if image_root is None:
        # The usual layouts: files beside the JSON, or in images/ beside it.
        image_root = path.parent
        first = entries[0][1] if entries else None
        if first is not None and not (image_root / first).exists() and (image_root / "images" / first).exists():
            image_root = image_root / "images"
    categories = data.get("categories")
    if categories is not None and not isinstance(categories, list):
        raise ValueError(f"IMAGES {path}: 'categories' must be a list")
    return [ImageEntry(i, name, image_root / name) for i, name in entries], categories


def load_collection(source: str | os.PathLike, image_root: str | os.PathLike | None = None) -> Collection:
    """The images of a folder, a list file or a COCO JSON, sorted by ``file_name``.

    Folder and list-file images are numbered 1, 2, ... in that order. ``image_root`` is where the file
    names of a COCO JSON are relative to (default: the JSON's folder, or ``images/`` beside it).
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"IMAGES not found: {source}")
    categories = None
    if source.is_dir():
        if image_root is not None:
            raise ValueError("--image-root only applies to a COCO JSON IMAGES file")
        named = _folder(source)
        entries = [ImageEntry(i + 1, name, path) for i, (name, path) in enumerate(named)]
    elif source.suffix.lower() == ".json":
        entries, categories = _coco(source, Path(image_root) if image_root is not None else None)
    else:
        if image_root is not None:
            raise ValueError("--image-root only applies to a COCO JSON IMAGES file")
        named = sorted(_list_file(source))
        entries = [ImageEntry(i + 1, name, path) for i, (name, path) in enumerate(named)]
    if not entries:
        raise ValueError(f"IMAGES {source}: no images found")
    entries.sort(key=lambda entry: entry.file_name)
    for key in ("file_name", "id"):
        seen: set = set()
        for entry in entries:
            value = getattr(entry, key)
            if value in seen:
                raise ValueError(f"IMAGES {source}: two images share the {key} {value!r}")
            seen.add(value)
    return Collection(entries, categories)


def _check_detection(index: int, det: Any) -> None:
    if not isinstance(det, dict) or "bbox" not in det or not ({"image_id", "file_name"} & det.keys()):
        raise ValueError(f"detections[{index}] needs 'bbox' and 'image_id' or 'file_name'")
    box = det["bbox"]
    valid = isinstance(box, (list, tuple)) and len(box) == 4
    valid = valid and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
    if not valid or box[2] < 0 or box[3] < 0:
        raise ValueError(f"detections[{index}].bbox must be [x, y, w, h] with finite w, h >= 0, got {box!r}")
    score = det.get("score", 1.0)
    if not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ValueError(f"detections[{index}].score must be a finite number, got {score!r}")


def load_detections(
    path: str | os.PathLike, collection: Collection, min_score: float = 0.0
) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Detections grouped by image ``file_name`` (file order kept), and counts of what was left out.

    Each detection becomes ``{detection_id, bbox, category_id, score}``: ``detection_id`` is its index
    in the file, ``category_id`` defaults to 1 and ``score`` to 1. Detections scoring under
    ``min_score`` are dropped; detections naming no image of the collection are counted as unmatched.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--boxes file not found: {path}")
    records = _read_json("--boxes", path)
    if not isinstance(records, list):
        raise ValueError(f"--boxes {path}: expected a JSON list of COCO results {{image_id, bbox, category_id, score}}")
    by_id = {entry.id: entry.file_name for entry in collection.images}
    names = {entry.file_name for entry in collection.images}
    grouped: dict[str, list[dict]] = defaultdict(list)
    counts = {"detections": len(records), "below_min_score": 0, "unmatched": 0}
    for index, det in enumerate(records):
        _check_detection(index, det)
        name = det.get("file_name")
        if name is None:
            name = by_id.get(det["image_id"])
        if name not in names:
            counts["unmatched"] += 1
            continue
        score = float(det.get("score", 1.0))
        if score < min_score:
            counts["below_min_score"] += 1
            continue
        category = det.get("category_id", 1)
        grouped[name].append(
            {"detection_id": index, "bbox": list(det["bbox"]), "category_id": category, "score": score}
        )
    if records and counts["unmatched"] == len(records):
        raise ValueError(
            f"--boxes {path}: none of the {len(records)} detections names an image of IMAGES "
            "(match by 'file_name', or by 'image_id' = the image ids of IMAGES)"
        )
    return dict(grouped), counts


def categories_for(collection: Collection, detections: dict[str, list[dict]] | None) -> list[dict]:
    """The output's categories: IMAGES' own (a COCO JSON), else one per category id the detections use."""
    if detections is None:
        return [EVERYTHING_CATEGORY]
    if collection.categories is not None:
        return collection.categories
    ids = sorted({det["category_id"] for dets in detections.values() for det in dets}, key=str)
    return [{"id": i, "name": str(i)} for i in ids]
