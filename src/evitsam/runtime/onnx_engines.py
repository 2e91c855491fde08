"""The ONNX-based engines: ONNX Runtime (fp32) and OpenVINO (fp32, bf16, int8) on the CPU.

They run the graphs of ``evitsam.export``, exported once per set of weights and cached under
``$EVITSAM_HOME/engines/<variant>-<weights hash>/``. The decoder always runs in fp32: it is a few percent
of the work and reduced precision there costs mask quality.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..export.onnx_export import OPSET, export_encoder, export_prompt_decoder
from ..models import EfficientViTSam
from ..models.prompt_encoder import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_PADDING
from ..models.sam import LOW_RES_MASK_SIZE
from ..weights import cache_dir
from .engine import fallback, mean_padded
from .quantize import quantized_encoder, require_calibration

# Bump when the graphs change, so stale cached exports are never reused.
GRAPH_VERSION = 3
MAX_STATIC_DECODERS = 8


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

    def prepare(self, embeddings: torch.Tensor) -> None:
        return None  # the graphs take the embedding whole at every call

    def decode(
        self, embeddings, point_coords, point_labels, boxes, mask_input, multimask_output: bool, image_side=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if point_coords is None and boxes is None:
            # A mask-only prompt has no sparse token at all, which SAM's signature cannot express (it always
            # has at least the padding point); the model's own decoder is exact and just as quick here.
            return self.model.fast_decoder().decode(embeddings, None, None, None, mask_input, multimask_output)
        batch = next(t.shape[0] for t in (point_coords, boxes, mask_input, torch.empty(1)) if t is not None)
        feeds = sam_prompts(point_coords, point_labels, boxes, mask_input, batch, self.model.low_res_size)
        feeds["image_embeddings"] = embeddings.float().cpu().numpy()
        low_res, scores = (torch.from_numpy(np.array(out, copy=True)) for out in self._run_decoder(feeds))
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return low_res[:, selected], scores[:, selected]

    def decode_kept(
        self, embeddings, point_coords, point_labels, keep: Callable, extent: tuple[int, int], image_side=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph returns every mask of every prompt; the kept ones are cut to ``extent``."""
        low_res, iou_preds = self.decode(embeddings, point_coords, point_labels, None, None, True)
        return iou_preds, low_res[keep(iou_preds)][:, : extent[0], : extent[1]]

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
            precision = fallback(precision, "is not native on this CPU (OpenVINO reports no BF16)")
        self.precision = precision
        folder = engine_dir(model)
        if precision == "int8":
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
