"""The decoder graphs a browser runs (onnxruntime-web): the image side once per image, then each prompt.

The page scales the low-res logits to the photo itself (two bilinear resizes composed per axis, as
``EfficientViTSam.postprocess_masks`` does), so no graph computes full-size logits: WebAssembly spends its time
on the decoder's attention, not on a full-size bilinear resize it would redo on every hover. Three graphs:

- ``web3_image.onnx``: ``image_embeddings`` -> the decoder's prompt-independent tensors (the image tokens with
  the no-mask dense prompt added, the first layer's image projections); the page runs it once per image;
- ``web3_prompt.onnx``: image-side tensors + ``point_coords``/``point_labels`` (SAM's convention) + ``extent`` +
  ``multimask`` -> the chosen low-res mask (``SamPredictor``'s choice: with ``multimask``, one click alone, the
  best of the three multimask outputs, else the single-mask output) and all four scores; what a hover costs.
  ``extent`` (int64 image-token rows, columns) computes the mask only over that top-left part of the grid: the
  part a non-square photo covers, which is all its scaled mask reads (a hover on a 3:2 photo skips a third of
  the up-scaling). The full grid gives SAM's whole low-res mask, which a refining click needs. The positional
  encodings' projections are constants in it;
- ``web3_refine.onnx``: the prompt graph for a click that refines a mask: the image-side tensors without a mask
  prompt + SAM's ``mask_input`` (the previous low-res mask) + the prompt graph's inputs -> its outputs. A mask
  prompt changes every image token by its dense embedding, a 1x1 convolution of 16 mask features, minus the
  no-mask embedding; every image-side tensor is affine per token, so the masked side is the unmasked one plus
  a rank-17 product (``MaskedImageSide``), not the image side's full products again.

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

WEB_GRAPHS_VERSION = 3  # part of the file names: a changed graph is exported again, not read from the cache
WEB_GRAPHS = ("image", "refine", "prompt")
_lock = threading.Lock()


def _layout(model: EfficientViTSam) -> list[tuple[bool, bool]]:
    """Which cross-attentions have image-dependent keys / values in the prepared image side."""
    side = model.fast_decoder().prepare(_embedding_example(model))
    return [(p.keys is not None, p.values is not None) for p in side.projections]


def _image_parts(side: ImageSide) -> list[tuple[torch.Tensor, bool]]:
    """The image-dependent tensors of a prepared side, in the graphs' order, each with whether its token axis is
    the last (projected keys (heads, d, N)) or the one before (image tokens (1, N, C), values (heads, N, d))."""
    parts = [(side.keys, False)]
    for projection in side.projections:
        parts += [(t, last) for t, last in ((projection.keys, True), (projection.values, False)) if t is not None]
    return parts


def _image_tensors(side: ImageSide) -> tuple[torch.Tensor, ...]:
    return tuple(tensor for tensor, _ in _image_parts(side))


def _prepared(model: EfficientViTSam, image: torch.Tensor, pe: tuple) -> ImageSide:
    return fast_attention.prepare(model.mask_decoder.transformer, image, pe)


class WebImageGraph(nn.Module):
    """``image_embeddings`` (1, 256, G, G) -> the prepared image side's image-dependent tensors, no mask prompt."""

    def __init__(self, model: EfficientViTSam) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        prompts = self.model.prompt_encoder
        no_mask = prompts.no_mask_embed.weight.reshape(1, -1, 1, 1)
        pe = fast_attention.transformer_pe(self.model.mask_decoder.transformer, prompts.get_dense_pe())
        return _image_tensors(_prepared(self.model, image_embeddings + no_mask, pe))


class MaskedImageSide(nn.Module):
    """The image side without a mask prompt + SAM's ``mask_input`` -> the image side with that mask prompt.

    The mask's dense embedding is ``W g + b`` (the last 1x1 convolution of its 16 features g per token), so the
    image tokens change by ``W g + (b - no_mask)``: 16 directions and one constant. Each image-side tensor is an
    affine map of the tokens, so it changes by its linear part on those 17 rows (constants, computed here at
    export) times (g, 1) per token: products with 17 columns instead of the full projections."""

    def __init__(self, model: EfficientViTSam) -> None:
        super().__init__()
        self.model = model
        prompts = model.prompt_encoder
        last = prompts.mask_downscaling[-1]
        rows = torch.cat([last.weight[:, :, 0, 0].T, (last.bias - prompts.no_mask_embed.weight[0])[None]])
        with torch.no_grad():
            directions = rows.T.reshape(1, -1, 1, rows.shape[0])  # the 17 rows as a (1, C, 1, 17) image
            no_pe = fast_attention.transformer_pe(model.mask_decoder.transformer, torch.zeros_like(directions))
            moved = _image_parts(_prepared(model, directions, no_pe))
            biases = _image_tensors(_prepared(model, torch.zeros_like(directions), no_pe))
            self.token_last = [last for _, last in moved]
            self.linear = [a - b for (a, _), b in zip(moved, biases)]  # each tensor's linear part

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *side, mask_input = inputs
        features = self.model.prompt_encoder.mask_downscaling[:-1](mask_input).flatten(2)[0]  # (16, N)
        coefficients = torch.cat([features, torch.ones_like(features[:1])])  # (17, N)
        return tuple(
            tensor + (linear @ coefficients if last else coefficients.T @ linear)
            for tensor, linear, last in zip(side, self.linear, self.token_last)
        )


class WebPromptGraph(nn.Module):
    """Prepared image side + SAM prompts (no mask prompt) + ``extent`` + ``multimask`` -> the chosen mask's low-res
    logits (1, 1, 4 rows, 4 columns) over the top-left ``extent`` (image-token rows, columns) of the grid, the IoU
    predictions of all four tokens (1, 4) and the chosen token (1,): with ``multimask`` 1 the best of tokens
    1..3 by predicted IoU (a single click), else token 0 (``SamPredictor``'s choice).

    The positional encodings' projections depend only on the weights: computed in the graph from constants (folded
    at export), so they are not shipped per image."""

    def __init__(self, model: EfficientViTSam, layout: list[tuple[bool, bool]]) -> None:
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        *image, point_coords, point_labels, extent, multimask = inputs
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
        # the extent's tokens; traced with a tensor extent, so the sizes below stay dynamic in the graph
        tokens = state.image_tokens.view(1, grid, grid, -1)
        tokens = tokens.index_select(1, torch.arange(extent[0])).index_select(2, torch.arange(extent[1]))
        state = state._replace(image_tokens=tokens.flatten(1, 2), size=(tokens.shape[1], tokens.shape[2]))
        scores = fast_decoder.predict_iou(decoder, state)
        # SamPredictor's choice, in the graph so that only the chosen mask is computed and handed over
        token = torch.where(multimask > 0, 1 + scores[0, 1:].argmax(), 0).reshape(1)
        return fast_decoder.mask_logits(decoder, state, token), scores, token


class WebRefineGraph(nn.Module):
    """A click that refines a mask: the image side without a mask prompt + ``mask_input`` + the prompt graph's
    inputs -> its outputs, in one graph (the masked image side never leaves WebAssembly)."""

    def __init__(self, model: EfficientViTSam, layout: list[tuple[bool, bool]]) -> None:
        super().__init__()
        self.masked = MaskedImageSide(model)
        self.prompt = WebPromptGraph(model, layout)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        *side, mask_input, point_coords, point_labels, extent, multimask = inputs
        return self.prompt(*self.masked(*side, mask_input), point_coords, point_labels, extent, multimask)


def image_output_names(model: EfficientViTSam) -> list[str]:
    count = 1 + sum(a + b for a, b in _layout(model))  # the image tokens, then the projections
    return [f"image_side_{i}" for i in range(count)]


def _paths(folder: Path) -> dict[str, Path]:
    return {name: folder / f"web{WEB_GRAPHS_VERSION}_{name}.onnx" for name in WEB_GRAPHS}


def export_web_graphs(model: EfficientViTSam, folder: Path) -> dict[str, Path]:
    """Write the image-side, refine and prompt graphs for ``model`` into ``folder``."""
    model = _cpu_model(model)
    layout = _layout(model)
    names = tuple(image_output_names(model))
    coords, labels, mask, _ = _prompt_example(model)
    embedding = _embedding_example(model)
    paths = _paths(folder)
    _export(WebImageGraph(model), (embedding,), paths["image"], ("image_embeddings",), names, {})
    with torch.no_grad():
        side = WebImageGraph(model).eval()(embedding)
    grid = model.config.embed_size
    extent = torch.tensor([grid - 1, grid - 2])  # not the full grid: the traced sizes must not fold to constants
    prompt = (coords, labels, extent, torch.ones(1))
    prompt_names = ("point_coords", "point_labels", "extent", "multimask")
    outputs = ("low_res_masks", "iou_predictions", "mask_token")
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    graph = WebPromptGraph(model, layout)
    _export(graph, (*side, *prompt), paths["prompt"], (*names, *prompt_names), outputs, dynamic)
    graph = WebRefineGraph(model, layout)
    _export(graph, (*side, mask, *prompt), paths["refine"], (*names, "mask_input", *prompt_names), outputs, dynamic)
    return paths


def web_decoder(model: EfficientViTSam, folder: Path | None = None) -> dict[str, Path]:
    """The browser's graphs for these weights (``image``, ``refine``, ``prompt``), exported on first use
    (thread-safe)."""
    folder = folder or engine_dir(model)
    paths = _paths(folder)
    with _lock:
        folder.mkdir(parents=True, exist_ok=True)
        if not all(path.is_file() for path in paths.values()):
            export_web_graphs(model, folder)
    return paths
