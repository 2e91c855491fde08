"""Training configuration: one flat, typed dataclass, read from YAML, overridable with key=value."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    variant: str = "tiny"
    # data
    max_masks: int = 16  # masks (prompts) per image and step
    batch_size: int = 2  # images per process and step
    hflip: float = 0.5
    val_fraction: float = 0.1  # last images of the dataset, never trained on
    # prompts
    box_prob: float = 0.5  # otherwise points
    box_jitter: float = 0.1  # std of corner noise, as a fraction of the box side
    max_positive_points: int = 10
    max_negative_points: int = 3
    multimask_prob: float = 0.5
    correction_iters: int = 1  # extra passes with a correction click and the previous mask as prompt
    # loss
    focal: bool = True  # False: BCE, as the official trainer
    mask_weight: float = 20.0
    iou_weight: float = 1.0
    num_points: int = 112 * 112
    # optimisation
    lr: float = 1e-4  # per process; scaled by world size like the official recipe
    weight_decay: float = 0.1
    warmup_steps: int = 0
    max_steps: int = 1000
    grad_clip: float = 1.0  # global norm; 0 disables
    amp: str = "fp32"  # fp32 | bf16 | fp16
    freeze_image_encoder: bool = False
    seed: int = 0
    # bookkeeping
    log_every: int = 10
    ckpt_every: int = 100
    val_every: int = 200

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
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
    def from_dict(cls, values: dict) -> TrainConfig:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {', '.join(fields)}")
        config = cls()
        for key, value in values.items():
            default = getattr(config, key)
            expected = type(default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ValueError(f"config key {key!r} must be {expected.__name__}, got {value!r}")
            setattr(config, key, value)
        if config.amp not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"config key 'amp' must be fp32, bf16 or fp16, got {config.amp!r}")
        return config

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)
