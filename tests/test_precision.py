"""Half precision must not break the encoder (the official fp16 export yields empty masks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_photo, randomize_

from evitsam import SamPredictor, build_model


@pytest.fixture(scope="module")
def predictor():
    # tiny: same blocks (LiteMLA, neck, norms) as L0; on CPUs without native bf16/fp16 (AVX2 only) an L0
    # encoder under autocast takes minutes, which the suite cannot afford.
    return SamPredictor(randomize_(build_model("tiny"), seed=11))


def predict_all(predictor, image):
    height, width = image.shape[:2]
    prompts = [
        dict(point_coords=np.array([[0.5 * width, 0.5 * height]]), point_labels=np.array([1])),
        dict(box=np.array([0.1 * width, 0.2 * height, 0.6 * width, 0.9 * height])),
    ]
    return [predictor.predict(**p)[0] for p in prompts]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_masks_agree_with_fp32(predictor, dtype):
    image = load_photo("groceries.jpg")
    predictor.set_image(image)
    reference = predict_all(predictor, image)
    fp32_embedding = predictor.features.clone()
    with torch.autocast("cpu", dtype=dtype):
        predictor.set_image(image)
        half = predict_all(predictor, image)
    assert predictor.features.dtype == torch.float32  # neck and final norm stay fp32
    assert torch.isfinite(predictor.features).all()
    relative = (predictor.features - fp32_embedding).abs().max() / fp32_embedding.abs().max()
    assert relative < 0.1
    for ours, ref in zip(half, reference):
        assert ref.any() and (~ref).any()  # a real mask, not an empty or full one
        assert (ours == ref).mean() >= 0.99


def test_attention_stays_fp32_under_autocast():
    from evitsam.models.attention import LiteMLA

    attention = randomize_(LiteMLA(64, scale=5)).eval()
    x = torch.randn(1, 64, 32, 32) * 30  # large activations overflow a half-precision normaliser
    with torch.no_grad():
        reference = attention(x)
        with torch.autocast("cpu", dtype=torch.float16):
            half = attention(x)
    assert torch.isfinite(half).all()
    assert ((half.float() - reference).abs().max() / reference.abs().max()).item() < 0.05
