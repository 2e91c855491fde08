"""Inference engines behind one protocol (:class:`Engine`): PyTorch, ONNX Runtime and OpenVINO, in fp32,
bf16, fp16 (CUDA) or int8 (OpenVINO, ``quantize``). ``make_engine`` picks one; ``SamPredictor`` holds it and
everything built on a predictor ("everything", labelling, the service) runs in the same runtime.
"""

from __future__ import annotations

from ..models import EfficientViTSam
from .engine import PRECISIONS, RUNTIMES, Engine, PrecisionFallback, check_options, cpu_has_native_bf16
from .torch_engine import TorchEngine


def make_engine(
    model: EfficientViTSam, runtime: str = "torch", precision: str = "fp32", calibration: list | None = None
) -> Engine:
    """The engine for ``runtime`` and ``precision`` (see :data:`RUNTIMES`, :data:`PRECISIONS`).

    ``calibration``: images (HxWx3 uint8 RGB) for int8 quantisation; needed once per set of weights,
    the quantised encoder is cached afterwards.
    """
    check_options(runtime, precision)
    if calibration is not None and precision != "int8":
        raise ValueError(f"calibration images are only used with precision='int8', got precision={precision!r}")
    if runtime == "torch":
        return TorchEngine(model, precision)
    if model.device.type != "cpu":
        raise ValueError(f"runtime={runtime!r} runs on the CPU; the model is on {model.device} (use model.cpu())")
    from .onnx_engines import OnnxRuntimeEngine, OpenVinoEngine  # exports graphs: loaded only when chosen

    if runtime == "onnxruntime":
        return OnnxRuntimeEngine(model)
    return OpenVinoEngine(model, precision, calibration)


__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "Engine",
    "PrecisionFallback",
    "TorchEngine",
    "check_options",
    "cpu_has_native_bf16",
    "make_engine",
]
