"""SamPredictor: the interactive API of ``segment_anything.SamPredictor`` for EfficientViT-SAM.

Compute the image embedding once with ``set_image``, then ask for masks from any number of
prompts. Names, shapes and semantics match segment-anything, so SAM code works by changing the
import. Prompts are validated up front: a wrong shape or a NaN fails with a ``ValueError`` that
names the argument, instead of an obscure error deep inside the decoder.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from .models import EfficientViTSam
from .models.prompt_encoder import validate_prompts
from .runtime import make_engine
from .transforms import (
    PROMPT_FRAME,
    ResizeLongestSide,
    as_rgb_uint8,
    get_preprocess_shape,
    resize_image_tensor,
    resize_longest_side,
)

__all__ = ["ImageNotSetError", "SamPredictor", "validate_prompts"]


class ImageNotSetError(RuntimeError, ValueError):
    """Prediction was asked for before ``set_image`` (a RuntimeError in SAM, a ValueError here)."""


def _as_array(name: str, value, form: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a numeric array shaped {form}: {error}") from None


class SamPredictor:
    """Drop-in for ``segment_anything.SamPredictor`` on an :class:`EfficientViTSam` model."""

    def __init__(
        self,
        sam_model: EfficientViTSam,
        runtime: str = "torch",
        precision: str = "fp32",
        calibration: str | os.PathLike | list | None = None,
    ) -> None:
        """``runtime`` "torch" | "onnxruntime" | "openvino" and ``precision`` "fp32" | "bf16" | "fp16" | "int8" choose
        the engine that runs the encoder and decoder (see ``evitsam.runtime``); the API and the
        post-processing are the same for all. ``calibration`` (a folder or a list of photos) is needed
        once per set of weights for int8.
        """
        if not isinstance(sam_model, EfficientViTSam):
            raise ValueError(f"sam_model must be an EfficientViTSam, got {type(sam_model).__name__}")
        self.model = sam_model
        # SAM's transform, in SAM's meaning: images and prompts into the 1024 frame (see ``set_torch_image``).
        self.transform = ResizeLongestSide(PROMPT_FRAME)
        self.engine = make_engine(sam_model, runtime, precision, calibration)
        # Names that tools built on SAM record with embeddings they save (micro-sam's signature, for one).
        self.model_type = self.model_name = sam_model.variant
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def runtime(self) -> str:
        return self.engine.runtime

    @property
    def precision(self) -> str:
        """The precision the encoder actually runs in (fp32 after a fallback)."""
        return self.engine.precision

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None
        self._decoder_side: tuple[torch.Tensor, tuple, object] | None = None

    @torch.inference_mode()
    def set_image(self, image: np.ndarray | Image.Image, image_format: str = "RGB") -> None:
        """Embed an HxWx3 uint8 image (PIL, grayscale and RGBA accepted; see ``as_rgb_uint8``)."""
        image = as_rgb_uint8(image, image_format)
        # Straight from the original to the encoder's size: one resize, as the official pre-processing.
        resized = resize_longest_side(image, self.model.encoder_size)
        if not resized.flags.writeable:  # only when no resize was needed; torch wants writable memory
            resized = resized.copy()
        # A channels-last view, no copy: the encoder wants that layout anyway (copying to NCHW uint8 cost 20 ms).
        self._embed(torch.from_numpy(resized).permute(2, 0, 1)[None], image.shape[:2])

    @torch.inference_mode()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, int]) -> None:
        """Embed a (1, 3, h, w) 0-255 image resized by ``predictor.transform.apply_image`` (SAM's 1024 frame).

        An image resized to the encoder's own size (long side ``model.encoder_size``) is taken as well; a
        1024-frame image goes on to that size here (antialiased bilinear), so SAM's code gets the same masks
        as ``set_image`` to within resampling.
        """
        size, frame = self.model.encoder_size, PROMPT_FRAME
        if (
            not isinstance(transformed_image, torch.Tensor)
            or transformed_image.ndim != 4
            or (transformed_image.shape[:2] != (1, 3) or max(transformed_image.shape[2:]) not in (frame, size))
        ):
            shape = tuple(transformed_image.shape) if isinstance(transformed_image, torch.Tensor) else None
            raise ValueError(
                f"transformed_image must be a (1, 3, h, w) tensor with max(h, w) = {frame} (from "
                f"predictor.transform.apply_image) or {size} (the encoder's size), got {shape}"
            )
        if len(original_image_size) != 2 or min(original_image_size) <= 0:
            raise ValueError(f"original_image_size must be (height, width), got {original_image_size}")
        long_side = max(transformed_image.shape[2:])
        expected = get_preprocess_shape(int(original_image_size[0]), int(original_image_size[1]), long_side)
        if tuple(transformed_image.shape[2:]) != expected:
            raise ValueError(
                f"transformed_image is {tuple(transformed_image.shape[2:])}, but an image of original_image_size "
                f"{tuple(original_image_size)} resized to long side {long_side} is {expected}"
            )
        if long_side != size:
            transformed_image = resize_image_tensor(transformed_image.to(self.device), size)
        self._embed(transformed_image, original_image_size)

    def _embed(self, image: torch.Tensor, original_image_size: tuple[int, int]) -> None:
        """Embed a (1, 3, h, w) 0-255 image with long side ``model.encoder_size``."""
        self.reset_image()
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = get_preprocess_shape(*self.original_size, PROMPT_FRAME)
        self.orig_h, self.orig_w = self.original_size
        self.input_h, self.input_w = self.input_size
        self.features = self.engine.embed(image)
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The (1, 256, 64, 64) embedding of the current image."""
        self._require_image()
        return self.features

    def decoder_image_side(self) -> object | None:
        """The decoder's prompt-independent work on the current image (``engine.prepare``; None where the
        engine keeps none).

        Computed on the first prompt and reused by every later one while the embedding and the decoder's
        weights stay the same: it is a third of the decoder's work for one prompt. The embedding is
        recognised by identity and in-place version, so one assigned directly (``predictor.features =
        ...``, as SAM allows and tools with precomputed embeddings do) is never answered from an old one.
        """
        self._require_image()
        features = self.features
        key = (
            # Inference tensors (from set_image) keep no version counter; they cannot change outside inference mode.
            None if features.is_inference() else features._version,
            sum(p._version for p in self.model.mask_decoder.parameters()),
            sum(p._version for p in self.model.prompt_encoder.parameters()),
        )
        cached = self._decoder_side
        if cached is None or cached[0] is not features or cached[1] != key:
            side = self.engine.prepare(features)
            self._decoder_side = cached = (features, key, side)
        return cached[2]

    def _require_image(self) -> None:
        """Check the image state, including state that SAM-based code may have assigned directly."""
        if not self.is_image_set:
            raise ImageNotSetError("no image is set: call set_image(image) before predicting")
        features = self.features
        if isinstance(features, torch.Tensor) and features.ndim == 3:  # one embedding without its batch axis
            self.features = features = features[None]
        grid = self.model.config.embed_size
        if not isinstance(features, torch.Tensor) or tuple(features.shape) != (1, 256, grid, grid):
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"predictor.features must be one image embedding (1, 256, {grid}, {grid}), got {shape}")
        try:
            original = (int(self.original_size[0]), int(self.original_size[1]))
            input_size = (int(self.input_size[0]), int(self.input_size[1]))
        except (TypeError, IndexError, ValueError):
            raise ValueError(
                f"predictor.original_size and input_size must be (height, width), got {self.original_size} "
                f"and {self.input_size}"
            ) from None
        if input_size != get_preprocess_shape(*original, PROMPT_FRAME):
            raise ValueError(
                f"predictor.input_size {input_size} is not the {PROMPT_FRAME}-frame size of original_size {original} "
                f"({get_preprocess_shape(*original, PROMPT_FRAME)}): input_size is the shape of "
                "predictor.transform.apply_image(image)[:2], SAM's 1024 frame, not the encoder's input"
            )
        self.original_size, self.input_size = original, input_size

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one object from prompts in original-image pixels.

        ``point_coords`` (N, 2) as (x, y), ``point_labels`` (N,) with 1 foreground / 0 background,
        ``box`` (4,) XYXY, ``mask_input`` (1, 256, 256) low-res logits from an earlier call.
        Returns masks (C, H, W), scores (C,) and low-res logits (C, 256, 256), C = 3 or 1.
        """
        self._require_image()
        coords = labels = boxes = masks = None
        if point_coords is not None:
            coords = _as_array("point_coords", point_coords, "(N, 2)")
            if coords.ndim != 2 or coords.shape[1] != 2:
                raise ValueError(f"point_coords must be shaped (N, 2) as (x, y) pixels, got {coords.shape}")
            coords = torch.as_tensor(self.transform.apply_coords(coords, self.original_size), dtype=torch.float)[None]
        if point_labels is not None:
            labels = _as_array("point_labels", point_labels, "(N,)")
            if labels.ndim != 1:
                raise ValueError(f"point_labels must be shaped (N,), got {labels.shape}")
            labels = torch.as_tensor(labels, dtype=torch.float)[None]
        if box is not None:
            box_array = _as_array("box", box, "(4,)")
            if box_array.shape not in ((4,), (1, 4)):
                raise ValueError(f"box must be shaped (4,) as x0, y0, x1, y1, got {box_array.shape}")
            boxes = torch.as_tensor(self.transform.apply_boxes(box_array.reshape(1, 4), self.original_size))
            boxes = boxes.to(torch.float)
            if not torch.isfinite(boxes).all():
                raise ValueError("box must contain only finite values (no NaN or inf)")
            if (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
                raise ValueError(f"box must satisfy x0 < x1 and y0 < y1 (XYXY), got {box_array.reshape(4).tolist()}")
        if mask_input is not None:
            side = self.model.low_res_size
            mask_array = _as_array("mask_input", mask_input, f"(1, {side}, {side})")
            if mask_array.shape == (side, side):
                mask_array = mask_array[None]
            if mask_array.shape != (1, side, side):
                raise ValueError(f"mask_input must be shaped (1, {side}, {side}) logits, got {mask_array.shape}")
            masks = torch.as_tensor(mask_array, dtype=torch.float)[None]
        if coords is not None and labels is not None and labels.shape[1] != coords.shape[1]:
            raise ValueError(
                f"point_labels must have one label per point: {coords.shape[1]} points, {labels.shape[1]} labels"
            )
        to_device = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        masks_out, scores, low_res = self.predict_torch(
            to_device(coords), to_device(labels), to_device(boxes), to_device(masks), multimask_output, return_logits
        )
        return masks_out[0].cpu().numpy(), scores[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    @torch.inference_mode()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts already in the 1024 prompt frame (see ``predictor.transform``).

        One call handles B prompts at once, e.g. 100 detector boxes (B, 4) or B point sets
        (B, N, 2)/(B, N). Returns masks (B, C, H, W), scores (B, C), low-res logits (B, C, 256, 256).
        """
        self._require_image()
        validate_prompts(point_coords, point_labels, boxes, mask_input, self.model.low_res_size)
        side = self.decoder_image_side() if mask_input is None else None
        low_res, scores = self.engine.decode(
            self.features, point_coords, point_labels, boxes, mask_input, multimask_output, side
        )
        threshold = None if return_logits else self.model.mask_threshold
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size, threshold)
        return masks, scores, low_res
