"""Synthetic scenes: objects painted on a background one after another, with exact visible-part masks.

Painting order is depth order: an object hides what lies under it, so earlier masks lose the pixels
a later object covers. A *part* (a nested object that belongs to its parent, like a window in a
wall) hides nothing of its ancestors, so the parent's mask still contains it and a click on the
part is ambiguous between part and whole, as in SA-1B. Lighting is applied to the finished picture
and never changes a mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .photos import PhotoSource
from .procedural import SHAPES, TEXTURES, THIN, Patch, filled_shape, shade, smooth_noise, texture, thin_structure

CATEGORIES = ("shape", "blob", "ring", "thin structure", "photo object")
SHAPE, BLOB, RING, THIN_STRUCTURE, PHOTO_OBJECT = range(1, len(CATEGORIES) + 1)
RECIPES = ("composed", "paste_on_photo", "paste_on_synthetic")


class Scene:
    """A canvas and the visible mask of every object painted on it so far."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = np.array(image, dtype=np.uint8)
        self.masks: list[np.ndarray] = []
        self.categories: list[int] = []
        self.parents: list[int | None] = []

    @property
    def canvas(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def add(self, patch: Patch, category: int, parent: int | None = None) -> int:
        """Paint ``patch`` (its pixels, if any, where its mask is) on top; return the new object's index.

        Every earlier object except ``parent`` and its ancestors loses the pixels the patch covers.
        """
        rows, cols = patch.window
        if patch.pixels is not None:
            region = self.image[rows, cols]
            region[patch.mask] = patch.pixels[patch.mask]
        keep, ancestor = set(), parent
        while ancestor is not None:
            keep.add(ancestor)
            ancestor = self.parents[ancestor]
        for index, mask in enumerate(self.masks):
            if index not in keep:
                mask[rows, cols] &= ~patch.mask
        full = np.zeros(self.canvas, dtype=bool)
        full[rows, cols] = patch.mask
        self.masks.append(full)
        self.categories.append(category)
        self.parents.append(parent)
        return len(self.masks) - 1

    def objects(self, min_area: int) -> list[tuple[np.ndarray, int]]:
        """(visible mask, category) of every object with at least ``min_area`` visible pixels."""
        return [(m, c) for m, c in zip(self.masks, self.categories) if np.count_nonzero(m) >= min_area]


@dataclass(frozen=True)
class SceneOptions:
    """What a scene may contain; the defaults are the training data recipe."""

    objects: tuple[int, int] = (5, 25)  # synthetic objects in a composed scene
    pasted: tuple[int, int] = (1, 8)  # photo cut-outs in a copy-paste scene
    nest_probability: float = 0.2
    thin_probability: float = 0.2
    lighting: bool = True


def _fill(rng: np.random.Generator, height: int, width: int, photos: PhotoSource | None) -> np.ndarray:
    """An object's texture: a procedural fill or (with photos) a photo crop, often shaded."""
    if photos is not None and rng.random() < 0.2:
        pixels = photos.crop(rng, height, width)
    else:
        pixels = texture(rng, height, width, str(rng.choice(TEXTURES, p=(0.25, 0.18, 0.14, 0.1, 0.33))))
    return shade(rng, pixels, rng.uniform(0.2, 0.9)) if rng.random() < 0.5 else pixels


def _background(rng: np.random.Generator, canvas: tuple[int, int], photos: PhotoSource | None) -> np.ndarray:
    height, width = canvas
    if photos is not None and rng.random() < 0.25:
        return photos.crop(rng, height, width)
    image = texture(rng, height, width, str(rng.choice(TEXTURES, p=(0.05, 0.25, 0.1, 0.1, 0.5))))
    if rng.random() < 0.5:  # clutter-like fine noise over the base
        detail = smooth_noise(rng, height, width, rng.uniform(2, 12)) - 0.5
        image = np.clip(image + detail * rng.uniform(20, 90), 0, 255).astype(np.uint8)
    return image


def _synthetic_object(
    rng: np.random.Generator, scene: Scene, photos: PhotoSource | None, options: SceneOptions, radius: float
) -> None:
    """One shape, blob, ring or thin structure, sometimes nested inside an existing object."""
    canvas = scene.canvas
    parent = None
    candidates = [i for i, m in enumerate(scene.masks) if np.count_nonzero(m) >= 1500]
    if candidates and rng.random() < options.nest_probability:
        parent = candidates[int(rng.integers(len(candidates)))]
        ys, xs = np.nonzero(scene.masks[parent])
        pick = int(rng.integers(len(xs)))
        centre = (float(xs[pick]), float(ys[pick]))
        radius = float(np.sqrt(len(xs) / np.pi) * rng.uniform(0.2, 0.5))
    else:
        centre = (rng.uniform(0, canvas[1]), rng.uniform(0, canvas[0]))
    if rng.random() < options.thin_probability:
        patch = thin_structure(rng, canvas, str(rng.choice(THIN)), centre, radius * 1.5)
        category = THIN_STRUCTURE
    else:
        kind = str(rng.choice(SHAPES, p=(0.22, 0.22, 0.14, 0.27, 0.15)))
        patch = filled_shape(rng, canvas, kind, centre, radius)
        category = RING if kind == "ring" else BLOB if kind == "blob" else SHAPE
    if patch is None:
        return
    if parent is not None:  # stay inside the parent
        patch.mask &= scene.masks[parent][patch.window]
        if not patch.mask.any():
            return
    patch.pixels = _fill(rng, *patch.mask.shape, photos)
    part = parent is not None and rng.random() < 0.5  # a part of its parent, or an object lying on it
    scene.add(patch, category, parent if part else None)


def compose(
    rng: np.random.Generator, canvas: tuple[int, int], photos: PhotoSource | None, options: SceneOptions
) -> Scene:
    """One scene of a random recipe: composed shapes, or photo cut-outs pasted on a photo / synthetic background."""
    recipe = "composed" if photos is None else str(rng.choice(RECIPES, p=(0.5, 0.3, 0.2)))
    short = min(canvas)
    if recipe == "paste_on_photo":
        image, originals, used = photos.background(rng, *canvas)
        scene = Scene(image)
        for patch in originals:
            scene.add(patch, PHOTO_OBJECT)
        synthetic, pasted = int(rng.integers(0, 7)), int(rng.integers(*options.pasted, endpoint=True))
    else:
        scene, used = Scene(_background(rng, canvas, photos)), None
        synthetic = int(rng.integers(*options.objects, endpoint=True))
        pasted = int(rng.integers(*options.pasted, endpoint=True)) if recipe == "paste_on_synthetic" else 0
    radii = short * np.exp(rng.uniform(np.log(0.04), np.log(0.35), synthetic + pasted))
    if rng.random() < 0.7:  # mostly large things first, small things on top
        radii = np.sort(radii)[::-1]
    is_paste = rng.permutation(np.arange(synthetic + pasted) < pasted)
    for radius, paste in zip(radii, is_paste):
        if paste:
            patch = photos.cutout(rng, canvas, float(radius) * 2.5 / short, exclude=used)
            if patch is not None:
                scene.add(patch, PHOTO_OBJECT)
        else:
            _synthetic_object(rng, scene, photos, options, float(radius))
    if options.lighting:
        scene.image = light(rng, scene.image)
    return scene


def light(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Global illumination, soft shadows, colour cast, sensor noise and blur; masks are unaffected."""
    height, width = image.shape[:2]
    out = image.astype(np.float32)
    gain = np.ones((height, width), dtype=np.float32)
    if rng.random() < 0.6:  # light falling off across the scene, or a vignette
        if rng.random() < 0.6:
            ramp = shade(rng, np.full((height, width, 1), 128, dtype=np.uint8), rng.uniform(0.3, 1.2))
            gain *= ramp[..., 0] / 128
        else:
            ys, xs = np.ogrid[:height, :width]
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            distance = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2) / max(height, width)
            gain *= np.clip(1.2 - rng.uniform(0.3, 1.0) * distance, 0.2, 1.3)
    if rng.random() < 0.3:  # soft-edged shadows
        shadow = np.clip((smooth_noise(rng, height, width, rng.uniform(40, 150), 1)[..., 0] - 0.55) * 8, 0, 1)
        gain *= 1 - rng.uniform(0.2, 0.6) * shadow
    cast = rng.uniform(0.85, 1.15, 3).astype(np.float32) if rng.random() < 0.5 else np.ones(3, dtype=np.float32)
    out *= gain[..., None] * cast
    if rng.random() < 0.5:
        out += rng.standard_normal(out.shape, dtype=np.float32) * rng.uniform(1, 10)
    result = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.25:
        result = np.asarray(Image.fromarray(result).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5))))
    return result
