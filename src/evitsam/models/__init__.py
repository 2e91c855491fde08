"""The EfficientViT-SAM network, one concept per module."""

from .backbone import BackboneConfig, EfficientViTLargeBackbone
from .sam import EfficientViTSam, SamConfig

__all__ = ["BackboneConfig", "EfficientViTLargeBackbone", "EfficientViTSam", "SamConfig"]
