"""Download a few COCO 2017 images by id, with their official instance annotations.

    python scripts/fetch_coco_subset.py OUT [--split val2017|train2017] [--ids ID ...] [--annotations FILE]

Writes ``OUT/images/<12-digit id>.jpg`` and ``OUT/annotations.json``: the official
``instances_<split>.json`` filtered to those images (every field as upstream, file order kept), the layout
that ``evitsam eval`` and the benchmarks read. Without ``--ids`` it fetches the set the benchmarks were run
on: 40 val2017 images (``coco_subset``) or, with ``--split train2017``, 50 train2017 images
(``coco_train_subset``). The annotations come from the official ``annotations_trainval2017.zip`` (241 MB,
downloaded once into OUT unless ``--annotations`` names a local copy of the zip or the JSON); the images
from each image's ``coco_url``. Needs internet; files already present are not downloaded again.
COCO annotations are CC BY 4.0; each image keeps the Flickr licence its ``license`` field names.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path

ANNOTATIONS_ZIP = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
DEFAULT_IDS = {
    "val2017": (
        397133, 37777, 252219, 87038, 174482, 403385, 6818, 458054, 331352, 296649, 386912, 184791, 348881, 289393,
        181666, 17627, 143931, 303818, 322864, 226111, 153299, 308394, 456496, 58636, 41888, 184321, 297343, 336587,
        122745, 219578, 443303, 418281, 25560, 403817, 85329, 329323, 239274, 286994, 314294, 233771,
    ),
    "train2017": (
        391895, 522418, 184613, 318219, 554625, 574769, 60623, 309022, 5802, 222564, 118113, 193271, 224736, 483108,
        403013, 374628, 328757, 384213, 293802, 86408, 372938, 386164, 223648, 204805, 113588, 384553, 337264,
        368402, 12448, 79841, 515289, 562150, 542145, 412151, 579003, 540186, 242611, 51191, 269105, 294832, 462565,
        144941, 173350, 60760, 324266, 166532, 262284, 360772, 191381, 111076,
    ),
}  # fmt: skip


def filter_annotations(coco: dict, image_ids: list[int] | tuple[int, ...]) -> dict:
    """``coco`` with only the images ``image_ids`` and their annotations; every other key and field unchanged.

    Images and annotations keep the order of ``coco``. A ValueError names the ids ``coco`` does not hold.
    """
    wanted = set(image_ids)
    missing = wanted - {image["id"] for image in coco["images"]}
    if missing:
        raise ValueError(f"image ids not in the annotation file: {sorted(missing)}")
    return {
        **coco,
        "images": [image for image in coco["images"] if image["id"] in wanted],
        "annotations": [annotation for annotation in coco["annotations"] if annotation["image_id"] in wanted],
    }


def download(url: str, path: Path) -> None:
    """``url`` saved as ``path`` (through a partial file, so an interrupted download is not taken as done)."""
    if path.is_file():
        return
    partial = path.with_name(path.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
        shutil.copyfileobj(response, out)
    partial.replace(path)


def read_official(source: Path, split: str) -> dict:
    """The official ``instances_<split>.json`` from the annotations zip, or from the JSON itself."""
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive, archive.open(f"annotations/instances_{split}.json") as member:
            return json.load(member)
    return json.loads(source.read_text())


def fetch(out: Path, split: str, image_ids: list[int] | tuple[int, ...], annotations: Path | None = None) -> dict:
    """Write ``out/images/`` and ``out/annotations.json`` for ``image_ids``; returns the filtered annotations."""
    out.mkdir(parents=True, exist_ok=True)
    if annotations is None:
        annotations = out / Path(ANNOTATIONS_ZIP).name
        print(f"downloading {ANNOTATIONS_ZIP} ...", file=sys.stderr)
        download(ANNOTATIONS_ZIP, annotations)
    subset = filter_annotations(read_official(annotations, split), image_ids)
    (out / "images").mkdir(exist_ok=True)
    for number, image in enumerate(subset["images"], 1):
        print(f"[{number}/{len(subset['images'])}] {image['coco_url']}", file=sys.stderr)
        download(image["coco_url"], out / "images" / image["file_name"])
    partial = out / "annotations.json.part"
    partial.write_text(json.dumps(subset))
    partial.replace(out / "annotations.json")
    return subset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write images/ and annotations.json into")
    parser.add_argument("--split", choices=sorted(DEFAULT_IDS), default="val2017")
    parser.add_argument("--ids", type=int, nargs="+", help="COCO image ids (default: the benchmark set of --split)")
    parser.add_argument("--annotations", type=Path, help="local annotations_trainval2017.zip or instances_<split>.json")
    args = parser.parse_args(argv)
    if args.annotations is not None and not args.annotations.is_file():
        parser.error(f"--annotations: no such file {args.annotations}")
    subset = fetch(args.out, args.split, args.ids or DEFAULT_IDS[args.split], args.annotations)
    print(f"wrote {len(subset['images'])} images, {len(subset['annotations'])} annotations to {args.out}")


if __name__ == "__main__":
    main()
