"""Synthetic training data: generation speed (images/s) with and without real photos, by worker count,
and (``--example``) the picture in docs/training.md: scenes next to their masks.

There is no reference generator to compare with; the table reports our throughput and what the
scenes contain (annotations per image). Every run writes into a fresh temporary folder.

    python benchmarks/synthetic_data.py --images 1000 --workers 1 2
    python benchmarks/synthetic_data.py --images 0 --example docs/synthetic_example.jpg
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from latency import environment
from PIL import Image

from evitsam.data.synthetic import SynthSettings, generate, render
from evitsam.visualize import render_overlay

REPO = Path(__file__).resolve().parents[1]
PHOTOS = Path(os.environ["EVITSAM_DATA"]) / "coco_train_subset" if os.environ.get("EVITSAM_DATA") else None
EXAMPLE_SCENES = (5, 6, 9, 17)  # seed 0, with photos: pasted on a photo, composed, pasted on a photo crop, on noise
TILE = 300  # long side of each picture in the example


def speed(images: int, size: int, coco: Path | None, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        summary = generate(Path(folder) / "set", images, seed=0, size=size, coco=coco, workers=workers, progress=False)
    return {
        "photos": "yes" if coco else "no",
        "workers": workers,
        "images": images,
        "seconds": summary["seconds"],
        "images_per_s": summary["images_per_s"],
        "annotations_per_image": summary["annotations"] / images,
    }


def example(path: Path, size: int, coco: Path) -> None:
    """Each scene above its masks (one colour per mask, cycling through the CLI overlay palette)."""
    settings = SynthSettings(seed=0, size=size, coco=str(coco.resolve()))
    columns = []
    for index in EXAMPLE_SCENES:
        pixels, _, objects = render(settings, index)
        picture = Image.fromarray(pixels)
        overlay = render_overlay(picture, [mask for mask, _ in objects], [], [])
        scale = TILE / max(picture.size)
        tile_size = (round(picture.width * scale), round(picture.height * scale))
        columns.append([picture.resize(tile_size, Image.Resampling.LANCZOS), overlay.resize(tile_size)])
    width = sum(column[0].width for column in columns) + 4 * (len(columns) - 1)
    height = max(column[0].height for column in columns)
    sheet = Image.new("RGB", (width, 2 * height + 4), "white")
    left = 0
    for top_tile, bottom_tile in columns:
        sheet.paste(top_tile, (left, 0))
        sheet.paste(bottom_tile, (left, height + 4))
        left += top_tile.width + 4
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, quality=80)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="images per measurement (0: none)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--coco",
        type=Path,
        default=PHOTOS,
        required=PHOTOS is None,
        help="COCO train folder for photo scenes (default: $EVITSAM_DATA/coco_train_subset)",
    )
    parser.add_argument("--example", type=Path, help="also write the example picture here")
    args = parser.parse_args()

    if args.images > 0:
        env = environment()
        print(f"CPU {env['cpu']} | python {env['python']} | {args.size} px long side | seed 0\n")
        print("| photos | workers | images | seconds | images/s | annotations/image |")
        print("|---|---:|---:|---:|---:|---:|")
        for coco in (None, args.coco):
            for workers in args.workers:
                r = speed(args.images, args.size, coco, workers)
                print(
                    f"| {r['photos']} | {r['workers']} | {r['images']} | {r['seconds']:.1f} | "
                    f"{r['images_per_s']:.1f} | {np.round(r['annotations_per_image'], 1)} |"
                )
    if args.example:
        example(args.example, args.size, args.coco)


if __name__ == "__main__":
    main()
