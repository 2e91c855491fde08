"""Prompt sampling for end-to-end training: jittered boxes, positive and negative points,
and SAM-style correction clicks drawn from the error region of the previous prediction.

All functions take (K, H, W) boolean masks in the pixel frame of the (resized) image and return
prompts in that frame; the training loop maps them to the 1024 prompt frame like inference does.
"""

from __future__ import annotations

import torch

from ..models.prompt_encoder import LABEL_NEGATIVE, LABEL_PADDING, LABEL_POSITIVE


def jitter_boxes(boxes: torch.Tensor, image_size: tuple[int, int], noise: float, generator=None) -> torch.Tensor:
    """XYXY boxes with each corner moved by N(0, noise x side length), clipped to the image, kept non-empty."""
    if noise <= 0:
        return boxes.clone()
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    moved = boxes + torch.randn(boxes.shape, generator=generator) * noise * sides
    height, width = image_size
    moved[:, [0, 2]] = moved[:, [0, 2]].clamp(0, width)
    moved[:, [1, 3]] = moved[:, [1, 3]].clamp(0, height)
    moved[:, 2:] = torch.maximum(moved[:, 2:], moved[:, :2] + 1)
    return moved


def _random_pixels(regions: torch.Tensor, count: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` uniform (x, y) pixel centres per region (K, H, W), and whether each region had pixels."""
    k = regions.shape[0]
    flat = regions.reshape(k, -1).float()
    valid = flat.sum(1) > 0
    weights = torch.where(valid[:, None], flat, torch.ones_like(flat))
    index = torch.multinomial(weights, count, replacement=True, generator=generator)
    width = regions.shape[2]
    coords = torch.stack([index % width, index // width], dim=-1).float()
    return coords, valid


def sample_points(
    masks: torch.Tensor, num_positive: int, num_negative: int, generator=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, P+N, 2) points and (K, P+N) labels: positives inside each mask, negatives outside it.

    Negatives are drawn near the object (inside its box grown by half its size), where a user
    would click to exclude something. Points that cannot be drawn are padding (label -1).
    """
    coords, labels = [], []
    if num_positive:
        points, valid = _random_pixels(masks, num_positive, generator)
        coords.append(points)
        labels.append(torch.where(valid[:, None], LABEL_POSITIVE, LABEL_PADDING).expand(-1, num_positive))
    if num_negative:
        near = _grown_boxes(masks) & ~masks
        points, valid = _random_pixels(near, num_negative, generator)
        coords.append(points)
        labels.append(torch.where(valid[:, None], LABEL_NEGATIVE, LABEL_PADDING).expand(-1, num_negative))
    if not coords:
        raise ValueError("ask for at least one point (num_positive + num_negative >= 1)")
    return torch.cat(coords, 1), torch.cat(labels, 1).float()


def _grown_boxes(masks: torch.Tensor) -> torch.Tensor:
    k, height, width = masks.shape
    ys = torch.arange(height)[None, :, None]
    xs = torch.arange(width)[None, None, :]
    rows, cols = masks.any(2), masks.any(1)
    big = torch.tensor(10**9)
    y0 = torch.where(rows, torch.arange(height), big).min(1).values
    y1 = torch.where(rows, torch.arange(height), -big).max(1).values
    x0 = torch.where(cols, torch.arange(width), big).min(1).values
    x1 = torch.where(cols, torch.arange(width), -big).max(1).values
    gy, gx = (y1 - y0) // 2, (x1 - x0) // 2
    inside_y = (ys >= (y0 - gy)[:, None, None]) & (ys <= (y1 + gy)[:, None, None])
    inside_x = (xs >= (x0 - gx)[:, None, None]) & (xs <= (x1 + gx)[:, None, None])
    return inside_y & inside_x


def correction_clicks(
    predicted: torch.Tensor, masks: torch.Tensor, generator=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per mask from its error region, as SAM's interactive training does.

    Drawn uniformly from false negatives (label 1) or false positives (label 0), whichever region
    is larger. A perfect prediction gets a padding point (label -1). Returns (K, 1, 2), (K, 1).
    """
    if predicted.shape != masks.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and masks {tuple(masks.shape)} must match")
    false_neg = masks & ~predicted
    false_pos = predicted & ~masks
    use_neg = false_neg.flatten(1).sum(1) >= false_pos.flatten(1).sum(1)
    region = torch.where(use_neg[:, None, None], false_neg, false_pos)
    coords, valid = _random_pixels(region, 1, generator)
    labels = torch.where(use_neg, LABEL_POSITIVE, LABEL_NEGATIVE)
    labels = torch.where(valid, labels, LABEL_PADDING)
    return coords, labels[:, None].float()
