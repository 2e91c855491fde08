"""Numerical parity report: evitsam vs the official EfficientViT-SAM, same random weights, real photos.

    python benchmarks/parity.py [--variants l0 ...] [--json PATH]

Per variant and photo (landscape and a portrait rotation) prints the worst relative error of the image
embedding and of the low-res logits, and the worst fraction of identical mask pixels, over point,
negative-point, box, point+box and mask-input prompts with multimask on and off. The test suite asserts
the same quantities (< 1e-3, >= 99.9 %); this prints the actual figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from latency import REPO, VARIANTS, build_pair
from PIL import Image

PHOTOS = REPO / "tests" / "data" / "images"


def rel_err(reference, ours) -> float:
    reference, ours = np.asarray(reference, np.float64), np.asarray(ours, np.float64)
    return float(np.abs(reference - ours).max() / np.abs(reference).max())


def prompts(height: int, width: int, previous_logits: np.ndarray | None) -> dict[str, dict]:
    point, box = (
        np.array([[0.45 * width, 0.55 * height]]),
        np.array([0.2 * width, 0.25 * height, 0.75 * width, 0.8 * height]),
    )
    cases = {
        "point": dict(point_coords=point, point_labels=np.array([1])),
        "negative point": dict(
            point_coords=np.vstack([point, [[0.7 * width, 0.3 * height]]]), point_labels=np.array([1, 0])
        ),
        "box": dict(box=box),
        "point+box": dict(point_coords=point, point_labels=np.array([1]), box=box),
    }
    if previous_logits is not None:
        cases["mask input"] = dict(point_coords=point, point_labels=np.array([1]), mask_input=previous_logits)
    return cases


def compare(variant: str, image: np.ndarray) -> dict:
    ours, official = build_pair(variant)
    ours.set_image(image)
    official.set_image(image)
    worst = dict(embedding=rel_err(official.features, ours.features), low_res=0.0, pixels=1.0)
    _, scores, logits = official.predict(**prompts(*image.shape[:2], None)["point"])
    for kwargs in prompts(*image.shape[:2], logits[np.argmax(scores)][None]).values():
        for multimask in (True, False):
            ref_masks, _, ref_low = official.predict(**kwargs, multimask_output=multimask)
            masks, _, low = ours.predict(**kwargs, multimask_output=multimask)
            worst["low_res"] = max(worst["low_res"], rel_err(ref_low, low))
            worst["pixels"] = min(worst["pixels"], float((masks == ref_masks).mean()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--photos", nargs="+", default=["truck.jpg", "groceries.jpg"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print("| variant | photo | embedding rel. err | low-res logits rel. err | identical mask pixels |")
    print("|---|---|---:|---:|---:|")
    rows = []
    for variant in args.variants:
        for index, photo in enumerate(args.photos):
            image = np.asarray(Image.open(PHOTOS / photo).convert("RGB"))
            if index % 2:  # every other photo in portrait orientation
                image, photo = np.ascontiguousarray(np.rot90(image)), f"{photo} (portrait)"
            row = dict(variant=variant, photo=photo, **compare(variant, image))
            rows.append(row)
            print(
                f"| {variant} | {photo} | {row['embedding']:.2e} | {row['low_res']:.2e} | {100 * row['pixels']:.4f} % |"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
