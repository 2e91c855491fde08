"""Every runtime is an ``Engine``, and "everything" decodes through the predictor's engine, whichever it is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import randomize_

import evitsam
from evitsam import MaskGenerator, SamPredictor
from evitsam.runtime import Engine, TorchEngine, make_engine


@pytest.fixture(scope="module")
def model():
    return randomize_(evitsam.build_model("tiny"), seed=11).eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    generator = np.random.default_rng(0)
    image = np.zeros((96, 128, 3), np.uint8)
    image[20:70, 30:90] = (200, 40, 40)
    return np.clip(image + generator.integers(0, 30, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def onnx_engine(model, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EVITSAM_HOME", str(tmp_path_factory.mktemp("home")))
        yield make_engine(model, "onnxruntime")


def test_engines_follow_the_protocol(model, onnx_engine):
    assert isinstance(make_engine(model), TorchEngine)
    for engine in (make_engine(model), onnx_engine):
        assert isinstance(engine, Engine)


def test_everything_decodes_through_the_predictors_engine(model, image, onnx_engine, monkeypatch):
    """With an ONNX Runtime predictor, "everything" runs the exported decoder, and its records agree with the
    torch engine's (the same weights)."""
    graph = SamPredictor(model, runtime="onnxruntime")  # the graphs exported for ``onnx_engine``
    calls = []
    run_decoder = graph.engine._run_decoder
    monkeypatch.setattr(graph.engine, "_run_decoder", lambda feeds: calls.append(1) or run_decoder(feeds))
    settings = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    records = MaskGenerator(graph, **settings).generate(image)
    assert calls, "the exported decoder never ran"
    torch_records = MaskGenerator(model, **settings).generate(image)
    assert len(records) == len(torch_records) > 0
    ious = sorted(r["predicted_iou"] for r in records)
    np.testing.assert_allclose(ious, sorted(r["predicted_iou"] for r in torch_records), rtol=1e-3, atol=1e-4)


def test_decode_kept_agrees_across_engines(model, image, onnx_engine):
    predictor = SamPredictor(model)
    predictor.set_image(image)
    embedding = predictor.get_image_embedding()
    coords = torch.tensor([[[300.0, 300.0]], [[600.0, 500.0]], [[100.0, 700.0]]])
    labels = torch.ones(3, 1)
    keep = lambda iou: iou > iou.median()  # noqa: E731
    extent = model.low_res_extent(predictor.input_size)
    side = predictor.decoder_image_side()
    torch_iou, torch_low = predictor.engine.decode_kept(embedding, coords, labels, keep, extent, side)
    graph_iou, graph_low = onnx_engine.decode_kept(embedding, coords, labels, keep, extent)
    torch.testing.assert_close(graph_iou, torch_iou, rtol=1e-3, atol=1e-4)
    assert graph_low.shape == torch_low.shape == (int(keep(torch_iou).sum()), *extent)
    torch.testing.assert_close(graph_low, torch_low, rtol=1e-3, atol=1e-3)
