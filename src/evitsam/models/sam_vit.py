"""SAM's ViT image encoder (ViT-B/L/H), the teacher of stage-1 distillation.

Parameter names equal those under ``image_encoder.`` in Meta's ``sam_vit_*.pth`` checkpoints, so
they load strictly. Architecture (Kirillov et al., 2023): 16x16 patches of a 1024x1024 input,
absolute position embedding on the 64x64 grid, pre-norm transformer blocks with decomposed
relative positions, windowed (14x14) attention except a few global blocks, and a conv neck to
the 256x64x64 embedding. Attention runs through ``scaled_dot_product_attention`` with the relative
position term as an additive bias, which is what makes a ViT-H teacher affordable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import LayerNorm2d

SAM_IMAGE_SIZE = 1024
PATCH_SIZE = 16
WINDOW_SIZE = 14
NECK_CHANNELS = 256


@dataclass(frozen=True)
class SamViTConfig:
    width: int
    depth: int
    heads: int
    global_blocks: tuple[int, ...]


SAM_VITS: dict[str, SamViTConfig] = {
    "vit_b": SamViTConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamViTConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamViTConfig(1280, 32, 16, (7, 15, 23, 31)),
}


def relative_positions(size: int, table: torch.Tensor) -> torch.Tensor:
    """(size, size, C) embeddings of every query-key offset along one axis (q and k grids equal)."""
    if table.shape[0] != 2 * size - 1:  # a table trained for another grid: resample it
        table = F.interpolate(table.T[None], size=2 * size - 1, mode="linear")[0].T
    index = torch.arange(size, device=table.device)
    return table[index[:, None] - index[None, :] + size - 1]


class Attention(nn.Module):
    """Multi-head self-attention over an (B, H, W, C) grid with decomposed relative positions."""

    def __init__(self, width: int, heads: int, grid: int) -> None:
        super().__init__()
        self.heads = heads
        head_width = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, head_width))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, head_width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, height * width, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        # Bias[q=(i, j), k=(m, n)] = <q_ij, R_h[i, m]> + <q_ij, R_w[j, n]>
        grid_q = q.reshape(batch, self.heads, height, width, -1)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, relative_positions(height, self.rel_pos_h))
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, relative_positions(width, self.rel_pos_w))
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(batch, self.heads, height * width, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(batch, height, width, -1))


class MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(width, 4 * width)
        self.lin2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; ``window`` > 0 attends within non-overlapping windows."""

    def __init__(self, width: int, heads: int, window: int, grid: int) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads, window or grid)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window:
            batch, height, width, channels = y.shape
            size = self.window
            pad_h, pad_w = -height % size, -width % size
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))  # zero padding, as SAM
            rows, cols = (height + pad_h) // size, (width + pad_w) // size
            y = y.reshape(batch, rows, size, cols, size, channels).transpose(2, 3).reshape(-1, size, size, channels)
            y = self.attn(y)
            y = y.reshape(batch, rows, cols, size, size, channels).transpose(2, 3)
            y = y.reshape(batch, rows * size, cols * size, channels)[:, :height, :width]
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, H, W, C)


class SamViTEncoder(nn.Module):
    """(B, 3, 1024, 1024) normalised, padded images -> (B, 256, 64, 64) embeddings."""

    encoder_size = SAM_IMAGE_SIZE

    def __init__(self, config: SamViTConfig) -> None:
        super().__init__()
        grid = SAM_IMAGE_SIZE // PATCH_SIZE
        self.patch_embed = PatchEmbed(config.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.width))
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, 0 if i in config.global_blocks else WINDOW_SIZE, grid)
            for i in range(config.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(config.width, NECK_CHANNELS, 1, bias=False),
            LayerNorm2d(NECK_CHANNELS),
            nn.Conv2d(NECK_CHANNELS, NECK_CHANNELS, 3, padding=1, bias=False),
            LayerNorm2d(NECK_CHANNELS),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
