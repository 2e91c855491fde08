"""The PyTorch engine: the model's encoder and its inference decoder (``models.fast_decoder``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from ..models import EfficientViTSam
from ..models.fast_decoder import ImageSide
from . import engine
from .traced_decoder import TracedDecoder, tracing_available


class TorchEngine:
    """The model itself; bf16 (CPU or GPU) and fp16 (CUDA GPUs) run the encoder under autocast, with
    its attention and neck in fp32: what makes our encoder fp16-safe where the official one overflows.
    bf16 also runs the decoder's per-prompt products with the image tokens in bf16 (``decoder_products``)."""

    runtime = "torch"

    def __init__(self, model: EfficientViTSam, precision: str = "fp32") -> None:
        self.model = model
        self.decoder = model.fast_decoder()
        # CPU only: on GPUs TorchScript's fusers would change the arithmetic (and it is untested there)
        self.traced = TracedDecoder(self.decoder) if tracing_available() and model.device.type == "cpu" else None
        if precision == "fp16" and model.device.type != "cuda":
            raise ValueError(
                f"precision='fp16' runs on a CUDA GPU; the model is on {model.device} "
                f"(move it with model.cuda(), or use precision='bf16' on CPUs with AVX512-BF16/AMX)"
            )
        if precision == "bf16" and model.device.type == "cpu" and not engine.cpu_has_native_bf16():
            precision = engine.fallback(precision, "is emulated on this CPU (no AVX512-BF16/AMX)")
        self.precision = precision

    @property
    def decoder_products(self) -> torch.dtype:
        """The dtype of each prompt's products with the image tokens (``FastDecoder.prepare``).

        bf16 for precision bf16; fp16 stays fp32 here: attention scores and token updates in fp16 can overflow.
        """
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float 0-255, long side = encoder size -> (B, 256, 64, 64) fp32 embeddings."""
        images = images.to(self.model.device, torch.float32)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        # fp32 must not open an autocast region: enabled=False would switch off a caller's own autocast.
        with torch.autocast(self.model.device.type, dtype) if dtype else contextlib.nullcontext():
            return self.model.encode(self.model.preprocess(images)).float()

    def prepare(self, embeddings: torch.Tensor) -> ImageSide:
        return self.decoder.prepare(embeddings, self.decoder_products)

    def decode(
        self, embeddings, point_coords, point_labels, boxes, mask_input, multimask_output: bool, image_side=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image_side``: ``prepare(embeddings)``, reused across prompts (see ``SamPredictor``); with it and
        no mask prompt, repeated kinds of calls run as traces (``traced_decoder``: the same values)."""
        if image_side is not None and mask_input is None and self.traced is not None:
            return self.traced.decode(embeddings, point_coords, point_labels, boxes, multimask_output, image_side)
        return self.decoder.decode(
            embeddings, point_coords, point_labels, boxes, mask_input, multimask_output, image_side
        )

    def decode_kept(
        self,
        embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        keep: Callable[[torch.Tensor], torch.Tensor],
        extent: tuple[int, int],
        image_side: ImageSide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted IoUs come from the decoder's transformer alone, so masks that ``keep`` rejects are never
        produced, not even at low resolution, and the others only within ``extent``."""
        decoder = self.decoder
        state = decoder.attend(embeddings, point_coords, point_labels, image_side=image_side)
        iou_preds = decoder.predict_iou(state)[:, 1:]
        kept = keep(iou_preds)
        prompts = kept.any(dim=1).nonzero().flatten()
        if len(prompts) == 0:  # no prompt of this batch has a mask worth computing
            return iou_preds, iou_preds.new_zeros((0, *extent))
        if len(prompts) == len(kept):
            low_res = decoder.mask_logits(state, slice(1, None), extent)
        else:  # masks of prompts with no IoU above the threshold are never computed
            low_res = decoder.mask_logits(state.select(prompts), slice(1, None), extent)
        return iou_preds, low_res[kept[prompts]]
