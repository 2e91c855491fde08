"""The bundled default model: the file ships, matches its card, loads offline and really segments."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from support import REPO
from typer.testing import CliRunner

import evitsam
from evitsam.cli import app
from evitsam.data.synthetic import SynthSettings, render
from evitsam.variants import DEFAULT_VARIANT, get_variant
from evitsam.weights import CheckpointError, bundled_weights, file_sha256

MAX_BYTES = 25_000_000
HELDOUT = SynthSettings(seed=1000, size=384)  # the model card's held-out scenes: never trained on


@pytest.fixture(scope="module")
def model() -> evitsam.EfficientViTSam:
    return evitsam.load_model()


def test_bundled_file_is_small_fp16_and_matches_its_card():
    variant = get_variant(DEFAULT_VARIANT)
    path = bundled_weights(variant)
    assert path.stat().st_size <= MAX_BYTES
    digest = file_sha256(path)
    assert variant.sha256 == digest
    card = (REPO / "docs" / "model_card.md").read_text()
    assert re.search(rf"sha256[^\n]*{digest}", card), "docs/model_card.md must state the bundled file's sha256"
    with safe_open(str(path), "pt") as weights:
        assert weights.metadata()["evitsam_variant"] == DEFAULT_VARIANT
        dtypes = {weights.get_tensor(key).dtype for key in weights.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes


def test_default_model_loads_offline_in_fp32(model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model.variant == DEFAULT_VARIANT and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    again = evitsam.load_model(DEFAULT_VARIANT)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_a_damaged_bundle_is_refused():
    variant = dataclasses.replace(get_variant(DEFAULT_VARIANT), sha256="0" * 64)
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        bundled_weights(variant)


@pytest.mark.slow
def test_it_segments_held_out_generated_scenes_from_boxes(model):
    predictor = evitsam.SamPredictor(model)
    ious = []
    for index in range(3):
        image, _, objects = render(HELDOUT, index)
        masks = np.stack([mask for mask, _ in objects if mask.sum() >= 400])
        boxes = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] for ys, xs in map(np.nonzero, masks)])
        predictor.set_image(image)
        frame = predictor.transform.apply_boxes_torch(torch.from_numpy(boxes).float(), image.shape[:2])
        predicted, scores, _ = predictor.predict_torch(None, None, frame, multimask_output=True)
        best = predicted[torch.arange(len(boxes)), scores.argmax(1)].numpy()
        ious.extend((best & masks).sum((1, 2)) / (best | masks).sum((1, 2)))
    assert len(ious) >= 30
    # The bundled model reaches a mean IoU of 0.65 (median 0.73, 12 of 37 above 0.8) on these 37 objects
    # (docs/model_card.md); a better model would reach > 0.8 each. This guards what it does: follow
    # box prompts, far above untrained.
    assert np.mean(ious) > 0.5, np.round(ious, 2)
    assert max(ious) > 0.8
    untrained = evitsam.SamPredictor(evitsam.build_model(DEFAULT_VARIANT))
    untrained.set_image(image)
    blank = untrained.predict_torch(None, None, frame, multimask_output=False)[0][:, 0].numpy()
    assert ((blank & masks).sum((1, 2)) / np.maximum((blank | masks).sum((1, 2)), 1)).mean() < 0.1


def test_readme_quickstart_segments_the_example_offline(tmp_path, monkeypatch):
    """``evitsam segment examples/scene.jpg --point 586,127``: no --model, no network, a real mask."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "mask.png"
    result = CliRunner().invoke(app, ["segment", str(REPO / "examples" / "scene.jpg"), "--point", "586,127",
                                      "--output", str(out), "--overlay"])  # fmt: skip
    assert result.exit_code == 0, result.output
    notice = [line for line in result.stderr.splitlines() if line.startswith("notice:")]
    assert len(notice) == 1 and "--model l0" in notice[0], result.stderr
    summary = json.loads(result.stdout)
    assert summary["variant"] == DEFAULT_VARIANT
    mask = np.asarray(Image.open(out)) > 0
    truth = next(m for m, _ in render(SynthSettings(seed=21, size=800), 0)[2] if m[127, 586])
    assert (mask & truth).sum() / (mask | truth).sum() > 0.6  # 0.74 with the bundled model


@pytest.mark.slow
def test_everything_with_the_bundled_model_keeps_masks(tmp_path, monkeypatch):
    """Its IoU head predicts lower than SAM's: `evitsam everything` uses the model's own thresholds."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(
        app, ["everything", str(REPO / "examples" / "scene.jpg"), "-o", str(tmp_path), "--points-per-side", "16"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    iou, stability = get_variant(DEFAULT_VARIANT).everything_thresholds
    assert (summary["pred_iou_thresh"], summary["stability_score_thresh"]) == (iou, stability) != (0.88, 0.95)
    records = json.loads((tmp_path / "scene.json").read_text())["annotations"]
    assert len(records) >= 3
    assert all(r["predicted_iou"] > iou and r["stability_score"] >= stability for r in records)
