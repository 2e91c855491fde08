"""Latency and accuracy of every runtime/precision vs the official ``set_image``, one table (CPU, L0, same weights).

    python benchmarks/runtimes.py [--variant l0] [--repeats 7] [--photos 10] [--calibration-photos 24] [--json PATH]
        [--configs torch:fp32 torch:bf16 ...]   (default: every runtime and precision)

Latency: the official predictor and each of our engines run ``set_image`` on the same photo, interleaved
(the order rotates every repeat so machine noise hits all of them), after two warm-up runs each; medians.
``predict`` rows time the decoder + post-processing for one prompt (one box, one mask; one point, three masks).
Accuracy: on real photos from ``coco_subset`` (the measuring set), embedding cosine and mask IoU with our
torch fp32 path, for a box and a point per annotated object. int8 is calibrated on ``coco_train_subset``
(never on the measuring set); bf16 only runs where the CPU has it natively (else the row says so).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from latency import build_pair, environment, timed
from PIL import Image

from evitsam import SamPredictor
from evitsam.runtime import PrecisionFallback
from evitsam.transforms import resize_longest_side

# The benchmark data: coco_subset/ (40 COCO val2017 images), coco_train_subset/ (scripts/fetch_coco_subset.py)
DATA = Path(os.environ["EVITSAM_DATA"]) if os.environ.get("EVITSAM_DATA") else None
CONFIGS = (
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
)
WARMUP = 2


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def build_engines(
    model, calibration: list[np.ndarray], configs=CONFIGS
) -> tuple[dict[str, SamPredictor], dict[str, str]]:
    """Predictor per config; configs that fall back or are refused are reported, not run."""
    engines, skipped = {}, {}
    for runtime, precision in configs:
        name = f"{runtime} {precision}"
        with warnings.catch_warnings():
            warnings.simplefilter("error", PrecisionFallback)
            try:
                extra = {"calibration": calibration} if precision == "int8" else {}
                engines[name] = SamPredictor(model, runtime=runtime, precision=precision, **extra)
            except PrecisionFallback as notice:
                skipped[name] = f"not run: {notice}"
            except ValueError as error:
                skipped[name] = f"refused: {error}"
        print(f"{name}: {'ready' if name in engines else skipped[name]}", file=sys.stderr, flush=True)
    return engines, skipped


def interleaved(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median ms per function, warm-up first, the order rotating every repeat."""
    for fn in fns.values():
        for _ in range(WARMUP):
            fn()
    names, times = list(fns), {name: [] for name in fns}
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(timed(fns[name], False)[0])
    return {name: statistics.median(values) for name, values in times.items()}


def preprocessing(predictor: SamPredictor, official, image: np.ndarray, repeats: int) -> dict:
    """Image -> normalised, padded (1, 3, S, S) encoder input: official transform vs ours, before and now.

    "before" is how ``set_image`` built its tensor until this change (a copy, then a uint8 NCHW copy);
    "now" hands the encoder a channels-last view. Both feed the same PIL bilinear resize, so the
    outputs must be identical to the bit, which is checked.
    """
    model = predictor.model

    def before():
        resized = resize_longest_side(image, model.encoder_size)
        tensor = torch.tensor(resized).permute(2, 0, 1).contiguous()[None]
        return model.preprocess(tensor.to(torch.float32))

    def now():
        resized = resize_longest_side(image, model.encoder_size)
        return model.preprocess(torch.from_numpy(resized).permute(2, 0, 1)[None].to(torch.float32))

    fns = {"official": lambda: official.model.transform(image), "before": before, "now": now}
    times = interleaved(fns, repeats)
    official_input = official.model.transform(image)[None]
    times["bit_exact"] = bool(torch.equal(before(), now()))
    times["max_abs_diff_vs_official"] = float((now() - official_input).abs().max())
    return times


def object_prompts(annotations: list[dict]) -> list[dict]:
    """A box and a point (box centre) per annotated, non-crowd object."""
    prompts = []
    for ann in annotations:
        if ann.get("iscrowd"):
            continue
        x, y, w, h = ann["bbox"]
        if w < 4 or h < 4:
            continue
        prompts.append(dict(box=np.array([x, y, x + w, y + h]), multimask_output=False))
        prompts.append(
            dict(point_coords=np.array([[x + w / 2, y + h / 2]]), point_labels=np.array([1]), multimask_output=False)
        )
    return prompts


def accuracy(reference: SamPredictor, engines: dict[str, SamPredictor], photos: int, data: Path) -> dict[str, dict]:
    """Worst embedding cosine and mean / worst mask IoU with the torch fp32 path on ``coco_subset`` photos."""
    coco = json.loads((data / "coco_subset" / "annotations.json").read_text())
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = [img for img in coco["images"] if by_image.get(img["id"])][:photos]
    stats = {name: {"cosine": [], "iou": []} for name in engines}
    for info in images:
        image = read(data / "coco_subset" / "images" / info["file_name"])
        prompts = object_prompts(by_image[info["id"]])
        reference.set_image(image)
        expected = [reference.predict(**p)[0][0] for p in prompts]
        ref_embedding = reference.features.flatten().double()
        for name, predictor in engines.items():
            predictor.set_image(image)
            embedding = predictor.features.flatten().double()
            stats[name]["cosine"].append(torch.nn.functional.cosine_similarity(embedding, ref_embedding, dim=0).item())
            for prompt, mask in zip(prompts, expected):
                got = predictor.predict(**prompt)[0][0]
                union = (got | mask).sum()
                stats[name]["iou"].append(float((got & mask).sum() / union) if union else 1.0)
    return {
        name: {
            "min_cosine": min(s["cosine"]),
            "mean_iou": float(np.mean(s["iou"])),
            "min_iou": min(s["iou"]),
            "photos": len(images),
            "masks": len(s["iou"]),
        }
        for name, s in stats.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="l0")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--photos", type=int, default=10, help="coco_subset photos for the accuracy columns")
    parser.add_argument("--calibration-photos", type=int, default=24, help="coco_train_subset photos for int8")
    parser.add_argument(
        "--data",
        type=Path,
        default=DATA,
        required=DATA is None,
        help="folder with coco_subset/ and coco_train_subset/ (default: $EVITSAM_DATA)",
    )
    parser.add_argument(
        "--image", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/images/truck.jpg"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--configs", nargs="+", default=[f"{r}:{p}" for r, p in CONFIGS], help="runtime:precision pairs to run"
    )
    args = parser.parse_args()
    configs = [tuple(c.split(":")) for c in args.configs]
    if unknown := [c for c in configs if c not in CONFIGS]:
        parser.error(f"--configs: unknown {unknown}; choose from {[f'{r}:{p}' for r, p in CONFIGS]}")

    ours, official = build_pair(args.variant)
    model = ours.model
    calibration_files = sorted((args.data / "coco_train_subset" / "images").glob("*.jpg"))[: args.calibration_photos]
    if ("openvino", "int8") not in configs:
        calibration_files = []
    engines, skipped = build_engines(model, [read(p) for p in calibration_files], configs)
    engines = {"torch fp32": ours, **{k: v for k, v in engines.items() if k != "torch fp32"}}

    image = read(args.image)
    h, w = image.shape[:2]
    box = np.array([w * 0.24, h * 0.5, w * 0.39, h * 0.73])
    point, label = np.array([[w * 0.28, h * 0.31]]), np.array([1])
    set_image = {"official": lambda: official.set_image(image)}
    set_image |= {name: (lambda p=p: p.set_image(image)) for name, p in engines.items()}
    latency = {"set_image": interleaved(set_image, args.repeats)}
    official.set_image(image)
    for p in engines.values():
        p.set_image(image)
    for op, kwargs in (
        ("predict box x1", dict(box=box, multimask_output=False)),
        ("predict point x3", dict(point_coords=point, point_labels=label, multimask_output=True)),
    ):
        fns = {"official": lambda kw=kwargs: official.predict(**kw)}
        fns |= {name: (lambda p=p, kw=kwargs: p.predict(**kw)) for name, p in engines.items()}
        latency[op] = interleaved(fns, args.repeats)
    with torch.inference_mode():
        latency["preprocess"] = preprocessing(ours, official, image, args.repeats)
    print("accuracy on coco_subset...", file=sys.stderr, flush=True)
    reference = SamPredictor(model)
    quality = accuracy(reference, {k: v for k, v in engines.items() if k != "torch fp32"}, args.photos, args.data)

    env = environment()
    official_ms = latency["set_image"]["official"]
    print(f"\n{args.variant}, torch {env['torch']}, {env['threads']} threads, CPU {env['cpu']}, {args.image.name}")
    print(
        "\n| runtime | precision | set_image ms | × official | predict box ×1 ms | predict point ×3 ms "
        "| min emb. cosine | mean / min mask IoU |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| official (PyTorch) | fp32 | {official_ms:.0f} | 1.00 | {latency['predict box x1']['official']:.1f} "
        f"| {latency['predict point x3']['official']:.1f} | | |"
    )
    for name in [f"{r} {p}" for r, p in configs]:
        runtime, precision = name.split()
        if name in skipped:
            print(f"| {runtime} | {precision} | {skipped[name]} | | | | | |")
            continue
        ms = latency["set_image"][name]
        q = quality.get(name)
        acc = f"{q['min_cosine']:.5f} | {q['mean_iou']:.4f} / {q['min_iou']:.4f}" if q else "reference | reference"
        print(
            f"| {runtime} | {precision} | {ms:.0f} | {ms / official_ms:.2f} | {latency['predict box x1'][name]:.1f} "
            f"| {latency['predict point x3'][name]:.1f} | {acc} |"
        )
    pre = latency["preprocess"]
    print(
        f"\npre-processing (resize, normalise, pad) ms: official {pre['official']:.1f}, ours before "
        f"{pre['before']:.1f}, ours now {pre['now']:.1f}; now == before bit for bit: {pre['bit_exact']}; "
        f"max abs diff vs official input: {pre['max_abs_diff_vs_official']:.2e}"
    )
    if args.json:
        result = dict(environment=env, latency_ms=latency, accuracy=quality, skipped=skipped, args=vars(args))
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
