"""Segment-everything for files: one image or a folder, resumable, with mask files and overlays.

Per image ``NAME`` (the file's stem) the output folder gets
* ``NAME.json`` (``coco``, default): SAM's records with COCO RLE segmentations, plus the image's
  file name and size; ``json``: the same with uncompressed RLE (``counts`` as a list of ints);
* ``NAME/`` (``png``): one 0/255 PNG per mask (``0.png``, ``1.png``... best first) and ``masks.json``
  with the records minus the segmentation;
* ``NAME_overlay.jpg`` with ``overlay``: the masks in distinct colours over the image.
Every file is written atomically and the masks file (or folder) last, so an image whose masks
exist is finished: a rerun skips it, and an interrupted image is redone from scratch.
The settings that made the masks (model, grid, filters) are recorded in the masks file (``settings``);
a rerun with other settings refuses to mix results in one folder unless told to ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..atomic_files import atomic_write
from ..io import read_image

if TYPE_CHECKING:
    from .generator import MaskGenerator

FORMATS = ("coco", "json", "png")


def image_files(path: Path) -> list[Path]:
    """The images to process: ``path`` itself, or the files of folder ``path`` Pillow can name, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"image or folder not found: {path}")
    extensions = set(Image.registered_extensions())
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        raise ValueError(f"no image files in folder {path}")
    stems: dict[str, Path] = {}
    for file in files:
        if file.stem in stems:
            raise ValueError(f"{stems[file.stem].name} and {file.name} would write the same outputs (same name)")
        stems[file.stem] = file
    return files


def masks_path(output: Path, image: Path, fmt: str) -> Path:
    return output / (image.stem if fmt == "png" else f"{image.stem}.json")


def is_done(output: Path, image: Path, fmt: str) -> bool:
    return masks_path(output, image, fmt).exists()


def recorded_settings(output: Path, image: Path, fmt: str) -> dict[str, Any] | None:
    """The settings recorded with a finished image's masks (None: not recorded, or unreadable)."""
    path = masks_path(output, image, fmt)
    try:
        text = (path / "masks.json" if fmt == "png" else path).read_text()
        return json.loads(text).get("settings")
    except (OSError, ValueError, AttributeError):
        return None


def settings_conflict(output: Path, files: list[Path], fmt: str, settings: dict[str, Any]) -> str | None:
    """A one-line description of the finished images whose recorded settings differ from ``settings`` (in any
    of its keys), or None."""
    differing: list[tuple[Path, dict[str, Any]]] = []
    for file in files:
        if is_done(output, file, fmt):
            recorded = recorded_settings(output, file, fmt) or {}
            if any(recorded.get(key) != value for key, value in settings.items()):
                differing.append((file, recorded))
    if not differing:
        return None
    file, recorded = differing[0]
    changes = [f"{key} {recorded.get(key, 'unrecorded')} (now {value})" for key, value in settings.items()]
    changes = [change for change, key in zip(changes, settings) if recorded.get(key) != settings[key]]
    return (
        f"{len(differing)} of {len(files)} images in {output} were finished with other settings "
        f"({file.name}: {', '.join(changes)})"
    )


def write_masks(
    records: list[dict[str, Any]],
    path: Path,
    image: Path,
    size: tuple[int, int],
    fmt: str,
    settings: dict[str, Any] | None = None,
) -> None:
    """Write one image's records in ``fmt`` (see the module docs), with the ``settings`` that made them; atomically."""
    info = {"file_name": image.name, "height": size[0], "width": size[1]}
    extra = {"settings": settings} if settings is not None else {}
    if fmt != "png":
        text = json.dumps({"image": info, "annotations": records} | extra)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return
    from .mask_ops import decode_rle

    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    binary = decode_rle([r["segmentation"] for r in records]) if records else []
    for i, mask in enumerate(binary):
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / f"{i}.png")
    meta = [{k: v for k, v in r.items() if k != "segmentation"} | {"file": f"{i}.png"} for i, r in enumerate(records)]
    (tmp / "masks.json").write_text(json.dumps({"image": info, "annotations": meta} | extra))
    if path.exists():  # overwrite: a folder cannot be replaced in one rename
        shutil.rmtree(path)
    os.replace(tmp, path)


def segment_everything(
    generator: MaskGenerator,
    files: list[Path],
    output: Path,
    fmt: str = "coco",
    overlay: bool = False,
    open_image: Callable[[Path], np.ndarray | Image.Image] = read_image,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run ``generator`` on ``files`` and write their outputs; returns a summary.

    Finished images are skipped (``overwrite``: redone); an image that cannot be read is skipped with a
    warning on stderr (it stays unfinished, so a later run retries it). ``settings`` (what made the masks)
    are recorded with them; finished images recorded with other settings are an error unless ``overwrite``.
    """
    from tqdm import tqdm

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if output.exists() and not output.is_dir():
        raise ValueError(f"output '{output}' exists and is not a folder")
    if settings is not None and not overwrite and output.is_dir():
        conflict = settings_conflict(output, files, fmt, settings)
        if conflict:
            raise ValueError(f"{conflict}; redo them with overwrite=True, or write to another folder")
    output.mkdir(parents=True, exist_ok=True)
    generator.output_mode = "uncompressed_rle" if fmt == "json" else "coco_rle"
    summary: dict[str, Any] = {"output": str(output), "images": len(files), "done": [], "skipped": [], "failed": []}
    for file in tqdm(files, desc="everything", unit="image", disable=not progress or len(files) < 2):
        if not overwrite and is_done(output, file, fmt):
            summary["skipped"].append(file.name)
            continue
        try:
            picture = np.asarray(open_image(file))
        except (OSError, ValueError) as error:
            tqdm.write(f"warning: skipping {file}: {' '.join(str(error).split())}", file=sys.stderr)
            summary["failed"].append(file.name)
            continue
        records = generator.generate(picture)
        if overlay:
            from ..visualize import render_overlay
            from .mask_ops import decode_rle

            masks = list(decode_rle([r["segmentation"] for r in records])) if records else []
            drawn = render_overlay(picture, masks)
            atomic_write(
                output / f"{file.stem}_overlay.jpg", lambda tmp, d=drawn: d.save(tmp, format="JPEG", quality=90)
            )
        write_masks(records, masks_path(output, file, fmt), file, picture.shape[:2], fmt, settings)
        summary["done"].append({"image": file.name, "masks": len(records)})
    return summary
