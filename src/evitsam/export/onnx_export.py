"""Write the model as ONNX graphs that SAM tools load: encoder, SAM-signature decoders, batched-boxes decoder.

``export_onnx(model, "out/")`` writes ``encoder.onnx``, ``decoder.onnx`` (all four masks, or SAM's single
mask with ``single_mask=True``), ``decoder_single_mask.onnx`` (when ``decoder.onnx`` has four masks),
``decoder_boxes.onnx`` and ``config.yaml``: an AnyLabeling / X-AnyLabeling ``segment_anything`` model
config that points tools at the single-mask decoder (they keep ``masks[0][0]``) and records the
graphs' contract. Files are written atomically. The TorchScript-based exporter is used: it handles the
data-dependent output size (``orig_im_size``) that SAM's decoder signature needs. docs/onnx.md has the details.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
import yaml
from torch import nn

from ..atomic_files import atomic_write
from ..models import EfficientViTSam
from ..models.neck import EMBED_DIM
from ..models.sam import PROMPT_FRAME
from .graphs import SAM_LOW_RES, BoxesDecoderGraph, EncoderGraph, PromptDecoderGraph, SamDecoderGraph

OPSET = 17
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
SINGLE_MASK_DECODER_FILE = "decoder_single_mask.onnx"
BOXES_DECODER_FILE = "decoder_boxes.onnx"
CONFIG_FILE = "config.yaml"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# A small, non-square original size for tracing (any size works at run time): tracing runs the graph once.
EXAMPLE_SIZE = torch.tensor([150.0, 225.0])


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_axes: dict[str, dict[int, str]],
    rewrite: Callable[[onnx.GraphProto], None] | None = None,
) -> Path:
    """Trace ``module`` in eval mode to ``path`` (atomically); the wrapped model's train/eval flags are kept.

    ``rewrite``: then changes the graph in place before it is written, e.g. for tools' own post-processing
    (``gemm_with_shared_inputs_as_matmul``).
    """

    def write(tmp: str) -> None:
        torch.onnx.export(
            module,
            args,
            tmp,
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
        if rewrite is not None:
            graph = onnx.load(tmp)
            rewrite(graph.graph)
            onnx.save(graph, tmp)

    modes = {sub: sub.training for sub in module.modules()}
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; the tests check the graphs' numbers
            atomic_write(path, write)
    finally:
        for sub, training in modes.items():
            sub.training = training
    return Path(path)


def gemm_with_shared_inputs_as_matmul(graph: onnx.GraphProto) -> None:
    """Rewrite, in place, every ``Gemm`` whose B input is computed (not a weight) as ``MatMul`` + ``Add``.

    The same numbers; the point is ONNX Runtime's ``quantize_dynamic`` (SAM's notebook quantises the decoder
    with it): it turns such a Gemm into a Transpose named after B, and when one computed tensor feeds
    several Gemms (the image tokens feed three projections here) the names collide and the quantised model
    does not load ("Duplicate definition of name ..._Transposed"). One shared Transpose per tensor avoids it.
    """
    weights = {init.name for init in graph.initializer}
    transposed: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or node.input[1] in weights or not plain:
            nodes.append(node)
            continue
        b = node.input[1]
        if attrs.get("transB", 0):
            if b not in transposed:
                transposed[b] = f"{b}_transposed_for_matmul"
                nodes.append(onnx.helper.make_node("Transpose", [b], [transposed[b]], name=f"{node.name}_transpose_b"))
            b = transposed[b]
        product = f"{node.output[0]}_matmul" if len(node.input) > 2 else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], b], [product], name=f"{node.name}_matmul"))
        if len(node.input) > 2:
            nodes.append(
                onnx.helper.make_node("Add", [product, node.input[2]], list(node.output), name=f"{node.name}_add")
            )
    del graph.node[:]
    graph.node.extend(nodes)


def _cpu_model(model: EfficientViTSam) -> EfficientViTSam:
    if not isinstance(model, EfficientViTSam):
        raise ValueError(f"model must be an EfficientViTSam, got {type(model).__name__}")
    return model if model.device.type == "cpu" else _cpu_copy(model)


def _cpu_copy(model: EfficientViTSam) -> EfficientViTSam:
    copy = EfficientViTSam(model.config)
    copy.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    return copy.eval()


def _embedding_example(model: EfficientViTSam) -> torch.Tensor:
    return torch.randn(1, EMBED_DIM, model.config.embed_size, model.config.embed_size)


def export_encoder(model: EfficientViTSam, path: str | os.PathLike, resize: bool = True) -> Path:
    """``input_image`` (H, W, 3) float32 0-255 RGB -> ``image_embeddings``.

    ``resize=True``: any H, W, resized inside the graph as ``SamTransform.apply_image`` does (the tools'
    encoder); ``resize=False``: the long side must already be the encoder size (the engines' encoder).
    """
    model = _cpu_model(model)
    size = model.encoder_size
    # Non-square, and (when resizing) neither side at the encoder size: H and W stay distinct and dynamic.
    shape = (size * 3 // 4, size) if not resize else (size + 37, size * 3 // 2)
    example = torch.randint(0, 256, (*shape, 3)).float()
    return _export(
        EncoderGraph(model, resize),
        (example,),
        path,
        ("input_image",),
        ("image_embeddings",),
        {"input_image": {0: "height", 1: "width"}},
    )


def _prompt_example(
    model: EfficientViTSam, batch: int = 1, points: int = 3, mask_size: int | None = None
) -> tuple[torch.Tensor, ...]:
    coords = torch.rand(batch, points, 2) * PROMPT_FRAME
    labels = torch.tensor([[1.0, 0.0, -1.0][i % 3] for i in range(points)]).expand(batch, points).contiguous()
    side = mask_size or model.low_res_size
    mask = torch.randn(1, 1, side, side)
    return coords, labels, mask, torch.ones(1)


def export_decoder(model: EfficientViTSam, path: str | os.PathLike, single_mask: bool = False) -> Path:
    """SAM's decoder signature (256x256 ``mask_input`` and ``low_res_masks`` for every variant); dynamic
    number of points, masks up-scaled to ``orig_im_size``."""
    model = _cpu_model(model)
    args = (_embedding_example(model), *_prompt_example(model, mask_size=SAM_LOW_RES), EXAMPLE_SIZE)
    dynamic = {
        "point_coords": {1: "num_points"},
        "point_labels": {1: "num_points"},
        "masks": {2: "height", 3: "width"},
    }
    graph = SamDecoderGraph(model, single_mask)
    return _export(
        graph, args, path, DECODER_INPUTS, DECODER_OUTPUTS, dynamic, rewrite=gemm_with_shared_inputs_as_matmul
    )


def export_boxes_decoder(model: EfficientViTSam, path: str | os.PathLike, single_mask: bool = True) -> Path:
    """``image_embeddings``, ``boxes`` (B, 4) XYXY in the 1024 frame, ``orig_im_size`` -> masks per box."""
    model = _cpu_model(model)
    boxes = torch.tensor([[100.0, 200.0, 500.0, 600.0], [10.0, 20.0, 900.0, 700.0], [0.0, 0.0, 50.0, 80.0]])
    args = (_embedding_example(model), boxes, EXAMPLE_SIZE)
    dynamic = {"boxes": {0: "num_boxes"}, **{name: {0: "num_boxes"} for name in DECODER_OUTPUTS}}
    dynamic["masks"].update({2: "height", 3: "width"})
    inputs = ("image_embeddings", "boxes", "orig_im_size")
    graph = BoxesDecoderGraph(model, single_mask)
    return _export(graph, args, path, inputs, DECODER_OUTPUTS, dynamic, rewrite=gemm_with_shared_inputs_as_matmul)


def export_prompt_decoder(model: EfficientViTSam, path: str | os.PathLike) -> Path:
    """The runtimes' decoder: batched SAM prompts -> all four low-res masks and IoU predictions."""
    model = _cpu_model(model)
    args = (_embedding_example(model), *_prompt_example(model, batch=2))
    inputs = DECODER_INPUTS[:-1]
    outputs = ("low_res_masks", "iou_predictions")
    dynamic = {
        "point_coords": {0: "batch", 1: "num_points"},
        "point_labels": {0: "batch", 1: "num_points"},
        "mask_input": {0: "mask_batch"},
        "low_res_masks": {0: "batch"},
        "iou_predictions": {0: "batch"},
    }
    return _export(PromptDecoderGraph(model), args, path, inputs, outputs, dynamic)


def anylabeling_config(model: EfficientViTSam, name: str, single_mask: bool) -> dict:
    """A ``segment_anything`` model config (AnyLabeling / X-AnyLabeling keys) plus the graphs' contract.

    Its decoder is always a single-mask one: the tools keep ``masks[0][0]`` of what the decoder returns.
    """
    decoders = {"single_mask": DECODER_FILE if single_mask else SINGLE_MASK_DECODER_FILE}
    if not single_mask:
        decoders["multimask"] = DECODER_FILE
    return {
        "type": "segment_anything",
        "name": name,
        "display_name": f"EfficientViT-SAM {model.variant.upper()} (evitsam)",
        "encoder_model_path": ENCODER_FILE,
        "decoder_model_path": decoders["single_mask"],
        "input_size": PROMPT_FRAME,
        # The largest image the encoder sees unresized (tools that letterbox into (max_height, max_width) can
        # use it; the encoder resizes any other canvas itself).
        "max_width": model.encoder_size,
        "max_height": model.encoder_size,
        "evitsam": {
            "variant": model.variant,
            "encoder_size": model.encoder_size,
            "prompt_frame": PROMPT_FRAME,
            "encoder_input": "input_image: float32 (H, W, 3) RGB 0-255, any size; resized in the graph so its long "
            "side is encoder_size (PIL bilinear on uint8: antialiased, each pass rounded), normalised, zero-padded",
            "decoder_inputs": list(DECODER_INPUTS),
            "decoder_outputs": list(DECODER_OUTPUTS),
            "low_res_mask_size": SAM_LOW_RES,
            "single_mask": single_mask,
            "decoders": decoders,
            "boxes_decoder_model_path": BOXES_DECODER_FILE,
            "opset": OPSET,
        },
    }


def export_onnx(
    model: EfficientViTSam, output_dir: str | os.PathLike, single_mask: bool = False, name: str | None = None
) -> dict[str, Path]:
    """Write the encoder, the decoders, the batched-boxes decoder and the config into ``output_dir``.

    ``decoder.onnx`` returns all four masks (SAM's default export) or, with ``single_mask``, the one SAM's
    rule picks (``--return-single-mask``); without ``single_mask`` the single-mask decoder is written as
    well (``decoder_single_mask.onnx``), since that is what tools and SAM's notebook expect. Returns the
    paths: ``encoder``, ``decoder``, ``single_mask_decoder``, ``boxes_decoder``, ``config``.
    """
    model = _cpu_model(model)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir must be a directory, but {output_dir} is a file")
    name = name or f"evitsam-{model.variant}"
    paths = {
        "encoder": export_encoder(model, output_dir / ENCODER_FILE),
        "decoder": export_decoder(model, output_dir / DECODER_FILE, single_mask),
    }
    if single_mask:
        paths["single_mask_decoder"] = paths["decoder"]
    else:
        paths["single_mask_decoder"] = export_decoder(model, output_dir / SINGLE_MASK_DECODER_FILE, True)
    paths["boxes_decoder"] = export_boxes_decoder(model, output_dir / BOXES_DECODER_FILE, single_mask)
    config = yaml.safe_dump(anylabeling_config(model, name, single_mask), sort_keys=False, width=1000)
    paths["config"] = output_dir / CONFIG_FILE
    atomic_write(paths["config"], lambda tmp: Path(tmp).write_text(config))
    return paths
