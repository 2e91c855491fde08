"""int8 encoder for OpenVINO: NNCF post-training quantisation calibrated on real photos.

Calibration runs once per set of weights (a minute or two on a laptop CPU for ~30 photos); the quantised
model is cached beside the exported graphs. Calibrate on photos like the ones you will segment, never on
the images you measure accuracy on. Every fourth photo is held out of calibration and used to check the
result: an int8 encoder whose embeddings fall below cosine 0.99 with fp32 is refused, not cached.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..io import image_suffixes, read_image
from ..models import EfficientViTSam
from ..transforms import SamTransform, as_rgb_uint8
from .engine import mean_padded

INT8_FILE = "encoder_int8.xml"
MIN_CALIBRATION_IMAGES = 4
# The project's bar for any reduced precision: embedding cosine >= 0.99 with fp32 (checked on held-out photos).
MIN_COSINE = 0.99
HELD_OUT_FRACTION = 4  # every 4th calibration photo is kept out of calibration and used to check accuracy


def calibration_images(source: str | os.PathLike | list) -> list[np.ndarray]:
    """A folder of photos or a list of HxWx3 uint8 arrays / PIL images -> RGB arrays."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"calibration folder not found: {folder}")
        suffixes = image_suffixes()
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        images = [read_image(path) for path in files]
    else:
        images = [as_rgb_uint8(image) for image in source]
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise ValueError(
            f"calibration needs at least {MIN_CALIBRATION_IMAGES} photos (20-50 recommended), got {len(images)}"
        )
    return images


def encoder_inputs(model: EfficientViTSam, images: list[np.ndarray]) -> list[np.ndarray]:
    """Each photo as the square, mean-padded ``input_image`` the engines feed the encoder."""

    transform = SamTransform(model.encoder_size)
    return [mean_padded(transform.apply_image(image), model.encoder_size) for image in images]


def quantize_encoder(model: EfficientViTSam, encoder_onnx: Path, images: list[np.ndarray], target: Path) -> Path:
    """NNCF post-training int8 quantisation of the exported encoder, written as OpenVINO IR at ``target``."""
    import nncf
    import openvino as ov

    encoder = ov.Core().read_model(encoder_onnx)
    size = model.encoder_size
    encoder.reshape({"input_image": [size, size, 3]})
    inputs = encoder_inputs(model, images)
    held_out = inputs[::HELD_OUT_FRACTION]
    calibration = [x for i, x in enumerate(inputs) if i % HELD_OUT_FRACTION]
    quantized = nncf.quantize(
        encoder,
        nncf.Dataset(calibration),
        subset_size=len(calibration),
        model_type=nncf.ModelType.TRANSFORMER,  # keeps the attention's normalising division in float
    )
    cosine = worst_cosine(encoder, quantized, held_out)
    if cosine < MIN_COSINE:
        raise ValueError(
            f"int8 quantisation is not accurate for these weights: embedding cosine {cosine:.4f} < {MIN_COSINE} "
            f"with fp32 on {len(held_out)} held-out photos; use precision='fp32'"
        )
    # Two files (.xml + .bin): write both into a temporary folder, then move the weights first and the
    # model file last, so a present .xml always means a complete pair.
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        ov.save_model(quantized, Path(tmp) / target.name)
        shutil.move(Path(tmp) / target.with_suffix(".bin").name, target.with_suffix(".bin"))
        shutil.move(Path(tmp) / target.name, target)
    return target


def worst_cosine(reference, candidate, inputs: list[np.ndarray]) -> float:
    """Lowest cosine similarity between two OpenVINO models' embeddings over ``inputs``."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    compiled = [core.compile_model(model, "CPU", config) for model in (reference, candidate)]
    worst = 1.0
    for x in inputs:
        a, b = (np.asarray(model(x)[0], dtype=np.float64).ravel() for model in compiled)
        worst = min(worst, float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)))
    return worst


def require_calibration(folder: Path, calibration) -> None:
    """Fail early when int8 is asked for without photos and nothing is cached for these weights."""
    if calibration is None and not (folder / INT8_FILE).is_file():
        raise ValueError(
            "precision='int8' needs calibration photos once per set of weights: pass calibration=FOLDER or a "
            "list of HxWx3 uint8 images (20-50 real photos like the ones you will segment)"
        )


def quantized_encoder(model: EfficientViTSam, encoder_onnx: Path, calibration) -> Path:
    """The cached int8 encoder for these weights, calibrating on ``calibration`` when photos are given."""
    target = encoder_onnx.parent / INT8_FILE
    require_calibration(target.parent, calibration)
    if calibration is None:
        return target
    return quantize_encoder(model, encoder_onnx, calibration_images(calibration), target)
