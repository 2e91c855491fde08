"""SAM neck: fuses three backbone stages into the 256xGxG image embedding (G = 64 for official models)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvLayer, FusedMBConv, OpSequential, ResidualBlock

EMBED_DIM = 256
EMBED_SIZE = 64


class UpsampleTo(nn.Module):
    """Bicubic resize to a fixed size (an exact identity when the size already matches)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)


class SamNeck(nn.Module):
    """Project each input stage to 256 channels, resize to the grid, sum, refine, project.

    The whole neck runs in fp32 even under autocast: it sums features of very different
    magnitudes, and half precision here is one of the reasons official fp16 encoders fail.
    """

    def __init__(
        self,
        in_keys: tuple[str, ...],
        in_channels: tuple[int, ...],
        depth: int,
        expand: float,
        grid: int = EMBED_SIZE,
    ) -> None:
        super().__init__()
        self.in_keys = in_keys
        self.input_ops = nn.ModuleList(
            [OpSequential([ConvLayer(c, EMBED_DIM, 1, act=False), UpsampleTo(grid)]) for c in in_channels]
        )
        self.middle = OpSequential(
            [ResidualBlock(FusedMBConv(EMBED_DIM, EMBED_DIM, expand=expand), True) for _ in range(depth)]
        )
        self.output_ops = nn.ModuleList(
            [OpSequential([ConvLayer(EMBED_DIM, EMBED_DIM, 1, use_bias=True, use_norm=False, act=False)])]
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(features[self.in_keys[0]].device.type, enabled=False):
            projected = [op(features[key].float()) for key, op in zip(self.in_keys, self.input_ops)]
            fused = projected[-1]
            for feature in reversed(projected[:-1]):  # f0 + (f1 + f2), the official order
                fused = feature + fused
            return self.output_ops[0](self.middle(fused))
