"""Procedural drawing for synthetic scenes: object shapes rasterised as masks, and textures to fill them.

A shape is rasterised once, into a :class:`Patch` clipped to the canvas; the same boolean mask then
decides which pixels get painted and which pixels are annotated, so a mask is exactly what is drawn.
Textures cover what a segmenter must see past: flat colours, gradients, periodic patterns, noise and
crops of real photos, so that objects are told apart by their boundaries, not by one kind of fill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("ellipse", "polygon", "star", "blob", "ring")
THIN = ("line", "curve", "branch")
TEXTURES = ("solid", "gradient", "stripes", "checkers", "noise")


@dataclass
class Patch:
    """A rectangle of the canvas: ``mask`` (h x w bool) at (``top``, ``left``), ``pixels`` (h x w x 3 uint8) or None."""

    top: int
    left: int
    mask: np.ndarray
    pixels: np.ndarray | None = None

    @property
    def window(self) -> tuple[slice, slice]:
        height, width = self.mask.shape
        return slice(self.top, self.top + height), slice(self.left, self.left + width)


Drawer = Callable[[ImageDraw.ImageDraw, float, float], None]


def rasterise(canvas: tuple[int, int], box: tuple[float, float, float, float], draw: Drawer) -> Patch | None:
    """Run ``draw(ImageDraw, dx, dy)`` on a blank window ``box`` (x0, y0, x1, y1) of the canvas; None if off-canvas.

    ``draw`` adds (dx, dy) to its canvas coordinates, fills the object with 255 and holes with 0.
    """
    height, width = canvas
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(width, int(np.ceil(box[2])) + 1), min(height, int(np.ceil(box[3])) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    window = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw(ImageDraw.Draw(window), -x0, -y0)
    mask = np.asarray(window) > 0
    return Patch(y0, x0, mask) if mask.any() else None


# ------------------------------------------------------------------------------------------ shapes
def _outline(rng: np.random.Generator, kind: str, radius: float) -> np.ndarray:
    """Closed outline (N x 2, centred on 0) of a filled shape with a bounding radius of about ``radius``."""
    if kind == "ellipse":
        angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        radii = np.ones_like(angles)
    elif kind == "polygon":  # regular (convex) or random star-convex polygon
        sides = int(rng.integers(3, 11))
        if rng.random() < 0.5:
            angles = np.arange(sides) * 2 * np.pi / sides
            radii = np.ones(sides)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, sides))
            radii = rng.uniform(0.45, 1.0, sides)
    elif kind == "star":
        spikes = int(rng.integers(4, 10))
        angles = np.arange(2 * spikes) * np.pi / spikes
        radii = np.where(np.arange(2 * spikes) % 2 == 0, 1.0, rng.uniform(0.3, 0.65))
    elif kind == "blob":  # smooth random radial function
        angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        orders = np.arange(1, 6)[:, None]
        amplitudes = rng.uniform(0, 0.35, (5, 1)) / orders**0.8
        radii = 1 + (amplitudes * np.cos(orders * angles + rng.uniform(0, 2 * np.pi, (5, 1)))).sum(0)
        radii = radii / radii.max()
    else:
        raise ValueError(f"shape kind must be one of {SHAPES[:-1]}, got {kind!r}")
    points = np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None] * radius
    stretch = np.diag([1.0, rng.uniform(0.35, 1.0)])  # aspect, then a random rotation
    turn = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    return points @ stretch @ rotation.T


def filled_shape(
    rng: np.random.Generator, canvas: tuple[int, int], kind: str, centre: tuple[float, float], radius: float
) -> Patch | None:
    """An ellipse, polygon, star or blob; a ``ring`` is one of them with a hole of a similar shape inside."""
    base = str(rng.choice(SHAPES[:-1])) if kind == "ring" else kind
    outer = _outline(rng, base, radius) + centre
    holes = []
    if kind == "ring":
        offset = rng.uniform(-0.15, 0.15, 2) * radius
        holes.append(_outline(rng, base if rng.random() < 0.5 else "ellipse", radius * rng.uniform(0.3, 0.7)))
        holes[0] = holes[0] + centre + offset

    def draw(pen: ImageDraw.ImageDraw, dx: float, dy: float) -> None:
        pen.polygon([tuple(p) for p in outer + (dx, dy)], fill=255)
        for hole in holes:
            pen.polygon([tuple(p) for p in hole + (dx, dy)], fill=0)

    return rasterise(canvas, (*outer.min(0), *outer.max(0)), draw)


def _bezier(rng: np.random.Generator, start: np.ndarray, length: float) -> np.ndarray:
    controls = start + np.cumsum(rng.normal(0, length / 2.5, (3, 2)), axis=0)
    t = np.linspace(0, 1, 32)[:, None]
    p0, p1, p2, p3 = start, *controls
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _branches(rng: np.random.Generator, start: np.ndarray, length: float, width: float) -> list[tuple]:
    """A random tree: (polyline, width) segments, thinner and shorter at every level."""
    segments, tips = [], [(start, rng.uniform(0, 2 * np.pi), length, width)]
    for _ in range(int(rng.integers(2, 5))):
        grown = []
        for point, heading, size, thickness in tips:
            bend = np.cumsum(rng.normal(0, 0.15, 6)) + heading
            steps = np.stack([np.cos(bend), np.sin(bend)], 1) * size / 6
            line = np.vstack([point, point + np.cumsum(steps, 0)])
            segments.append((line, thickness))
            for _ in range(int(rng.integers(1, 4))):
                grown.append((line[-1], bend[-1] + rng.uniform(-1.0, 1.0), size * 0.7, max(2.0, thickness * 0.7)))
        tips = grown
    return segments


def thin_structure(
    rng: np.random.Generator, canvas: tuple[int, int], kind: str, centre: tuple[float, float], radius: float
) -> Patch | None:
    """A straight line, a smooth curve or a branching tree, 2 to ~10 pixels wide."""
    centre_point = np.asarray(centre, dtype=float)
    width = float(rng.uniform(2, max(3.0, min(10.0, radius / 6))))
    if kind == "line":
        heading = rng.uniform(0, 2 * np.pi)
        step = np.array([np.cos(heading), np.sin(heading)]) * radius
        segments = [(np.stack([centre_point - step, centre_point + step]), width)]
    elif kind == "curve":
        segments = [(_bezier(rng, centre_point, radius), width)]
    elif kind == "branch":
        segments = _branches(rng, centre_point, radius * 0.8, width)
    else:
        raise ValueError(f"thin structure kind must be one of {THIN}, got {kind!r}")
    points = np.vstack([line for line, _ in segments])
    margin = max(w for _, w in segments)

    def draw(pen: ImageDraw.ImageDraw, dx: float, dy: float) -> None:
        for line, thickness in segments:
            pen.line([tuple(p) for p in line + (dx, dy)], fill=255, width=round(thickness), joint="curve")

    return rasterise(canvas, (*(points.min(0) - margin), *(points.max(0) + margin)), draw)


# ---------------------------------------------------------------------------------------- textures
def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _ramp(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Coordinate along a random direction, in pixels (h x w)."""
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.ogrid[:height, :width]
    return (xs * np.cos(angle) + ys * np.sin(angle)).astype(np.float32)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float, channels: int = 3) -> np.ndarray:
    """Value noise in [0, 1] (h x w x channels): a random grid of ``cell``-pixel spacing, bicubically upsampled."""
    grid = rng.integers(0, 256, (max(2, round(height / cell) + 1), max(2, round(width / cell) + 1), channels))
    image = Image.fromarray(grid.astype(np.uint8).squeeze(-1) if channels == 1 else grid.astype(np.uint8))
    noise = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    return noise.reshape(height, width, channels)


def texture(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    """An h x w x 3 uint8 fill of one kind (see TEXTURES), with random colours and scale."""
    first, second = random_colour(rng), random_colour(rng)
    if kind == "solid":
        out = np.broadcast_to(first, (height, width, 3))
    elif kind == "gradient":
        ramp = _ramp(rng, height, width)
        t = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
        out = first + t[..., None] * (second - first)
    elif kind == "stripes":
        phase = 2 * np.pi * _ramp(rng, height, width) / rng.uniform(4, 40)
        wave = np.sin(phase) if rng.random() < 0.5 else (np.sin(phase) > 0).astype(np.float32)
        out = first + (wave[..., None] * 0.5 + 0.5) * (second - first)
    elif kind == "checkers":
        cell = rng.uniform(4, 40)
        angle = rng.uniform(0, np.pi / 2)
        ys, xs = np.ogrid[:height, :width]
        u = np.floor((xs * np.cos(angle) + ys * np.sin(angle)) / cell)
        v = np.floor((ys * np.cos(angle) - xs * np.sin(angle)) / cell)
        out = np.where(((u + v) % 2 == 0)[..., None], first, second)
    elif kind == "noise":
        noise = smooth_noise(rng, height, width, rng.uniform(2, 60), 1 if rng.random() < 0.5 else 3)
        out = first + noise * (second - first)
    else:
        raise ValueError(f"texture kind must be one of {TEXTURES}, got {kind!r}")
    return np.clip(out, 0, 255).astype(np.uint8)


def shade(rng: np.random.Generator, pixels: np.ndarray, strength: float) -> np.ndarray:
    """Multiply by a linear light ramp (0 = none): a lit side and a dark side, as on a curved surface."""
    height, width = pixels.shape[:2]
    ramp = _ramp(rng, height, width)
    t = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0) - 0.5
    return np.clip(pixels * (1 + strength * t)[..., None], 0, 255).astype(np.uint8)
