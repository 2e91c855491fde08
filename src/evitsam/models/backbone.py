"""EfficientViT "large" backbones (L and XL series) used as SAM image encoders."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import EfficientViTBlock
from .blocks import ConvLayer, FusedMBConv, MBConv, OpSequential, ResBlock, ResidualBlock

LOCAL_BLOCKS = {"res": ResBlock, "fmb": FusedMBConv, "mb": MBConv}


@dataclass(frozen=True)
class BackboneConfig:
    """Per-stage description; stage 0 is the stem conv plus ``depths[0]`` ResBlocks.

    ``block_types`` entries are ``res``, ``fmb``, ``mb`` or ``att@<scale>`` (EfficientViT blocks).
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    block_types: tuple[str, ...]
    expands: tuple[float, ...]


def _attention_scale(block_type: str) -> int | None:
    return int(block_type.split("@")[1]) if block_type.startswith("att@") else None


class EfficientViTLargeBackbone(nn.Module):
    """Returns a dict ``{"stage0": ..., "stageN": ...}`` of feature maps (strides 2, 4, ... 2^(N+1))."""

    def __init__(self, config: BackboneConfig, in_channels: int = 3) -> None:
        super().__init__()
        stages: list[OpSequential] = []
        width0 = config.widths[0]
        stem = [ConvLayer(in_channels, width0, 3, stride=2)]
        stem += [
            ResidualBlock(ResBlock(width0, width0, expand=config.expands[0]), True) for _ in range(config.depths[0])
        ]
        stages.append(OpSequential(stem))

        channels = width0
        for width, depth, block_type, expand in zip(
            config.widths[1:], config.depths[1:], config.block_types[1:], config.expands[1:]
        ):
            scale = _attention_scale(block_type)
            # Stage entry: a strided local block without residual, 4x the stage's expansion;
            # attention stages enter through an MBConv.
            entry_block = LOCAL_BLOCKS["mb" if scale is not None else block_type]
            ops: list[nn.Module] = [ResidualBlock(entry_block(channels, width, stride=2, expand=expand * 4), False)]
            for _ in range(depth):
                if scale is not None:
                    ops.append(EfficientViTBlock(width, scale, expand))
                else:
                    ops.append(ResidualBlock(LOCAL_BLOCKS[block_type](width, width, expand=expand), True))
            stages.append(OpSequential(ops))
            channels = width
        self.stages = nn.ModuleList(stages)
        # Training option: keep only stage outputs and recompute the inside of each stage during
        # backward (less activation memory, ~30 % more compute). BatchNorm statistics are updated
        # again by the recomputation, as with any activation checkpointing of BN networks.
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        for index, stage in enumerate(self.stages):
            x = checkpoint(stage, x, use_reentrant=False) if recompute else stage(x)
            features[f"stage{index}"] = x
        return features
