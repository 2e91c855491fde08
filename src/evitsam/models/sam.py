"""EfficientViTSam: EfficientViT image encoder + SAM prompt encoder + SAM mask decoder.

Two coordinate frames: the encoder sees the image resized so its long side is
``encoder_size`` (512 for L models, 1024 for XL), while prompts, the dense positional
encoding and mask post-processing always live in SAM's 1024 "prompt frame".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import BackboneConfig, EfficientViTLargeBackbone
from .blocks import LayerNorm2d
from .mask_decoder import DecoderState, MaskDecoder
from .neck import EMBED_DIM, EMBED_SIZE, SamNeck
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

PROMPT_FRAME = 1024
LOW_RES_MASK_SIZE = 4 * EMBED_SIZE  # of the official models; ``model.low_res_size`` in general
# ImageNet statistics on the 0-255 scale (identical to SAM's pixel_mean / pixel_std).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def normalize_and_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """Normalise (B, 3, h, w) 0-255 images already resized to long side ``size``; zero-pad bottom/right.

    The one normalisation of every encoder here (EfficientViT and SAM's ViT teacher alike).
    """
    mean = torch.tensor(PIXEL_MEAN, device=images.device).view(-1, 1, 1)
    std = torch.tensor(PIXEL_STD, device=images.device).view(-1, 1, 1)
    images = (images - mean) / std
    h, w = images.shape[-2:]
    return F.pad(images, (0, size - w, 0, size - h))


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


class EfficientViTSamImageEncoder(nn.Module):
    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.backbone = EfficientViTLargeBackbone(config.backbone)
        in_keys = tuple(f"stage{s}" for s in config.neck_in_stages)
        in_channels = tuple(config.backbone.widths[s] for s in config.neck_in_stages)
        self.neck = SamNeck(in_keys, in_channels, config.neck_depth, config.neck_expand, config.embed_size)
        self.norm = LayerNorm2d(EMBED_DIM)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised, padded images -> (B, 256, G, G) embeddings (fp32), G = 64 officially.

        Activations flow channels-last: oneDNN/cuDNN convolutions skip their layout reorders,
        about 10 % faster on CPU with identical numerics. The weights keep the default layout.
        """
        embedding = self.neck(self.backbone(images.contiguous(memory_format=torch.channels_last)))
        with torch.autocast(embedding.device.type, enabled=False):
            return self.norm(embedding.float()).contiguous()


class EfficientViTSam(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = (PROMPT_FRAME, config.encoder_size)
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
        """Normalise (B, 3, h, w) 0-255 images already resized to long side S, zero-pad bottom/right to S."""
        return normalize_and_pad(images, self.encoder_size)

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
        """Prompts in the 1024 frame -> low-res logits (B, C, 4G, 4G) and IoU predictions (B, C).

        ``image_embeddings`` is (1, 256, G, G) (shared by every prompt) or one per prompt.
        """
        state = self.attend(image_embeddings, point_coords, point_labels, boxes, mask_input)
        with torch.autocast(image_embeddings.device.type, enabled=False):
            return self.mask_decoder.outputs(state, multimask_output)

    def attend(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
    ) -> DecoderState:
        """The first half of ``decode``: prompt encoding and the decoder's transformer.

        Callers that need IoU predictions before masks (automatic mask generation) finish with
        ``mask_decoder.predict_iou`` and ``mask_decoder.mask_logits`` on the prompts they keep.
        """
        points = (point_coords, point_labels) if point_coords is not None else None
        # The decoder is cheap next to the encoder; running it in fp32 keeps masks stable under autocast.
        with torch.autocast(image_embeddings.device.type, enabled=False):
            sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
            return self.mask_decoder.attend(image_embeddings.float(), self.prompt_encoder.get_dense_pe(), sparse, dense)

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-res logits -> 1024 frame -> crop the image's ``input_size`` -> ``original_size``.

        SAM does this as two bilinear resizes through a padded 1024x1024 intermediate. Both are
        linear along each axis, so they compose into one (out, 256) matrix per axis and the whole
        step is two matrix products: the same values (to float rounding) without materialising
        the 1024x1024 frame, faster for every caller and much faster for "segment everything".
        """
        low_h, low_w = masks.shape[-2:]
        rows = _resize_matrix(low_h, input_size[0], original_size[0], masks.device).to(masks.dtype)
        cols = _resize_matrix(low_w, input_size[1], original_size[1], masks.device).to(masks.dtype)
        if original_size[0] <= original_size[1]:  # the cheaper order of the two products
            return (rows @ masks) @ cols.T
        return rows @ (masks @ cols.T)


def _bilinear_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out, in) float64 matrix of ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis.

    Source positions and weights are computed in float32 exactly as PyTorch's CPU kernel does,
    so the only difference from the two-resize reference is the order of float additions.
    """
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    src = (scale * (torch.arange(out_size, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0)
    i0 = src.long()
    frac = (src - i0).clamp(0, 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, i0), (1 - frac).double(), accumulate=True)
    matrix.index_put_((rows, i1), frac.double(), accumulate=True)
    return matrix


@functools.lru_cache(maxsize=32)
def _resize_matrix(low: int, crop: int, out: int, device: torch.device) -> torch.Tensor:
    """(out, low) matrix: low-res -> PROMPT_FRAME -> keep the first ``crop`` -> ``out``, along one axis."""
    composite = _bilinear_matrix(crop, out) @ _bilinear_matrix(low, PROMPT_FRAME)[:crop]
    return composite.to(device=device, dtype=torch.float32)
