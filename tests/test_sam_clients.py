"""SAM's own code on our model and predictor: segment-anything's SamPredictor, Sam.forward batched cell and
SamAutomaticMaskGenerator, the predictor notebook's steps, and micro-sam's embedding and prompt functions.

Every client runs unmodified; only the line that loads a model is ours (``evitsam.load_model()``, the
bundled model, whose encoder is 256 px while SAM's code works in the 1024 frame).

Two reference paths of our own predictor appear below. ``set_image`` resizes the original straight to the
encoder's size (the official pre-processing). SAM's code hands over images already in the 1024 frame
(``ResizeLongestSide(1024)``), which our model resizes on to the encoder: the same image, resampled twice.
Clients are compared with our predictor fed the same 1024-frame image (``framed``), where masks must be
equal, and with ``set_image``, where they differ only by that resampling.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import segment_anything
import torch
from clients import install_client
from support import load_photo

import evitsam
from evitsam import SamPredictor
from evitsam.everything import MaskGenerator

pytestmark = pytest.mark.slow  # installs and runs the real client packages

# SAM's predictor notebook (predictor_example.ipynb) prompts on truck.jpg, and its batched-inference boxes.
POINT = np.array([[500, 375]])
TWO_POINTS = np.array([[500, 375], [1125, 625]])
BOX = np.array([425, 600, 700, 875])
TRUCK_BOXES = [[75, 275, 1725, 850], [425, 600, 700, 875], [1375, 550, 1650, 800], [1240, 675, 1400, 750]]
GROCERY_BOXES = [[450, 170, 520, 350], [350, 190, 450, 350], [500, 170, 580, 350], [580, 170, 640, 350]]
NOTEBOOK_PROMPTS = [
    dict(point_coords=POINT, point_labels=np.array([1])),
    dict(point_coords=TWO_POINTS, point_labels=np.array([1, 1])),
    dict(point_coords=TWO_POINTS, point_labels=np.array([1, 0])),
    dict(box=BOX),
    dict(box=BOX, point_coords=np.array([[575, 750]]), point_labels=np.array([0])),
]
# Masks of the same prompts on the same image resampled twice (through the 1024 frame) instead of once,
# for the bundled 256-px model (docs/compatibility.md has the measured figures).
RESAMPLED_IOU = 0.98


def iou(a, b) -> float:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    return float((a & b).sum() / max((a | b).sum(), 1))


def framed(predictor: SamPredictor, image: np.ndarray) -> SamPredictor:
    """Our predictor on SAM's 1024-frame image, as SAM's SamPredictor.set_image would hand it over."""
    resized = torch.as_tensor(predictor.transform.apply_image(image)).permute(2, 0, 1)[None]
    predictor.set_torch_image(resized, image.shape[:2])
    return predictor


class FramedPredictor(SamPredictor):
    """A predictor whose ``set_image`` takes the 1024-frame route, for our mask generator."""

    def set_image(self, image, image_format="RGB"):
        framed(self, image)


@pytest.fixture(scope="module")
def model():
    return evitsam.load_model()


@pytest.fixture(scope="module")
def truck():
    return load_photo("truck.jpg")


def test_model_exposes_sams_attributes(model):
    assert model.image_encoder.img_size == 1024 and model.encoder_size == 256
    assert model.image_format == "RGB" and model.mask_threshold == 0.0
    assert model.pixel_mean.shape == (3, 1, 1) and model.device == torch.device("cpu")
    with pytest.raises(ValueError, match="long side 256"):  # neither the encoder's size nor SAM's frame
        model.preprocess(torch.zeros(1, 3, 300, 500))
    with pytest.raises(ValueError, match=r"\(B, 3, 256, 256\)"):
        model.image_encoder(torch.zeros(1, 3, 1024, 1024))


def test_sams_predictor_on_our_model(model, truck):
    """segment_anything.SamPredictor(our_model): every notebook prompt gives our predictor's masks."""
    theirs = segment_anything.SamPredictor(model)
    theirs.set_image(truck)
    ours = framed(SamPredictor(model), truck)
    direct = SamPredictor(model)
    direct.set_image(truck)
    assert theirs.input_size == ours.input_size == (683, 1024) and tuple(theirs.original_size) == (1200, 1800)
    torch.testing.assert_close(theirs.features, ours.features, rtol=1e-4, atol=1e-4)
    for prompts in NOTEBOOK_PROMPTS:
        for multimask in (True, False):
            masks, scores, logits = theirs.predict(multimask_output=multimask, **prompts)
            our_masks, our_scores, our_logits = ours.predict(multimask_output=multimask, **prompts)
            assert masks.shape == our_masks.shape == ((3 if multimask else 1), 1200, 1800)
            assert logits.shape == our_logits.shape == ((3 if multimask else 1), 128, 128)
            assert min(iou(a, b) for a, b in zip(masks, our_masks)) >= 0.99
            np.testing.assert_allclose(scores, our_scores, atol=1e-3)
            direct_masks, _, _ = direct.predict(multimask_output=multimask, **prompts)
            best = scores.argmax()
            assert iou(masks[best], direct_masks[best]) >= RESAMPLED_IOU
    boxes = torch.tensor(TRUCK_BOXES, dtype=torch.float)
    masks, _, _ = theirs.predict_torch(
        None, None, theirs.transform.apply_boxes_torch(boxes, truck.shape[:2]), None, False
    )
    our_masks, _, _ = ours.predict_torch(
        None, None, ours.transform.apply_boxes_torch(boxes, truck.shape[:2]), None, False
    )
    assert masks.shape == our_masks.shape == (4, 1, 1200, 1800)
    assert min(iou(a, b) for a, b in zip(masks.numpy(), our_masks.numpy())) >= 0.99


def test_sams_batched_inference_cell(model, truck):
    """The notebook's ``sam(batched_input, multimask_output=False)`` cell, as written, on our model."""
    from segment_anything.utils.transforms import ResizeLongestSide

    sam = model
    groceries = load_photo("groceries.jpg")
    resize_transform = ResizeLongestSide(sam.image_encoder.img_size)

    def prepare_image(image, transform, device):
        image = transform.apply_image(image)
        image = torch.as_tensor(image, device=device.device)
        return image.permute(2, 0, 1).contiguous()

    image1_boxes = torch.tensor(TRUCK_BOXES, device=sam.device)
    image2_boxes = torch.tensor(GROCERY_BOXES, device=sam.device)
    batched_input = [
        {
            "image": prepare_image(truck, resize_transform, sam),
            "boxes": resize_transform.apply_boxes_torch(image1_boxes, truck.shape[:2]),
            "original_size": truck.shape[:2],
        },
        {
            "image": prepare_image(groceries, resize_transform, sam),
            "boxes": resize_transform.apply_boxes_torch(image2_boxes, groceries.shape[:2]),
            "original_size": groceries.shape[:2],
        },
    ]
    batched_output = sam(batched_input, multimask_output=False)

    for image, boxes, output in zip((truck, groceries), (image1_boxes, image2_boxes), batched_output):
        assert output["masks"].shape == (4, 1, *image.shape[:2]) and output["masks"].dtype == torch.bool
        assert output["iou_predictions"].shape == (4, 1) and output["low_res_logits"].shape == (4, 1, 128, 128)
        ours = framed(SamPredictor(model), image)
        masks, scores, _ = ours.predict_torch(
            None, None, ours.transform.apply_boxes_torch(boxes, image.shape[:2]), None, False
        )
        assert min(iou(a, b) for a, b in zip(output["masks"].numpy(), masks.numpy())) >= 0.99
        torch.testing.assert_close(output["iou_predictions"], scores, atol=1e-3, rtol=0)
    points = {  # points and a mask prompt in one record, multimask
        "image": prepare_image(truck, resize_transform, sam),
        "original_size": truck.shape[:2],
        "point_coords": resize_transform.apply_coords_torch(
            torch.tensor(POINT[None], dtype=torch.float), truck.shape[:2]
        ),
        "point_labels": torch.tensor([[1]]),
        "mask_inputs": batched_output[0]["low_res_logits"][1:2],
    }
    output = sam([points], multimask_output=True)[0]
    ours = framed(SamPredictor(model), truck)
    masks, _, _ = ours.predict(POINT, np.array([1]), mask_input=batched_output[0]["low_res_logits"][1].numpy())
    assert output["masks"].shape == (1, 3, 1200, 1800)
    assert min(iou(a, b) for a, b in zip(output["masks"][0].numpy(), masks)) >= 0.99
    with pytest.raises(ValueError, match=r"batched_input\[0\]\['image'\]"):
        sam([{"image": torch.zeros(3, 500, 700), "original_size": (1200, 1800)}], multimask_output=False)


def test_sams_automatic_mask_generator(model):
    """SamAutomaticMaskGenerator(our_model) runs, and its records equal our MaskGenerator's (same settings)."""
    image = load_photo("dog.jpg")
    settings = dict(points_per_side=8, pred_iou_thresh=0.2, stability_score_thresh=0.6)
    theirs = segment_anything.SamAutomaticMaskGenerator(model, **settings).generate(image)
    ours = MaskGenerator(FramedPredictor(model), **settings).generate(image)
    assert len(theirs) == len(ours) > 0
    for a, b in zip(theirs, ours):
        assert iou(a["segmentation"], b["segmentation"]) >= 0.99
        assert a["bbox"] == b["bbox"] and a["point_coords"] == b["point_coords"] and a["crop_box"] == b["crop_box"]
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-3)
        assert a["stability_score"] == pytest.approx(b["stability_score"], abs=1e-2)


@torch.inference_mode()
def direct_call(model, predictor, coords=None, labels=None, box=None, mask_input=None, multimask=True):
    """The model's decoder and post-processing called by hand, prompts scaled into the 1024 frame here."""
    height, width = predictor.original_size
    scale = np.array(predictor.input_size[::-1]) / np.array([width, height])  # (x, y) factors
    to_tensor = lambda a: None if a is None else torch.as_tensor(a, dtype=torch.float)  # noqa: E731
    coords = None if coords is None else to_tensor(coords * scale)[None]
    labels = None if labels is None else to_tensor(labels)[None]
    box = None if box is None else to_tensor(box.reshape(2, 2) * scale).reshape(1, 4)
    mask_input = None if mask_input is None else to_tensor(mask_input)[None]
    low_res, scores = model.decode(predictor.features, coords, labels, box, mask_input, multimask)
    masks = model.postprocess_masks(low_res, predictor.input_size, predictor.original_size) > model.mask_threshold
    return masks[0].numpy(), scores[0].numpy(), low_res[0].numpy()


def test_predictor_notebook_flow(model, truck):
    """predictor_example.ipynb step by step on our SamPredictor and the bundled model: SAM's shapes, and masks
    equal to calling the model's decoder and post-processing directly."""
    predictor = SamPredictor(model)
    predictor.set_image(truck)

    def check(masks, scores, logits, expected):
        assert (
            masks.shape == (len(scores), 1200, 1800) and masks.dtype == bool and logits.shape == (len(scores), 128, 128)
        )
        assert min(iou(a, b) for a, b in zip(masks, expected[0])) >= 0.999
        np.testing.assert_allclose(scores, expected[1], atol=1e-4)

    input_point, input_label = np.array([[500, 375]]), np.array([1])
    masks, scores, logits = predictor.predict(point_coords=input_point, point_labels=input_label, multimask_output=True)
    assert masks.shape == (3, 1200, 1800)
    check(masks, scores, logits, direct_call(model, predictor, input_point, input_label))

    input_point, input_label = np.array([[500, 375], [1125, 625]]), np.array([1, 1])
    mask_input = logits[np.argmax(scores), :, :]  # refinement from the previous call's best logits
    masks, scores, logits = predictor.predict(
        point_coords=input_point, point_labels=input_label, mask_input=mask_input[None, :, :], multimask_output=False
    )
    assert masks.shape == (1, 1200, 1800)
    check(masks, scores, logits, direct_call(model, predictor, input_point, input_label, None, mask_input[None], False))

    input_label = np.array([1, 0])
    masks, scores, logits = predictor.predict(
        point_coords=input_point, point_labels=input_label, mask_input=mask_input[None, :, :], multimask_output=False
    )
    check(masks, scores, logits, direct_call(model, predictor, input_point, input_label, None, mask_input[None], False))

    input_box = np.array([425, 600, 700, 875])
    masks, scores, logits = predictor.predict(
        point_coords=None, point_labels=None, box=input_box[None, :], multimask_output=False
    )
    check(masks, scores, logits, direct_call(model, predictor, box=input_box, multimask=False))

    input_point, input_label = np.array([[575, 750]]), np.array([0])
    masks, scores, logits = predictor.predict(
        point_coords=input_point, point_labels=input_label, box=input_box, multimask_output=False
    )
    check(masks, scores, logits, direct_call(model, predictor, input_point, input_label, input_box, None, False))

    input_boxes = torch.tensor(TRUCK_BOXES, device=predictor.device)
    transformed_boxes = predictor.transform.apply_boxes_torch(input_boxes, truck.shape[:2])
    masks, scores, _ = predictor.predict_torch(
        point_coords=None, point_labels=None, boxes=transformed_boxes, multimask_output=False
    )
    assert masks.shape == (4, 1, 1200, 1800)
    for mask, score, box in zip(masks, scores, TRUCK_BOXES):
        expected = direct_call(model, predictor, box=np.array(box), multimask=False)
        assert iou(mask[0].numpy(), expected[0][0]) >= 0.999
        np.testing.assert_allclose(score.numpy(), expected[1], atol=1e-4)


# micro-sam 1.8.14 and the packages its embedding and prompt functions import (pure Python or small wheels);
# its GUI (napari) is optional there and not needed.
MICRO_SAM = [
    "micro-sam==1.8.14",
    "zarr==2.18.7",
    "numcodecs==0.15.1",
    "asciitree==0.3.3",
    "fasteners==0.20",
    "deprecated==1.3.1",
    "wrapt==2.5.2",
    "bioimage-cpp==0.9.0",
    "python-elf==0.9.2",
    "pooch==1.9.0",
    "platformdirs==4.14.9",
    "xxhash==4.1.0",
    "imageio==2.38.1",
    "scikit-image==0.26.0",
    "lazy-loader==0.6",
    "networkx==3.6.1",
    "tifffile==2026.3.3",
]

# Imported by micro-sam's 3-D segmentation module (its instance segmentation models and tracking).
MICRO_SAM_3D = [
    "torch-em==0.9.0",
    "kornia==0.8.1",
    "kornia-rs==0.1.9",
    "pandas==2.3.3",
    "tzdata==2026.6",
    "pytz==2026.6",
]


@pytest.fixture(scope="module")
def micro_sam():
    for requirement in MICRO_SAM:
        install_client(requirement)
    from micro_sam import prompt_based_segmentation, util

    return types.SimpleNamespace(util=util, segment=prompt_based_segmentation)


def blobs(shape: tuple[int, int], seed: int, count: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A microscopy-like grey image: bright ellipses on a dark, noisy background, and their (y, x) centres."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 30.0)
    centres = []
    for _ in range(count):
        cy, cx = rng.uniform(0.1, 0.9, 2) * shape
        ry, rx = rng.uniform(15, 40, 2)
        image[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.uniform(150, 230)
        centres.append((round(cy), round(cx)))
    image += rng.normal(0, 5, shape)
    return np.clip(image, 0, 255).astype(np.uint8), np.array(centres)


def best_mask(predictor: SamPredictor, point_yx, box_yx=None) -> tuple[np.ndarray, np.ndarray]:
    """Our predictor's answers to micro-sam's prompts: a positive point (best of three, as micro-sam picks
    for one point) and a box given as (y0, x0, y1, x1)."""
    masks, scores, _ = predictor.predict(point_coords=np.array([point_yx[::-1]]), point_labels=np.array([1]))
    box = None
    if box_yx is not None:
        box = predictor.predict(box=np.array(box_yx)[[1, 0, 3, 2]], multimask_output=False)[0][0]
    return masks[scores.argmax()], box


def box_around(centre, half: int = 30) -> np.ndarray:
    return np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half])


def test_micro_sam_2d_embeddings(micro_sam, model, tmp_path):
    """precompute_image_embeddings (2-D, saved and loaded again) and segment_from_points/box: our masks.

    Alternating two images' saved embeddings is the case where a decoder cache keyed on the weights alone
    answered the second image with the first one's features."""
    util, segment = micro_sam.util, micro_sam.segment
    predictor = SamPredictor(model)  # micro-sam's model-loading line: util.get_sam_model(...)
    images = [blobs((600, 900), seed) for seed in (0, 1)]
    paths = [tmp_path / f"{i}.zarr" for i in range(2)]
    for (image, _), path in zip(images, paths):
        util.precompute_image_embeddings(predictor, image, save_path=str(path), verbose=False)
    references = []
    for image, _ in images:
        reference = SamPredictor(model)
        reference.set_image(util._to_image(image))  # micro-sam's own grey -> RGB uint8 conversion
        references.append(reference)
    for _ in range(2):  # loaded from disk, alternating images
        for (image, centres), path, reference in zip(images, paths, references):
            embeddings = util.precompute_image_embeddings(predictor, image, save_path=str(path), verbose=False)
            for centre in centres[:3]:
                mask = segment.segment_from_points(predictor, centre[None], np.array([1]), embeddings)
                box_mask = segment.segment_from_box(predictor, box_around(centre), embeddings)
                expected, expected_box = best_mask(reference, centre, box_around(centre))
                assert mask.shape == box_mask.shape == (1, 600, 900) and mask.sum() > 100
                assert iou(mask[0], expected) >= 0.99 and iou(box_mask[0], expected_box) >= 0.99


def test_micro_sam_batched_3d_embeddings(micro_sam, model):
    """A volume's embeddings, computed in batches of planes through predictor.transform and model.preprocess
    (SAM's 1024 frame), then prompts per plane: our predictor's masks on each plane."""
    util, segment = micro_sam.util, micro_sam.segment
    predictor = SamPredictor(model)
    planes = [blobs((600, 900), seed, count=5) for seed in range(3)]
    volume = np.stack([plane for plane, _ in planes])
    embeddings = util.precompute_image_embeddings(predictor, volume, ndim=3, batch_size=2, verbose=False)
    assert tuple(embeddings["input_size"]) == (683, 1024)  # SAM's frame, what our predictor expects
    for z, (plane, centres) in enumerate(planes):
        ours = framed(SamPredictor(model), util._to_image(plane))
        direct = SamPredictor(model)
        direct.set_image(util._to_image(plane))
        for centre in centres[:3]:
            mask = segment.segment_from_points(predictor, centre[None], np.array([1]), embeddings, i=z)
            box_mask = segment.segment_from_box(predictor, box_around(centre), embeddings, i=z)
            expected, expected_box = best_mask(ours, centre, box_around(centre))
            assert mask.sum() > 100
            assert iou(mask[0], expected) >= 0.99 and iou(box_mask[0], expected_box) >= 0.99
            # set_image's masks, the same output: equal up to resampling the image twice.
            multimask, scores, _ = ours.predict(point_coords=centre[None, ::-1], point_labels=np.array([1]))
            direct_masks, _, _ = direct.predict(point_coords=centre[None, ::-1], point_labels=np.array([1]))
            assert iou(mask[0], direct_masks[scores.argmax()]) >= RESAMPLED_IOU


def outer_tile(centre, shape, tile: int, halo: int) -> tuple[slice, slice]:
    """The tile (with its halo) that micro-sam's tiling picks for a prompt at ``centre``."""
    return tuple(
        slice(max(0, c // tile * tile - halo), min(n, (c // tile + 1) * tile + halo)) for c, n in zip(centre, shape)
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_micro_sam_tiled_embeddings(micro_sam, model, ndim):
    """Tiled embeddings of an image and of a volume (tiles batched through SAM's 1024 frame), prompts mapped
    into their tile by micro-sam: our predictor's masks on that tile, placed in the full image."""
    util, segment = micro_sam.util, micro_sam.segment
    predictor = SamPredictor(model)
    tile, halo = 256, 48
    planes = [blobs((500, 700), seed, count=10) for seed in range(2 if ndim == 3 else 1)]
    data = np.stack([plane for plane, _ in planes]) if ndim == 3 else planes[0][0]
    embeddings = util.precompute_image_embeddings(
        predictor, data, ndim=ndim, tile_shape=(tile, tile), halo=(halo, halo), batch_size=3, verbose=False
    )
    for z, (plane, centres) in enumerate(planes):
        index = z if ndim == 3 else None
        for centre in centres[:3]:
            mask = segment.segment_from_points(predictor, centre[None], np.array([1]), embeddings, i=index)
            box_mask = segment.segment_from_box(predictor, box_around(centre), embeddings, i=index)
            region = outer_tile(centre, plane.shape, tile, halo)
            offset = np.array([region[0].start, region[1].start])
            ours = framed(SamPredictor(model), util._to_image(plane[region]))
            in_tile, in_tile_box = best_mask(ours, centre - offset, box_around(centre - offset))
            expected, expected_box = np.zeros(plane.shape, bool), np.zeros(plane.shape, bool)
            expected[region], expected_box[region] = in_tile, in_tile_box
            assert mask.shape == (1, *plane.shape) and mask.sum() > 100
            assert iou(mask[0], expected) >= 0.99 and iou(box_mask[0], expected_box) >= 0.99


def test_micro_sam_mask_propagation_in_volume(micro_sam, model):
    """micro-sam's 3-D segmentation (segment_mask_in_volume, box projection) from one segmented plane: each
    plane's mask is our predictor's answer to the box of the plane before it."""
    for requirement in MICRO_SAM_3D:
        install_client(requirement)
    from micro_sam.multi_dimensional_segmentation import segment_mask_in_volume

    util, segment = micro_sam.util, micro_sam.segment
    predictor = SamPredictor(model)
    base, centres = blobs((600, 900), seed=3, count=6)
    volume = np.stack([np.roll(base, 6 * z, axis=1) for z in range(4)])  # the cells drift to the right
    embeddings = util.precompute_image_embeddings(predictor, volume, ndim=3, batch_size=2, verbose=False)
    segmentation = np.zeros(volume.shape, dtype="uint32")
    segmentation[0] = segment.segment_from_points(predictor, centres[:1], np.array([1]), embeddings, i=0)[0]
    segmentation, (z_min, z_max) = segment_mask_in_volume(
        segmentation, predictor, embeddings, np.array([0]), False, False, iou_threshold=0.5, projection="box"
    )
    assert (z_min, z_max) == (0, 3)
    for z in range(1, 4):
        ys, xs = np.nonzero(segmentation[z - 1])
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])  # micro-sam's box of a mask
        ours = framed(SamPredictor(model), util._to_image(volume[z]))
        expected = ours.predict(box=box, multimask_output=False)[0][0]
        assert segmentation[z].sum() > 100 and iou(segmentation[z], expected) >= 0.99
