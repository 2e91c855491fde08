"""Segment-everything on CPU: evitsam's MaskGenerator vs the official generator, same weights, same photo.

    python benchmarks/everything.py [--grids 16 32] [--repeats 3] [--image PATH] [--threads N] [--json PATH]
        [--weights l0|xl1|...|CHECKPOINT]

Weights: by default the official L0 model's state dict randomised deterministically
(``latency.randomised_state``) and loaded into both models, with the mask and IoU heads scaled so that,
as with trained weights, logits are tens of units and predicted IoUs straddle the 0.88 threshold (random
weights otherwise give no mask that survives SAM's filters, which would time an empty pipeline). Same
change on both sides. ``--weights``: trained official weights (a variant name, downloaded if missing, or
an official checkpoint), loaded key for key into both models, heads unchanged.

Per grid, default settings otherwise: ours and the official run alternately (AB BA ...) so machine
noise hits both; medians, ratio, peak RSS increase, and the check that both keep the same masks.
Then ``sampling="coverage"`` (ours) against our full grid: time and recall, the fraction of
full-grid masks that it also finds (mask IoU >= 0.9).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from efficientsam.models.efficientvit.sam import EfficientViTSamAutomaticMaskGenerator, EfficientViTSamPredictor
from efficientsam.sam_model_zoo import create_efficientvit_sam_model
from latency import add_common_arguments, build_pair, environment, parse_common_arguments, timed
from PIL import Image

from evitsam import MaskGenerator, SamPredictor, load_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / "tests" / "data" / "images" / "evit_cat.jpg"
MATCH_IOU = 0.9


# Per mask token (0 = single-mask output, 1-3 = the multimask outputs generation uses): logit scale and
# IoU offset. The mix gives one output that mostly passes both filters, one that passes the IoU
# filter only (it fails on stability), and one that mostly fails the IoU filter.
LOGIT_SCALE = (100.0, 1200.0, 100.0, 100.0)
IOU_OFFSET = (0.88, 0.88, 0.98, 0.80)


@torch.no_grad()
def scale_heads_(model: torch.nn.Module) -> None:
    for mlp, scale in zip(model.mask_decoder.output_hypernetworks_mlps, LOGIT_SCALE):
        mlp.layers[2].weight.mul_(scale)
        mlp.layers[2].bias.mul_(scale)
    model.mask_decoder.iou_prediction_head.layers[2].bias.add_(torch.tensor(IOU_OFFSET))


def same_kept_set(ours: list[dict], official: list[dict]) -> bool:
    key = lambda r: (tuple(r["point_coords"][0]), round(r["predicted_iou"], 3))  # noqa: E731
    return sorted(map(key, ours)) == sorted(map(key, official))


def recall(full: list[dict], fast: list[dict]) -> float:
    """Fraction of ``full`` masks that some ``fast`` mask matches with IoU >= MATCH_IOU."""
    if not full:
        return 1.0
    a = np.stack([r["segmentation"].reshape(-1) for r in full]).astype(np.float32)
    if not fast:
        return 0.0
    b = np.stack([r["segmentation"].reshape(-1) for r in fast]).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return float(((inter / np.maximum(union, 1)).max(1) >= MATCH_IOU).mean())


def alternate(fns: dict, repeats: int) -> dict:
    """Run the functions alternately (AB BA ...): times (s), peak RSS increase (MiB), last output."""
    runs = {name: {"s": [], "rss": []} for name in fns}
    names = list(fns)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            ms, mib, runs[name]["out"] = timed(fns[name], track_rss=True)
            runs[name]["s"].append(ms / 1e3)
            runs[name]["rss"].append(mib)
    return runs


def bench_grid(ours, official, image: np.ndarray, side: int, repeats: int) -> list[dict]:
    ours_gen = MaskGenerator(ours, points_per_side=side)
    official_gen = EfficientViTSamAutomaticMaskGenerator(official.model, points_per_side=side)
    runs = alternate(
        {"ours": lambda: ours_gen.generate(image), "official": lambda: official_gen.generate(image)}, repeats
    )
    o, f = runs["ours"], runs["official"]
    row = dict(grid=f"{side}x{side}", mode="default settings", repeats=repeats)
    row.update(ours_s=statistics.median(o["s"]), official_s=statistics.median(f["s"]))
    row.update(speedup=row["official_s"] / row["ours_s"], ours_all_s=o["s"], official_all_s=f["s"])
    row.update(ours_peak_rss_mib=max(o["rss"]), official_peak_rss_mib=max(f["rss"]))
    row.update(ours_masks=len(o["out"]), official_masks=len(f["out"]), same_masks=same_kept_set(o["out"], f["out"]))

    coverage_gen = MaskGenerator(ours, points_per_side=side, sampling="coverage")
    cov = alternate(
        {"coverage": lambda: coverage_gen.generate(image), "grid": lambda: ours_gen.generate(image)}, repeats
    )
    fast = dict(grid=f"{side}x{side}", mode="ours, sampling=coverage vs ours full grid", repeats=repeats)
    fast.update(ours_s=statistics.median(cov["coverage"]["s"]), official_s=statistics.median(cov["grid"]["s"]))
    fast.update(speedup=fast["official_s"] / fast["ours_s"], ours_all_s=cov["coverage"]["s"])
    fast.update(ours_peak_rss_mib=max(cov["coverage"]["rss"]), official_peak_rss_mib=max(cov["grid"]["rss"]))
    fast.update(ours_masks=len(cov["coverage"]["out"]), official_masks=len(cov["grid"]["out"]))
    fast.update(points_decoded=coverage_gen.points_decoded, recall=recall(cov["grid"]["out"], cov["coverage"]["out"]))
    return [row, fast]


def table_line(r: dict) -> str:
    extra = (
        f"same kept set: {r['same_masks']}"
        if "same_masks" in r
        else (f"recall {r['recall']:.3f}, {r['points_decoded']} of {int(r['grid'].split('x')[0]) ** 2} points decoded")
    )
    return (
        f"| {r['grid']} | {r['mode']} | {r['ours_s']:.1f} | {r['official_s']:.1f} | {r['speedup']:.2f}x | "
        f"{r['ours_peak_rss_mib']:.0f} / {r['official_peak_rss_mib']:.0f} | "
        f"{r['ours_masks']} / {r['official_masks']} | {extra} |"
    )


def trained_pair(weights: str) -> tuple[SamPredictor, EfficientViTSamPredictor]:
    """Our model and the official one with the same trained official weights (loaded strictly into both)."""
    ours = load_model(weights)
    official = create_efficientvit_sam_model(f"efficientvit-sam-{ours.variant}", pretrained=False).eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    return SamPredictor(ours), EfficientViTSamPredictor(official)


def markdown(rows: list[dict], env: dict, image: Path, weights: str) -> str:
    header = [
        f"{weights}, fp32, {image.name}; torch {env['torch']} | threads {env['threads']} | CPU {env['cpu']}",
        "",
        "| grid | comparison | ours s (median) | reference s (median) | speed-up | peak RSS +MiB ours / reference | "
        "masks ours / reference | notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    return "\n".join(header + [table_line(r) for r in rows])


def coverage_on_trained_weights(checkpoint: str | None, side: int, repeats: int, filters: dict) -> None:
    """``sampling="coverage"`` vs the full grid with real (trained) weights on the five demo photos.

    Random weights keep too few masks for recall to mean much; a trained model keeps tens per photo.
    ``filters``: pred_iou_thresh / stability_score_thresh for both (a small model's IoU head may need lower).
    """
    model = load_model(checkpoint)  # None: the bundled model
    rows = ["| photo | full grid s | coverage s | speed-up | masks full / coverage | points decoded | recall |",
            "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for path in sorted(DEFAULT_IMAGE.parent.glob("*.jpg")):
        image = np.asarray(Image.open(path).convert("RGB"))
        grid, coverage = (
            MaskGenerator(model, points_per_side=side, sampling=mode, **filters) for mode in ("grid", "coverage")
        )
        runs = alternate({"grid": functools.partial(grid.generate, image),
                          "coverage": functools.partial(coverage.generate, image)}, repeats)  # fmt: skip
        full_s, fast_s = (statistics.median(runs[name]["s"]) for name in ("grid", "coverage"))
        full, fast = runs["grid"]["out"], runs["coverage"]["out"]
        rows.append(
            f"| {path.name} | {full_s:.1f} | {fast_s:.1f} | {full_s / fast_s:.2f}x | {len(full)} / {len(fast)} | "
            f"{coverage.points_decoded} of {side * side} | {recall(full, fast):.3f} |"
        )
        print(rows[-1], flush=True)
    print(f"\n{model.variant}, {side}x{side} grid, {filters}; torch threads {torch.get_num_threads()}\n")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", nargs="+", type=int, default=[16, 32])
    parser.add_argument(
        "--coverage-on", metavar="CHECKPOINT|bundled",
        help="instead: coverage sampling vs full grid with trained weights (bundled: the default model)",
    )  # fmt: skip
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88, help="with --coverage-on")
    parser.add_argument("--stability-score-thresh", type=float, default=0.95, help="with --coverage-on")
    parser.add_argument("--weights", help="trained official weights: variant name or checkpoint (default: random L0)")
    add_common_arguments(parser, repeats=3, image=DEFAULT_IMAGE)
    args = parse_common_arguments(parser)
    if args.coverage_on:
        for side in args.grids:
            filters = dict(pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh)
            checkpoint = None if args.coverage_on == "bundled" else args.coverage_on
            coverage_on_trained_weights(checkpoint, side, args.repeats, filters)
        return
    if args.weights:
        ours, official = trained_pair(args.weights)
    else:
        ours, official = build_pair("l0")
        scale_heads_(ours.model)
        scale_heads_(official.model)
    image = np.asarray(Image.open(args.image).convert("RGB"))
    MaskGenerator(ours, points_per_side=2).generate(image)  # warm-up (allocator, oneDNN kernels)
    EfficientViTSamAutomaticMaskGenerator(official.model, points_per_side=2).generate(image)
    env = environment()
    rows = []
    for side in args.grids:
        new = bench_grid(ours, official, image, side, args.repeats)
        print("\n".join(table_line(r) for r in new), flush=True)  # progress
        rows += new
    print()
    print(markdown(rows, env, args.image, f"{ours.model.variant} trained" if args.weights else "L0 random"))
    if args.json:
        args.json.write_text(json.dumps(dict(environment=env, image=str(args.image), rows=rows), indent=2))


if __name__ == "__main__":
    main()
