"""The browser's decoder graphs (run here by native ONNX Runtime, the same graphs onnxruntime-web runs): equal to
the model's own decoder, with and without a mask prompt; the rank-17 update of the image side for a mask prompt
equal to preparing the masked image side outright; a cropped extent equal to the same part of the whole grid."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import evitsam
from evitsam.service.web_graph import MaskedImageSide, _image_tensors, export_web_graphs, image_output_names


@pytest.fixture(scope="module", params=["bundled", "l0"])
def graphs(request, tmp_path_factory):
    """The three graphs of the bundled model (a 32x32 grid), and of L0 with random weights (64x64)."""
    torch.manual_seed(0)
    model = evitsam.load_model() if request.param == "bundled" else evitsam.build_model("l0")
    paths = export_web_graphs(model, tmp_path_factory.mktemp("web_graphs"))
    cpu = ["CPUExecutionProvider"]
    sessions = {name: ort.InferenceSession(str(path), providers=cpu) for name, path in paths.items()}
    return model, sessions


def prompt_feeds(model, side, extent=None, multimask=False, points=2):
    grid = model.config.embed_size
    coords = [[310.0, 205.0], [600.0, 330.0]][:points] + [[0.0, 0.0]]
    return {
        **dict(zip(image_output_names(model), side)),
        "point_coords": np.array([coords], np.float32),
        "point_labels": np.array([[1.0, 0.0][:points] + [-1.0]], np.float32),
        "extent": np.array(extent or [grid, grid], np.int64),
        "multimask": np.array([float(multimask)], np.float32),
    }


def test_masked_image_side_equals_the_masked_image_prepared(graphs):
    """The refine graph's rank-17 update of the image side (run here in PyTorch) equals preparing the image with
    the mask prompt outright; the image graph equals the image prepared without one."""
    model, sessions = graphs
    grid, low = model.config.embed_size, model.low_res_size
    embedding = torch.randn(1, 256, grid, grid)
    mask = torch.randn(1, 1, low, low) * 4
    side = sessions["image"].run(None, {"image_embeddings": embedding.numpy()})
    with torch.no_grad():
        masked = MaskedImageSide(model)(*(torch.from_numpy(t) for t in side), mask)
    fast = model.fast_decoder()
    with torch.inference_mode():
        expected = _image_tensors(fast._prepare(embedding + model.prompt_encoder(None, None, mask)[1]))
        unmasked = _image_tensors(fast._prepare(embedding + model.prompt_encoder(None, None, None)[1]))
    assert len(masked) == len(expected) == len(image_output_names(model)) >= 2
    for got, want, plain, before in zip(masked, expected, unmasked, side):
        np.testing.assert_allclose(before, plain.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-4)
        assert np.abs(got.numpy() - before).max() > 1e-2  # the mask prompt changed every tensor


@pytest.mark.parametrize("refine", [False, True])
def test_prompt_graphs_equal_the_models_decoder_and_a_crop_its_part(graphs, refine):
    """The prompt graph (one point, ``multimask``: the best of the three) and the refine graph (two points and a
    mask prompt: the single-mask output) make SamPredictor's choice, give the model's masks and the scores of all
    four tokens, and one graph serves every extent."""
    model, sessions = graphs
    grid, low = model.config.embed_size, model.low_res_size
    embedding = torch.randn(1, 256, grid, grid)
    mask = torch.randn(1, 1, low, low) * 4 if refine else None
    points, multimask = (2, False) if refine else (1, True)
    side = sessions["image"].run(None, {"image_embeddings": embedding.numpy()})
    graph = sessions["refine" if refine else "prompt"]
    masked = {"mask_input": mask.numpy()} if refine else {}

    def run(extent=None):
        return graph.run(None, {**prompt_feeds(model, side, extent, multimask, points), **masked})

    logits, scores, token = run()
    assert logits.shape == (1, 1, low, low) and scores.shape == (1, 4)
    feeds = prompt_feeds(model, side, points=points)
    coords, labels = (torch.from_numpy(feeds[k][:, :points]) for k in ("point_coords", "point_labels"))
    with torch.inference_mode():
        single, single_scores = model.decode(embedding, coords, labels, mask_input=mask, multimask_output=False)
        multi, multi_scores = model.decode(embedding, coords, labels, mask_input=mask, multimask_output=True)
    np.testing.assert_allclose(scores, torch.cat([single_scores, multi_scores], 1).numpy(), rtol=0, atol=1e-5)
    expected = 1 + int(multi_scores[0].argmax()) if multimask else 0
    assert token.tolist() == [expected]
    want = multi[:, expected - 1 : expected] if multimask else single
    np.testing.assert_allclose(logits, want.numpy(), rtol=0, atol=1e-4 * float(want.abs().max()))
    for extent in ([grid * 2 // 3, grid], [grid, grid // 2 + 1], [1, 3]):
        part, part_scores, part_token = run(extent)
        assert part.shape == (1, 1, 4 * extent[0], 4 * extent[1])
        np.testing.assert_array_equal(part, logits[:, :, : 4 * extent[0], : 4 * extent[1]])
        np.testing.assert_array_equal(part_scores, scores)
        assert part_token.tolist() == [expected]
