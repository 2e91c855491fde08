"""The browser's decoder graphs (run here by native ONNX Runtime, the same graphs onnxruntime-web runs): equal to
the model's own decoder, with and without a mask prompt; the rank-17 update of the image side for a mask prompt
equal to preparing the masked image side outright; a cropped extent equal to the same part of the whole grid."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import evitsam
from evitsam.service.web_graph import (
    MaskedImageSide,
    _image_tensors,
    export_web_graphs,
    image_output_names,
    spell_out_layer_norms,
)


@pytest.fixture(scope="module", params=["bundled", "l0"])
def graphs(request, tmp_path_factory):
    """The three graphs (and their files) of the bundled model (a 32x32 grid), and of L0 with random weights."""
    torch.manual_seed(0)
    model = evitsam.load_model() if request.param == "bundled" else evitsam.build_model("l0")
    paths = export_web_graphs(model, tmp_path_factory.mktemp("web_graphs"))
    cpu = ["CPUExecutionProvider"]
    sessions = {name: ort.InferenceSession(str(path), providers=cpu) for name, path in paths.items()}
    return model, sessions, paths


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
    model, sessions, _ = graphs
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
    model, sessions, _ = graphs
    grid, low = model.config.embed_size, model.low_res_size
    embedding = torch.randn(1, 256, grid, grid)
    mask = torch.randn(1, 1, low, low) * 4 if refine else None
    points, multimask = (2, False) if refine else (1, True)
    side = sessions["image"].run(None, {"image_embeddings": embedding.numpy()})
    graph = sessions["refine" if refine else "prompt"]
    masked = {"mask_input": mask.numpy()} if refine else {}

    def run(extent=None):
        return graph.run(None, {**prompt_feeds(model, side, extent, multimask, points), **masked})

    logits, scores, token, *_ = run()
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
        part, part_scores, part_token, tokens, image_tokens = run(extent)
        assert part.shape == (1, 1, 4 * extent[0], 4 * extent[1])
        np.testing.assert_array_equal(part, logits[:, :, : 4 * extent[0], : 4 * extent[1]])
        np.testing.assert_array_equal(part_scores, scores)
        assert part_token.tolist() == [expected]
        # the rest graph: the other tokens' 4x4 blocks complete the whole grid
        rows, columns = np.divmod(np.arange(grid * grid), grid)
        indices = np.flatnonzero((rows >= extent[0]) | (columns >= extent[1]))
        feeds = {"image_tokens": image_tokens, "tokens": tokens, "mask_token": part_token, "token_indices": indices}
        rest = sessions["rest"].run(None, feeds)[0]
        assert rest.shape == (1, 1, 4, 4 * len(indices))
        whole = np.full((low, low), np.nan, np.float32)
        whole[: 4 * extent[0], : 4 * extent[1]] = part[0, 0]
        blocks = rest[0, 0].reshape(4, len(indices), 4).transpose(1, 0, 2)  # (token, dy, dx)
        for index, block in zip(indices, blocks):
            y, x = divmod(int(index), grid)
            whole[4 * y : 4 * y + 4, 4 * x : 4 * x + 4] = block
        np.testing.assert_allclose(whole, logits[0, 0], rtol=0, atol=1e-5 * float(np.abs(logits).max()))


@pytest.mark.parametrize("shift", [True, False])
def test_spelled_out_layer_norms_equal_onnx_runtimes(shift):
    """The rewrite onnxruntime-web gets (``spell_out_layer_norms``) gives ONNX Runtime's own LayerNormalization's
    numbers, with and without a shift, on rows of very different scales (the epsilon decides the nearly constant
    ones); it leaves a norm whose statistics are outputs alone."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (3, 5, 64)).astype(np.float32) * np.array([1e-4, 1.0, 30.0], np.float32)[:, None, None]
    scale = numpy_helper.from_array(rng.normal(1, 0.5, 64).astype(np.float32), "scale")
    bias = numpy_helper.from_array(rng.normal(0, 0.5, 64).astype(np.float32), "bias")
    inputs = ["x", "scale", "bias"] if shift else ["x", "scale"]
    nodes = [
        helper.make_node("LayerNormalization", inputs, ["y"], name="norm", axis=-1, epsilon=1e-3),
        helper.make_node("LayerNormalization", ["x", "scale"], ["z", "mean"], name="kept", axis=-1),
    ]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "norms",
        [value("x", TensorProto.FLOAT, [3, 5, 64])],
        [value(name, TensorProto.FLOAT, [3, 5, size]) for name, size in (("y", 64), ("z", 64), ("mean", 1))],
        [scale, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plain = ort.InferenceSession(model.SerializeToString()).run(["y"], {"x": x})[0]
    spell_out_layer_norms(model.graph)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node].count("LayerNormalization") == 1  # "kept": its mean is an output
    spelled = ort.InferenceSession(model.SerializeToString()).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(spelled, plain, rtol=0, atol=2e-5)
    assert np.abs(plain).max() > 0.5


def test_browser_graphs_have_no_layer_norm_or_softmax_across_an_inner_axis(graphs):
    """The browser graphs avoid onnxruntime-web's slow kernels: no LayerNormalization (spelled out) and no Softmax
    over an axis but the last (spelled out for the image->token attention)."""
    *_, paths = graphs
    for name in ("prompt", "refine"):
        graph = onnx.load(paths[name]).graph
        ops = [node.op_type for node in graph.node]
        assert "LayerNormalization" not in ops and ops.count("ReduceMean") >= 6
        for node in graph.node:
            if node.op_type == "Softmax":
                axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
                assert axis == -1, (name, node.name, axis)
