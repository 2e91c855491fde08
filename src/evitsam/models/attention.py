"""LiteMLA: EfficientViT's lightweight multi-scale ReLU linear attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvLayer, MBConv, ResidualBlock

HEAD_DIM = 32
ATTENTION_EPS = 1e-15


class LiteMLA(nn.Module):
    """ReLU linear attention over q/k/v and a multi-scale (depthwise k x k) copy of them.

    The qkv channels are head-major ([q|k|v] per 32-channel head), matching the official weights.
    The attention itself always runs in fp32: its normaliser (a sum over thousands of tokens
    divided with eps 1e-15) overflows/underflows in half precision, which is the known cause of
    fp16 EfficientViT-SAM encoders producing empty masks.
    """

    def __init__(self, channels: int, scale: int, head_dim: int = HEAD_DIM) -> None:
        super().__init__()
        heads = channels // head_dim
        total = heads * head_dim
        self.head_dim = head_dim
        self.qkv = ConvLayer(channels, 3 * total, 1, use_norm=False, act=False)
        self.aggreg = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(3 * total, 3 * total, scale, padding=scale // 2, groups=3 * total, bias=False),
                    nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
                )
            ]
        )
        self.proj = ConvLayer(2 * total, channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, *(op(qkv) for op in self.aggreg)], dim=1)
        out = self._linear_attention(qkv).to(qkv.dtype)
        return self.proj(out)

    def _linear_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = qkv.shape
        dim = self.head_dim
        with torch.autocast(qkv.device.type, enabled=False):
            qkv = qkv.float().reshape(batch, -1, 3 * dim, height * width)
            q = F.relu(qkv[:, :, :dim])
            k = F.relu(qkv[:, :, dim : 2 * dim])
            v = qkv[:, :, 2 * dim :]
            kv = v @ k.transpose(-1, -2)  # (B, heads, dim, dim)
            numerator = kv @ q  # (B, heads, dim, N)
            denominator = k.sum(-1, keepdim=True).transpose(-1, -2) @ q  # (B, heads, 1, N)
            out = numerator / (denominator + ATTENTION_EPS)
        return out.reshape(batch, -1, height, width)


class EfficientViTBlock(nn.Module):
    """Global context (LiteMLA) then local mixing (MBConv), each with a residual connection."""

    def __init__(self, channels: int, scale: int, expand: float) -> None:
        super().__init__()
        self.context_module = ResidualBlock(LiteMLA(channels, scale), residual=True)
        self.local_module = ResidualBlock(MBConv(channels, channels, expand=expand), residual=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))
