"""Training configurations: flat, typed dataclasses read from YAML and overridable with key=value.

:class:`RunConfig` holds what every run shares (optimisation, schedule, bookkeeping);
:class:`TrainConfig` (stage 2, end-to-end) and :class:`DistillConfig` (stage 1) add their own keys.
Unknown keys and wrongly typed values are refused with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml

C = TypeVar("C", bound="RunConfig")
AMP_MODES = ("fp32", "bf16", "fp16")
CLIP_MODES = ("norm", "value")


@dataclass
class RunConfig:
    variant: str = "tiny"  # the model trained; "auto": the variant of --init
    # data
    batch_size: int = 2  # images per process and step
    hflip: float = 0.5
    val_fraction: float = 0.1  # last images of the dataset, never trained on
    # optimisation
    lr: float = 1e-4  # per process; scaled by world size like the official recipe
    weight_decay: float = 0.1
    warmup_steps: int = 0
    max_steps: int = 1000
    epochs: float = 0.0  # > 0: max_steps = ceil(epochs x training images / (batch_size x processes))
    grad_clip: float = 1.0  # 0 disables
    grad_clip_mode: str = "norm"  # norm: global L2 norm; value: element-wise (the official recipe, at 2.0)
    amp: str = "fp32"  # fp32 | bf16 | fp16
    max_minutes: float = 0.0  # > 0: the schedule is shortened to what fits in this many minutes (time-boxed runs)
    grad_checkpointing: bool = False  # recompute encoder stages in backward: less memory for XL models
    seed: int = 0
    # bookkeeping
    log_every: int = 10
    ckpt_every: int = 100
    val_every: int = 200

    @classmethod
    def from_yaml(cls: type[C], path: str | Path | None, overrides: list[str] = ()) -> C:
        values = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"config file not found: {path}")
            values = yaml.safe_load(path.read_text()) or {}
            if not isinstance(values, dict):
                raise ValueError(f"{path} must hold a mapping of settings, got {type(values).__name__}")
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected key=value")
            values[key.strip()] = yaml.safe_load(raw)
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls: type[C], values: dict) -> C:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {', '.join(fields)}")
        config = cls()
        for key, value in values.items():
            expected = type(getattr(config, key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ValueError(f"config key {key!r} must be {expected.__name__}, got {value!r}")
            setattr(config, key, value)
        config.check()
        return config

    def check(self) -> None:
        """Refuse values that would only fail (or silently misbehave) hours into a run."""
        if self.amp not in AMP_MODES:
            raise ValueError(f"config key 'amp' must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.grad_clip_mode not in CLIP_MODES:
            raise ValueError(f"config key 'grad_clip_mode' must be norm or value, got {self.grad_clip_mode!r}")
        for key in ("batch_size", "max_steps", "log_every", "ckpt_every", "val_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.max_minutes < 0:
            raise ValueError(f"config key 'max_minutes' must be >= 0 (0: no time limit), got {self.max_minutes}")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.hflip <= 1:
            raise ValueError("config keys 'val_fraction' must be in [0, 1) and 'hflip' in [0, 1]")

    def steps_for(self, train_images: int, world: int) -> int:
        """``max_steps``, or the steps that cover ``epochs`` passes over the training images."""
        if self.epochs <= 0:
            return self.max_steps
        return max(1, math.ceil(self.epochs * train_images / (self.batch_size * world)))

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


@dataclass
class TrainConfig(RunConfig):
    """Stage 2: the whole model trained end to end from prompts (SAM's interactive recipe)."""

    max_masks: int = 16  # masks (prompts) per image and step
    workers: int = 0  # DataLoader processes reading and augmenting the next steps' images (0: in the main process)
    include_crowd: bool = False  # COCO data: also train on crowd regions (iscrowd=1)
    min_mask_area: float = 1.0  # leave out masks smaller than this (pixels of the original image)
    # prompts
    box_prob: float = 0.5  # otherwise points
    box_jitter: float = 0.1  # std of corner noise, as a fraction of the box side (official: 0)
    max_positive_points: int = 10
    max_negative_points: int = 3  # official: 0
    multimask_prob: float = 0.5
    correction_iters: int = 1  # extra passes with a correction click and the previous mask as prompt (official: 0)
    # loss
    focal: bool = True  # False: BCE, as the official trainer
    mask_weight: float = 20.0
    iou_weight: float = 1.0  # IoU-head MSE (official: 0, the head is not trained)
    num_points: int = 112 * 112
    freeze_image_encoder: bool = False

    def check(self) -> None:
        super().check()
        if self.workers < 0:
            raise ValueError(f"config key 'workers' must be >= 0, got {self.workers}")
        if self.max_masks < 1 or self.max_positive_points < 1 or self.num_points < 1:
            raise ValueError("config keys 'max_masks', 'max_positive_points' and 'num_points' must be >= 1")


@dataclass
class DistillConfig(RunConfig):
    """Stage 1: the student's image encoder learns the teacher's embeddings (MSE, the paper's L2)."""

    copy_decoder: bool = True  # start the student's prompt encoder + mask decoder from the teacher's
