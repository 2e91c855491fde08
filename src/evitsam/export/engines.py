"""Inference engines behind ``SamPredictor``: PyTorch, ONNX Runtime and OpenVINO, in fp32, bf16, fp16 (CUDA) or int8.

An engine does the two expensive steps of the predictor, ``embed`` (encoder) and ``decode`` (prompt
encoder + mask decoder, low-res logits); the predictor keeps resizing, prompt validation and mask
post-processing, so every runtime returns the same kinds of results through the same API. Anything that
holds a ``SamPredictor`` (the automatic mask generator, the CLI) gets the runtime by passing it on.

ONNX-based engines run the graphs of :mod:`.graphs`, exported once per set of weights and cached under
``$EVITSAM_HOME/engines/<variant>-<weights hash>/``. The decoder always runs in fp32: it is a few
percent of the work and reduced precision there costs mask quality.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..models import EfficientViTSam
from ..models.prompt_encoder import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_PADDING
from ..models.sam import LOW_RES_MASK_SIZE, PIXEL_MEAN
from ..weights import cache_dir
from .onnx_export import OPSET, export_encoder, export_prompt_decoder

RUNTIMES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# Bump when the graphs change, so stale cached exports are never reused.
GRAPH_VERSION = 3
MAX_STATIC_DECODERS = 8


class PrecisionFallback(UserWarning):
    """A precision the CPU cannot run natively was asked for; fp32 is used instead (one-line notice)."""


def check_options(runtime: str, precision: str) -> None:
    """Validate names first, so a typo fails before any export or compilation."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(map(repr, RUNTIMES))}, got {runtime!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if precision == "int8" and runtime != "openvino":
        raise ValueError(
            f"precision='int8' needs runtime='openvino' (NNCF post-training quantisation); "
            f"runtime={runtime!r} runs fp32 or bf16"
        )
    if precision == "fp16" and runtime != "torch":
        raise ValueError(
            f"precision='fp16' needs runtime='torch' on a CUDA GPU; runtime={runtime!r} runs on the CPU "
            f"(use precision='bf16' there)"
        )
    if runtime == "onnxruntime" and precision != "fp32":
        raise ValueError(
            f"runtime='onnxruntime' runs fp32 only (its CPU bf16/int8 kernels are slower than fp32 here); "
            f"use runtime='openvino' for precision={precision!r}"
        )


def _fallback(precision: str, reason: str) -> str:
    warnings.warn(f"precision={precision!r} {reason}; running fp32 instead", PrecisionFallback, stacklevel=4)
    return "fp32"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 / AMX (x86) or the BF16 extension (Arm): without them bf16 is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def make_engine(
    model: EfficientViTSam, runtime: str = "torch", precision: str = "fp32", calibration: list | None = None
):
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
    if runtime == "onnxruntime":
        return OnnxRuntimeEngine(model)
    return OpenVinoEngine(model, precision, calibration)


class TorchEngine:
    """The model itself; bf16 (CPU or GPU) and fp16 (CUDA GPUs) run the encoder under autocast, with
    its attention and neck in fp32: what makes our encoder fp16-safe where the official one overflows.
    bf16 also runs the decoder's per-prompt products with the image tokens in bf16 (``decoder_products``)."""

    runtime = "torch"

    def __init__(self, model: EfficientViTSam, precision: str = "fp32") -> None:
        self.model = model
        if precision == "fp16" and model.device.type != "cuda":
            raise ValueError(
                f"precision='fp16' runs on a CUDA GPU; the model is on {model.device} "
                f"(move it with model.cuda(), or use precision='bf16' on CPUs with AVX512-BF16/AMX)"
            )
        if precision == "bf16" and model.device.type == "cpu" and not cpu_has_native_bf16():
            precision = _fallback(precision, "is emulated on this CPU (no AVX512-BF16/AMX)")
        self.precision = precision

    @property
    def decoder_products(self) -> torch.dtype:
        """The dtype of each prompt's products with the image tokens (``EfficientViTSam.prepare_decoder``).

        bf16 for precision bf16; fp16 stays fp32 here: attention scores and token updates in fp16 can overflow.
        """
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float 0-255, long side = encoder size -> (B, 256, 64, 64) fp32 embeddings."""
        images = images.to(self.model.device, torch.float32)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        # fp32 must not open an autocast region: enabled=False would switch off a caller's own autocast.
        with torch.autocast(self.model.device.type, dtype) if dtype else contextlib.nullcontext():
            return self.model.encode(self.model.preprocess(images)).float()

    def decode(
        self, embeddings, point_coords, point_labels, boxes, mask_input, multimask_output: bool, image_side=None
    ):
        """``image_side``: ``model.prepare_decoder(embeddings)``, reused across prompts (see SamPredictor)."""
        return self.model.decode(
            embeddings, point_coords, point_labels, boxes, mask_input, multimask_output, image_side
        )


def sam_prompts(
    point_coords: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    batch: int,
    mask_size: int = LOW_RES_MASK_SIZE,
) -> dict[str, np.ndarray]:
    """Predictor prompts -> SAM's ONNX decoder inputs: box corners as labels 2/3, else a -1 padding point.

    This is exactly what the prompt encoder does with separate points and boxes, so both decoders agree.
    """
    coords, labels = [], []
    if point_coords is not None:
        coords.append(point_coords.float())
        labels.append(point_labels.float())
    if boxes is not None:
        coords.append(boxes.float().reshape(-1, 2, 2))
        labels.append(torch.tensor([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT], dtype=torch.float).expand(batch, 2))
    else:
        coords.append(torch.zeros(batch, 1, 2))
        labels.append(torch.full((batch, 1), float(LABEL_PADDING)))
    has_mask = mask_input is not None
    if mask_input is None:
        mask_input = torch.zeros(1, 1, mask_size, mask_size)
    return {
        "point_coords": torch.cat([c.expand(batch, -1, 2) for c in coords], dim=1).cpu().numpy(),
        "point_labels": torch.cat([lab.expand(batch, -1) for lab in labels], dim=1).cpu().numpy(),
        "mask_input": mask_input.float().cpu().numpy(),
        "has_mask_input": np.array([float(has_mask)], dtype=np.float32),
    }


def weights_fingerprint(model: EfficientViTSam) -> str:
    """Hash of the variant, every tensor and the graph version: the cache key of exported graphs."""
    digest = hashlib.sha256(f"{model.variant}|{__version__}|{GRAPH_VERSION}|{OPSET}".encode())
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def engine_dir(model: EfficientViTSam) -> Path:
    return cache_dir() / "engines" / f"{model.variant}-{weights_fingerprint(model)}"


def cached_graphs(model: EfficientViTSam, folder: Path | None = None) -> tuple[Path, Path]:
    """(encoder.onnx, prompt_decoder.onnx) for these weights, exported on first use."""
    folder = folder or engine_dir(model)
    encoder, decoder = folder / "encoder.onnx", folder / "prompt_decoder.onnx"
    if not encoder.is_file():
        export_encoder(model, encoder, resize=False)  # the engines feed the encoder size: no resampling work
    if not decoder.is_file():
        export_prompt_decoder(model, decoder)
    return encoder, decoder


def mean_padded(image: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) 0-255 image, long side ``size`` -> (size, size, 3) float32 padded with the pixel mean.

    The pixel mean normalises to exactly 0, which is what the model's zero padding after normalisation
    gives; a fixed square input lets the runtimes plan (and int8 calibrate) for one shape.
    """
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[...] = np.asarray(PIXEL_MEAN, dtype=np.float32)
    canvas[: image.shape[0], : image.shape[1]] = image
    return canvas


class _GraphEngine:
    """Shared by the ONNX-based engines: the square encoder input and SAM-convention decoding."""

    runtime = ""
    decoder_products = torch.float32  # the model's own decoder (mask-only prompts, "everything") stays fp32

    def __init__(self, model: EfficientViTSam) -> None:
        self.model = model
        self.size = model.encoder_size

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[:2] != (1, 3):
            raise ValueError(f"images must be shaped (1, 3, h, w), got {tuple(images.shape)}")
        image = mean_padded(images[0].permute(1, 2, 0).to("cpu", torch.float32).numpy(), self.size)
        return torch.from_numpy(np.array(self._run_encoder(image), copy=True))

    def decode(self, embeddings, point_coords, point_labels, boxes, mask_input, multimask_output: bool):
        if point_coords is None and boxes is None:
            # A mask-only prompt has no sparse token at all, which SAM's signature cannot express (it always
            # has at least the padding point); the model's own decoder is exact and just as quick here.
            return self.model.decode(embeddings, None, None, None, mask_input, multimask_output)
        batch = next(t.shape[0] for t in (point_coords, boxes, mask_input, torch.empty(1)) if t is not None)
        feeds = sam_prompts(point_coords, point_labels, boxes, mask_input, batch, self.model.low_res_size)
        feeds["image_embeddings"] = embeddings.float().cpu().numpy()
        low_res, scores = (torch.from_numpy(np.array(out, copy=True)) for out in self._run_decoder(feeds))
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return low_res[:, selected], scores[:, selected]

    def _run_encoder(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run_decoder(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise ValueError(f"runtime needs the '{module}' package: pip install 'evitsam[{extra}]'") from None


class OnnxRuntimeEngine(_GraphEngine):
    """ONNX Runtime on the CPU, fp32: the compatibility runtime (the same graphs tools load)."""

    runtime = "onnxruntime"
    precision = "fp32"

    def __init__(self, model: EfficientViTSam) -> None:
        super().__init__(model)
        ort = _require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        encoder, decoder = cached_graphs(model)
        providers = ["CPUExecutionProvider"]
        self._encoder = ort.InferenceSession(str(encoder), options, providers=providers)
        self._decoder = ort.InferenceSession(str(decoder), options, providers=providers)

    def _run_encoder(self, image: np.ndarray) -> np.ndarray:
        return self._encoder.run(None, {"input_image": image})[0]

    def _run_decoder(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return tuple(self._decoder.run(None, feeds))


class OpenVinoEngine(_GraphEngine):
    """OpenVINO on the CPU: the fastest CPU runtime; fp32, bf16 where the CPU has it, int8 via NNCF."""

    runtime = "openvino"

    def __init__(self, model: EfficientViTSam, precision: str = "fp32", calibration: list | None = None) -> None:
        super().__init__(model)
        ov = _require("openvino", "openvino")
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            precision = _fallback(precision, "is not native on this CPU (OpenVINO reports no BF16)")
        self.precision = precision
        folder = engine_dir(model)
        if precision == "int8":
            from .quantize import quantized_encoder, require_calibration

            require_calibration(folder, calibration)  # before the minutes an export may take
        encoder_onnx, decoder_onnx = cached_graphs(model, folder)
        if precision == "int8":
            encoder = core.read_model(quantized_encoder(model, encoder_onnx, calibration))
        else:
            encoder = core.read_model(encoder_onnx)
        encoder.reshape({"input_image": [self.size, self.size, 3]})
        threads = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
        # int8 layers run int8 whatever the hint; the hint sets the precision of everything else.
        hint = "bf16" if precision == "bf16" else "f32"
        self._core, self._decoder_config = core, {**threads, "INFERENCE_PRECISION_HINT": "f32"}
        encoder_config = {**threads, "INFERENCE_PRECISION_HINT": hint}
        self._encoder_request = core.compile_model(encoder, "CPU", encoder_config).create_infer_request()
        self._decoder_model = core.read_model(decoder_onnx)
        compiled = core.compile_model(self._decoder_model, "CPU", self._decoder_config)
        self._decoder_request = compiled.create_infer_request()
        self._static_decoders: dict[tuple, object] = {}
        self._shapes_seen: collections.Counter = collections.Counter()
        self._dynamic_works = True

    def _run_encoder(self, image: np.ndarray) -> np.ndarray:
        return self._encoder_request.infer({"input_image": image})[0]

    def _run_decoder(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        request = self._decoder_for(feeds)
        try:
            outputs = request.infer(feeds)
        except RuntimeError:
            if request is not self._decoder_request:
                raise
            # Some OpenVINO CPU builds fail shape inference of the dynamic graph at run time (seen on
            # AVX2-only CPUs: "Broadcast ... Value -1 not in range"); with static shapes everything is
            # resolved at compile time. Same graph, same numbers: compile for these shapes from now on.
            self._dynamic_works = False
            outputs = self._decoder_for(feeds).infer(feeds)
        return outputs["low_res_masks"], outputs["iou_predictions"]

    def _decoder_for(self, feeds: dict[str, np.ndarray]):
        """The dynamic-shape decoder, or one compiled for these exact shapes once they recur.

        A static decoder runs about 30 % faster; compiling one takes a fraction of a second, so it is only
        done for shapes seen twice (repeated prompts, the automatic mask generator's batches), up to a few
        (least recently compiled ones make room), or always where the dynamic graph does not run.
        """
        key = tuple((name, value.shape) for name, value in sorted(feeds.items()))
        if key in self._static_decoders:
            return self._static_decoders[key]
        self._shapes_seen[key] += 1
        if self._dynamic_works and (self._shapes_seen[key] < 2 or len(self._static_decoders) >= MAX_STATIC_DECODERS):
            return self._decoder_request
        if len(self._static_decoders) >= MAX_STATIC_DECODERS:
            self._static_decoders.pop(next(iter(self._static_decoders)))
        model = self._decoder_model.clone()
        model.reshape({name: list(shape) for name, shape in key})
        request = self._core.compile_model(model, "CPU", self._decoder_config).create_infer_request()
        self._static_decoders[key] = request
        return request


__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "OnnxRuntimeEngine",
    "OpenVinoEngine",
    "PrecisionFallback",
    "TorchEngine",
    "check_options",
    "make_engine",
]
