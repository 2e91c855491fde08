"""Image-encoder throughput (images/s) of evitsam vs the official EfficientViT-SAM, same weights, one batch size.

    python benchmarks/gpu_throughput.py [--variants l0 xl1] [--batch 16] [--repeats 10] [--device cuda]
        [--precisions fp32 fp16 bf16] [--compile] [--mask-photos 10] [--data DIR] [--json PATH]

The paper's table (A100, TensorRT, fp16): L0 762 images/s, XL1 182 images/s. This measures PyTorch
(eager, or ``torch.compile`` with ``--compile``) on whatever GPU runs it, both models with the official
state dict randomised deterministically (``latency.build_models``) and loaded strictly into both.
Inputs: the demo photos, resized and cropped to the encoder's square, repeated to the batch size.

Per precision: ours through ``TorchEngine.embed`` (what ``SamPredictor(precision=...)`` runs: autocast with
attention and neck in fp32), the official encoder under the same autocast. Warm-up, then ours and the
official alternate every repeat; images/s = batch / median seconds per batch. Accuracy: the lowest cosine
of an embedding with our fp32 one, and whether every value is finite (the official fp16 encoder is known
to overflow). Then, per reduced precision, what a user gets from ``SamPredictor(precision=...)`` on the same
device: embedding cosine and mask IoU with the fp32 predictor on ``--mask-photos`` real ``coco_subset`` photos
(a box and a point per object, as ``runtimes.py`` measures the CPU paths; the bar: cosine >= 0.99,
IoU >= 0.95). ``--device cpu --batch 2 --precisions fp32 bf16`` checks the script on a CPU;
``benchmarks/gpu_session.sh`` runs it on a lent GPU machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import runtimes
import torch
from latency import build_models
from PIL import Image

from evitsam import SamPredictor
from evitsam.models.sam import PIXEL_MEAN, PIXEL_STD
from evitsam.runtime import TorchEngine

PAPER_A100 = {"l0": 762, "l1": 638, "l2": 538, "xl0": 278, "xl1": 182}  # images/s, TensorRT fp16
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
WARMUP = 3


def photo_batch(size: int, batch: int, device: torch.device, photos_dir: Path) -> torch.Tensor:
    """(batch, 3, size, size) float 0-255: demo photos resized (short side) and centre-cropped, repeated."""
    photos = []
    for path in sorted(photos_dir.glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))))
        left, top = (image.width - size) // 2, (image.height - size) // 2
        photos.append(np.asarray(image.crop((left, top, left + size, top + size))))
    stacked = torch.from_numpy(np.stack([photos[i % len(photos)] for i in range(batch)]))
    return stacked.permute(0, 3, 1, 2).float().to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def official_embed(model, images: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    mean = torch.tensor(PIXEL_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=images.device).view(1, 3, 1, 1)
    with torch.autocast(images.device.type, dtype, enabled=dtype is not None):
        return model.image_encoder((images - mean) / std).float()


def accuracy(embeddings: torch.Tensor, reference: torch.Tensor) -> tuple[float, bool]:
    finite = bool(torch.isfinite(embeddings).all())
    cosine = torch.nn.functional.cosine_similarity(
        embeddings.flatten(1).double().nan_to_num(), reference.flatten(1).double(), dim=1
    )
    return float(cosine.min()), finite


@torch.inference_mode()
def bench_variant(variant: str, args, device: torch.device) -> list[dict]:
    ours, official = (model.to(device) for model in build_models(variant))
    if args.compile:
        ours.image_encoder = torch.compile(ours.image_encoder)
        official.image_encoder = torch.compile(official.image_encoder)
    images = photo_batch(ours.encoder_size, args.batch, device, args.data / "images")
    reference = TorchEngine(ours, "fp32").embed(images)
    rows = []
    for precision in args.precisions:
        engine = TorchEngine(ours, precision)
        fns = {
            "evitsam": lambda engine=engine: engine.embed(images),
            "official": lambda dtype=AUTOCAST[precision]: official_embed(official, images, dtype),
        }
        for fn in fns.values():
            for _ in range(WARMUP):
                fn()
        seconds = {name: [] for name in fns}
        outputs = {}
        for i in range(args.repeats):
            for name in fns if i % 2 == 0 else reversed(fns):
                elapsed, outputs[name] = timed(fns[name], device)
                seconds[name].append(elapsed)
        for name in fns:
            cosine, finite = accuracy(outputs[name], reference)
            per_second = args.batch / statistics.median(seconds[name])
            rows.append(
                dict(
                    variant=variant,
                    precision=precision,
                    model=name,
                    images_per_s=per_second,
                    cosine=cosine,
                    finite=finite,
                    compiled=args.compile,
                    batch=args.batch,
                )
            )
            print(table_line(rows[-1]), flush=True)
    return rows


def mask_accuracy(variant: str, args, device: torch.device) -> list[dict]:
    """Our reduced precisions against our fp32 predictor on real photos (same weights, same device)."""
    ours = build_models(variant)[0].to(device)
    reference = SamPredictor(ours, precision="fp32")
    engines = {p: SamPredictor(ours, precision=p) for p in args.precisions if p != "fp32"}
    results = runtimes.accuracy(reference, engines, args.mask_photos, args.data)
    rows = [dict(variant=variant, precision=precision, **values) for precision, values in results.items()]
    for row in rows:
        print(
            f"| {variant} | {row['precision']} | {row['min_cosine']:.5f} | {row['mean_iou']:.4f} | "
            f"{row['min_iou']:.4f} | {row['masks']} masks, {row['photos']} photos |",
            flush=True,
        )
    return rows


def table_line(row: dict) -> str:
    paper = PAPER_A100.get(row["variant"], "")
    finite = "yes" if row["finite"] else "**no (inf/NaN)**"
    return (
        f"| {row['variant']} | {row['precision']} | {row['model']} | {row['images_per_s']:.1f} | {paper} | "
        f"{row['cosine']:.5f} | {finite} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["l0", "xl1"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"], choices=sorted(AUTOCAST))
    parser.add_argument("--compile", action="store_true", help="torch.compile both encoders (default mode)")
    parser.add_argument("--mask-photos", type=int, default=10, help="coco_subset photos for mask IoU (0: skip)")
    parser.add_argument(
        "--data",
        type=Path,
        default=runtimes.DATA,
        required=runtimes.DATA is None,
        help="folder with images/ and coco_subset/ (default: $EVITSAM_DATA)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    mode = "torch.compile" if args.compile else "eager"
    print(f"torch {torch.__version__} | {name} | batch {args.batch} | {mode} | median of {args.repeats}\n")
    print("| variant | precision | model | images/s | paper A100 TensorRT fp16 | min cosine vs ours fp32 | finite |")
    print("|---|---|---|---:|---:|---:|---|")
    rows = [row for variant in args.variants for row in bench_variant(variant, args, device)]
    masks = []
    if args.mask_photos > 0 and any(p != "fp32" for p in args.precisions):
        print("\n| variant | precision | min embedding cosine vs fp32 | mean mask IoU vs fp32 | min IoU | prompts |")
        print("|---|---|---:|---:|---:|---|")
        masks = [row for variant in args.variants for row in mask_accuracy(variant, args, device)]
    if args.json:
        args.json.write_text(json.dumps(dict(device=name, mode=mode, rows=rows, masks=masks), indent=1))


if __name__ == "__main__":
    main()
