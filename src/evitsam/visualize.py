"""The one overlay renderer: masks over their image, for people to look at.

Every mask gets its own colour (one palette: golden-ratio steps around the hue circle, so neighbours
differ), blended at one transparency, and an outline: a white line edged in black, visible on any
background, so a blue mask on a blue object (or a mask on a mask) still shows where it ends.
Smaller masks are drawn over larger ones; prompts (points, boxes) are drawn last.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

ALPHA = 0.5  # weight of the mask colour in the fill
FOREGROUND, BACKGROUND = (0, 220, 0), (230, 0, 0)  # point prompts: label 1 / label 0
_GOLDEN = 0.618033988749895
_FIRST_HUE = 0.58  # the first mask is blue, then orange, green, magenta...


def mask_colours(count: int) -> np.ndarray:
    """(count, 3) uint8 RGB colours, bright and saturated, each far in hue from the one before."""
    hues = (_FIRST_HUE + np.arange(count) * _GOLDEN) % 1.0 * 255
    hsv = np.stack([hues, np.full(count, 210), np.full(count, 255)], axis=1).round().astype(np.uint8)
    return np.asarray(Image.fromarray(hsv[None], mode="HSV").convert("RGB"))[0].reshape(count, 3)


def _line_width(size: tuple[int, int]) -> int:
    return max(1, round(max(size) / 600))


def render_overlay(
    image: np.ndarray | Image.Image,
    masks: Sequence[np.ndarray],
    points: Sequence[tuple[float, float, int]] = (),
    boxes: Sequence[Sequence[float]] = (),
) -> Image.Image:
    """``image`` (HxWx3 uint8 RGB or PIL) with ``masks`` (HxW bool) filled, outlined, and the prompts drawn.

    Box ``i`` is drawn in mask ``i``'s colour (one mask per box); points are green (foreground) or red.
    """
    import cv2

    picture = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 RGB, got shape {picture.shape}")
    masks = [np.asarray(mask, dtype=bool) for mask in masks]
    for i, mask in enumerate(masks):
        if mask.shape != picture.shape[:2]:
            raise ValueError(f"mask {i} has shape {mask.shape}, the image {picture.shape[:2]}")
    colours = mask_colours(len(masks))
    width = _line_width(picture.shape[:2])
    order = np.argsort([-int(mask.sum()) for mask in masks], kind="stable")  # largest first, smallest on top
    out = picture.astype(np.float32)
    for i in order:
        out[masks[i]] = (1 - ALPHA) * out[masks[i]] + ALPHA * colours[i]
    out = out.round().astype(np.uint8)
    for i in order:
        contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (0, 0, 0), 3 * width, lineType=cv2.LINE_AA)
        cv2.drawContours(out, contours, -1, (255, 255, 255), width, lineType=cv2.LINE_AA)
    drawn = Image.fromarray(out)
    draw = ImageDraw.Draw(drawn)
    for i, box in enumerate(boxes):
        colour = tuple(int(c) for c in colours[i]) if i < len(masks) else (255, 255, 255)
        draw.rectangle(tuple(box), outline=(0, 0, 0), width=3 * width)
        draw.rectangle(tuple(box), outline=colour, width=width)
    radius = max(3, round(5 * max(picture.shape[:2]) / 500))
    for x, y, label in points:
        fill = FOREGROUND if label == 1 else BACKGROUND
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill, outline=(255, 255, 255))
    return drawn
