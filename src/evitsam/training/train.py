"""Stage-2 (end-to-end) training and fine-tuning, one process or many (``torchrun``, DDP).

Written to be read top to bottom, like torchvision's reference scripts: per image, prompts are
sampled from its masks (boxes, positive and negative points), the decoder runs, and optionally
runs again with a correction click from the error region plus its previous mask as a prompt
(SAM's interactive training). The loop itself (optimiser, schedule, checkpoints, resume, logs)
is :func:`evitsam.training.loop.fit`, shared with stage 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import SkippingDataset, open_dataset
from ..data.augment import flip_horizontal, resize_longest_side
from ..data.sample import Sample, first_readable
from ..models import EfficientViTSam
from ..models.sam import PROMPT_FRAME
from .config import TrainConfig
from .loop import (
    batch_indices,
    build_model_for,
    check_run_folder,
    fit,
    split_indices,
    start_processes,
    step_generator,
)
from .losses import mask_iou, sam_loss
from .prompts import correction_clicks, jitter_boxes, sample_points


# ------------------------------------------------------------------------------------------- step
class SamTrainingStep(nn.Module):
    """The model plus one training step's forward, so DDP sees a single ``forward``."""

    def __init__(self, model: EfficientViTSam, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, images: torch.Tensor, targets: list[Sample], generator: torch.Generator) -> dict:
        """Every mask of every image in one decoder batch (one prompt kind per step, drawn with ``generator``)."""
        config, size = self.config, self.model.encoder_size
        device = images.device
        embeddings = self.model.encode(images)
        scale = PROMPT_FRAME / size  # resized-image pixels -> 1024 prompt frame
        padded = [
            F.pad(torch.from_numpy(s.masks), (0, size - s.masks.shape[2], 0, size - s.masks.shape[1])) for s in targets
        ]
        gt_cpu = torch.cat(padded)  # prompt sampling draws from a CPU generator
        gt = gt_cpu.to(device)
        owner = torch.cat([torch.full((len(masks),), i, dtype=torch.long) for i, masks in enumerate(padded)])
        # one embedding per prompt; a single image stays shared (the decoder then projects it once), taken
        # through the same view ops as a per-image loop so its gradients are summed in the same order
        image_embeddings = embeddings[0][None] if len(targets) == 1 else embeddings[owner.to(device)]
        boxes = coords = labels = None
        if torch.rand((), generator=generator) < config.box_prob:
            jittered = [
                jitter_boxes(torch.from_numpy(s.boxes), s.masks.shape[1:], config.box_jitter, generator)
                for s in targets
            ]
            boxes = (torch.cat(jittered) * scale).to(device)
        else:
            n_pos = int(torch.randint(1, config.max_positive_points + 1, (), generator=generator))
            n_neg = int(torch.randint(0, config.max_negative_points + 1, (), generator=generator))
            coords, labels = sample_points(gt_cpu, n_pos, n_neg, generator)
            coords, labels = (coords * scale).to(device), labels.to(device)
        multimask = bool(torch.rand((), generator=generator) < config.multimask_prob)
        mask_input = None
        totals: dict[str, torch.Tensor] = {}
        for iteration in range(1 + config.correction_iters):
            low, iou = self.model.decode(image_embeddings, coords, labels, boxes, mask_input, multimask)
            losses = sam_loss(low, iou, gt, config.num_points, config.mask_weight, config.focal, config.iou_weight)
            for key, value in losses.items():
                totals[key] = totals.get(key, 0) + value
            if iteration == config.correction_iters:
                break
            best = iou.argmax(1)
            mask_input = low[torch.arange(len(low)), best][:, None].detach()
            predicted = F.interpolate(mask_input, (size, size), mode="bilinear", align_corners=False)[:, 0] > 0
            click, click_label = correction_clicks(predicted.cpu(), gt_cpu, generator)
            click, click_label = (click * scale).to(device), click_label.to(device)
            coords = click if coords is None else torch.cat([coords, click], 1)
            labels = click_label if labels is None else torch.cat([labels, click_label], 1)
            multimask = False
        passes = 1 + config.correction_iters
        return {key: value / passes for key, value in totals.items()}


def prepare_batch(
    dataset: SkippingDataset, indices: list[int], train: list[int], config: TrainConfig, size: int, generator
) -> list[Sample]:
    """Load, flip and resize; an unreadable sample is replaced by the next readable training image."""
    samples = []
    for index in indices:
        _, sample = first_readable(dataset.__getitem__, index, train)
        if torch.rand((), generator=generator) < config.hflip:
            sample = flip_horizontal(sample)
        samples.append(resize_longest_side(sample, size))
    return samples


class StepSamples(torch.utils.data.Dataset):
    """Item i: the samples of step ``first + i`` and the files skipped preparing them, so DataLoader
    workers read and augment the next steps' images while the model trains on this one's."""

    def __init__(self, prepare: Callable[[int], list[Sample]], dataset: SkippingDataset, first: int, last: int):
        self.prepare, self.dataset, self.first, self.last = prepare, dataset, first, last

    def __len__(self) -> int:
        return self.last - self.first

    def __getitem__(self, i: int) -> tuple[int, list[Sample], int]:
        skipped = self.dataset.skipped
        samples = self.prepare(self.first + i)
        return self.first + i, samples, self.dataset.skipped - skipped


def _as_is(item):
    return item


class StepLoader:
    """``samples(step)`` for consecutive steps, prepared ``workers`` processes ahead (or here, with 0)."""

    def __init__(self, prepare: Callable[[int], list[Sample]], dataset: SkippingDataset, workers: int, last: int):
        self.prepare, self.dataset, self.workers, self.last = prepare, dataset, workers, last
        self.iterator = None
        self.skipped = 0  # files skipped in the workers (the main process's dataset counts its own)

    def samples(self, step: int) -> list[Sample]:
        if self.workers == 0:
            return self.prepare(step)
        if self.iterator is None:
            steps = StepSamples(self.prepare, self.dataset, step, self.last)
            loader = torch.utils.data.DataLoader(
                steps,
                batch_size=None,
                num_workers=self.workers,
                collate_fn=_as_is,
                prefetch_factor=4,
                generator=torch.Generator(),  # its own: creating workers must not draw from the global RNG
            )
            self.iterator = iter(loader)
        prepared_step, samples, skipped = next(self.iterator)
        if prepared_step != step:
            raise RuntimeError(f"data loader out of step: prepared step {prepared_step}, training step {step}")
        self.skipped += skipped
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

    ``init`` starts from existing weights (a variant name or a checkpoint: fine-tuning, or stage 2
    after distillation). ``stop_at`` ends this invocation after that step with a checkpoint (the
    schedule still spans ``max_steps``), for time-boxed sessions that ``resume`` later.
    """
    process = start_processes()
    out = Path(out)
    check_run_folder(out, resume)
    dataset = open_dataset(
        data, config.max_masks, config.seed, include_crowd=config.include_crowd, min_area=config.min_mask_area
    )
    train_indices, val_indices = split_indices(len(dataset), config.val_fraction)
    config.max_steps = config.steps_for(len(train_indices), process.world)

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = build_model_for(config, init, process.device)
    if config.freeze_image_encoder:
        model.image_encoder.requires_grad_(False)
    model.train()

    def prepare(step: int) -> list[Sample]:
        """One step's samples: a function of the step alone (its own generator stream), wherever it runs."""
        indices = batch_indices(train_indices, step, process.rank, process.world, config.batch_size, config.seed)
        generator = step_generator(config.seed, step, process.rank, stream=1)
        return prepare_batch(dataset, indices, train_indices, config, model.encoder_size, generator)

    loader = StepLoader(prepare, dataset, config.workers, config.max_steps)

    def make_batch(step: int, generator: torch.Generator) -> tuple:
        samples = loader.samples(step)
        return to_images(model, samples, process.device), samples

    def validation() -> dict[str, float]:
        miou = validate(model, dataset, val_indices, process.device) if val_indices else None
        return {} if miou is None else {"val_miou": miou}  # None: no readable validation image

    step_module = SamTrainingStep(model, config)
    fit(config, process, model, step_module, make_batch, out, resume=resume, stop_at=stop_at, progress=progress,
        validate=validation, counters=lambda: {"skipped_files": dataset.skipped + loader.skipped})  # fmt: skip
    return model
