"""Annotations of a folder of images, saved as they are accepted: one SQLite file (stdlib ``sqlite3``).

Each accepted object is one row (image, label, COCO RLE, score, box, area), written in its own transaction
before the server answers, so a reload or a restart finds every object the page was told was saved. The
database runs in WAL mode with ``synchronous=FULL``: a committed row survives a crash of the process or the
machine. Images are named by their path relative to the folder, so the folder can move with its database.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from pycocotools import mask as mask_utils

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image TEXT NOT NULL,
    label TEXT NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    counts TEXT NOT NULL,
    score REAL,
    area INTEGER NOT NULL,
    bbox TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_image ON objects (image);
"""
MAX_LABEL = 200


class AnnotationStore:
    """Accepted objects by image; every method is one transaction, safe to call from several threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"--db must be a file, got the folder {str(self.path)!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, image: str, label: str, size: tuple[int, int], counts: str, score: float | None = None) -> dict:
        """Save one object (COCO compressed RLE ``counts`` of an ``size`` = (height, width) mask); its record."""
        label = label.strip()
        if not label or len(label) > MAX_LABEL:
            raise ValueError(f"label must be 1..{MAX_LABEL} characters, got {label!r}")
        height, width = (int(v) for v in size)
        rle = {"size": [height, width], "counts": counts.encode("ascii")}
        try:
            area = int(mask_utils.area(rle))
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
        except Exception as error:  # pycocotools raises bare exceptions on malformed strings
            raise ValueError(f"counts is not a COCO RLE string of a {height}x{width} mask: {error}") from None
        if area == 0:
            raise ValueError("the mask is empty: nothing to save")
        row = (image, label, height, width, counts, score, area, ",".join(f"{v:g}" for v in bbox), time.time())
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO objects (image, label, height, width, counts, score, area, bbox, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            object_id = cursor.lastrowid
        return self._record((object_id, *row))

    def delete(self, object_id: int) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM objects WHERE id = ?", (object_id,)).rowcount > 0

    def objects(self, image: str | None = None) -> list[dict]:
        """Objects of one image (or all), in the order they were accepted."""
        query = "SELECT id, image, label, height, width, counts, score, area, bbox, created FROM objects"
        with self._lock:
            if image is None:
                rows = self._db.execute(query + " ORDER BY id").fetchall()
            else:
                rows = self._db.execute(query + " WHERE image = ? ORDER BY id", (image,)).fetchall()
        return [self._record(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Objects per image."""
        with self._lock:
            return dict(self._db.execute("SELECT image, COUNT(*) FROM objects GROUP BY image").fetchall())

    @staticmethod
    def _record(row: tuple) -> dict:
        object_id, image, label, height, width, counts, score, area, bbox, created = row
        return {
            "id": object_id,
            "image": image,
            "label": label,
            "segmentation": {"size": [height, width], "counts": counts},
            "score": score,
            "area": area,
            "bbox": [float(v) for v in bbox.split(",")],
            "created": created,
        }


def coco_document(images: list[dict], objects: list[dict]) -> dict:
    """COCO instances JSON: ``images`` as ``{"file_name", "width", "height"}``, ``objects`` as store records."""
    names = sorted({o["label"] for o in objects})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]
    category = {c["name"]: c["id"] for c in categories}
    image_ids = {image["file_name"]: i + 1 for i, image in enumerate(images)}
    annotations = [
        {
            "id": n + 1,
            "image_id": image_ids[o["image"]],
            "category_id": category[o["label"]],
            "segmentation": o["segmentation"],
            "area": o["area"],
            "bbox": o["bbox"],
            "iscrowd": 0,
            **({"score": o["score"]} if o.get("score") is not None else {}),
        }
        for n, o in enumerate(objects)
        if o["image"] in image_ids
    ]
    coco_images = [{"id": image_ids[i["file_name"]], **i} for i in images]
    return {"images": coco_images, "annotations": annotations, "categories": categories}
