"""A reproducible synthetic training set in COCO format: ``images/*.jpg`` + ``annotations.json`` (RLE masks).

Image ``i`` depends only on (seed, i) and the settings, so a run can be split across processes,
interrupted and resumed: every finished image leaves its annotations in ``.synth/parts/`` and is
never drawn again; ``annotations.json`` is assembled from the parts, atomically, at the end. A
different seed gives different scenes (e.g. ``seed=1000`` for a held-out set).
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..atomic_files import atomic_write
from .photos import PhotoSource, refuse_validation_data
from .scenes import CATEGORIES, PHOTO_OBJECT, SceneOptions, compose

GENERATOR_VERSION = 1  # bump when a change alters what a (seed, index) draws, so old folders are not extended
ASPECTS = (0.5, 2.0)  # width / height range of the generated images
JPEG_QUALITY = (40, 95)
STATE = ".synth"  # inside the output folder: settings.json and one parts/NNNNNN.json per finished image


@dataclass(frozen=True)
class SynthSettings:
    """Everything that decides the pixels and masks of image ``i`` (besides ``i``)."""

    seed: int = 0
    size: int = 512
    coco: str | None = None
    min_area: int = 64
    version: int = GENERATOR_VERSION

    def validate(self) -> SynthSettings:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a whole number >= 0, got {self.seed!r}")
        if not 64 <= self.size <= 4096:
            raise ValueError(f"size (long side in pixels) must be between 64 and 4096, got {self.size}")
        if self.min_area < 1:
            raise ValueError(f"min_area must be >= 1 pixel, got {self.min_area}")
        return self


@functools.lru_cache(maxsize=2)
def photo_source(coco: str | None) -> PhotoSource | None:
    """The decoded photos, once per process (worker processes forked later share them)."""
    return None if coco is None else PhotoSource(coco)


def render(settings: SynthSettings, index: int, options: SceneOptions | None = None) -> tuple:
    """Image ``index``: (RGB uint8 array, JPEG quality, [(visible mask, category id), ...])."""
    rng = np.random.default_rng((settings.seed, index))
    aspect = np.exp(rng.uniform(np.log(ASPECTS[0]), np.log(ASPECTS[1])))
    long, short = settings.size, max(16, round(settings.size / max(aspect, 1 / aspect)))
    canvas = (short, long) if aspect >= 1 else (long, short)
    scene = compose(rng, canvas, photo_source(settings.coco), options or SceneOptions())
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    return scene.image, quality, scene.objects(settings.min_area)


def encode(mask: np.ndarray, category: int) -> dict:
    """A COCO annotation (without ids): compressed RLE, area, tight XYWH box, iscrowd 0."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {
        "category_id": category,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
    }


def _write_json(path: Path, content: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(content, separators=(",", ":"))))


def _make(settings: SynthSettings, out: Path, index: int) -> int:
    """Draw image ``index``, write its JPEG, then its part file (the mark that it is done)."""
    image, quality, objects = render(settings, index)
    name = f"{index:06d}.jpg"
    atomic_write(out / "images" / name, lambda tmp: Image.fromarray(image).save(tmp, format="JPEG", quality=quality))
    part = {
        "file_name": name,
        "height": image.shape[0],
        "width": image.shape[1],
        "annotations": [encode(mask, category) for mask, category in objects],
    }
    _write_json(out / STATE / "parts" / f"{index:06d}.json", part)
    return index


def _check_folder(out: Path, settings: SynthSettings) -> None:
    """Refuse a folder that holds other data, or a synthetic set drawn with other settings."""
    recorded = out / STATE / "settings.json"
    if recorded.is_file():
        previous = json.loads(recorded.read_text())
        if previous != asdict(settings):
            changed = ", ".join(
                f"{k} {previous.get(k)!r} -> {v!r}" for k, v in asdict(settings).items() if previous.get(k) != v
            )
            raise ValueError(
                f"--out {out} was generated with other settings ({changed}); use a new folder or the same settings"
            )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not a synthetic dataset folder: give a new or empty folder")


def _real_images(out: Path, photos: PhotoSource, min_area: int, first_id: int) -> tuple[list, list]:
    """The source photos as they are (files copied), with their non-crowd masks of at least ``min_area`` pixels."""
    images, annotations = [], []
    for index, name in enumerate(photos.names):
        target = out / "images" / f"real_{name}"
        if not target.is_file():
            atomic_write(target, lambda tmp, name=name: shutil.copyfile(photos.root / "images" / name, tmp))
        height, width = photos.images[index].shape[:2]
        images.append({"id": first_id + index, "file_name": target.name, "height": height, "width": width})
        for instance in photos.objects[index]:
            mask = np.zeros((height, width), dtype=bool)
            h, w = instance.mask.shape
            mask[instance.top : instance.top + h, instance.left : instance.left + w] = instance.mask
            if np.count_nonzero(mask) >= min_area:
                annotations.append({"image_id": first_id + index, **encode(mask, PHOTO_OBJECT)})
    return images, annotations


def generate(
    out: str | Path,
    images: int,
    seed: int = 0,
    size: int = 512,
    coco: str | Path | None = None,
    real: bool = False,
    min_area: int = 64,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Write (or complete) a synthetic COCO dataset of ``images`` scenes in ``out``; return a summary.

    ``coco``: a COCO folder of real photos for backgrounds, textures and pasted object cut-outs
    (never the val2017 evaluation set); ``real`` also lists those photos themselves, as they are.
    """
    out = Path(out)
    if not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a whole number >= 1, got {images!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if real and coco is None:
        raise ValueError("real photos need their source: give --coco PATH (a COCO train folder) with --real")
    source = None if coco is None else str(refuse_validation_data(coco))
    settings = SynthSettings(seed=seed, size=size, coco=source, min_area=min_area).validate()
    photos = photo_source(source)  # fails early on a bad folder, and loads the photos before workers fork
    if source is not None and out.resolve() == Path(source):
        raise ValueError(f"--out {out} is the --coco source folder: give a new folder")
    _check_folder(out, settings)
    (out / "images").mkdir(parents=True, exist_ok=True)
    _write_json(out / STATE / "settings.json", asdict(settings))

    parts = out / STATE / "parts"
    missing = [
        i
        for i in range(images)
        if not ((parts / f"{i:06d}.json").is_file() and (out / "images" / f"{i:06d}.jpg").is_file())
    ]
    start = time.perf_counter()
    make = functools.partial(_make, settings, out)
    with tqdm(total=len(missing), desc="synthetic images", unit="img", disable=not progress) as bar:
        if workers == 1 or len(missing) < 2:
            for index in missing:
                bar.update(make(index) >= 0)
        else:
            with ProcessPoolExecutor(min(workers, len(missing))) as pool:
                for _ in pool.map(make, missing, chunksize=4):
                    bar.update()
    seconds = time.perf_counter() - start

    entries, annotations = [], []
    for index in range(images):
        part = json.loads((parts / f"{index:06d}.json").read_text())
        found = part.pop("annotations")
        entries.append({"id": index + 1, **part})
        annotations += [{"image_id": index + 1, **a} for a in found]
    if real:
        real_entries, real_annotations = _real_images(out, photos, min_area, images + 1)
        entries += real_entries
        annotations += real_annotations
    dataset = {
        "info": {"description": "evitsam synthetic scenes (evitsam data synth)", **asdict(settings), "real": real},
        "licenses": [],
        "images": entries,
        "annotations": [{"id": i + 1, **a} for i, a in enumerate(annotations)],
        "categories": [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(CATEGORIES)],
    }
    _write_json(out / "annotations.json", dataset)
    return {
        "out": str(out),
        "images": len(entries),
        "annotations": len(annotations),
        "generated": len(missing),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(missing) / seconds, 2) if missing and seconds > 0 else None,
    }
