"""Real COCO photos as material for synthetic scenes: backgrounds, textures and object cut-outs.

Quality is measured on COCO val2017, so val2017 must never become training material: the
:func:`refuse_validation_data` guard rejects any copy of it (a folder named ``val2017``, or an annotation
file whose images come from val2017, whatever the folder is called), before a single image is read.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from .coco import is_coco
from .procedural import Patch
from .sample import read_rgb

VALIDATION_SPLIT = "val2017"
_REFUSAL = (
    f"the COCO {VALIDATION_SPLIT} evaluation set, where quality is measured; it must never become training "
    "data (use COCO train2017 images)"
)


def refuse_validation_data(path: str | Path) -> Path:
    """``path`` resolved, or a ValueError when it holds COCO val2017 images.

    It tells by content, so that any copy is caught: a folder named ``val2017`` on the path, or a COCO
    ``annotations.json`` (in ``path``, or beside it when ``path`` is the ``images`` folder) listing an image
    whose ``coco_url`` or ``file_name`` names val2017.
    """
    resolved = Path(path).expanduser().resolve()
    if VALIDATION_SPLIT in resolved.parts:
        raise ValueError(f"--coco {path}: a {VALIDATION_SPLIT} folder is {_REFUSAL}")
    files = [resolved / "annotations.json"]
    if resolved.name == "images":
        files.append(resolved.parent / "annotations.json")
    for file in files:
        try:
            images = json.loads(file.read_text()).get("images", [])
        except (OSError, ValueError, AttributeError):
            continue  # no readable COCO file: the caller reports what is wrong with the folder
        for info in images if isinstance(images, list) else []:
            where = f"{info.get('coco_url', '')} {info.get('file_name', '')}" if isinstance(info, dict) else ""
            if VALIDATION_SPLIT in where:
                raise ValueError(f"--coco {path}: its images (e.g. {info.get('file_name')}) come from {_REFUSAL}")
    return resolved


@dataclass
class Instance:
    """One annotated object of a photo: its tight box (top, left) and mask crop."""

    image: int
    top: int
    left: int
    mask: np.ndarray


class PhotoSource:
    """The images and non-crowd instance masks of a COCO folder, decoded once and kept in memory."""

    def __init__(self, root: str | Path, min_area: int = 400) -> None:
        self.root = refuse_validation_data(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"--coco folder not found: {root}")
        if not is_coco(self.root):
            raise FileNotFoundError(f"--coco {root}: expected a COCO folder (images/ + annotations.json)")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            try:
                coco = COCO(str(self.root / "annotations.json"))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"--coco {root}: not a COCO annotation file: {error}") from None
        infos = [coco.imgs[i] for i in sorted(coco.imgs)]
        for info in infos:
            if VALIDATION_SPLIT in str(info.get("coco_url", "")) + str(info.get("file_name", "")):
                raise ValueError(
                    f"--coco {root}: image {info.get('file_name')} comes from COCO {VALIDATION_SPLIT}, where "
                    "quality is measured; it must never become training data"
                )
        self.names = [info["file_name"] for info in infos]
        self.images = [read_rgb(self.root / "images" / name) for name in self.names]
        self.instances: list[Instance] = []
        self.objects: list[list[Instance]] = []  # per image, every non-crowd object (for real backgrounds)
        for index, info in enumerate(infos):
            kept = []
            for annotation in coco.imgToAnns.get(info["id"], []):
                if annotation.get("iscrowd", 0):
                    continue
                mask = coco.annToMask(annotation).astype(bool)
                ys, xs = np.nonzero(mask)
                if xs.size == 0:
                    continue
                top, left = int(ys.min()), int(xs.min())
                instance = Instance(index, top, left, mask[top : ys.max() + 1, left : xs.max() + 1])
                kept.append(instance)
                if xs.size >= min_area:
                    self.instances.append(instance)
            self.objects.append(kept)
        if not self.images:
            raise ValueError(f"--coco {root}: no images in annotations.json")

    def crop(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random crop of a random photo with the aspect of (height, width), resized to it (texture, background)."""
        image = self.images[int(rng.integers(len(self.images)))]
        box = _crop_box(rng, image.shape[:2], width / height, rng.uniform(0.15, 1.0))
        return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR, box=box))

    def background(self, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[Patch], int]:
        """A photo cropped and resized to (height, width), the masks of its objects mapped alike, and its index."""
        index = int(rng.integers(len(self.images)))
        image = self.images[index]
        box = _crop_box(rng, image.shape[:2], width / height, rng.uniform(0.6, 1.0))
        pixels = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR, box=box))
        patches = []
        for instance in self.objects[index]:
            full = np.zeros(image.shape[:2], dtype=np.uint8)
            h, w = instance.mask.shape
            full[instance.top : instance.top + h, instance.left : instance.left + w] = instance.mask * 255
            mask = np.asarray(Image.fromarray(full).resize((width, height), Image.Resampling.NEAREST, box=box)) > 0
            if mask.any():
                patches.append(Patch(0, 0, mask))
        return pixels, patches, index

    def cutout(
        self, rng: np.random.Generator, canvas: tuple[int, int], scale: float, exclude: int | None = None
    ) -> Patch | None:
        """A random instance (not from photo ``exclude``) with its pixels, long side ``scale`` x the canvas short
        side (at most 3x its own size), maybe mirrored, placed at random, clipped to the canvas."""
        pool = [i for i in self.instances if i.image != exclude] or self.instances
        if not pool:
            return None
        instance = pool[int(rng.integers(len(pool)))]
        h, w = instance.mask.shape
        factor = min(3.0, scale * min(canvas) / max(h, w))
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        source = self.images[instance.image][instance.top : instance.top + h, instance.left : instance.left + w]
        pixels = np.asarray(Image.fromarray(source).resize(size, Image.Resampling.BILINEAR))
        mask = np.asarray(Image.fromarray(instance.mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR))
        mask = mask > 127
        if rng.random() < 0.5:
            pixels, mask = pixels[:, ::-1], mask[:, ::-1]
        top = int(rng.integers(-size[1] // 3, canvas[0] - size[1] * 2 // 3 + 1))
        left = int(rng.integers(-size[0] // 3, canvas[1] - size[0] * 2 // 3 + 1))
        return clip(Patch(top, left, mask, pixels), canvas)


def clip(patch: Patch, canvas: tuple[int, int]) -> Patch | None:
    """The part of ``patch`` inside the canvas; None when nothing of it is."""
    h, w = patch.mask.shape
    y0, x0 = max(0, -patch.top), max(0, -patch.left)
    y1, x1 = min(h, canvas[0] - patch.top), min(w, canvas[1] - patch.left)
    if y1 <= y0 or x1 <= x0 or not patch.mask[y0:y1, x0:x1].any():
        return None
    pixels = None if patch.pixels is None else np.ascontiguousarray(patch.pixels[y0:y1, x0:x1])
    return Patch(patch.top + y0, patch.left + x0, np.ascontiguousarray(patch.mask[y0:y1, x0:x1]), pixels)


def _crop_box(
    rng: np.random.Generator, shape: tuple[int, int], aspect: float, fraction: float
) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) of width/height ``aspect``, ``fraction`` of the largest such box, at random."""
    height, width = shape
    crop_w, crop_h = (height * aspect, height) if width / height > aspect else (width, width / aspect)
    crop_w, crop_h = crop_w * fraction, crop_h * fraction
    x0, y0 = rng.uniform(0, width - crop_w), rng.uniform(0, height - crop_h)
    return x0, y0, x0 + crop_w, y0 + crop_h
