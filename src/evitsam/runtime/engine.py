"""The ``Engine`` protocol every runtime implements, and the runtime/precision options they share.

An engine does the two expensive steps of inference: ``embed`` (the image encoder) and ``decode`` (prompt
encoder + mask decoder, low-res logits). The predictor keeps resizing, prompt validation and mask
post-processing, so every runtime returns the same kinds of results through the same API; anything that
holds a ``SamPredictor`` (the automatic mask generator, labelling, the service) decodes through its engine.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..models.image_encoder import PIXEL_MEAN

RUNTIMES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


@runtime_checkable
class Engine(Protocol):
    """What ``SamPredictor`` and ``MaskGenerator`` call; prompts are in SAM's 1024 frame, already validated."""

    runtime: str
    precision: str  # the precision the encoder actually runs in (fp32 after a fallback)
    decoder_products: torch.dtype  # the dtype of the decoder's per-pixel products (bf16 for torch bf16)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) 0-255 image, long side = encoder size -> (1, 256, G, G) fp32 embedding."""
        ...

    def prepare(self, embeddings: torch.Tensor) -> object | None:
        """The decoder's prompt-independent work on one embedding, reused by later ``decode`` calls on it
        (``image_side``); None where the engine keeps none."""
        ...

    def decode(
        self,
        embeddings: torch.Tensor,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        image_side: object | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> low-res logits (B, C, 4G, 4G) and IoU predictions (B, C), C = 3 or 1."""
        ...

    def decode_kept(
        self,
        embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        keep: Callable[[torch.Tensor], torch.Tensor],
        extent: tuple[int, int],
        image_side: object | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Multimask IoU predictions (B, 3) and the low-res logits (M, rows, cols) of the M masks that
        ``keep(iou_predictions)`` (a (B, 3) bool) passes, in order, only their top-left ``extent``."""
        ...


class PrecisionFallback(UserWarning):
    """A precision the CPU cannot run natively was asked for; fp32 is used instead (one-line notice)."""


def check_options(runtime: str, precision: str) -> None:
    """Validate names first, so a typo fails before any export or compilation."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(map(repr, RUNTIMES))}, got {runtime!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if precision == "int8" and runtime != "openvino":
        raise ValueError(
            f"precision='int8' needs runtime='openvino' (NNCF post-training quantisation); "
            f"runtime={runtime!r} runs fp32 or bf16"
        )
    if precision == "fp16" and runtime != "torch":
        raise ValueError(
            f"precision='fp16' needs runtime='torch' on a CUDA GPU; runtime={runtime!r} runs on the CPU "
            f"(use precision='bf16' there)"
        )
    if runtime == "onnxruntime" and precision != "fp32":
        raise ValueError(
            f"runtime='onnxruntime' runs fp32 only (its CPU bf16/int8 kernels are slower than fp32 here); "
            f"use runtime='openvino' for precision={precision!r}"
        )


def fallback(precision: str, reason: str) -> str:
    warnings.warn(f"precision={precision!r} {reason}; running fp32 instead", PrecisionFallback, stacklevel=4)
    return "fp32"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 / AMX (x86) or the BF16 extension (Arm): without them bf16 is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def mean_padded(image: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) 0-255 image, long side ``size`` -> (size, size, 3) float32 padded with the pixel mean.

    The pixel mean normalises to exactly 0, which is what the model's zero padding after normalisation
    gives; a fixed square input lets the runtimes plan (and int8 calibrate) for one shape.
    """
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[...] = np.asarray(PIXEL_MEAN, dtype=np.float32)
    canvas[: image.shape[0], : image.shape[1]] = image
    return canvas
