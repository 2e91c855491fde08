"""Training building blocks: augmentation geometry, prompt sampling and the SAM loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evitsam.data import open_dataset
from evitsam.data.augment import flip_horizontal, resize_longest_side
from evitsam.data.sample import boxes_from_masks
from evitsam.training.losses import sam_loss, uncertain_points
from evitsam.training.prompts import correction_clicks, jitter_boxes, sample_points
from evitsam.transforms import SamTransform


@pytest.fixture(scope="module")
def sample(shared_data):
    return open_dataset(shared_data / "sa1b_sample" / "derived_from_coco")[0]


def test_flip_keeps_masks_and_boxes_consistent(sample):
    flipped = flip_horizontal(sample)
    np.testing.assert_array_equal(flipped.image, sample.image[:, ::-1])
    np.testing.assert_allclose(boxes_from_masks(flipped.masks), flipped.boxes, atol=1.0)
    twice = flip_horizontal(flipped)
    np.testing.assert_array_equal(twice.masks, sample.masks)
    np.testing.assert_allclose(twice.boxes, sample.boxes)


def test_resize_uses_the_inference_resize(sample):
    resized = resize_longest_side(sample, 512)
    np.testing.assert_array_equal(resized.image, SamTransform(512).apply_image(sample.image))
    assert resized.masks.shape[1:] == resized.image.shape[:2]
    np.testing.assert_allclose(boxes_from_masks(resized.masks), resized.boxes, atol=2.0)
    big = sample.masks.sum((1, 2)) > 2000
    ratio = resized.masks.sum((1, 2))[big] / sample.masks.sum((1, 2))[big]
    scale = 512 / max(sample.image.shape[:2])
    np.testing.assert_allclose(ratio, scale**2, rtol=0.05)


def test_points_fall_where_their_labels_say(sample):
    masks = torch.from_numpy(sample.masks)
    generator = torch.Generator().manual_seed(0)
    coords, labels = sample_points(masks, 3, 2, generator)
    assert coords.shape == (len(masks), 5, 2) and labels.shape == (len(masks), 5)
    x, y = coords[..., 0].long(), coords[..., 1].long()
    inside = masks[torch.arange(len(masks))[:, None], y, x]
    assert inside[labels == 1].all() and not inside[labels == 0].any()
    assert (labels[:, :3] == 1).all() and (labels[:, 3:] == 0).all()
    empty = torch.zeros(1, 20, 20, dtype=torch.bool)
    assert (sample_points(empty, 1, 0)[1] == -1).all()  # nothing to click: padding, not a wrong label


def test_correction_clicks_target_the_larger_error(sample):
    masks = torch.from_numpy(sample.masks[:3])
    missing = masks.clone()
    missing[0] = False  # all false negatives -> a positive click inside the object
    missing[1] = masks[1] | torch.roll(masks[1], 60, dims=1)  # mostly false positives -> negative click
    coords, labels = correction_clicks(missing, masks)
    x, y = coords[:, 0, 0].long(), coords[:, 0, 1].long()
    assert labels[0, 0] == 1 and masks[0, y[0], x[0]]
    assert labels[1, 0] == 0 and not masks[1, y[1], x[1]] and missing[1, y[1], x[1]]
    assert labels[2, 0] == -1  # perfect prediction


def test_jittered_boxes_stay_valid():
    boxes = torch.tensor([[10.0, 10, 50, 80], [0, 0, 5, 5]])
    moved = jitter_boxes(boxes, (100, 60), noise=0.3, generator=torch.Generator().manual_seed(1))
    assert (moved[:, 2:] > moved[:, :2]).all() and (moved >= 0).all()
    assert (moved[:, [0, 2]] <= 60).all() and (moved[:, [1, 3]] <= 100).all()
    assert not torch.equal(moved, boxes)
    assert torch.equal(jitter_boxes(boxes, (100, 60), noise=0), boxes)


def test_loss_prefers_the_right_mask_and_trains_the_iou_head():
    torch.manual_seed(0)
    gt = torch.zeros(2, 512, 512)
    gt[:, 100:300, 150:400] = 1
    low = torch.nn.functional.interpolate(gt[:, None], (256, 256), mode="area")
    perfect = (low * 2 - 1) * 12
    logits = torch.cat([-perfect, perfect, torch.randn_like(perfect)], dim=1).requires_grad_()
    iou_pred = torch.tensor([[0.1, 1.0, 0.2], [0.3, 1.0, 0.0]], requires_grad=True)
    out = sam_loss(logits, iou_pred, gt, num_points=4096)
    assert out["miou"].item() > 0.99  # the min over outputs picked the perfect one
    assert out["dice"].item() < 0.01 and out["iou"].item() < 1e-3
    out["loss"].backward()
    assert logits.grad[:, 0].abs().sum() == 0 and logits.grad[:, 2].abs().sum() == 0  # only the best trains
    worse = sam_loss(logits.detach()[:, 2:], iou_pred.detach()[:, 2:], gt, num_points=4096)
    assert worse["loss"] > out["loss"] + 1
    bce = sam_loss(logits.detach(), iou_pred.detach(), gt, num_points=1024, use_focal=False)
    assert torch.isfinite(bce["loss"])
    with pytest.raises(ValueError, match="gt_masks"):
        sam_loss(logits, iou_pred, gt[0])


def test_uncertain_points_concentrate_on_the_boundary():
    logits = torch.full((1, 1, 64, 64), 10.0)
    logits[..., 30:34] = 0.0  # an uncertain band: columns 30-33 of 64
    torch.manual_seed(0)
    points = uncertain_points(logits, 400)  # 1200 candidates, ~6 % of them in the band
    x = points[0, :, 0] * 64
    in_band = (x > 29) & (x < 35)
    assert in_band[:50].all()  # the most uncertain picks come first
    assert in_band[:300].float().mean() > 3 * in_band[300:].float().mean()  # vs the uniform quarter
