"""`evitsam.evaluation` vs the official evaluation loop: same random weights, same COCO images, same protocol.

    python benchmarks/eval_parity.py [--variant l0] [--data DIR] [--limit N] [--prompts box point] [--threads N]

Ours: ``evaluate`` (all prompts of an image in one batched decoder call, the clicker on cropped
regions with exact integer distances). Official: the official script's loop re-enacted on the
official predictor (PyPI ``efficientsam``): one ``predict`` call per object, multimask, highest
predicted IoU; clicks by the official formulation (float distance transform of the whole padded
image, first maximum in row-major order). Both models hold the same randomised weights
(``latency.build_pair``). Prints mIoU both ways, the largest per-object IoU difference, times.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from latency import build_pair, environment
from PIL import Image
from pycocotools import mask as mask_utils

from evitsam.evaluation import EvalDataset, evaluate, miou_by_size

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ["EVITSAM_DATA"]) / "coco_subset" if os.environ.get("EVITSAM_DATA") else None


def official_mask(ann: dict, height: int, width: int) -> np.ndarray:
    rle = mask_utils.frPyObjects(ann["segmentation"], height, width)
    return mask_utils.decode(mask_utils.merge(rle) if isinstance(rle, list) else rle) > 0


def official_click(gt: np.ndarray, pred: np.ndarray, not_clicked: np.ndarray) -> tuple[int, int, bool]:
    """(x, y, positive), computed the way the official clicker computes it."""
    depths = []
    for region in (gt & ~pred, ~gt & pred):
        padded = np.pad(region, 1).astype(np.uint8)
        depths.append(cv2.distanceTransform(padded, cv2.DIST_L2, 0)[1:-1, 1:-1] * not_clicked)
    positive = bool(depths[0].max() > depths[1].max())
    depth = depths[0] if positive else depths[1]
    ys, xs = np.where(depth == depth.max())
    return int(xs[0]), int(ys[0]), positive


def official_loop(predictor, data: EvalDataset, limit: int | None, prompt: str, clicks: int) -> list[dict]:
    records = []
    for image in data.images[:limit]:
        objects = data.objects(image.id)
        if not objects:
            continue
        predictor.set_image(np.array(Image.open(image.path).convert("RGB")))
        for ann in objects:
            gt = official_mask(ann, image.height, image.width)
            if prompt == "box":
                x, y, w, h = ann["bbox"]
                masks, scores, _ = predictor.predict(box=np.array([x, y, x + w, y + h]), multimask_output=True)
                pred = masks[scores.argmax()]
            else:
                pred, not_clicked, coords, labels = np.zeros_like(gt), np.ones_like(gt), [], []
                for _ in range(clicks):
                    x, y, positive = official_click(gt, pred, not_clicked)
                    not_clicked[y, x] = False
                    coords.append((x, y))
                    labels.append(int(positive))
                    masks, scores, _ = predictor.predict(np.array(coords), np.array(labels), multimask_output=True)
                    pred = masks[scores.argmax()]
            iou = float(np.count_nonzero(pred & gt) / (np.count_nonzero(pred | gt) + 1e-7)) * 100
            records.append({"area": ann["area"], "iou": iou})
    return records


def fmt(miou: dict) -> str:
    return " / ".join("n/a" if v is None else f"{v:.3f}" for v in miou.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="l0")
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        required=DEFAULT_DATA is None,
        help="COCO folder: images/ + annotations.json (default: $EVITSAM_DATA/coco_subset)",
    )
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--prompts", nargs="+", default=["box", "point"], choices=["box", "point"])
    parser.add_argument("--clicks", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ours, official = build_pair(args.variant)
    data = EvalDataset(args.data / "images", args.data / "annotations.json")
    env = environment()
    print(f"torch {env['torch']} | threads {env['threads']} | CPU {env['cpu']} | fp32 | {args.variant} random weights")
    print()
    print("| prompt | objects | evitsam mIoU all / large / medium / small | official loop mIoU | "
          "max per-object abs IoU diff | evitsam s | official s |")  # fmt: skip
    print("|---|---:|---|---|---:|---:|---:|")
    for prompt in args.prompts:
        start = time.perf_counter()
        mine = evaluate(ours, args.data / "images", args.data / "annotations.json", prompt=prompt, clicks=args.clicks,
                        limit=args.limit, keep_predictions=True, progress=False)  # fmt: skip
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = official_loop(official, data, args.limit, prompt, args.clicks)
        official_s = time.perf_counter() - start
        diff = max(abs(a["iou"] - b["iou"]) for a, b in zip(mine["predictions"], theirs, strict=True))
        name = "box" if prompt == "box" else f"{args.clicks} click"
        print(f"| {name} | {len(theirs)} | {fmt(mine['miou'])} | {fmt(miou_by_size(theirs))} | {diff:.4f} | "
              f"{ours_s:.0f} | {official_s:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
