"""Throughput of ``evitsam label --boxes`` (images/s), 1 process vs 2, against the official per-image loop.

    python benchmarks/label_throughput.py --data COCO_DIR [--models nano,l0] [--limit N] [--threads 1] [--repeats R]

COCO_DIR holds ``images/`` and ``annotations.json``; every ground-truth object (area >= 1) becomes a
detection with score 1, so the labels can be scored against the ground truth. Per model:

* ``ours 1p`` / ``ours 2p``: ``evitsam label`` on 1 process and under ``torchrun --nproc_per_node=2``,
  each process on ``--threads`` threads; images/s as the command reports it (model loading excluded).
  ``--chunk-size`` (default 4) is passed to both: with the command's default of 32 images per chunk, a run of
  fewer than 33 images is one chunk, all of it on one process.
* ``official`` (L0 only; the same randomised weights loaded into both, as in ``benchmarks/latency.py``):
  the official ``EfficientViTSamPredictor`` per image, ``set_image`` + ``predict_torch`` on the image's
  boxes, the best of the three masks kept and RLE-encoded, on ``--threads`` threads in this process.
  The three runs alternate ``--repeats`` times (medians reported): the machine's speed drifts.
* mIoU of the labels against the ground truth (pycocotools), next to ``evitsam.evaluation.evaluate``'s
  box-prompt mIoU with the same model: the two protocols agree to 0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import evitsam
from evitsam.evaluation import EvalDataset, evaluate
from evitsam.evaluation.metrics import mask_ious, miou_by_size
from evitsam.evaluation.protocol import box_prompts
from evitsam.weights import save_safetensors

REPO = Path(__file__).resolve().parents[1]


def detections_of(data: EvalDataset, limit: int | None) -> tuple[list[dict], list[tuple]]:
    """Every ground-truth object as a detection (score 1), and (image, annotation) per detection."""
    detections, truth = [], []
    for image in data.images[:limit]:
        for ann in data.objects(image.id):
            detections.append(
                {"image_id": image.id, "bbox": ann["bbox"], "category_id": ann["category_id"], "score": 1}
            )
            truth.append((image, ann))
    return detections, truth


def labels_miou(labels: Path, data: EvalDataset, truth: list[tuple]) -> float:
    """mIoU (percent) of each detection's label mask with its ground-truth object."""
    annotations = {a["detection_id"]: a for a in json.loads(labels.read_text())["annotations"]}
    records = []
    for index, (image, ann) in enumerate(truth):
        predicted = mask_utils.decode(annotations[index]["segmentation"]).astype(bool)[None]
        iou = mask_ious(predicted, data.masks([ann], image))[0]
        records.append({"area": ann["area"], "iou": iou})
    return miou_by_size(records)["all"]


def run_label(args: list[str], processes: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO / "src"))
    prefix = [sys.executable, "-m", "evitsam"]
    if processes > 1:
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        prefix += ["-m", "evitsam"]
    result = subprocess.run(prefix + ["label", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout)


def official_loop(official, data: EvalDataset, truth: list[tuple]) -> tuple[float, float]:
    """(images/s, mIoU) of the official predictor's per-image loop on the same boxes."""
    from efficientsam.models.efficientvit.sam import EfficientViTSamPredictor

    predictor = EfficientViTSamPredictor(official)
    by_image: dict[int, list] = {}
    for image, ann in truth:
        by_image.setdefault(image.id, [image, []])[1].append(ann)
    records = []
    started = time.perf_counter()
    for image, anns in by_image.values():
        predictor.set_image(np.asarray(Image.open(image.path).convert("RGB")))
        boxes = predictor.apply_boxes_torch(torch.as_tensor(box_prompts([a["bbox"] for a in anns]), dtype=torch.float))
        masks, scores, _ = predictor.predict_torch(None, None, boxes=boxes, multimask_output=True)
        best = masks[torch.arange(len(anns)), scores.argmax(dim=1)].numpy()
        mask_utils.encode(np.asfortranarray(best.transpose(1, 2, 0).astype(np.uint8)))
        records += [{"area": a["area"], "iou": iou} for a, iou in zip(anns, mask_ious(best, data.masks(anns, image)))]
    seconds = time.perf_counter() - started
    return len(by_image) / seconds, miou_by_size(records)["all"]


def bench(
    name: str,
    folder: Path,
    data: EvalDataset,
    limit: int | None,
    threads: int,
    repeats: int,
    runtime: str,
    chunk_size: int,
    work: Path,
) -> dict:
    detections, truth = detections_of(data, limit)
    names = [image.path.relative_to(folder / "images").as_posix() for image in data.images[:limit]]
    listing = {"images": [{"id": image.id, "file_name": n} for image, n in zip(data.images, names)]}
    (work / "images.json").write_text(json.dumps(listing))
    (work / "detections.json").write_text(json.dumps(detections))
    official = None
    if name == "nano":
        model, source = evitsam.load_model("nano"), ["--model", "nano"]
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from latency import build_models  # the same randomised official weights in both models

        model, official = build_models(name)
        save_safetensors(model.state_dict(), work / f"{name}.safetensors", name)
        source = ["--checkpoint", str(work / f"{name}.safetensors")]
    common = [str(work / "images.json"), "--image-root", str(folder / "images")]
    common += ["--boxes", str(work / "detections.json")]
    common += [*source, "--device", "cpu", "--no-progress"]
    common += ["--runtime", runtime, "--chunk-size", str(chunk_size)]
    row: dict = {"model": name, "images": len(listing["images"]), "boxes": len(detections), "threads": threads}
    row["runtime"] = runtime
    speeds: dict[str, list[float]] = {"ours_1p": [], "ours_2p": [], "official": []}
    for repeat in range(repeats):  # interleaved: the machine's speed drifts
        if official is not None:
            torch.set_num_threads(threads)
            rate, row["official_miou"] = official_loop(official, data, truth)
            speeds["official"].append(rate)
        for processes in (1, 2):
            out = work / f"{name}-{processes}p-{repeat}" / "labels.json"
            summary = run_label(common + ["--output", str(out)], processes, threads)
            speeds[f"ours_{processes}p"].append(summary["images_per_s"])
            row[f"ours_{processes}p_miou"] = labels_miou(out, data, truth)
    for key, values in speeds.items():
        if values:
            row[f"{key}_img_s"] = statistics.median(values)
            row[f"{key}_all"] = values
    torch.set_num_threads(threads)
    model.eval()
    results = evaluate(model, folder / "images", data.data, "box", limit=limit, progress=False)
    row["eval_box_miou"] = results["miou"]["all"]
    if official is not None:
        row["ours_1p_vs_official"] = row["ours_1p_img_s"] / row["official_img_s"]
    row["2p_vs_1p"] = row["ours_2p_img_s"] / row["ours_1p_img_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="COCO folder: images/ and annotations.json")
    parser.add_argument("--models", default="nano,l0", help="comma-separated: nano and/or l0 l1 l2 xl0 xl1")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats (medians reported)")
    parser.add_argument("--runtime", default="torch", help="our engine: torch, onnxruntime or openvino")
    parser.add_argument(
        "--chunk-size", type=int, default=4, help="images per unit of work: small, so both processes get a share"
    )
    args = parser.parse_args()
    data = EvalDataset(args.data / "images", args.data / "annotations.json")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            work = Path(tmp) / name
            work.mkdir()
            options = (args.limit, args.threads, args.repeats, args.runtime, args.chunk_size)
            rows.append(bench(name, args.data, data, *options, work))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| model | images | boxes | ours 1p img/s | ours 2p img/s | 2p / 1p | official img/s | 1p / official "
          "| labels mIoU | eval box mIoU |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        official = f"{r['official_img_s']:.3f} | {r['ours_1p_vs_official']:.2f}x" if "official_img_s" in r else "- | -"
        speeds = f"{r['ours_1p_img_s']:.3f} | {r['ours_2p_img_s']:.3f} | {r['2p_vs_1p']:.2f}x | {official}"
        quality = f"{r['ours_1p_miou']:.2f} | {r['eval_box_miou']:.2f}"
        print(f"| {r['model']} | {r['images']} | {r['boxes']} | {speeds} | {quality} |")


if __name__ == "__main__":
    main()
