"""The masks "segment everything" has kept so far, filtered and merged as one table (one row per mask)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass
class MaskCandidates:
    """Masks kept so far, one row per mask; ``rles`` are COCO RLEs in the full-image frame."""

    iou_preds: torch.Tensor  # (N,) float
    stability_score: torch.Tensor  # (N,) float
    points: torch.Tensor  # (N, 2) float64, (x, y) in the full image
    boxes: torch.Tensor  # (N, 4) XYXY, inclusive max corner, full image
    crop_boxes: torch.Tensor  # (N, 4) XYXY
    rles: list[dict[str, Any]]

    @classmethod
    def empty(cls) -> MaskCandidates:
        return cls(
            torch.zeros(0),
            torch.zeros(0),
            torch.zeros(0, 2, dtype=torch.float64),
            torch.zeros(0, 4),
            torch.zeros(0, 4),
            [],
        )

    def __len__(self) -> int:
        return len(self.rles)

    def take(self, index: torch.Tensor) -> MaskCandidates:
        index = torch.as_tensor(index).cpu()
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rles"}
        taken = {name: value[index] for name, value in values.items()}
        return MaskCandidates(**taken, rles=[self.rles[i] for i in index.tolist()])

    @classmethod
    def cat(cls, parts: list[MaskCandidates]) -> MaskCandidates:
        parts = [p for p in parts if len(p)] or [cls.empty()]
        tensors = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls) if f.name != "rles"}
        return cls(**tensors, rles=[rle for p in parts for rle in p.rles])
