"""The proof that training learns: a tiny model from scratch overfits a handful of real masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import evitsam
from evitsam.data import open_dataset
from evitsam.training.config import TrainConfig
from evitsam.training.train import train

pytestmark = pytest.mark.slow  # a real training run

IMAGE_ID = "458054"  # the SA-1B sample image with the largest objects (4 masks of 7k-47k pixels)
RECIPE = dict(max_masks=4, batch_size=1, hflip=0.0, val_fraction=0.0, box_prob=1.0, box_jitter=0.0,
              multimask_prob=0.0, correction_iters=0, num_points=1024, lr=1.5e-3, warmup_steps=0,
              max_steps=100, log_every=10, ckpt_every=100, seed=0)  # fmt: skip


def test_tiny_model_overfits_a_handful_of_masks(tmp_path, shared_data):
    source = shared_data / "sa1b_sample" / "derived_from_coco"
    data = tmp_path / "one_image"  # SA-1B official layout listing a single image
    data.mkdir()
    (data / "sa_images_ids.txt").write_text(f"{IMAGE_ID}\n")
    (data / "images").symlink_to(source / "images")
    (data / "masks").symlink_to(source / "masks")
    torch.manual_seed(0)
    model = train(TrainConfig.from_dict(RECIPE), data, tmp_path / "run", progress=False)

    sample = open_dataset(data, max_masks=4, seed=0)[0]  # the same 4 masks training saw
    predictor = evitsam.SamPredictor(model.eval())
    predictor.set_image(sample.image)
    boxes = predictor.transform.apply_boxes_torch(torch.from_numpy(sample.boxes), sample.image.shape[:2])
    masks, _, _ = predictor.predict_torch(None, None, boxes, multimask_output=False)
    predicted, truth = masks[:, 0].numpy(), sample.masks
    ious = (predicted & truth).sum((1, 2)) / (predicted | truth).sum((1, 2))
    assert ious.mean() > 0.9, ious
    untrained = evitsam.SamPredictor(evitsam.build_model("tiny"))
    untrained.set_image(sample.image)
    baseline = untrained.predict_torch(None, None, boxes, multimask_output=False)[0][:, 0].numpy()
    assert ((baseline & truth).sum((1, 2)) / np.maximum((baseline | truth).sum((1, 2)), 1)).mean() < 0.5
