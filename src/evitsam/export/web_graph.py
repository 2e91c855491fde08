"""The decoder a browser runs (onnxruntime-web): prompts -> all four low-res masks and their scores.

The page scales the low-res logits to the image itself (two bilinear resizes composed per axis, as
``EfficientViTSam.postprocess_masks`` does), so the graph never computes full-size logits: WebAssembly spends
its time on the decoder's attention, not on a 1800x1200 bilinear resize it would recompute on every hover.
All four outputs come back (token 0: the single-mask output, 1..3: the multimask outputs), so the page applies
the same choice as ``SamPredictor`` for the prompts it has. The graph is the runtimes' prompt decoder
(``export_prompt_decoder``), exported once per set of weights and cached beside the other engines' graphs.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..models import EfficientViTSam
from .engines import engine_dir
from .onnx_export import export_prompt_decoder

WEB_DECODER_FILE = "prompt_decoder.onnx"  # the same graph the ONNX Runtime engine runs: one cached file
WEB_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
WEB_DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")
_lock = threading.Lock()


def web_decoder(model: EfficientViTSam, folder: Path | None = None) -> Path:
    """The browser decoder's ONNX file for these weights, exported on first use (thread-safe, atomic)."""
    path = (folder or engine_dir(model)) / WEB_DECODER_FILE
    with _lock:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            export_prompt_decoder(model, path)
    return path
