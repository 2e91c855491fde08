"""Write the model as ONNX graphs that SAM tools load: encoder, SAM-signature decoder, batched-boxes decoder.

``export_onnx(model, "out/")`` writes ``encoder.onnx``, ``decoder.onnx``, ``decoder_boxes.onnx`` and
``config.yaml`` (an AnyLabeling / X-AnyLabeling ``segment_anything`` model config that also records the
input contract). Files are written atomically. The TorchScript-based exporter is used: it handles the
data-dependent output size (``orig_im_size``) that SAM's decoder signature needs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import yaml
from torch import nn

from ..files import atomic_write
from ..models import EfficientViTSam
from ..models.neck import EMBED_DIM
from ..models.sam import PROMPT_FRAME
from .graphs import BoxesDecoderGraph, EncoderGraph, PromptDecoderGraph, SamDecoderGraph

OPSET = 17
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
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
) -> Path:
    """Trace ``module`` in eval mode to ``path`` (atomically); the wrapped model's train/eval flags are kept."""
    modes = {sub: sub.training for sub in module.modules()}
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; the tests check the graphs' numbers
            atomic_write(
                path,
                lambda tmp: torch.onnx.export(
                    module,
                    args,
                    tmp,
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes=dynamic_axes,
                    do_constant_folding=True,
                ),
            )
    finally:
        for sub, training in modes.items():
            sub.training = training
    return Path(path)


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


def export_encoder(model: EfficientViTSam, path: str | os.PathLike) -> Path:
    """``input_image`` (H, W, 3) float32 0-255 RGB, long side = encoder size -> ``image_embeddings``."""
    model = _cpu_model(model)
    size = model.encoder_size
    example = torch.randint(0, 256, (size * 3 // 4, size, 3)).float()  # non-square: H and W stay distinct
    return _export(
        EncoderGraph(model),
        (example,),
        path,
        ("input_image",),
        ("image_embeddings",),
        {"input_image": {0: "height", 1: "width"}},
    )


def _prompt_example(model: EfficientViTSam, batch: int = 1, points: int = 3) -> tuple[torch.Tensor, ...]:
    coords = torch.rand(batch, points, 2) * PROMPT_FRAME
    labels = torch.tensor([[1.0, 0.0, -1.0][i % 3] for i in range(points)]).expand(batch, points).contiguous()
    mask = torch.randn(1, 1, model.low_res_size, model.low_res_size)
    return coords, labels, mask, torch.ones(1)


def export_decoder(model: EfficientViTSam, path: str | os.PathLike, single_mask: bool = False) -> Path:
    """SAM's decoder signature; dynamic number of points, masks up-scaled to ``orig_im_size``."""
    model = _cpu_model(model)
    args = (_embedding_example(model), *_prompt_example(model), EXAMPLE_SIZE)
    dynamic = {
        "point_coords": {1: "num_points"},
        "point_labels": {1: "num_points"},
        "masks": {2: "height", 3: "width"},
    }
    return _export(SamDecoderGraph(model, single_mask), args, path, DECODER_INPUTS, DECODER_OUTPUTS, dynamic)


def export_boxes_decoder(model: EfficientViTSam, path: str | os.PathLike, single_mask: bool = True) -> Path:
    """``image_embeddings``, ``boxes`` (B, 4) XYXY in the 1024 frame, ``orig_im_size`` -> masks per box."""
    model = _cpu_model(model)
    boxes = torch.tensor([[100.0, 200.0, 500.0, 600.0], [10.0, 20.0, 900.0, 700.0], [0.0, 0.0, 50.0, 80.0]])
    args = (_embedding_example(model), boxes, EXAMPLE_SIZE)
    dynamic = {"boxes": {0: "num_boxes"}, **{name: {0: "num_boxes"} for name in DECODER_OUTPUTS}}
    dynamic["masks"].update({2: "height", 3: "width"})
    inputs = ("image_embeddings", "boxes", "orig_im_size")
    return _export(BoxesDecoderGraph(model, single_mask), args, path, inputs, DECODER_OUTPUTS, dynamic)


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
    """A ``segment_anything`` model config (AnyLabeling / X-AnyLabeling keys) plus the graphs' contract."""
    size = model.encoder_size
    return {
        "type": "segment_anything",
        "name": name,
        "display_name": f"EfficientViT-SAM {model.variant.upper()} (evitsam)",
        "encoder_model_path": ENCODER_FILE,
        "decoder_model_path": DECODER_FILE,
        "input_size": PROMPT_FRAME,
        "max_width": size,
        "max_height": size,
        "evitsam": {
            "variant": model.variant,
            "encoder_size": size,
            "prompt_frame": PROMPT_FRAME,
            "encoder_input": "input_image: float32 (H, W, 3) RGB 0-255, long side resized to encoder_size "
            "(bilinear, half-up rounding); normalisation and padding are in the graph",
            "decoder_inputs": list(DECODER_INPUTS),
            "decoder_outputs": list(DECODER_OUTPUTS),
            "single_mask": single_mask,
            "boxes_decoder_model_path": BOXES_DECODER_FILE,
            "opset": OPSET,
        },
    }


def export_onnx(
    model: EfficientViTSam, output_dir: str | os.PathLike, single_mask: bool = False, name: str | None = None
) -> dict[str, Path]:
    """Write encoder, decoder, batched-boxes decoder and config into ``output_dir``; returns their paths."""
    model = _cpu_model(model)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir must be a directory, but {output_dir} is a file")
    name = name or f"evitsam-{model.variant}"
    paths = {
        "encoder": export_encoder(model, output_dir / ENCODER_FILE),
        "decoder": export_decoder(model, output_dir / DECODER_FILE, single_mask),
        "boxes_decoder": export_boxes_decoder(model, output_dir / BOXES_DECODER_FILE, single_mask),
    }
    config = yaml.safe_dump(anylabeling_config(model, name, single_mask), sort_keys=False, width=1000)
    paths["config"] = output_dir / CONFIG_FILE
    atomic_write(paths["config"], lambda tmp: Path(tmp).write_text(config))
    return paths
