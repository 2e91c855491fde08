"""Half precision must not break the encoder (the official fp16 export yields empty masks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import load_photo, randomize_

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


@pytest.mark.slow
def test_bf16_decoder_products_agree_with_fp32(monkeypatch):
    """precision="bf16" also runs the masks' largest per-pixel products in bf16 (AMX): the trained bundled
    model's masks on a real photo must stay those of fp32 (the accuracy gate of benchmarks/runtimes.py)."""
    from evitsam import load_model
    from evitsam.runtime import engine

    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)  # the choice; emulated bf16 is exact too
    model = load_model()
    image = load_photo("groceries.jpg")
    fp32, bf16 = SamPredictor(model), SamPredictor(model, precision="bf16")
    fp32.set_image(image)
    bf16.set_image(image)
    bf16.features = fp32.features  # the decoder's own difference, not the encoder's
    bf16._decoder_side = None
    assert bf16.decoder_image_side().products == torch.bfloat16
    assert fp32.decoder_image_side().products == torch.float32
    height, width = image.shape[:2]
    prompts = [
        dict(box=np.array([0.1 * width, 0.2 * height, 0.6 * width, 0.9 * height]), multimask_output=False),
        dict(
            point_coords=np.array([[0.5 * width, 0.5 * height], [0.2 * width, 0.3 * height]]),
            point_labels=np.array([1, 0]),
        ),
    ]
    for prompt in prompts:
        masks, scores, low_res = fp32.predict(**prompt)
        masks16, scores16, low_res16 = bf16.predict(**prompt)
        assert not np.array_equal(low_res, low_res16)  # bf16 really ran
        assert np.abs(low_res - low_res16).max() < 0.05 * np.abs(low_res).max()
        np.testing.assert_allclose(scores16, scores, atol=1e-3)  # the IoU head reads fp32 tokens
        for ours, ref in zip(masks16, masks):
            assert ref.any() and (~ref).any()
            assert (ours & ref).sum() / (ours | ref).sum() >= 0.95
