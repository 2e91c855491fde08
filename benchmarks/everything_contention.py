"""Segment-everything with and without other processes on the cores: ours vs SAM's generator on our predictor.

    python benchmarks/everything_contention.py --grids 16 32 --repeats 3 --load 2 --threads 2 \
        [--load-kind busy|matmul] [--checkpoint PATH] [--image PATH] [--json PATH]

Same model (default: the bundled one, trained weights), same photo, same thresholds (the model's own
``everything`` thresholds unless given), same predictor: ``evitsam.MaskGenerator`` against
``segment_anything.SamAutomaticMaskGenerator`` whose predictor is replaced by our ``SamPredictor`` (so
only the generation algorithm differs), and ``MaskGenerator(workers=1)``, the per-prompt work on
torch's intra-op threads. Each repeat runs every generator once idle and once while ``--load`` competing
processes keep cores busy (``busy``: Python loops; ``matmul``: single-threaded torch matrix products),
started before and stopped after each loaded block, each stopping by itself after ``LOAD_LIMIT_S``.
Generators alternate (ABC CBA ...) and idle/loaded blocks alternate, so drift in the machine's own
background hits all. Reported: medians, min-max, SAM's time / ours, and whether the kept records agree.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path
from unittest import mock

import latency
import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator

from evitsam import MaskGenerator, SamPredictor, load_model
from evitsam.io import read_image
from evitsam.variants import get_variant

DEFAULT_IMAGE = latency.DEFAULT_IMAGE.with_name("evit_cat.jpg")  # the demo photos next to the repository
LOAD_LIMIT_S = 900.0  # a load process exits by itself after this, even if the benchmark dies


def competing_load(kind: str, stop: mp.Event, deadline: float) -> None:
    """Keep one core busy until ``stop`` is set or ``deadline`` (time.time()) passes."""
    if kind == "matmul":
        torch.set_num_threads(1)
        a = torch.randn(256, 256)
    while not stop.is_set() and time.time() < deadline:
        if kind == "matmul":
            for _ in range(20):
                a = torch.tanh(a @ a)
        else:
            sum(range(200_000))


class Load:
    """``count`` competing processes for the duration of a ``with`` block."""

    def __init__(self, count: int, kind: str) -> None:
        self.count, self.kind = count, kind

    def __enter__(self) -> Load:
        context = mp.get_context("spawn")
        self.stop = context.Event()
        deadline = time.time() + LOAD_LIMIT_S
        self.processes = [
            context.Process(target=competing_load, args=(self.kind, self.stop, deadline), daemon=True)
            for _ in range(self.count)
        ]
        for process in self.processes:
            process.start()
        time.sleep(1.0 if self.count else 0.0)  # let them reach their loop
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


def sam_generator(predictor: SamPredictor, **kwargs) -> SamAutomaticMaskGenerator:
    """SAM's generator with our predictor in place of its own (built for SAM's image encoder)."""
    with mock.patch("segment_anything.automatic_mask_generator.SamPredictor", lambda model: predictor):
        return SamAutomaticMaskGenerator(predictor.model, **kwargs)


def record_key(record: dict) -> tuple:
    return (tuple(record["point_coords"][0]), round(record["predicted_iou"], 3), tuple(record["bbox"]))


def same_records(a: list[dict], b: list[dict]) -> bool:
    """Same kept masks: same points, IoUs (1e-3) and boxes (1 pixel), masks 99.9 % equal."""
    if len(a) != len(b):
        return False
    for x, y in zip(sorted(a, key=record_key), sorted(b, key=record_key)):
        if x["point_coords"] != y["point_coords"] or abs(x["predicted_iou"] - y["predicted_iou"]) > 1e-3:
            return False
        if np.abs(np.subtract(x["bbox"], y["bbox"])).max() > 1:
            return False
        if (x["segmentation"] != y["segmentation"]).mean() > 1e-3:
            return False
    return True


def run_grid(predictor: SamPredictor, image: np.ndarray, side: int, args, thresholds: dict) -> list[dict]:
    generators = {
        "ours": MaskGenerator(predictor, points_per_side=side, **thresholds),
        "ours, workers=1": MaskGenerator(predictor, points_per_side=side, workers=1, **thresholds),
        "SAM's": sam_generator(predictor, points_per_side=side, **thresholds),
    }
    if args.skip_workers_1:
        del generators["ours, workers=1"]
    conditions = {"idle": 0, f"{args.load} x {args.load_kind}": args.load}
    times = {(c, g): [] for c in conditions for g in generators}
    outputs = {}
    for i in range(args.repeats):
        order = list(conditions) if i % 2 == 0 else list(conditions)[::-1]
        for condition in order:
            with Load(conditions[condition], args.load_kind):
                names = list(generators) if i % 2 == 0 else list(generators)[::-1]
                for name in names:
                    start = time.perf_counter()
                    outputs[name] = generators[name].generate(image)
                    times[condition, name].append(time.perf_counter() - start)
                    print(
                        f"  {side}x{side} {condition:>12} {name:>16}: {times[condition, name][-1]:6.2f} s", flush=True
                    )
    same = {name: same_records(outputs[name], outputs["SAM's"]) for name in generators}
    rows = []
    for condition in conditions:
        sam = statistics.median(times[condition, "SAM's"])
        for name in [name for name in generators if name != "SAM's"]:
            ours = statistics.median(times[condition, name])
            rows.append(
                dict(grid=f"{side}x{side}", load=condition, generator=name, ours_s=ours, sam_s=sam, ratio=sam / ours,
                     ours_all_s=times[condition, name], sam_all_s=times[condition, "SAM's"],
                     records=len(outputs[name]), sam_records=len(outputs["SAM's"]), same_records=same[name])
            )  # fmt: skip
    return rows


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| grid | competing load | generator | ours s (median, min-max) | SAM's s (median, min-max) | "
        "SAM's / ours | records ours / SAM's | same records |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['grid']} | {r['load']} | {r['generator']} | {r['ours_s']:.1f} ({spread(r['ours_all_s'])}) | "
            f"{r['sam_s']:.1f} ({spread(r['sam_all_s'])}) | **{r['ratio']:.2f}x** | "
            f"{r['records']} / {r['sam_records']} | {r['same_records']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=int, default=2, help="competing processes in the loaded runs")
    parser.add_argument("--load-kind", choices=("busy", "matmul"), default="busy")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--skip-workers-1", action="store_true", help="leave out MaskGenerator(workers=1)")
    parser.add_argument("--checkpoint", help="model name or checkpoint (default: the bundled model)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--pred-iou-thresh", type=float)
    parser.add_argument("--stability-score-thresh", type=float)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    default_iou, default_stability = get_variant(model.variant).everything_thresholds
    iou, stability = args.pred_iou_thresh, args.stability_score_thresh
    thresholds = dict(
        pred_iou_thresh=default_iou if iou is None else iou,
        stability_score_thresh=default_stability if stability is None else stability,
    )
    predictor = SamPredictor(model)
    image = read_image(args.image)
    for generator in (
        MaskGenerator(predictor, points_per_side=4, **thresholds),
        sam_generator(predictor, points_per_side=4, **thresholds),
    ):
        generator.generate(image)  # warm-up: allocator, oneDNN kernels, resize operators
    rows = []
    for side in args.grids:
        rows += run_grid(predictor, image, side, args, thresholds)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "")
    header = (
        f"{model.variant}, fp32, {args.image.name} {image.shape[1]}x{image.shape[0]}, thresholds "
        f"{thresholds['pred_iou_thresh']} / {thresholds['stability_score_thresh']}; torch {torch.__version__}, "
        f"{args.threads} intra-op threads, {os.cpu_count()} cores ({cpu or platform.processor()}), "
        f"{args.repeats} repeats"
    )
    print()
    print(markdown(rows, header))
    if args.json:
        args.json.write_text(json.dumps(dict(header=header, rows=rows), indent=2))


if __name__ == "__main__":
    main()
