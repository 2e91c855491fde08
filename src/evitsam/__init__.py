"""evitsam: fast promptable segmentation with EfficientViT-SAM."""

from .everything import MaskGenerator
from .models import EfficientViTSam
from .predictor import SamPredictor
from .variants import VARIANTS, build_model, get_variant
from .weights import CheckpointError, convert_checkpoint, load_model

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "EfficientViTSam",
    "MaskGenerator",
    "SamPredictor",
    "build_model",
    "convert_checkpoint",
    "get_variant",
    "load_model",
]
__version__ = "0.1.0"
