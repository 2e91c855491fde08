"""The measured quality and speed of a (bundled) model, as docs/model_card.md reports them.

    python benchmarks/model_card.py [--checkpoint PATH] [--heldout DIR] [--data DIR]

GT-box and 1-click mIoU (the paper's protocol, ``evitsam.evaluation.evaluate``) on held-out generated
scenes (seed 1000, procedural only: no photo the model was trained on) and on the 40 COCO val2017
images of ``coco_subset`` (never trained on; ``--data`` or ``$EVITSAM_DATA``), next to the box-filled baseline (the mask
equal to its box, every pixel the box touches); then the file's size and sha256 and the median
``set_image`` / ``predict`` latency on this CPU. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from oracles import OraclePredictor  # noqa: E402

from evitsam import SamPredictor, load_model  # noqa: E402
from evitsam.data.synthetic import generate  # noqa: E402
from evitsam.evaluation import evaluate  # noqa: E402
from evitsam.variants import DEFAULT_VARIANT, get_variant  # noqa: E402
from evitsam.weights import bundled_weights, file_sha256  # noqa: E402

HELDOUT_SEED = 1000


def miou_row(name: str, results: dict) -> str:
    miou = results["miou"]
    cells = " | ".join("-" if miou[k] is None else f"{miou[k]:.1f}" for k in ("all", "large", "medium", "small"))
    return f"| {name} | {results['num_objects']} | {cells} |"


def quality(model, datasets: dict[str, Path]) -> None:
    print("| data, prompt | objects | mIoU all | large | medium | small |")
    print("|---|---:|---:|---:|---:|---:|")
    predictor = SamPredictor(model)
    for label, root in datasets.items():
        annotations = json.loads((root / "annotations.json").read_text())
        baseline = OraclePredictor(root / "images", annotations, "box_touched")
        runs = [
            ("box-filled baseline, GT box", baseline, dict(prompt="box")),
            ("model, GT box", predictor, dict(prompt="box")),
            ("model, 1 click", predictor, dict(prompt="point", clicks=1)),
            ("model, 3 clicks", predictor, dict(prompt="point", clicks=3)),
        ]
        for name, answerer, kwargs in runs:
            results = evaluate(answerer, root / "images", annotations, progress=False, **kwargs)
            print(miou_row(f"{label}: {name}", results), flush=True)


def latency(model, photo: np.ndarray, repeats: int) -> None:
    predictor = SamPredictor(model)
    predictor.set_image(photo)  # warm-up
    set_image, predict = [], []
    h, w = photo.shape[:2]
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.set_image(photo)
        set_image.append(time.perf_counter() - start)
        start = time.perf_counter()
        predictor.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))
        predict.append(time.perf_counter() - start)
    print(f"\n| {torch.get_num_threads()} threads, {w}x{h} photo | median ms |\n|---|---:|")
    print(f"| set_image | {1000 * statistics.median(set_image):.0f} |")
    print(f"| predict (1 point, 3 masks) | {1000 * statistics.median(predict):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="weights to measure (default: the bundled model)")
    parser.add_argument("--heldout", type=Path, help="held-out scenes (default: 200 generated now, seed 1000)")
    data = os.environ.get("EVITSAM_DATA")
    parser.add_argument(
        "--data",
        type=Path,
        default=data,
        required=data is None,
        help="folder with images/, coco_subset/ (40 COCO val2017 images), ... (default: $EVITSAM_DATA)",
    )
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    model = load_model(args.checkpoint)
    path = args.checkpoint or bundled_weights(get_variant(DEFAULT_VARIANT))
    params = sum(p.numel() for p in model.parameters())
    print(f"{path}: variant {model.variant}, {params / 1e6:.2f} M parameters, "
          f"{path.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(path)}\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        heldout = args.heldout
        if heldout is None:
            heldout = Path(scratch) / "heldout"
            generate(heldout, images=200, seed=HELDOUT_SEED, size=384, progress=False)
        quality(model, {"held-out scenes": heldout, "COCO val2017 (40 images)": args.data / "coco_subset"})
    photo = np.asarray(Image.open(args.data / "images" / "dog.jpg").convert("RGB"))
    latency(model, photo, args.repeats)


if __name__ == "__main__":
    main()
