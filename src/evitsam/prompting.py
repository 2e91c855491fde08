"""Prompts as people give them: points and boxes in image pixels -> one mask per object.

The rule (shared by the command line and anything else that takes loose prompts): all points and at most
one box describe one object; several boxes describe one object each, every box sharing the points.
Several boxes go through the decoder in one batched call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .predictor import SamPredictor

Point = tuple[float, float, int]  # x, y, label (1 foreground, 0 background)
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def outside_image(point: tuple[float, float], size: tuple[int, int]) -> bool:
    """Whether pixel coordinates (x, y) lie off an image of ``size`` (height, width); edges count as inside."""
    height, width = size
    return not (0 <= point[0] <= width and 0 <= point[1] <= height)


def clip_box(box: Box, size: tuple[int, int]) -> Box | None:
    """``box`` clipped to the image of ``size`` (height, width); None when no part of it is on the image."""
    height, width = size
    x0, y0, x1, y1 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height))
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def predict_objects(
    predictor: SamPredictor, points: Sequence[Point], boxes: Sequence[Box], multimask: bool = False
) -> list[tuple[np.ndarray, float]]:
    """(mask, score) per object: one for all points (+ one box), or one per box sharing the points.

    With ``multimask`` the decoder proposes 3 masks per object and the best-scoring one is kept.
    """
    import torch

    if not points and not boxes:
        raise ValueError("no prompt: give at least one point or box")
    coords = np.array([p[:2] for p in points], dtype=np.float64).reshape(-1, 2) if points else None
    labels = np.array([p[2] for p in points], dtype=np.float64) if points else None
    if len(boxes) <= 1:
        box = np.array(boxes[0], dtype=np.float64) if boxes else None
        masks, scores, _ = predictor.predict(coords, labels, box, multimask_output=multimask)
        best = int(np.argmax(scores))
        return [(masks[best], float(scores[best]))]
    size, device = predictor.original_size, predictor.device
    box_tensor = predictor.transform.apply_boxes_torch(torch.tensor(boxes, dtype=torch.float, device=device), size)
    coord_tensor = label_tensor = None
    if points:
        coord_tensor = predictor.transform.apply_coords_torch(torch.tensor(coords, device=device)[None], size)
        coord_tensor = coord_tensor.repeat(len(boxes), 1, 1)
        label_tensor = torch.tensor(labels, dtype=torch.float, device=device)[None].repeat(len(boxes), 1)
    masks, scores, _ = predictor.predict_torch(coord_tensor, label_tensor, box_tensor, multimask_output=multimask)
    best = scores.argmax(dim=1)
    rows = torch.arange(len(boxes), device=best.device)
    return list(zip(masks[rows, best].cpu().numpy(), scores[rows, best].float().cpu().tolist(), strict=True))
