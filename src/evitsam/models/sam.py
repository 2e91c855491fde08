"""EfficientViTSam: EfficientViT image encoder + SAM prompt encoder + SAM mask decoder.

Two coordinate frames: the encoder sees the image resized so its long side is
``encoder_size`` (512 for L models, 1024 for XL), while prompts, the dense positional
encoding and mask post-processing always live in SAM's 1024 "prompt frame".

``decode`` runs the reference modules (training, parity); inference on many prompts per image runs
the same weights through ``fast_decoder()`` (see ``fast_decoder.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..transforms import to_encoder_size
from . import postprocess
from .backbone import BackboneConfig
from .batched import batched_forward
from .fast_decoder import FastDecoder
from .image_encoder import PIXEL_MEAN, PIXEL_STD, EfficientViTSamImageEncoder, normalize_and_pad
from .mask_decoder import MaskDecoder
from .neck import EMBED_DIM, EMBED_SIZE
from .prompt_encoder import PROMPT_FRAME, PromptEncoder
from .transformer import TwoWayTransformer

LOW_RES_MASK_SIZE = 4 * EMBED_SIZE  # of the official models; ``model.low_res_size`` in general

__all__ = [
    "LOW_RES_MASK_SIZE",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "PROMPT_FRAME",
    "EfficientViTSam",
    "EfficientViTSamImageEncoder",
    "SamConfig",
    "normalize_and_pad",
]


@dataclass(frozen=True)
class SamConfig:
    """Everything that distinguishes one EfficientViT-SAM variant from another."""

    name: str
    backbone: BackboneConfig
    neck_in_stages: tuple[int, ...]
    neck_depth: int
    neck_expand: float
    encoder_size: int
    # Side of the embedding grid. SAM and every official variant use 64 (low-res masks 256x256);
    # a smaller grid makes the decoder 4x (32) or 16x (16) cheaper for small CPU-trained models.
    embed_size: int = EMBED_SIZE


class EfficientViTSam(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = (PROMPT_FRAME, config.encoder_size)
        self._fast_decoder: FastDecoder | None = None  # see fast_decoder
        self.image_encoder = EfficientViTSamImageEncoder(config)
        self.prompt_encoder = PromptEncoder(
            embed_dim=EMBED_DIM,
            image_embedding_size=(config.embed_size, config.embed_size),
            input_image_size=(PROMPT_FRAME, PROMPT_FRAME),
            mask_in_chans=16,
        )
        self.mask_decoder = MaskDecoder(
            transformer_dim=EMBED_DIM,
            transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, num_heads=8, mlp_dim=2048),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def variant(self) -> str:
        """Registry name of this architecture (``l0`` ... ``xl1``)."""
        return self.config.name

    @property
    def encoder_size(self) -> int:
        return self.config.encoder_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-res logits and of ``mask_input`` (256 for official models)."""
        return 4 * self.config.embed_size

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise (B, 3, h, w) or (3, h, w) 0-255 images resized to long side S, zero-pad bottom/right to S.

        Images in SAM's 1024 frame (long side ``image_encoder.img_size``, what SAM's code hands over) are
        first resized to S here, so SAM's ``SamPredictor``, ``Sam.forward`` and batched-embedding code work
        unchanged on a smaller encoder."""
        return normalize_and_pad(to_encoder_size(images, self.encoder_size), self.encoder_size)

    def forward(self, batched_input: list[dict], multimask_output: bool) -> list[dict]:
        """SAM's ``Sam.forward``: images already in the 1024 frame with prompts, end to end (see ``batched``)."""
        return batched_forward(self, batched_input, multimask_output)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-processed (B, 3, S, S) images -> image embeddings (B, 256, G, G)."""
        return self.image_encoder(images)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the 1024 frame -> low-res logits (B, C, 4G, 4G) and IoU predictions (B, C), through the
        reference modules (what training differentiates). ``image_embeddings`` is (1, 256, G, G), shared by
        every prompt, or one per prompt."""
        points = (point_coords, point_labels) if point_coords is not None else None
        # The decoder is cheap next to the encoder; running it in fp32 keeps masks stable under autocast.
        with torch.autocast(image_embeddings.device.type, enabled=False):
            sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
            image_pe = self.prompt_encoder.get_dense_pe()
            return self.mask_decoder(image_embeddings.float(), image_pe, sparse, dense, multimask_output)

    def fast_decoder(self) -> FastDecoder:
        """The inference decoder on these weights (prepared image side, folded attention, low-rank
        up-scaling): what the predictor, "everything" and the torch engine run. One per model, so the
        positional encodings it projects are kept across images."""
        if self._fast_decoder is None:
            self._fast_decoder = FastDecoder(self)
        return self._fast_decoder

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        threshold: float | None = None,
    ) -> torch.Tensor:
        """Low-res logits -> 1024 frame -> crop the image's ``input_size`` -> ``original_size``; with
        ``threshold``, the boolean masks ``logits > threshold`` (see ``postprocess.postprocess_masks``)."""
        return postprocess.postprocess_masks(masks, input_size, original_size, self.low_res_size, threshold)

    def low_res_extent(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """Low-res rows and columns (multiples of 4) that ``postprocess_masks`` reads for ``input_size``."""
        return postprocess.low_res_extent(self.low_res_size, input_size)
