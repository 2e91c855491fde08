"""SamPredictor behaviour: SAM's API and semantics, input conversion, and clear prompt errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from support import load_photo, randomize_

from evitsam import SamPredictor, build_model
from evitsam.transforms import get_preprocess_shape, resize_longest_side


@pytest.fixture(scope="module")
def predictor():
    predictor = SamPredictor(randomize_(build_model("l0"), seed=7))
    predictor.set_image(load_photo("evit_cat.jpg"))
    return predictor


def test_state_after_set_image(predictor):
    assert predictor.is_image_set
    assert predictor.original_size == (480, 640)
    assert predictor.input_size == (768, 1024)  # the 1024 prompt frame, even for a 512 encoder
    assert predictor.get_image_embedding().shape == (1, 256, 64, 64)


def test_predict_shapes_and_types(predictor):
    masks, scores, low_res = predictor.predict(point_coords=np.array([[320, 240]]), point_labels=np.array([1]))
    assert masks.shape == (3, 480, 640) and masks.dtype == bool
    assert scores.shape == (3,) and low_res.shape == (3, 256, 256)
    single, _, _ = predictor.predict(box=np.array([100, 100, 400, 300]), multimask_output=False)
    assert single.shape == (1, 480, 640)
    logits, _, _ = predictor.predict(box=np.array([100, 100, 400, 300]), return_logits=True)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits > 0, predictor.predict(box=np.array([100, 100, 400, 300]))[0])


def test_batched_prompts_equal_single_calls(predictor):
    boxes = np.array([[10, 20, 200, 220], [300, 100, 600, 400], [50, 50, 60, 70]], dtype=np.float64)
    batch = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes), predictor.original_size)
    masks, scores, _ = predictor.predict_torch(None, None, batch, multimask_output=False)
    assert masks.shape == (3, 1, 480, 640)
    for i, box in enumerate(boxes):
        single, single_scores, _ = predictor.predict(box=box, multimask_output=False)
        assert (single == masks[i].numpy()).mean() > 0.9999
        np.testing.assert_allclose(single_scores, scores[i].numpy(), rtol=1e-4, atol=1e-5)
    points = torch.tensor([[[100.0, 100.0], [200.0, 150.0]]] * 4)
    labels = torch.tensor([[1, 0]] * 4)
    masks, scores, low_res = predictor.predict_torch(points, labels)
    assert masks.shape == (4, 3, 480, 640) and scores.shape == (4, 3) and low_res.shape == (4, 3, 256, 256)


@pytest.mark.slow
def test_image_conversions(predictor):
    rgb = load_photo("evit_cat.jpg")[:200, :300]
    reference = SamPredictor(predictor.model)

    def embedding(image, **kwargs):
        reference.set_image(image, **kwargs)
        return reference.get_image_embedding().clone()

    base = embedding(rgb)
    torch.testing.assert_close(embedding(Image.fromarray(rgb)), base)
    torch.testing.assert_close(embedding(np.ascontiguousarray(rgb[:, :, ::-1]), image_format="BGR"), base)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    torch.testing.assert_close(embedding(rgba), base)  # alpha is dropped
    gray = rgb[:, :, 1]
    torch.testing.assert_close(embedding(gray), embedding(np.repeat(gray[:, :, None], 3, axis=2)))
    torch.testing.assert_close(embedding(gray[:, :, None]), embedding(Image.fromarray(gray).convert("RGB")))


@pytest.mark.slow
def test_set_torch_image_matches_set_image(predictor):
    """An encoder-size image gives set_image's embedding exactly; SAM's 1024-frame image (from
    ``predictor.transform.apply_image``) is resized on to the encoder and gives nearly the same."""
    image = load_photo("dog.jpg")
    other = SamPredictor(predictor.model)
    other.set_image(image)
    direct = torch.as_tensor(resize_longest_side(image, 512)).permute(2, 0, 1)[None].float()
    predictor_torch = SamPredictor(predictor.model)
    predictor_torch.set_torch_image(direct, image.shape[:2])
    torch.testing.assert_close(predictor_torch.features, other.features)
    assert predictor_torch.input_size == other.input_size == (684, 1024)

    in_frame = predictor.transform.apply_image(image)
    assert in_frame.shape[:2] == (684, 1024)  # SAM's ResizeLongestSide(1024) meaning
    predictor_torch.set_torch_image(torch.as_tensor(in_frame).permute(2, 0, 1)[None], image.shape[:2])
    assert predictor_torch.input_size == other.input_size and predictor_torch.original_size == other.original_size
    difference = (predictor_torch.features - other.features).norm() / other.features.norm()
    assert difference < 0.05, difference
    with pytest.raises(ValueError, match="original_image_size"):  # an image that is not this size resized
        predictor_torch.set_torch_image(torch.as_tensor(in_frame).permute(2, 0, 1)[None], (600, 800))
    with pytest.raises(ValueError, match="1024"):
        predictor_torch.set_torch_image(torch.zeros(1, 3, 300, 700), (300, 700))


def test_reset_and_predict_before_image():
    fresh = SamPredictor(build_model("l0"))
    with pytest.raises(ValueError, match="set_image"):
        fresh.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    with pytest.raises(RuntimeError):  # SAM raises RuntimeError here: both catch clauses work
        fresh.get_image_embedding()


BAD_PROMPTS = [
    (dict(point_coords=np.array([1, 2]), point_labels=np.array([1])), "point_coords"),
    (dict(point_coords=np.array([[1, 2]])), "point_labels"),
    (dict(point_coords=np.array([[1, 2]]), point_labels=np.array([1, 1])), "point_labels"),
    (dict(point_coords=np.array([[1, 2]]), point_labels=np.array([5])), "point_labels"),
    (dict(point_coords=np.array([[1, 2]]), point_labels=np.array([0.5])), "point_labels"),
    (dict(point_coords=np.array([[np.nan, 2]]), point_labels=np.array([1])), "point_coords"),
    (dict(point_coords=[["a", "b"]], point_labels=[1]), "point_coords"),
    (dict(box=np.array([1, 2, 3])), "box"),
    (dict(box=np.array([10, 10, 5, 20])), "box"),
    (dict(box=np.array([10, 10, 20, 10])), "box"),
    (dict(box=np.array([0, 0, np.inf, 20])), "box"),
    (dict(mask_input=np.zeros((1, 64, 64))), "mask_input"),
    (dict(mask_input=np.full((1, 256, 256), np.nan)), "mask_input"),
]


@pytest.mark.parametrize("prompts, argument", BAD_PROMPTS)
def test_invalid_prompts_name_the_argument(predictor, prompts, argument):
    features = predictor.features.clone()
    with pytest.raises(ValueError, match=argument):
        predictor.predict(**prompts)
    assert torch.equal(predictor.features, features) and predictor.is_image_set  # state untouched


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(point_coords=torch.zeros(2, 3, 2), point_labels=torch.ones(3, 3)), "point_labels"),
        (dict(point_coords=None, point_labels=None, boxes=torch.zeros(2, 5)), "boxes"),
        (
            dict(
                point_coords=torch.zeros(2, 1, 2),
                point_labels=torch.ones(2, 1),
                boxes=torch.tensor([[0.0, 0, 5, 5]] * 3),
            ),
            "batch",
        ),
        (dict(point_coords=None, point_labels=None, mask_input=torch.zeros(2, 256, 256)), "mask_input"),
    ],
)
def test_invalid_batched_prompts(predictor, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        predictor.predict_torch(**kwargs)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 2), np.uint8), "HxWx3"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        ("cat.jpg", "numpy array or a PIL image"),
    ],
)
def test_invalid_images(image, message):
    fresh = SamPredictor(build_model("l0"))
    with pytest.raises(ValueError, match=message):
        fresh.set_image(image)
    with pytest.raises(ValueError, match="image_format"):
        fresh.set_image(np.zeros((4, 4, 3), np.uint8), image_format="HSV")
    assert not fresh.is_image_set


@pytest.mark.slow
def test_decoder_image_side_is_reused_and_renewed(predictor):
    """The prompt-independent decoder work is computed once per image and gives the uncached result."""
    box = np.array([100, 100, 400, 300])
    first = predictor.predict(box=box, return_logits=True)
    side = predictor.decoder_image_side()
    assert predictor.decoder_image_side() is side  # reused by later prompts
    boxes = predictor.transform.apply_boxes(box[None], predictor.original_size)
    with torch.inference_mode():
        uncached, scores = predictor.model.decode(predictor.features, boxes=torch.as_tensor(boxes).float())
    np.testing.assert_allclose(first[2], uncached[0].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(first[1], scores[0].numpy(), rtol=1e-5, atol=1e-5)
    kept = [side.keys.clone(), side.upscaled.clone()]  # prompts (1, 2, 3+ at once) never write into it
    for count in (1, 2, 3):
        predictor.predict_torch(None, None, torch.as_tensor(boxes).float().repeat(count, 1))
    assert torch.equal(side.keys, kept[0]) and torch.equal(side.upscaled, kept[1])
    np.testing.assert_array_equal(predictor.predict(box=box, return_logits=True)[2], first[2])

    model = SamPredictor(randomize_(build_model("l0"), seed=7))
    model.set_image(load_photo("evit_cat.jpg")[:300, :200])
    before = model.predict(box=np.array([10, 10, 150, 250]), return_logits=True)[0]
    with torch.no_grad():  # weights changed in place (e.g. fine-tuning): the cached side is renewed
        decoder = model.model.mask_decoder
        decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.weight.mul_(3)
        decoder.transformer.layers[1].norm4.weight.mul_(-2)  # folded into the prepared up-scaling product
        decoder.output_upscaling[0].weight.mul_(0.5)
    after = model.predict(box=np.array([10, 10, 150, 250]), return_logits=True)[0]
    fresh = SamPredictor(model.model)
    fresh.set_image(load_photo("evit_cat.jpg")[:300, :200])
    np.testing.assert_allclose(after, fresh.predict(box=np.array([10, 10, 150, 250]), return_logits=True)[0], atol=1e-3)
    assert np.abs(after - before).max() > 1e-2
    model.set_image(load_photo("evit_cat.jpg"))  # a new image drops the old side
    assert model._decoder_side is None


@pytest.mark.parametrize("masks", [1, 3, 5, pytest.param(8, marks=pytest.mark.slow)])  # banded: 1, 3
@pytest.mark.parametrize("original", [(1200, 1800), (1800, 1200), (480, 640), (7, 3000), (333, 333)])
def test_postprocess_masks_is_sams_two_resizes(masks, original):
    """Banded (few masks) and dense (many) post-processing both equal SAM's upsample-crop-resize."""
    model = build_model("l0")
    generator = torch.Generator().manual_seed(masks)
    low = torch.randn(1, masks, 256, 256, generator=generator) * 10
    input_size = get_preprocess_shape(*original, 1024)
    reference = torch.nn.functional.interpolate(low, (1024, 1024), mode="bilinear", align_corners=False)
    reference = reference[..., : input_size[0], : input_size[1]]
    reference = torch.nn.functional.interpolate(reference, original, mode="bilinear", align_corners=False)
    ours = model.postprocess_masks(low, input_size, original)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-3)
    assert ((ours > 0) == (reference > 0)).float().mean() > 0.99999
    for threshold in (0.0, 1.5):  # thresholded band by band: exactly the logits' comparison
        binary = model.postprocess_masks(low, input_size, original, threshold=threshold)
        assert binary.dtype == torch.bool and torch.equal(binary, ours > threshold)
    extent = model.low_res_extent(input_size)  # the padding rows/columns are never read
    torch.testing.assert_close(model.postprocess_masks(low[..., : extent[0], : extent[1]], input_size, original), ours)
    if extent[0] > 4:
        with pytest.raises(ValueError, match="masks must cover at least the low-res extent"):
            model.postprocess_masks(low[..., : extent[0] - 4, :], input_size, original)


@pytest.mark.parametrize("masks", [1, 3, 5])
@pytest.mark.parametrize("original", [(1200, 1800), (480, 640), (7, 3000)])
def test_thresholded_masks_skip_constant_tiles_exactly(masks, original):
    """Object-like logits (a disc and a noisy patch): tiles that read only one side of the threshold are
    filled without products, and the result is still exactly the thresholded logits."""
    model = build_model("l0")
    generator = torch.Generator().manual_seed(masks)
    ys, xs = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    low = torch.empty(1, masks, 256, 256)
    for k in range(masks):
        cy, cx, radius = (torch.rand(3, generator=generator) * torch.tensor([200, 200, 60])).tolist()
        low[0, k] = 2.0 * (radius + 10 - ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt())  # inside positive
    low[..., 100:110, 30:50] = torch.randn(masks, 10, 20, generator=generator) * 5  # a boundary everywhere
    low[..., 0:3, 60:120] = 8.0  # an object on the top rows, which every crop reads
    low[..., 0, 0] = 1.5  # exactly at a threshold
    input_size = get_preprocess_shape(*original, 1024)
    logits = model.postprocess_masks(low, input_size, original)
    extent = model.low_res_extent(input_size)
    for threshold in (0.0, 1.5, -2.0):
        binary = model.postprocess_masks(low, input_size, original, threshold=threshold)
        assert torch.equal(binary, logits > threshold)
        assert binary.any() and (~binary).any()
        cropped = low[..., : extent[0], : extent[1]]  # what "segment everything" passes
        assert torch.equal(model.postprocess_masks(cropped, input_size, original, threshold=threshold), binary)


@pytest.mark.slow
def test_assigned_features_are_never_answered_from_an_old_image(predictor):
    """SAM lets code assign ``features`` / ``original_size`` / ``input_size`` directly (precomputed embeddings):
    the decoder's cached image side follows the features themselves, assigned or changed in place."""
    model = predictor.model
    cat = load_photo("evit_cat.jpg")
    others = [SamPredictor(model) for _ in range(2)]
    others[0].set_image(cat)
    others[1].set_image(np.ascontiguousarray(cat[::-1, ::-1]))  # same size, other content
    box = np.array([100, 100, 400, 300])
    expected = [other.predict(box=box, return_logits=True)[2] for other in others]
    client = SamPredictor(model)
    for index in (0, 1, 0):  # as a tool switching between saved embeddings does
        client.features = others[index].features.clone()
        client.original_size, client.input_size = list(others[index].original_size), others[index].input_size
        client.is_image_set = True
        np.testing.assert_allclose(client.predict(box=box, return_logits=True)[2], expected[index], atol=1e-4)
    client.features.copy_(others[1].features)  # in place, outside inference mode
    np.testing.assert_allclose(client.predict(box=box, return_logits=True)[2], expected[1], atol=1e-4)
    client.features = others[0].features[0].clone()  # one embedding without its batch axis, as micro-sam keeps it
    np.testing.assert_allclose(client.predict(box=box, return_logits=True)[2], expected[0], atol=1e-4)


def test_sizes_in_another_frame_fail_loudly(predictor):
    """An ``input_size`` that is not the 1024 frame of ``original_size`` (e.g. the encoder's 512 frame) would
    crop the wrong part of every mask: it is refused with the reason."""
    client = SamPredictor(predictor.model)
    client.set_image(load_photo("evit_cat.jpg"))
    client.input_size = get_preprocess_shape(*client.original_size, 512)
    with pytest.raises(ValueError, match="input_size"):
        client.predict(box=np.array([100, 100, 400, 300]))
    client.input_size = (768, 1024)
    client.features = torch.zeros(1, 256, 32, 32)
    with pytest.raises(ValueError, match="predictor.features"):
        client.predict(box=np.array([100, 100, 400, 300]))
