"""evitsam: fast promptable segmentation with EfficientViT-SAM.

Names are imported on first use (module ``__getattr__``), so ``import evitsam`` and the command line's
help and input checks do not pay for torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

# public name -> the module that defines it
_EXPORTS = {
    "VARIANTS": ".variants",
    "build_model": ".variants",
    "get_variant": ".variants",
    "CheckpointError": ".weights",
    "convert_checkpoint": ".weights",
    "load_model": ".weights",
    "EfficientViTSam": ".models",
    "MaskGenerator": ".everything",
    "SamPredictor": ".predictor",
    "read_image": ".io",
    "render_overlay": ".visualize",
}

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "EfficientViTSam",
    "MaskGenerator",
    "SamPredictor",
    "build_model",
    "convert_checkpoint",
    "example_image",
    "get_variant",
    "load_model",
    "read_image",
    "render_overlay",
]

if TYPE_CHECKING:
    from .everything import MaskGenerator
    from .io import read_image
    from .models import EfficientViTSam
    from .predictor import SamPredictor
    from .variants import VARIANTS, build_model, get_variant
    from .visualize import render_overlay
    from .weights import CheckpointError, convert_checkpoint, load_model


def example_image() -> Path:
    """Path of the example photo shipped with the package: the scene the bundled model was shown on."""
    return Path(__file__).with_name("assets") / "scene.jpg"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)  # evitsam.weights etc. without importing them
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
