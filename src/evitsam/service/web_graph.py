"""The decoder graphs a browser runs (onnxruntime-web): the image side once per image, then each prompt.

The page scales the low-res logits to the photo itself (two bilinear resizes composed per axis, as
``EfficientViTSam.postprocess_masks`` does), so no graph computes full-size logits: WebAssembly spends its time
on the decoder's attention, not on a full-size bilinear resize it would redo on every hover. Four graphs:

- ``image``: ``image_embeddings`` -> the decoder's prompt-independent tensors (the image tokens with the no-mask
  dense prompt added, the first layer's image projections); the page runs it once per image;
- ``prompt``: image-side tensors + ``point_coords``/``point_labels`` (SAM's convention) + ``extent`` +
  ``multimask`` -> the chosen low-res mask (``SamPredictor``'s choice: with ``multimask``, one click alone, the
  best of the three multimask outputs, else the single-mask output) and all four scores; what a hover or a click
  costs. ``extent`` (int64 image-token rows, columns) computes the mask only over that top-left part of the grid:
  the part a non-square photo covers, which is all its scaled mask reads (a 3:2 photo skips a third of the
  up-scaling). The positional encodings' projections are constants in it;
- ``refine``: the prompt graph for a click that refines a mask: the image-side tensors without a mask prompt +
  SAM's ``mask_input`` (the previous low-res mask, the whole grid) + the prompt graph's inputs -> its outputs.
  A mask prompt changes every image token by its dense embedding, a 1x1 convolution of 16 mask features, minus
  the no-mask embedding; every image-side tensor is affine per token, so the masked side is the unmasked one
  plus a rank-17 product (``MaskedImageSide``), not the image side's full products again;
- ``rest``: after a click's mask is shown, the low-res logits of the tokens outside its extent, from the prompt
  graph's final tokens: with the visible part, SAM's whole low-res mask, which the next click feeds back.

``spell_out_layer_norms`` rewrites the prompt-side graphs for onnxruntime-web's kernels. The file names carry
``WEB_GRAPHS_VERSION``.
Each graph is exported once per set of weights and cached beside the other engines' graphs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from ..export.onnx_export import _cpu_model, _embedding_example, _export, _prompt_example
from ..models import EfficientViTSam, fast_attention, fast_decoder
from ..models.fast_attention import ImageProjection, ImageSide
from ..runtime.onnx_engines import engine_dir

WEB_GRAPHS_VERSION = 4  # part of the file names: a changed graph is exported again, not read from the cache
WEB_GRAPHS = ("image", "refine", "prompt", "rest")
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
    predictions of all four tokens (1, 4), the chosen token (1,): with ``multimask`` 1 the best of tokens
    1..3 by predicted IoU (a single click), else token 0 (``SamPredictor``'s choice); and what the rest graph
    needs for the other tokens' logits: the decoder's output tokens (1, T, C) and final image tokens (1, N, C).

    The positional encodings' projections depend only on the weights: computed in the graph from constants (folded
    at export), so they are not shipped per image."""

    def __init__(self, model: EfficientViTSam, layout: list[tuple[bool, bool]]) -> None:
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
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
        image_tokens = state.image_tokens
        tokens = image_tokens.view(1, grid, grid, -1)
        tokens = tokens.index_select(1, torch.arange(extent[0])).index_select(2, torch.arange(extent[1]))
        state = state._replace(image_tokens=tokens.flatten(1, 2), size=(tokens.shape[1], tokens.shape[2]))
        scores = fast_decoder.predict_iou(decoder, state)
        # SamPredictor's choice, in the graph so that only the chosen mask is computed and handed over
        token = torch.where(multimask > 0, 1 + scores[0, 1:].argmax(), 0).reshape(1)
        return fast_decoder.mask_logits(decoder, state, token), scores, token, state.tokens, image_tokens


class WebRestGraph(nn.Module):
    """The prompt graph's ``tokens``, ``image_tokens`` and ``mask_token`` + ``token_indices`` (M,) -> the chosen
    mask's low-res logits of those image tokens (1, 1, 4, 4M): token m's 4x4 block in columns 4m..4m+3.

    Each 4x4 block of low-res logits depends on its own image token alone (the up-scaling is per pixel), so the
    tokens a click's visible mask did not need (the padding beside a non-square photo) are computed here, after
    the mask is shown, for the whole low-res mask the next click feeds back."""

    def __init__(self, model: EfficientViTSam) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_tokens, tokens, mask_token, token_indices) -> torch.Tensor:
        rest = image_tokens.index_select(1, token_indices)
        state = fast_decoder.DecoderState(tokens, rest, (1, rest.shape[1]))
        return fast_decoder.mask_logits(self.model.mask_decoder, state, mask_token)


class WebRefineGraph(nn.Module):
    """A click that refines a mask: the image side without a mask prompt + ``mask_input`` + the prompt graph's
    inputs -> its outputs, in one graph (the masked image side never leaves WebAssembly)."""

    def __init__(self, model: EfficientViTSam, layout: list[tuple[bool, bool]]) -> None:
        super().__init__()
        self.masked = MaskedImageSide(model)
        self.prompt = WebPromptGraph(model, layout)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *side, mask_input, point_coords, point_labels, extent, multimask = inputs
        return self.prompt(*self.masked(*side, mask_input), point_coords, point_labels, extent, multimask)


def spell_out_layer_norms(graph: onnx.GraphProto) -> None:
    """Rewrite, in place, every ``LayerNormalization`` over the last axis as the reductions and products it stands
    for (mean, centre, mean square, reciprocal square root, scale, shift): the same numbers (two-pass statistics,
    float32), but onnxruntime-web's WebAssembly LayerNormalization kernel takes about 2.5 times as long as those
    simpler ones (a norm over L0's 4096 image tokens: ~6.5 against ~2.5 ms at one thread; the decoder has three
    norms of about that size). ``Mul``, not ``Pow``, squares: ONNX Runtime's optimizer folds the ``Pow`` pattern
    back into the slow kernel."""
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        statistics_used = any(node.output[1:])  # the optional Mean / InvStdDev outputs
        if node.op_type != "LayerNormalization" or attrs.get("axis", -1) != -1 or statistics_used:
            nodes.append(node)
            continue
        x, scale, *shift = node.input
        name = node.name or node.output[0]
        keys = "mean centred square variance shifted std rstd normed scaled epsilon".split()
        t = {key: f"{name}_{key}" for key in keys}
        epsilon = np.array(attrs.get("epsilon", 1e-5), dtype=np.float32)
        graph.initializer.append(numpy_helper.from_array(epsilon, t["epsilon"]))
        scaled = t["scaled"] if shift and shift[0] else node.output[0]
        make = helper.make_node
        nodes += [
            make("ReduceMean", [x], [t["mean"]], name=t["mean"], axes=[-1], keepdims=1),
            make("Sub", [x, t["mean"]], [t["centred"]], name=t["centred"]),
            make("Mul", [t["centred"], t["centred"]], [t["square"]], name=t["square"]),
            make("ReduceMean", [t["square"]], [t["variance"]], name=t["variance"], axes=[-1], keepdims=1),
            make("Add", [t["variance"], t["epsilon"]], [t["shifted"]], name=t["shifted"]),
            make("Sqrt", [t["shifted"]], [t["std"]], name=t["std"]),
            make("Reciprocal", [t["std"]], [t["rstd"]], name=t["rstd"]),
            make("Mul", [t["centred"], t["rstd"]], [t["normed"]], name=t["normed"]),
            make("Mul", [t["normed"], scale], [scaled], name=scaled),
        ]
        if scaled != node.output[0]:
            nodes.append(make("Add", [scaled, shift[0]], [node.output[0]], name=f"{name}_shift"))
    del graph.node[:]
    graph.node.extend(nodes)


def image_output_names(model: EfficientViTSam) -> list[str]:
    count = 1 + sum(a + b for a, b in _layout(model))  # the image tokens, then the projections
    return [f"image_side_{i}" for i in range(count)]


def _paths(folder: Path) -> dict[str, Path]:
    return {name: folder / f"web{WEB_GRAPHS_VERSION}_{name}.onnx" for name in WEB_GRAPHS}


def export_web_graphs(model: EfficientViTSam, folder: Path) -> dict[str, Path]:
    """Write the browser's graphs for ``model`` (``WEB_GRAPHS``: image side, refine, prompt, rest) into ``folder``."""
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
    outputs = ("low_res_masks", "iou_predictions", "mask_token", "tokens", "image_tokens")
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}, "tokens": {1: "num_tokens"}}
    prompt_graph = WebPromptGraph(model, layout)
    rewrite = spell_out_layer_norms
    _export(prompt_graph, (*side, *prompt), paths["prompt"], (*names, *prompt_names), outputs, dynamic, rewrite)
    inputs = (*names, "mask_input", *prompt_names)
    _export(WebRefineGraph(model, layout), (*side, mask, *prompt), paths["refine"], inputs, outputs, dynamic, rewrite)
    with torch.no_grad():  # the rest graph's example inputs: the prompt graph's outputs
        _, _, token, tokens, image_tokens = prompt_graph.eval()(*side, *prompt)
    rest = (image_tokens, tokens, token, torch.arange(grid * (grid - 2), grid * grid))
    inputs = ("image_tokens", "tokens", "mask_token", "token_indices")
    dynamic = {"tokens": {1: "num_tokens"}, "token_indices": {0: "num_rest"}}
    _export(WebRestGraph(model), rest, paths["rest"], inputs, ("rest_masks",), dynamic, rewrite)
    return paths


def web_decoder(model: EfficientViTSam, folder: Path | None = None) -> dict[str, Path]:
    """The browser's graphs for these weights (``WEB_GRAPHS``), exported on first use (thread-safe)."""
    folder = folder or engine_dir(model)
    paths = _paths(folder)
    with _lock:
        folder.mkdir(parents=True, exist_ok=True)
        if not all(path.is_file() for path in paths.values()):
            export_web_graphs(model, folder)
    return paths
