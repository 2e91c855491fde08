"""Convolutional building blocks of the EfficientViT encoder.

Module and attribute names mirror the official implementation on purpose: they *are* the
state-dict keys of the released checkpoints (``conv``, ``norm``, ``main``, ``op_list`` ...).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

NORM_EPS = 1e-6  # every norm of the official models runs with this eps (set_norm_eps in the zoo)


def gelu_tanh() -> nn.Module:
    """The encoder's GELU is the tanh approximation (not the exact erf of SAM's decoder)."""
    return nn.GELU(approximate="tanh")


class ConvLayer(nn.Module):
    """Conv2d with "same" padding, then optional BatchNorm and optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        use_bias: bool = False,
        use_norm: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=use_bias
        )
        self.norm = nn.BatchNorm2d(out_channels, eps=NORM_EPS) if use_norm else None
        self.act = gelu_tanh() if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class ResBlock(nn.Module):
    """Two 3x3 convs (BN after each, GELU after the first): the stage-0 block."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand: float = 1.0) -> None:
        super().__init__()
        mid = round(in_channels * expand)
        self.conv1 = ConvLayer(in_channels, mid, 3, stride)
        self.conv2 = ConvLayer(mid, out_channels, 3, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class FusedMBConv(nn.Module):
    """3x3 expansion conv fused with the spatial conv, then a 1x1 projection (BN after both)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand: float = 4.0) -> None:
        super().__init__()
        mid = round(in_channels * expand)
        self.spatial_conv = ConvLayer(in_channels, mid, 3, stride)
        self.point_conv = ConvLayer(mid, out_channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class MBConv(nn.Module):
    """Inverted bottleneck in the "fewer norm" form the SAM encoders use.

    1x1 expansion and depthwise 3x3 carry biases and no norm; only the 1x1 projection has BN.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand: float = 4.0) -> None:
        super().__init__()
        mid = round(in_channels * expand)
        self.inverted_conv = ConvLayer(in_channels, mid, 1, use_bias=True, use_norm=False)
        self.depth_conv = ConvLayer(mid, mid, 3, stride, groups=mid, use_bias=True, use_norm=False)
        self.point_conv = ConvLayer(mid, out_channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class ResidualBlock(nn.Module):
    """``main(x) + x`` when ``residual`` else ``main(x)``; no post-activation, no pre-norm."""

    def __init__(self, main: nn.Module, residual: bool) -> None:
        super().__init__()
        self.main = main
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + x if self.residual else self.main(x)


class OpSequential(nn.Module):
    """A plain sequence kept under ``op_list`` so checkpoint keys read ``op_list.<i>``."""

    def __init__(self, ops: Iterable[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map (biased variance), as SAM and EfficientViT use."""

    def __init__(self, num_channels: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(1, keepdim=True)
        x = centred * torch.rsqrt(centred.pow(2).mean(1, keepdim=True) + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]
