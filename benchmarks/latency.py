"""CPU fp32 latency of evitsam vs the official EfficientViT-SAM, same weights, same photo, same prompts.

    python benchmarks/latency.py [--variants l0 l1 ...] [--repeats 10] [--image PATH] [--threads N] [--json PATH]

Per variant the official model's state dict is randomised deterministically and loaded into both models
(strict). Each op runs twice per side as warm-up, then ours and the official alternate once per repeat
(AB BA AB ...) so machine noise hits both; medians are reported. ``predict`` rows are later prompts on
the image (what each click of an interactive session costs); "first prompt" also pays for the decoder
work ours shares between the prompts of one image. ``--batch-variants`` get a row for
``predict_torch`` with 100 boxes (default: l0 if chosen, else every chosen variant; none if given empty).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from efficientsam.models.efficientvit.sam import EfficientViTSamPredictor
from efficientsam.sam_model_zoo import create_efficientvit_sam_model
from PIL import Image

import evitsam

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / "tests" / "data" / "images" / "truck.jpg"
VARIANTS = ("l0", "l1", "l2", "xl0", "xl1")
WARMUP = 2
N_BOXES = 100


def randomised_state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's state dict with every float tensor perturbed by seeded noise of its own scale."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            scale = tensor.std().item() if tensor.numel() > 1 and tensor.std() > 0 else 0.1
            noise = 0.5 * scale * torch.randn(tensor.shape, generator=gen)
            tensor = 0.5 + torch.rand(tensor.shape, generator=gen) if name.endswith("running_var") else tensor + noise
        state[name] = tensor.clone()
    return state


def build_models(variant: str) -> tuple[evitsam.EfficientViTSam, torch.nn.Module]:
    """Ours and the official model (eval mode) with the same randomised official state dict, loaded strictly."""
    torch.manual_seed(0)
    official = create_efficientvit_sam_model(f"efficientvit-sam-{variant}", pretrained=False).eval()
    state = randomised_state(official)
    official.load_state_dict(state, strict=True)
    ours = evitsam.build_model(variant)
    ours.load_state_dict(state, strict=True)
    return ours.eval(), official


def build_pair(variant: str) -> tuple[evitsam.SamPredictor, EfficientViTSamPredictor]:
    ours, official = build_models(variant)
    return evitsam.SamPredictor(ours), EfficientViTSamPredictor(official)


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def timed(fn, track_rss: bool):
    """Run fn once: (milliseconds, peak RSS increase in MiB or None, result)."""
    if track_rss:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (Linux >= 4.0)
        before = _rss_kb("VmRSS")
    start = time.perf_counter()
    result = fn()
    ms = (time.perf_counter() - start) * 1e3
    rss = (_rss_kb("VmHWM") - before) / 1024 if track_rss else None
    return ms, rss, result


def compare(variant: str, op: str, ours_fn, official_fn, repeats: int, track_rss: bool = False):
    """Warm up both, then alternate; returns a result row (and keeps the last outputs for a sanity check)."""
    fns = {"ours": ours_fn, "official": official_fn}
    for _ in range(WARMUP):
        for fn in fns.values():
            fn()
    times = {"ours": [], "official": []}
    rss = {"ours": [], "official": []}
    outputs = {}
    for i in range(repeats):
        for side in ("ours", "official") if i % 2 == 0 else ("official", "ours"):
            ms, mib, outputs[side] = timed(fns[side], track_rss)
            times[side].append(ms)
            rss[side].append(mib)
    ours_ms, official_ms = statistics.median(times["ours"]), statistics.median(times["official"])
    row = dict(variant=variant, op=op, ours_ms=ours_ms, official_ms=official_ms, ratio=ours_ms / official_ms)
    row.update(ours_min_ms=min(times["ours"]), official_min_ms=min(times["official"]))
    row.update(ours_all_ms=times["ours"], official_all_ms=times["official"])
    if track_rss:
        row["ours_peak_rss_mib"] = max(rss["ours"])
        row["official_peak_rss_mib"] = max(rss["official"])
    return row, outputs


def logits_diff(outputs: dict) -> float:
    ours, official = (np.asarray(outputs[s][2], dtype=np.float64) for s in ("ours", "official"))
    return float(np.abs(ours - official).max())


def bench_variant(variant: str, image: np.ndarray, repeats: int, batch: bool) -> list[dict]:
    ours, official = build_pair(variant)
    h, w = image.shape[:2]
    point, label = np.array([[w * 0.28, h * 0.31]]), np.array([1])  # SAM's truck example (500, 375) on 1800x1200
    box = np.array([w * 0.24, h * 0.5, w * 0.39, h * 0.73])
    rows = []
    row, _ = compare(variant, "set_image", lambda: ours.set_image(image), lambda: official.set_image(image), repeats)
    rows.append(row)
    for op, kwargs in [
        ("predict point x3", dict(point_coords=point, point_labels=label, multimask_output=True)),
        ("predict box x1", dict(box=box, multimask_output=False)),
    ]:
        row, out = compare(
            variant, op, lambda kw=kwargs: ours.predict(**kw), lambda kw=kwargs: official.predict(**kw), repeats
        )
        row["max_abs_logit_diff"] = logits_diff(out)
        rows.append(row)

    def first_box() -> tuple:  # the first prompt on an image also computes the decoder's image side
        ours._decoder_side = None
        return ours.predict(box=box, multimask_output=False)

    row, _ = compare(
        variant,
        "predict box x1, first prompt",
        first_box,
        lambda: official.predict(box=box, multimask_output=False),
        repeats,
    )
    rows.append(row)
    if batch:
        gen = torch.Generator().manual_seed(1)
        xy = torch.rand(N_BOXES, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
        wh = 20 + torch.rand(N_BOXES, 2, generator=gen) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, xy + wh], dim=1)
        ours_boxes = ours.transform.apply_boxes_torch(boxes, ours.original_size)
        official_boxes = official.apply_boxes_torch(boxes)
        row, out = compare(
            variant,
            f"predict_torch {N_BOXES} boxes",
            lambda: ours.predict_torch(None, None, boxes=ours_boxes, multimask_output=False),
            lambda: official.predict_torch(None, None, boxes=official_boxes, multimask_output=False),
            repeats,
            track_rss=True,
        )
        row["max_abs_logit_diff"] = logits_diff(out)
        rows.append(row)
    return rows


def environment() -> dict:
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.processor())
    return dict(torch=torch.__version__, threads=torch.get_num_threads(), cpu=cpu, python=platform.python_version())


def table_line(r: dict) -> str:
    diff = f"{r['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in r else ""
    rss = f"{r['ours_peak_rss_mib']:.0f} / {r['official_peak_rss_mib']:.0f}" if "ours_peak_rss_mib" in r else ""
    times = f"{r['ours_ms']:.1f} | {r['official_ms']:.1f} | {r['ratio']:.3f}"
    return f"| {r['variant']} | {r['op']} | {times} | {diff} | {rss} |"


def markdown(rows: list[dict], env: dict) -> str:
    header = [
        f"torch {env['torch']} | threads {env['threads']} | CPU {env['cpu']} | fp32",
        "",
        "| variant | op | ours ms (median) | official ms (median) | ratio | max abs logit diff | "
        "peak RSS +MiB ours / official |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    return "\n".join(header + [table_line(r) for r in rows])


def add_common_arguments(parser: argparse.ArgumentParser, repeats: int, image: Path) -> None:
    """--repeats, --image, --threads and --json, shared by the benchmarks."""
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--image", type=Path, default=image)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")


def parse_common_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if not args.image.is_file():
        parser.error(f"--image: no such file {args.image}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch-variants", nargs="*", choices=VARIANTS, help="default: l0 if chosen, else all chosen")
    add_common_arguments(parser, repeats=10, image=DEFAULT_IMAGE)
    args = parse_common_arguments(parser)
    if args.batch_variants is not None:
        batch_variants = set(args.batch_variants)
    else:  # l0 when it is chosen, otherwise every chosen variant
        batch_variants = {"l0"} if "l0" in args.variants else set(args.variants)
    image = np.asarray(Image.open(args.image).convert("RGB"))
    env = environment()
    rows = []
    for variant in args.variants:
        new = bench_variant(variant, image, args.repeats, variant in batch_variants)
        print("\n".join(table_line(r) for r in new), flush=True)  # progress
        rows += new
    print()
    print(markdown(rows, env))
    if args.json:
        result = dict(environment=env, device="cpu", dtype="float32", image=str(args.image), repeats=args.repeats)
        args.json.write_text(json.dumps(result | {"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
