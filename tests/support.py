"""Plain helpers the tests share: repository paths, the committed photos, deterministic random weights.

Fixtures live in conftest.py; everything here is an ordinary import (``from support import ...``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # the committed fixture folder (see its README.md)


def load_photo(name: str, portrait: bool = False) -> np.ndarray:
    """A real photo as HxWx3 uint8; ``portrait`` rotates it by 90 degrees (all demo photos are landscape)."""
    image = np.asarray(Image.open(DATA / "images" / name).convert("RGB"))
    return np.ascontiguousarray(np.rot90(image)) if portrait else image


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every tensor of a model with seeded random values, BatchNorm statistics included.

    Default initialisation leaves BN running stats at 0/1 and norms at 1/0, which would hide
    mistakes in how they are applied; random values make every tensor matter.
    """
    generator = torch.Generator().manual_seed(seed)
    for key, value in model.state_dict().items():
        if not value.dtype.is_floating_point:
            continue
        shape = value.shape
        if key.endswith("running_var"):
            value.copy_(torch.rand(shape, generator=generator) * 1.5 + 0.5)
        elif key.endswith("running_mean"):
            value.copy_(torch.randn(shape, generator=generator) * 0.1)
        elif value.dim() == 1 and key.endswith("weight"):  # norm scales
            value.copy_(1 + 0.1 * torch.randn(shape, generator=generator))
        else:
            fan_in = value[0].numel() if value.dim() > 1 else value.numel()
            value.copy_(torch.randn(shape, generator=generator) / fan_in**0.5)
    return model
