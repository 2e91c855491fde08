"""Training-step throughput (images/s) and peak memory: ours vs the official model, same batch and weights.

One step = image encoder + prompt encoder + mask decoder for every mask of every image, the SAM loss
(BCE x 20 + dice on point-sampled logits, min over the 3 outputs), backward and AdamW. Both sides
get the same images, masks, box prompts and random weights; the official side is the official
model code (PyPI ``efficientsam``) driven the way its trainer does (image embedding repeated per
prompt inside its decoder, PyTorch's default AdamW). The official repository has no tiny model, so
``tiny`` rows are ours only. A second "ours" row adds our default extras (a correction-click pass
with the previous mask as prompt, and the IoU-head loss).

    python benchmarks/train_throughput.py --variants tiny l0 --steps 5
    python benchmarks/train_throughput.py --variants l0 xl1 --device cuda --batch 4 --masks 64   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
from latency import randomised_state, timed

import evitsam
from evitsam.data import open_dataset
from evitsam.training.config import TrainConfig
from evitsam.training.loop import param_groups
from evitsam.training.losses import sam_loss
from evitsam.training.train import SamTrainingStep, prepare_batch, to_images

REPO = Path(__file__).resolve().parents[1]
DATA = os.environ.get("EVITSAM_DATA")  # the benchmark data folder, see --data
WARMUP = 1


def official_model(state: dict[str, torch.Tensor], variant: str) -> torch.nn.Module:
    from efficientsam.sam_model_zoo import create_efficientvit_sam_model

    model = create_efficientvit_sam_model(f"efficientvit-sam-{variant}", pretrained=False)
    model.load_state_dict(state, strict=True)
    return model


def official_step(model, images: torch.Tensor, samples, config: TrainConfig) -> torch.Tensor:
    """The official trainer's forward for box prompts: encoder once, decoder per image."""
    embeddings = model.image_encoder(images)
    scale = 1024 / images.shape[-1]
    loss = 0
    for embedding, sample in zip(embeddings, samples, strict=True):
        boxes = torch.from_numpy(sample.boxes).to(images.device) * scale
        sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
        low, iou = model.mask_decoder(
            image_embeddings=embedding[None],
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        gt = _padded_masks(sample, images.shape[-1]).to(images.device)
        loss = loss + sam_loss(low, iou, gt, config.num_points, config.mask_weight, config.focal, 0.0)["loss"]
    return loss / len(samples)


def _padded_masks(sample, size: int) -> torch.Tensor:
    masks = torch.from_numpy(sample.masks)
    return torch.nn.functional.pad(masks, (0, size - masks.shape[2], 0, size - masks.shape[1]))


def measure(step_fn, optimizer, steps: int) -> tuple[float, float]:
    """Median step milliseconds and peak RSS increase (MiB) over ``steps`` steps after a warm-up."""

    def one_step():
        optimizer.zero_grad(set_to_none=True)
        step_fn().backward()
        optimizer.step()

    for _ in range(WARMUP):
        one_step()
    runs = [timed(one_step, track_rss=True) for _ in range(steps)]
    return statistics.median(ms for ms, _, _ in runs), max(rss for _, rss, _ in runs)


def bench(variant: str, args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    ours = evitsam.build_model(variant).train()
    state = randomised_state(ours)
    ours.load_state_dict(state)
    ours.to(device)
    recipe = dict(max_masks=args.masks, batch_size=args.batch, hflip=0.0, box_prob=1.0, box_jitter=0.0,
                  multimask_prob=1.0, correction_iters=0, focal=False, iou_weight=0.0,
                  num_points=args.points)  # fmt: skip
    dataset = open_dataset(args.data / "coco_train_subset", max_masks=args.masks, seed=0)
    rows = []
    for label, extras in (("ours", {}), ("ours + extras", dict(correction_iters=1, iou_weight=1.0))):
        config = TrainConfig.from_dict(recipe | extras | {"variant": variant})
        generator = torch.Generator().manual_seed(0)
        samples = prepare_batch(dataset, list(range(args.batch)), list(range(len(dataset))), config, ours.encoder_size,
                                generator)  # fmt: skip
        images = to_images(ours, samples, device)
        step = SamTrainingStep(ours, config)
        optimizer = torch.optim.AdamW(param_groups(ours, 0.1), lr=1e-6, fused=True)

        def loss(step=step, images=images, samples=samples) -> torch.Tensor:
            return step(images, samples, torch.Generator().manual_seed(1))["loss"]

        ms, mib = measure(loss, optimizer, args.steps)
        rows.append(dict(variant=variant, side=label, ms=ms, mib=mib))
    if variant != "tiny":
        official = official_model(state, variant).train().to(device)
        optimizer = torch.optim.AdamW(official.parameters(), lr=1e-6)  # the official trainer's defaults
        ms, mib = measure(lambda: official_step(official, images, samples, config), optimizer, args.steps)
        rows.append(dict(variant=variant, side="official", ms=ms, mib=mib))
    for row in rows:
        row["images_per_s"] = args.batch / (row["ms"] / 1e3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["tiny", "l0"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--masks", type=int, default=8, help="masks (box prompts) per image")
    parser.add_argument("--points", type=int, default=12544, help="loss points per mask (official: 112 x 112)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keep-denormal", action="store_true", help="do not flush denormal floats to zero")
    parser.add_argument(
        "--data",
        type=Path,
        default=DATA,
        required=DATA is None,
        help="folder with coco_train_subset/ (default: $EVITSAM_DATA; scripts/fetch_coco_subset.py)",
    )
    args = parser.parse_args()
    # Random weights drive some activations/gradients into denormal range, where x86 float maths
    # is ~10x slower; both sides get the same setting (training runs flush them too, see loop.py).
    torch.set_flush_denormal(not args.keep_denormal)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, device {args.device}; batch {args.batch} images x {args.masks} box prompts, "
          f"{args.points} loss points, median of {args.steps} steps")  # fmt: skip
    print("| variant | implementation | step (ms) | images/s | peak RSS increase (MiB) | time vs official |")
    print("|---|---|---:|---:|---:|---:|")
    for variant in args.variants:
        rows = bench(variant, args)
        reference = next((r["ms"] for r in rows if r["side"] == "official"), None)
        for r in rows:
            ratio = f"{r['ms'] / reference:.3f}" if reference else "n/a"
            print(f"| {variant} | {r['side']} | {r['ms']:.0f} | {r['images_per_s']:.2f} | {r['mib']:.0f} | {ratio} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
