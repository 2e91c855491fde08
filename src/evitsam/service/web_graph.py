"""The decoder graphs a browser runs (onnxruntime-web): the image side once per image, then each prompt.

The page scales the low-res logits to the photo itself (two bilinear resizes composed per axis, as
``EfficientViTSam.postprocess_masks`` does), so no graph computes full-size logits: WebAssembly spends its time
on the decoder's attention, not on a full-size bilinear resize it would redo on every hover. Two graphs:

- ``web2_image.onnx``: ``image_embeddings`` and SAM's gated ``mask_input`` -> the decoder's prompt-independent
  tensors (``MaskDecoder.prepare_image``: the image tokens with the dense prompt added, every cross-attention's
  image projections); the page runs it once per image without a mask prompt, and once per refinement with one;
- ``web2_prompt.onnx``: those tensors + ``point_coords``/``point_labels`` (SAM's convention) -> all four low-res
  masks and their scores; what a hover costs. The positional encodings' projections are constants in it.

All four outputs come back (token 0: single-mask, 1..3: multimask), so the page applies ``SamPredictor``'s choice.
Each graph is exported once per set of weights and cached beside the other engines' graphs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from torch import nn

from ..export.onnx_export import _cpu_model, _embedding_example, _export, _prompt_example
from ..models import EfficientViTSam, fast_attention, fast_decoder
from ..models.fast_attention import ImageProjection, ImageSide
from ..runtime.onnx_engines import engine_dir

WEB_GRAPHS_VERSION = 2  # part of the file names: a changed graph is exported again, not read from the cache
WEB_IMAGE_FILE = f"web{WEB_GRAPHS_VERSION}_image.onnx"
WEB_PROMPT_FILE = f"web{WEB_GRAPHS_VERSION}_prompt.onnx"
_lock = threading.Lock()


def _layout(model: EfficientViTSam) -> list[tuple[bool, bool]]:
    """Which cross-attentions have image-dependent keys / values in the prepared image side."""
    side = model.fast_decoder().prepare(_embedding_example(model))
    return [(p.keys is not None, p.values is not None) for p in side.projections]


def _image_tensors(side: ImageSide) -> tuple[torch.Tensor, ...]:
    tensors = [side.keys]
    for projection in side.projections:
        tensors += [t for t in (projection.keys, projection.values) if t is not None]
    return tuple(tensors)


class WebImageGraph(nn.Module):
    """``image_embeddings`` (1, 256, G, G) and SAM's gated ``mask_input`` -> the prepared image side's
    image-dependent tensors (a mask prompt is added to the image tokens, so it has an image side of its own)."""

    def __init__(self, model: EfficientViTSam) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, image_embeddings: torch.Tensor, mask_input: torch.Tensor, has_mask_input: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        prompts = self.model.prompt_encoder
        gate = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = prompts.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = gate * prompts.mask_downscaling(mask_input) + (1 - gate) * no_mask
        transformer = self.model.mask_decoder.transformer
        pe = fast_attention.transformer_pe(transformer, prompts.get_dense_pe())
        return _image_tensors(fast_attention.prepare(transformer, image_embeddings + dense, pe))


class WebPromptGraph(nn.Module):
    """Prepared image side + SAM prompts (no mask prompt) -> low-res masks (B, 4, S, S), IoU predictions (B, 4).

    The positional encodings' projections depend only on the weights: computed in the graph from constants (folded
    at export), so they are not shipped per image."""

    def __init__(self, model: EfficientViTSam, layout: list[tuple[bool, bool]]) -> None:
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *image, point_coords, point_labels = inputs
        model = self.model
        decoder, prompts = model.mask_decoder, model.prompt_encoder
        pe = prompts.get_dense_pe()
        key_pe, pes = fast_attention.transformer_pe(decoder.transformer, pe)
        parts = iter(image)
        keys = next(parts)
        projections = tuple(
            ImageProjection(p, next(parts) if has_keys else None, next(parts) if has_values else None)
            for p, (has_keys, has_values) in zip(pes, self.layout)
        )
        side = ImageSide(keys, key_pe, projections)
        sparse = prompts.embed_points(point_coords, point_labels, pad=False)
        grid = model.config.embed_size
        dense = prompts.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, grid, grid)
        shape_only = torch.zeros(1, 1, grid, grid)  # attend reads the grid's size from it, not its values
        state = model.fast_decoder()._attend(shape_only, sparse, dense, side)  # traced: no inference mode
        return fast_decoder.mask_logits(decoder, state), fast_decoder.predict_iou(decoder, state)


def image_output_names(model: EfficientViTSam) -> list[str]:
    count = 1 + sum(a + b for a, b in _layout(model))
    return [f"image_side_{i}" for i in range(count)]


def export_web_graphs(model: EfficientViTSam, folder: Path) -> tuple[Path, Path]:
    """Write the image-side and prompt graphs for ``model`` into ``folder``."""
    model = _cpu_model(model)
    layout = _layout(model)
    names = image_output_names(model)
    coords, labels, mask, has_mask = _prompt_example(model)
    image_args = (_embedding_example(model), mask, has_mask)
    inputs = ("image_embeddings", "mask_input", "has_mask_input")
    image = _export(WebImageGraph(model), image_args, folder / WEB_IMAGE_FILE, inputs, tuple(names), {})
    with torch.no_grad():
        side = WebImageGraph(model).eval()(*image_args)
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    prompt = _export(
        WebPromptGraph(model, layout),
        (*side, coords, labels),
        folder / WEB_PROMPT_FILE,
        (*names, "point_coords", "point_labels"),
        ("low_res_masks", "iou_predictions"),
        dynamic,
    )
    return image, prompt


def web_decoder(model: EfficientViTSam, folder: Path | None = None) -> dict[str, Path]:
    """The browser's graphs for these weights (``image``, ``prompt``), exported on first use (thread-safe)."""
    folder = folder or engine_dir(model)
    paths = {"image": folder / WEB_IMAGE_FILE, "prompt": folder / WEB_PROMPT_FILE}
    with _lock:
        folder.mkdir(parents=True, exist_ok=True)
        if not all(path.is_file() for path in paths.values()):
            export_web_graphs(model, folder)
    return paths
