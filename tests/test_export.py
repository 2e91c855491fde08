"""SAM-compatible ONNX graphs (one L0 export with random weights) run under ONNX Runtime like a tool would.

Every prompt is built the way SAM's ONNX example and annotation tools build it (points in the 1024 frame,
a (0, 0) padding point with label -1, box corners as labels 2/3) and compared with ``SamPredictor``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from PIL import Image
from support import load_photo, randomize_

from evitsam import SamPredictor, build_model
from evitsam.export import export_onnx
from evitsam.export.graphs import EncoderGraph, mask_resamplers, resize_like_pil
from evitsam.transforms import SamTransform, resize_longest_side

ort = pytest.importorskip("onnxruntime", reason="install the [onnx] extra")

REL_TOL = 1e-3
PIXEL_AGREEMENT = 0.995


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """L0 with random weights, exported once; the predictor over the same weights; one photo set in both."""
    model = randomize_(build_model("l0"), seed=5)
    paths = export_onnx(model, tmp_path_factory.mktemp("onnx") / "l0")
    predictor = SamPredictor(model)
    image = load_photo("groceries.jpg")
    predictor.set_image(image)
    keys = ("encoder", "decoder", "single_mask_decoder", "boxes_decoder")
    sessions = {key: ort.InferenceSession(str(paths[key])) for key in keys}
    return paths, predictor, image, sessions


def rel_err(reference, ours) -> float:
    reference, ours = np.asarray(reference, dtype=np.float64), np.asarray(ours, dtype=np.float64)
    return float(np.abs(reference - ours).max() / np.abs(reference).max())


def sam_inputs(predictor: SamPredictor, embedding, points=(), labels=(), box=None, mask=None) -> dict:
    """Decoder feeds exactly as SAM's ONNX notebook builds them, from prompts in image pixels."""
    coords = [np.asarray(points, dtype=np.float64).reshape(-1, 2)]
    tags = [np.asarray(labels, dtype=np.float64)]
    if box is not None:
        coords.append(np.asarray(box, dtype=np.float64).reshape(2, 2))
        tags.append(np.array([2.0, 3.0]))
    else:
        coords.append(np.zeros((1, 2)))
        tags.append(np.array([-1.0]))
    coords = predictor.transform.apply_coords(np.concatenate(coords), predictor.original_size)
    return {
        "image_embeddings": embedding,
        "point_coords": coords[None].astype(np.float32),
        "point_labels": np.concatenate(tags)[None].astype(np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32) if mask is None else mask[None].astype(np.float32),
        "has_mask_input": np.array([0.0 if mask is None else 1.0], np.float32),
        "orig_im_size": np.array(predictor.original_size, dtype=np.float32),
    }


@pytest.mark.slow
def test_encoder_matches_pytorch_for_any_aspect(exported):
    _, predictor, image, sessions = exported
    embedding = sessions["encoder"].run(None, {"input_image": resized(predictor, image)})[0]
    assert embedding.shape == (1, 256, 64, 64)
    assert rel_err(predictor.features, embedding) < REL_TOL
    portrait = np.ascontiguousarray(np.rot90(image))  # 512 high instead of 512 wide: H and W are dynamic
    reference = SamPredictor(predictor.model)
    reference.set_image(portrait)
    embedding = sessions["encoder"].run(None, {"input_image": resized(predictor, portrait)})[0]
    assert rel_err(reference.features, embedding) < REL_TOL


def resized(predictor: SamPredictor, image: np.ndarray) -> np.ndarray:
    return resize_longest_side(image, predictor.model.encoder_size).astype(np.float32)  # the encoder's input


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(684, 1024), (1200, 1800), (300, 200)])
def test_encoder_resizes_any_input_like_the_predictor(exported, shape):
    """A tool's letterboxed 684x1024 canvas, a photo larger than 1024, one smaller than the encoder size:
    the graph resizes each as ``SamTransform.apply_image`` does (PIL's antialiased bilinear on uint8)."""
    _, predictor, image, sessions = exported
    canvas = np.zeros((*shape, 3), np.uint8)
    scale = min(shape[0] / image.shape[0], shape[1] / image.shape[1])
    photo = np.asarray(Image.fromarray(image).resize((round(image.shape[1] * scale), round(image.shape[0] * scale))))
    canvas[: photo.shape[0], : photo.shape[1]] = photo[: shape[0], : shape[1]]
    reference = SamPredictor(predictor.model)
    reference.set_image(canvas)
    embedding = sessions["encoder"].run(None, {"input_image": canvas.astype(np.float32)})[0]
    assert rel_err(reference.features, embedding) < 1e-2  # PIL's fixed-point weights: a few pixels differ by 1


@pytest.mark.slow
def test_encoder_refuses_an_input_it_would_resize_to_nothing(exported):
    _, _, _, sessions = exported
    with pytest.raises(Exception, match="[Rr]eshape"):  # the graph's check: no empty side after resizing
        sessions["encoder"].run(None, {"input_image": np.zeros((1, 2000, 3), np.float32)})
    with pytest.raises(ValueError, match="empty side"):  # the same check in PyTorch
        EncoderGraph(exported[1].model)(torch.zeros(1, 2000, 3))


@pytest.mark.slow
def test_resized_input_equals_pil_pixel_for_pixel(exported):
    _, _, image, _ = exported
    tensor = torch.from_numpy(image.copy()).permute(2, 0, 1).float()
    for size, differing in ((512, 0.01), (256, 0.01), (1500, 0.03)):  # down, far down, up
        ours = resize_like_pil(tensor, size).permute(1, 2, 0).numpy()
        pil = SamTransform(size).apply_image(image).astype(np.float32)
        assert ours.shape == pil.shape
        # PIL's weights are fixed-point: values on a rounding tie differ by one level per pass
        assert np.abs(ours - pil).max() <= 2 and (ours != pil).mean() < differing, size


def test_low_res_masks_round_trip_through_sams_size():
    """A 128x128 model's logits go out as 256x256 ``low_res_masks`` and come back exactly as ``mask_input``."""
    up, down = mask_resamplers(128, 256)
    assert up.shape == (256, 128) and down.shape == (128, 256)
    logits = torch.randn(128, 128)
    assert torch.allclose(down @ (up @ logits @ up.T) @ down.T, logits, atol=1e-4)


def prompt_cases(height: int, width: int) -> dict[str, dict]:
    point = [[0.45 * width, 0.55 * height]]
    return {
        "point": dict(points=point, labels=[1]),
        "negative_point": dict(points=[*point, [0.7 * width, 0.3 * height]], labels=[1, 0]),
        "box": dict(box=[0.2 * width, 0.25 * height, 0.75 * width, 0.8 * height]),
        "point_and_box": dict(points=point, labels=[1], box=[0.2 * width, 0.25 * height, 0.75 * width, 0.8 * height]),
    }


def predictor_kwargs(case: dict) -> dict:
    kwargs = {}
    if "points" in case:
        kwargs.update(point_coords=np.array(case["points"]), point_labels=np.array(case["labels"]))
    if "box" in case:
        kwargs["box"] = np.array(case["box"])
    return kwargs


@pytest.mark.slow
@pytest.mark.parametrize("case", ["point", "negative_point", "box", "point_and_box", "mask_input"])
def test_decoder_matches_predictor(exported, case):
    _, predictor, image, sessions = exported
    height, width = image.shape[:2]
    cases = prompt_cases(height, width)
    prompt, mask = cases.get(case, cases["point"]), None
    if case == "mask_input":  # refine a click with the previous low-res logits, as tools do
        _, scores, low_res = predictor.predict(**predictor_kwargs(prompt))
        mask = low_res[np.argmax(scores)][None]
    feeds = sam_inputs(predictor, predictor.features.numpy(), **prompt, mask=mask)
    masks, iou, low_res = sessions["decoder"].run(None, feeds)
    assert masks.shape == (1, 4, height, width) and iou.shape == (1, 4) and low_res.shape == (1, 4, 256, 256)

    extra = {} if mask is None else {"mask_input": mask}
    for tokens, multimask in ((slice(1, None), True), (slice(0, 1), False)):
        expected, scores, logits = predictor.predict(
            **predictor_kwargs(prompt), **extra, multimask_output=multimask, return_logits=True
        )
        assert ((masks[0, tokens] > 0) == (expected > 0)).mean() >= PIXEL_AGREEMENT, (case, multimask)
        assert (expected > 0).any() and (expected <= 0).any(), "a blank mask would prove nothing"
        np.testing.assert_allclose(iou[0, tokens], scores, atol=1e-3)
        assert rel_err(logits, low_res[0, tokens]) < REL_TOL


@pytest.mark.slow
def test_decoder_has_sams_signature_and_dynamic_sizes(exported):
    _, predictor, _, sessions = exported
    inputs = {i.name: (i.shape, i.type) for i in sessions["decoder"].get_inputs()}
    assert list(inputs) == ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input",
                            "orig_im_size"]  # fmt: skip
    assert inputs["image_embeddings"] == ([1, 256, 64, 64], "tensor(float)")
    assert inputs["point_coords"][0][0] == 1 and isinstance(inputs["point_coords"][0][1], str)
    assert inputs["point_coords"][0][2] == 2
    assert inputs["mask_input"] == ([1, 1, 256, 256], "tensor(float)")
    assert inputs["has_mask_input"] == ([1], "tensor(float)")
    assert inputs["orig_im_size"] == ([2], "tensor(float)")
    assert [o.name for o in sessions["decoder"].get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]
    encoder_input = sessions["encoder"].get_inputs()[0]
    assert encoder_input.name == "input_image" and encoder_input.shape[2] == 3
    assert all(isinstance(dim, str) for dim in encoder_input.shape[:2])
    assert [o.name for o in sessions["encoder"].get_outputs()] == ["image_embeddings"]

    embedding = predictor.features.numpy()
    for count, size in ((1, (300, 200)), (6, (77, 1000))):  # any number of points, any original size
        feeds = sam_inputs(predictor, embedding, points=np.random.default_rng(count).random((count, 2)) * 500,
                           labels=[1] * count)  # fmt: skip
        feeds["orig_im_size"] = np.array(size, dtype=np.float32)
        masks, iou, _ = sessions["decoder"].run(None, feeds)
        assert masks.shape == (1, 4, *size) and iou.shape == (1, 4)


@pytest.mark.slow
def test_boxes_decoder_matches_batched_predictor(exported):
    _, predictor, image, sessions = exported
    height, width = image.shape[:2]
    boxes = np.array([[10, 20, 300, 400], [200, 100, 700, 500], [50, 50, 120, 90]], dtype=np.float64)
    frame_boxes = predictor.transform.apply_boxes(boxes, predictor.original_size).astype(np.float32)
    masks, iou, low_res = sessions["boxes_decoder"].run(
        None,
        {
            "image_embeddings": predictor.features.numpy(),
            "boxes": frame_boxes,
            "orig_im_size": np.array([height, width], np.float32),
        },
    )
    expected, scores, _ = predictor.predict_torch(None, None, torch.from_numpy(frame_boxes), multimask_output=True)
    assert masks.shape == (3, 3, height, width) and iou.shape == (3, 3) and low_res.shape == (3, 3, 256, 256)
    assert ((masks > 0) == expected.numpy()).mean() >= PIXEL_AGREEMENT
    np.testing.assert_allclose(iou, scores.numpy(), atol=1e-3)


@pytest.mark.slow
def test_config_points_tools_at_the_single_mask_decoder(exported):
    paths, predictor, image, sessions = exported
    config = yaml.safe_load(Path(paths["config"]).read_text())
    assert config["type"] == "segment_anything"
    assert (paths["config"].parent / config["encoder_model_path"]).is_file()
    assert config["decoder_model_path"] == paths["single_mask_decoder"].name != paths["decoder"].name
    assert config["evitsam"]["decoders"] == {"single_mask": "decoder_single_mask.onnx", "multimask": "decoder.onnx"}
    assert (config["input_size"], config["max_width"], config["max_height"]) == (1024, 512, 512)
    assert config["evitsam"]["variant"] == "l0" and config["evitsam"]["single_mask"] is False

    height, width = image.shape[:2]
    feeds = sam_inputs(predictor, predictor.features.numpy(), **prompt_cases(height, width)["point"])
    masks, iou, low_res = sessions["single_mask_decoder"].run(None, feeds)
    assert masks.shape == (1, 1, height, width) and low_res.shape == (1, 1, 256, 256)
    expected, scores, _ = predictor.predict(**predictor_kwargs(prompt_cases(height, width)["point"]))
    best = int(np.argmax(scores))  # one click: SAM's rule takes the best multimask output
    assert ((masks[0, 0] > 0) == expected[best]).mean() >= PIXEL_AGREEMENT
    assert iou[0, 0] == pytest.approx(scores[best], abs=1e-3)


@pytest.mark.slow
def test_decoders_have_no_gemm_on_computed_inputs(exported):
    """ONNX Runtime's quantize_dynamic names its Transpose of a computed Gemm input after that input; the
    image tokens feed three projections, so such Gemms would make the quantised model invalid."""
    paths, *_ = exported
    for key in ("decoder", "single_mask_decoder", "boxes_decoder"):
        graph = onnx.load(str(paths[key])).graph
        weights = {init.name for init in graph.initializer}
        assert all(node.input[1] in weights for node in graph.node if node.op_type == "Gemm"), key
