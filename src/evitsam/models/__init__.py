"""The EfficientViT-SAM network, one concept per module (read next to the paper's figure and SAM's modeling/).

image_encoder (backbone -> neck), prompt_encoder, mask_decoder (two-way transformer): the reference modules;
fast_decoder: the same decoder arranged for inference; postprocess: low-res logits -> masks; sam: the whole.
"""

from .backbone import BackboneConfig, EfficientViTLargeBackbone
from .fast_decoder import FastDecoder
from .sam import EfficientViTSam, SamConfig

__all__ = ["BackboneConfig", "EfficientViTLargeBackbone", "EfficientViTSam", "FastDecoder", "SamConfig"]
