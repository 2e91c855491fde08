"""The decoder graphs a browser runs (onnxruntime-web): the image side once per image, then each prompt.

The page scales the low-res logits to the photo itself (two bilinear resizes composed per axis, as
``EfficientViTSam.postprocess_masks`` does), so no graph computes full-size logits: WebAssembly spends its time
on the decoder's attention, not on a full-size bilinear resize it would redo on every hover. Three graphs:

- ``web_image.onnx``: ``image_embeddings`` -> the decoder's prompt-independent tensors for this image
  (``model.prepare_decoder``: the image tokens with the no-mask prompt added, the first layer's image projections,
  the image tokens through the first up-scaling product), run once per image;
- ``web_prompt.onnx``: those tensors + ``point_coords``/``point_labels`` (SAM's convention) -> all four low-res
  masks and their scores, the predictor's own factored decoder path: every prompt without a mask prompt (hovers,
  first clicks, boxes);
- ``prompt_decoder.onnx`` (``export_prompt_decoder``): the same outputs from the embedding and a ``mask_input``,
  for refinement (a mask prompt changes the image side, so it cannot be prepared once).

All four outputs come back (token 0: single-mask, 1..3: multimask), so the page applies ``SamPredictor``'s choice.
Each graph is exported once per set of weights and cached beside the other engines' graphs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from torch import nn

from ..models import EfficientViTSam
from ..models.transformer import ImageProjection, ImageSide
from .engines import engine_dir
from .onnx_export import _cpu_model, _embedding_example, _export, _prompt_example, export_prompt_decoder

WEB_DECODER_FILE = "prompt_decoder.onnx"  # the same graph the ONNX Runtime engine runs: one cached file
WEB_IMAGE_FILE = "web_image.onnx"
WEB_PROMPT_FILE = "web_prompt.onnx"
_lock = threading.Lock()


def _layout(model: EfficientViTSam) -> list[tuple[bool, bool]]:
    """Which cross-attentions have image-dependent keys / values in the prepared image side."""
    with torch.no_grad():
        side = model.prepare_decoder(_embedding_example(model))
    return [(p.keys is not None, p.values is not None) for p in side.projections]


def _image_tensors(side: ImageSide) -> tuple[torch.Tensor, ...]:
    tensors = [side.keys]
    for projection in side.projections:
        tensors += [t for t in (projection.keys, projection.values) if t is not None]
    return tuple(tensors)


class WebImageGraph(nn.Module):
    """``image_embeddings`` (1, 256, G, G) -> the prepared image side's image-dependent tensors."""

    def __init__(self, model: EfficientViTSam) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _image_tensors(self.model.prepare_decoder(image_embeddings))


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
        key_pe, pes = decoder.transformer.project_pe(pe)
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
        state = decoder.attend(shape_only, pe, sparse, dense, image_side=side)
        return decoder.mask_logits(state), decoder.predict_iou(state)


def image_output_names(model: EfficientViTSam) -> list[str]:
    count = 1 + sum(a + b for a, b in _layout(model))
    return [f"image_side_{i}" for i in range(count)]


def export_web_graphs(model: EfficientViTSam, folder: Path) -> tuple[Path, Path]:
    """Write ``web_image.onnx`` and ``web_prompt.onnx`` for ``model`` into ``folder``."""
    model = _cpu_model(model)
    layout = _layout(model)
    names = image_output_names(model)
    embedding = _embedding_example(model)
    image = _export(
        WebImageGraph(model), (embedding,), folder / WEB_IMAGE_FILE, ("image_embeddings",), tuple(names), {}
    )
    with torch.no_grad():
        side = WebImageGraph(model).eval()(embedding)
    coords, labels, _, _ = _prompt_example(model)
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
    """The browser's graphs for these weights (``decoder``, ``image``, ``prompt``), exported on first use."""
    folder = folder or engine_dir(model)
    paths = {"decoder": folder / WEB_DECODER_FILE, "image": folder / WEB_IMAGE_FILE, "prompt": folder / WEB_PROMPT_FILE}
    with _lock:
        folder.mkdir(parents=True, exist_ok=True)
        if not paths["decoder"].is_file():
            export_prompt_decoder(model, paths["decoder"])
        if not (paths["image"].is_file() and paths["prompt"].is_file()):
            export_web_graphs(model, folder)
    return paths
