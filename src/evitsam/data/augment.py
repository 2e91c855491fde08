"""Training-time geometry: resize exactly as inference does, and horizontal flips."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..transforms import SamTransform, get_preprocess_shape
from .sample import Sample


def flip_horizontal(sample: Sample) -> Sample:
    """Mirror image, masks and boxes left-right."""
    width = sample.image.shape[1]
    boxes = sample.boxes.copy()
    boxes[:, [0, 2]] = width - sample.boxes[:, [2, 0]]
    return Sample(
        np.ascontiguousarray(sample.image[:, ::-1]),
        np.ascontiguousarray(sample.masks[:, :, ::-1]),
        boxes,
        sample.image_id,
    )


def resize_longest_side(sample: Sample, size: int) -> Sample:
    """Long side to ``size``: the image with the inference resize (PIL bilinear), masks antialiased + 0.5 threshold.

    Using the inference resize for training images means the model learns on exactly the pixels it
    will see at test time (the official trainer used a different, tensor-based resize).
    """
    height, width = sample.image.shape[:2]
    new_h, new_w = get_preprocess_shape(height, width, size)
    image = SamTransform(size).apply_image(sample.image)
    if len(sample.masks):
        masks = torch.from_numpy(sample.masks).float()[:, None]
        masks = F.interpolate(masks, (new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        masks = (masks[:, 0] > 0.5).numpy()
    else:
        masks = np.zeros((0, new_h, new_w), dtype=bool)
    scale = np.array([new_w / width, new_h / height] * 2, dtype=np.float32)
    return Sample(image, masks, sample.boxes * scale, sample.image_id)
