"""Stage-2 (end-to-end) training, one process or many (``torchrun``, DDP).

Written to be read top to bottom, like torchvision's reference scripts. Every random choice of a
step (data order, flips, prompt types, points) derives from (seed, step, rank), so ``--resume``
continues exactly where a run stopped: no step repeated or skipped, bit-identical parameters.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data import SkippingDataset, open_dataset
from ..data.augment import flip_horizontal, resize_longest_side
from ..data.sample import Sample
from ..distributed import init_distributed
from ..files import atomic_write
from ..models import EfficientViTSam
from ..models.sam import PROMPT_FRAME
from ..variants import get_variant
from ..weights import load_model, save_safetensors
from .config import TrainConfig
from .losses import mask_iou, sam_loss
from .prompts import correction_clicks, jitter_boxes, sample_points

CHECKPOINT = "checkpoint.pt"
FINAL_WEIGHTS = "model.safetensors"


# ------------------------------------------------------------------------------------------ setup
def step_generator(config: TrainConfig, step: int, rank: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(hash((config.seed, step, rank, stream)) & 0x7FFFFFFF)


def split_indices(dataset: SkippingDataset, val_fraction: float) -> tuple[list[int], list[int]]:
    """Train and held-out validation indices (the last images, at least one when asked for)."""
    n = len(dataset)
    n_val = min(n - 1, max(1, round(n * val_fraction))) if val_fraction > 0 else 0
    return list(range(n - n_val)), list(range(n - n_val, n))


def batch_indices(train: list[int], step: int, rank: int, world: int, batch: int, seed: int) -> list[int]:
    """The dataset indices of one rank's batch at ``step``: epochs are seeded permutations."""
    per_step = batch * world
    out = []
    for position in range(step * per_step + rank * batch, step * per_step + (rank + 1) * batch):
        epoch, offset = divmod(position, len(train))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        out.append(train[order[offset].item()])
    return out


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on norms, biases and embeddings (tokens, point embeddings)."""
    no_decay = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.LayerNorm, nn.BatchNorm2d)) or "LayerNorm" in type(module).__name__:
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, plain = [], []
    for param in model.parameters():
        if param.requires_grad:
            (plain if id(param) in no_decay or param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def lr_lambda(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ------------------------------------------------------------------------------------------- step
class SamTrainingStep(nn.Module):
    """The model plus one training step's forward, so DDP sees a single ``forward``."""

    def __init__(self, model: EfficientViTSam, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, images: torch.Tensor, targets: list[Sample], generator: torch.Generator) -> dict:
        config, size = self.config, self.model.encoder_size
        embeddings = self.model.encode(images)
        scale = PROMPT_FRAME / size  # resized-image pixels -> 1024 prompt frame
        totals: dict[str, torch.Tensor] = {}
        passes = 0
        for embedding, sample in zip(embeddings, targets):
            masks = torch.from_numpy(sample.masks)
            pad = (0, size - masks.shape[2], 0, size - masks.shape[1])
            gt = F.pad(masks, pad).to(images.device)
            boxes = coords = labels = None
            if torch.rand((), generator=generator) < config.box_prob:
                boxes = jitter_boxes(torch.from_numpy(sample.boxes), masks.shape[1:], config.box_jitter, generator)
                boxes = (boxes * scale).to(images.device)
            else:
                n_pos = int(torch.randint(1, config.max_positive_points + 1, (), generator=generator))
                n_neg = int(torch.randint(0, config.max_negative_points + 1, (), generator=generator))
                coords, labels = sample_points(gt.cpu(), n_pos, n_neg, generator)
                coords, labels = (coords * scale).to(images.device), labels.to(images.device)
            multimask = bool(torch.rand((), generator=generator) < config.multimask_prob)
            mask_input = None
            for iteration in range(1 + config.correction_iters):
                low, iou = self.model.decode(embedding[None], coords, labels, boxes, mask_input, multimask)
                losses = sam_loss(low, iou, gt, config.num_points, config.mask_weight, config.focal, config.iou_weight)
                for key, value in losses.items():
                    totals[key] = totals.get(key, 0) + value
                passes += 1
                if iteration == config.correction_iters:
                    break
                best = iou.argmax(1)
                mask_input = low[torch.arange(len(low)), best][:, None].detach()
                predicted = F.interpolate(mask_input, (size, size), mode="bilinear", align_corners=False)[:, 0] > 0
                click, click_label = correction_clicks(predicted.cpu(), gt.cpu(), generator)
                click, click_label = (click * scale).to(images.device), click_label.to(images.device)
                coords = click if coords is None else torch.cat([coords, click], 1)
                labels = click_label if labels is None else torch.cat([labels, click_label], 1)
                multimask = False
        return {key: value / passes for key, value in totals.items()}


def prepare_batch(
    dataset: SkippingDataset, indices: list[int], train: list[int], config: TrainConfig, size: int, generator
) -> list[Sample]:
    """Load, flip and resize; an unreadable sample is replaced by the next readable training image."""
    samples = []
    for index in indices:
        sample, attempts = dataset[index], 0
        while sample is None and attempts < len(train):
            attempts += 1
            index = train[(train.index(index) + 1) % len(train)] if index in train else train[0]
            sample = dataset[index]
        if sample is None:
            raise RuntimeError("no readable training sample left in the dataset")
        if torch.rand((), generator=generator) < config.hflip:
            sample = flip_horizontal(sample)
        samples.append(resize_longest_side(sample, size))
    return samples


def to_images(model: EfficientViTSam, samples: list[Sample], device: torch.device) -> torch.Tensor:
    images = [torch.from_numpy(s.image).permute(2, 0, 1)[None].float().to(device) for s in samples]
    return torch.cat([model.preprocess(image) for image in images])


@torch.no_grad()
def validate(
    model: EfficientViTSam, dataset: SkippingDataset, indices: list[int], device: torch.device
) -> float | None:
    """Box-prompted mIoU on held-out images (multimask, best by predicted IoU, as the paper evaluates)."""
    was_training = model.training
    model.eval()
    ious = []
    size = model.encoder_size
    for index in indices:
        sample = dataset[index]
        if sample is None:
            continue
        sample = resize_longest_side(sample, size)
        embedding = model.encode(to_images(model, [sample], device))
        boxes = torch.from_numpy(sample.boxes).to(device) * (PROMPT_FRAME / size)
        low, iou = model.decode(embedding, boxes=boxes, multimask_output=True)
        best = low[torch.arange(len(low)), iou.argmax(1)][:, None]
        logits = F.interpolate(best, (size, size), mode="bilinear", align_corners=False)[:, 0]
        gt = F.pad(torch.from_numpy(sample.masks), (0, size - sample.masks.shape[2], 0, size - sample.masks.shape[1]))
        ious.append(mask_iou(logits, gt.float().to(device)))
    model.train(was_training)
    return torch.cat(ious).mean().item() if ious else None


# ------------------------------------------------------------------------------------------- loop
def build_model_for(config: TrainConfig, init: str | None, device: torch.device) -> EfficientViTSam:
    if init is None:
        return EfficientViTSam(get_variant(config.variant).config).to(device)
    model = load_model(init, device=device)
    if model.variant != get_variant(config.variant).name:
        raise ValueError(f"--init is a '{model.variant}' model but the config trains '{config.variant}'")
    return model


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint so every step appears exactly once."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{line}\n" for line in kept)))


def train(
    config: TrainConfig,
    data: str | Path,
    out: str | Path,
    init: str | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> EfficientViTSam:
    """Run (or continue) training; writes ``out/model.safetensors`` and returns the trained model.

    ``stop_at`` ends this invocation after that step with a checkpoint (the schedule still spans
    ``max_steps``), for time-boxed sessions that ``resume`` later.
    """
    rank, world, device = init_distributed()
    out = Path(out)
    dataset = open_dataset(data, max_masks=config.max_masks, seed=config.seed)
    train_indices, val_indices = split_indices(dataset, config.val_fraction)
    checkpoint_path = out / CHECKPOINT
    if resume and not checkpoint_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}")
    if not resume and checkpoint_path.is_file():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = build_model_for(config, init, device)
    if config.freeze_image_encoder:
        model.image_encoder.requires_grad_(False)
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr * world)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    step = 0
    if resume:
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = state["step"]
    trainer: nn.Module = SamTrainingStep(model, config)
    if world > 1:
        trainer = nn.parallel.DistributedDataParallel(trainer, find_unused_parameters=True)

    writer = None
    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(config.to_yaml()))
        _trim_metrics(metrics_path, step)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if resume else None)
    bar = None
    if rank == 0 and progress:
        from tqdm import tqdm

        bar = tqdm(total=config.max_steps, initial=step, desc="train", unit="step")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    started = time.perf_counter()
    last = config.max_steps if stop_at is None else min(stop_at, config.max_steps)
    while step < last:
        generator = step_generator(config, step, rank)
        torch.manual_seed(generator.initial_seed())  # global-RNG users (loss point sampling) too
        indices = batch_indices(train_indices, step, rank, world, config.batch_size, config.seed)
        samples = prepare_batch(dataset, indices, train_indices, config, model.encoder_size, generator)
        images = to_images(model, samples, device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            losses = trainer(images, samples, generator)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss'].item():.3f}")

        if rank == 0 and (step % config.log_every == 0 or step == config.max_steps):
            record = {"step": step, "lr": scheduler.get_last_lr()[0]}
            record.update({key: round(value.item(), 6) for key, value in losses.items()})
            record["images_per_s"] = round(config.batch_size * world * step / (time.perf_counter() - started), 3)
            if val_indices and (step % config.val_every == 0 or step == config.max_steps):
                val_miou = validate(model, dataset, val_indices, device)
                if val_miou is not None:  # None: no readable validation image
                    record["val_miou"] = round(val_miou, 6)
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            for key, value in record.items():
                if key != "step":
                    writer.add_scalar(key, value, step)
        if rank == 0 and (step % config.ckpt_every == 0 or step in (last, config.max_steps)):
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "config": asdict(config),
            }
            atomic_write(checkpoint_path, lambda tmp, state=state: torch.save(state, tmp))
    if bar is not None:
        bar.close()
    if rank == 0:
        writer.close()
        if step == config.max_steps:
            save_safetensors(model.state_dict(), out / FINAL_WEIGHTS, model.variant)
    if dist.is_initialized():
        dist.barrier()
    return model
