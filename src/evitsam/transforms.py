"""Image resizing and the coordinate bookkeeping between the image, encoder and prompt frames.

Every path (predictor, CLI, "everything", evaluation, export) uses these functions, so there is
exactly one pre-processing. The reference for numerics is the official EfficientViT-SAM code:
PIL bilinear resize of the uint8 image, sizes rounded half-up from the original size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .io import check_image_size, to_rgb_uint8

PROMPT_FRAME = 1024


def get_preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Size after scaling so the long side is ``long_side``; each side rounded half-up."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def as_rgb_uint8(image: np.ndarray | Image.Image, image_format: str = "RGB") -> np.ndarray:
    """Validate and convert an input image to an HxWx3 uint8 RGB array.

    Conversion rule: PIL images of any mode go through :func:`evitsam.io.to_rgb_uint8` (the file
    reader's rules: 16-bit and float modes scaled over their nominal range, palette/CMYK/alpha to RGB);
    they are taken in the frame they are in (files read with :func:`evitsam.io.read_image` are already
    upright). Numpy grayscale (HxW or HxWx1) is replicated to three channels; RGBA (HxWx4) drops the
    alpha channel (colours are kept as they are, as PIL does). ``image_format="BGR"`` flips 3-channel
    input to RGB. Images with a side under ``evitsam.io.MIN_SIDE`` pixels are refused.
    """
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if isinstance(image, Image.Image):
        array = to_rgb_uint8(image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise ValueError(f"image must be an HxWxC uint8 numpy array or a PIL image, got {type(image).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(
            f"image must have dtype uint8 (0-255), got {array.dtype}; scale it to 0-255 first "
            "(evitsam.io.scale_to_uint8), or read files with evitsam.io.read_image"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {tuple(image.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image must not be empty, got shape {tuple(array.shape)}")
    check_image_size(array.shape[0], array.shape[1])
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    if image_format == "BGR" and not isinstance(image, Image.Image):
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """HxWx3 uint8 -> uint8 image with long side ``long_side`` (PIL bilinear, antialiased, as SAM's
    ``ResizeLongestSide.apply_image``); the input itself when it already has that size."""
    height, width = image.shape[:2]
    if max(height, width) == long_side:
        return image
    new_h, new_w = get_preprocess_shape(height, width, long_side)
    return np.array(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def resize_image_tensor(images: torch.Tensor, long_side: int) -> torch.Tensor:
    """(..., 3, h, w) 0-255 images -> float32 with long side ``long_side`` (bilinear, antialiased like PIL).

    How an image handed over in SAM's 1024 frame reaches a smaller encoder: within rounding of
    resizing the original directly (what ``SamPredictor.set_image`` does)."""
    height, width = images.shape[-2:]
    images = images.to(torch.float32)
    if max(height, width) == long_side:
        return images
    size = get_preprocess_shape(height, width, long_side)
    batched = images.reshape(-1, *images.shape[-3:])
    resized = F.interpolate(batched, size, mode="bilinear", align_corners=False, antialias=True)
    return resized.clamp(0, 255).reshape(*images.shape[:-2], *size)


def to_encoder_size(images: torch.Tensor, encoder_size: int) -> torch.Tensor:
    """Images with long side ``encoder_size`` as they are; images in SAM's 1024 frame resized to it."""
    long_side = max(images.shape[-2:])
    if long_side == encoder_size:
        return images
    if long_side != PROMPT_FRAME:
        raise ValueError(
            f"images must have long side {encoder_size} (the encoder's) or {PROMPT_FRAME} (SAM's frame, resized "
            f"to the encoder's), got {tuple(images.shape)}"
        )
    return resize_image_tensor(images, encoder_size)


class ResizeLongestSide:
    """SAM's ``ResizeLongestSide``: images, points and boxes into one frame of long side ``target_length``.

    ``SamPredictor.transform`` is ``ResizeLongestSide(1024)``, the frame SAM's code works in: prompts
    mapped by it are what ``predict_torch`` takes, and an image from ``apply_image`` is what
    ``set_torch_image`` takes (the predictor resizes it on to the encoder's size where that is smaller).
    """

    def __init__(self, target_length: int = PROMPT_FRAME) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        return get_preprocess_shape(oldh, oldw, long_side_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> uint8 image with long side ``target_length`` (PIL bilinear, antialiased)."""
        return resize_longest_side(image, self.target_length)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) images -> float, long side ``target_length`` (antialiased bilinear)."""
        return resize_image_tensor(image, self.target_length)

    def _scale(self, original_size: tuple[int, int]) -> tuple[float, float]:
        old_h, old_w = original_size
        new_h, new_w = get_preprocess_shape(old_h, old_w, self.target_length)
        return new_w / old_w, new_h / old_h

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 2) pixel (x, y) in the original image -> this frame, as float64."""
        sx, sy = self._scale(original_size)
        coords = np.array(coords, dtype=np.float64, copy=True)
        coords[..., 0] *= sx
        coords[..., 1] *= sy
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 4) XYXY boxes -> this frame."""
        boxes = np.asarray(boxes)
        return self.apply_coords(boxes.reshape(-1, 2, 2), original_size).reshape(*boxes.shape[:-1], 4)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        sx, sy = self._scale(original_size)
        coords = coords.detach().clone().to(torch.float)
        coords[..., 0] *= sx
        coords[..., 1] *= sy
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(*boxes.shape[:-1], 4)


class SamTransform(ResizeLongestSide):
    """The two frames of EfficientViT-SAM in one object, for code that prepares the encoder's input itself.

    ``apply_image`` resizes the original straight to the encoder's size (long side ``encoder_size``: one
    resize, the official pre-processing), while coordinates and boxes go to the 1024 prompt frame, which
    is what the prompt encoder expects.
    """

    def __init__(self, encoder_size: int, prompt_frame: int = PROMPT_FRAME) -> None:
        super().__init__(prompt_frame)
        self.encoder_size = encoder_size

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> uint8 image with long side ``encoder_size`` (PIL bilinear, antialiased)."""
        return resize_longest_side(image, self.encoder_size)
