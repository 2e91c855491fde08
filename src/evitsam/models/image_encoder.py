"""The image encoder: EfficientViT backbone -> SAM neck -> LayerNorm2d, images to 256-channel embeddings.

In SAM's figure this is the ViT; here an EfficientViT-L backbone whose stages the neck fuses into SAM's
(256, 64, 64) embedding. Images arrive normalised and zero-padded to a square of ``encoder_size`` (512 for
the L variants, 1024 for XL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import EfficientViTLargeBackbone
from .blocks import LayerNorm2d
from .neck import EMBED_DIM, SamNeck
from .prompt_encoder import PROMPT_FRAME

if TYPE_CHECKING:
    from .sam import SamConfig

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


class EfficientViTSamImageEncoder(nn.Module):
    # SAM's ``image_encoder.img_size``: the frame SAM's code resizes images and prompts into. It is the 1024
    # prompt frame for every variant; ``EfficientViTSam.preprocess`` takes such images on to ``encoder_size``.
    img_size: int = PROMPT_FRAME

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.encoder_size = config.encoder_size
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
        if images.ndim != 4 or tuple(images.shape[-2:]) != (self.encoder_size, self.encoder_size):
            size = self.encoder_size
            raise ValueError(
                f"images must be (B, 3, {size}, {size}) as model.preprocess returns them, got {tuple(images.shape)}"
            )
        embedding = self.neck(self.backbone(images.contiguous(memory_format=torch.channels_last)))
        with torch.autocast(embedding.device.type, enabled=False):
            return self.norm(embedding.float()).contiguous()
