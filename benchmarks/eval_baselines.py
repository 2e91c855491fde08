"""Reference points of the evaluation on the benchmark data: oracles that answer from the ground truth.

    python benchmarks/eval_baselines.py [--data DIR]

Runs ``evitsam.evaluation.evaluate`` with the test oracles (``tests/oracles.py``): the ground-truth
mask (must give 100), the box-filled mask as pycocotools rasterises a box, and the mask of every
pixel the box touches (the "box-filled baseline" of the model card). The tests prove the
oracle numbers equal independent pycocotools computations; this prints them as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from oracles import OraclePredictor  # noqa: E402

from evitsam.evaluation import evaluate, summary_line  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = os.environ.get("EVITSAM_DATA")
    parser.add_argument(
        "--data",
        type=Path,
        default=data,
        required=data is None,
        help="folder with images/, coco_subset/ (40 COCO val2017 images), ... (default: $EVITSAM_DATA)",
    )
    args = parser.parse_args()
    coco = args.data / "coco_subset"
    person = args.data / "coco_person_subset"
    coco_data = json.loads((coco / "annotations.json").read_text())
    person_data = json.loads((person / "annotations.json").read_text())
    detections = json.loads((person / "detections_person_AP_H_56.json").read_text())
    gt_boxes = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in coco_data["annotations"]
        if not a["iscrowd"]
    ]
    runs = [
        ("GT mask", coco, coco_data, "gt", dict(prompt="box")),
        ("GT mask", coco, coco_data, "gt", dict(prompt="point", clicks=1)),
        ("GT mask, GT boxes as detections", coco, coco_data, "gt", dict(prompt="detector", detections=gt_boxes)),
        ("box filled (pycocotools raster)", coco, coco_data, "box", dict(prompt="box")),
        ("box filled (every touched pixel)", coco, coco_data, "box_touched", dict(prompt="box")),
        ("box filled (pycocotools raster)", person, person_data, "box", dict(prompt="box")),
        ("box filled, detector boxes", person, person_data, "box", dict(prompt="detector", detections=detections)),
    ]  # fmt: skip
    for name, root, data, answer, kwargs in runs:
        oracle = OraclePredictor(root / "images", data, answer, kwargs.get("detections"))
        results = evaluate(oracle, root / "images", root / "annotations.json", progress=False, **kwargs)
        print(f"| {root.name} | {name} | {summary_line(results)} |", flush=True)


if __name__ == "__main__":
    main()
