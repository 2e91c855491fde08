"""Training at GPU scale, checked on the CPU: batched training steps, data workers, time-boxed runs, and the
one-call GPU training script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from support import REPO, randomize_

import evitsam
from evitsam.data import open_dataset
from evitsam.data.augment import resize_longest_side
from evitsam.training import train as train_module
from evitsam.training.config import TrainConfig
from evitsam.training.train import SamTrainingStep, to_images, train

FAST = dict(max_masks=2, num_points=256, log_every=1, ckpt_every=1, val_every=2)


@pytest.fixture(scope="module")
def data(shared_data):
    return shared_data / "sa1b_sample" / "derived_from_coco"


def test_batched_step_pairs_every_mask_with_its_own_image(data, monkeypatch):
    """All masks of a step go through one decoder call; each must meet its own image's embedding."""
    model = randomize_(evitsam.build_model("tiny")).eval()
    dataset = open_dataset(data, max_masks=3, seed=0)
    samples = [resize_longest_side(dataset[i], model.encoder_size) for i in (0, 1)]
    assert len(samples[0].masks) > 0 and len(samples[1].masks) > 0
    config = TrainConfig.from_dict(FAST | {"box_prob": 1.0, "box_jitter": 0.0, "correction_iters": 0})
    seen = []
    monkeypatch.setattr(train_module, "sam_loss", lambda low, *rest: seen.append(low) or {"loss": low.sum()})
    images = to_images(model, samples, torch.device("cpu"))
    with torch.no_grad():
        SamTrainingStep(model, config)(images, samples, torch.Generator().manual_seed(0))
        embeddings = model.encode(images)
        scale = 1024 / model.encoder_size
        multimask = seen[0].shape[1] == 3
        alone = [
            model.decode(embeddings[i : i + 1], boxes=torch.from_numpy(s.boxes) * scale, multimask_output=multimask)[0]
            for i, s in enumerate(samples)
        ]
    torch.testing.assert_close(seen[0], torch.cat(alone), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_data_workers_train_exactly_like_the_main_process(tmp_path, data):
    settings = FAST | {"max_steps": 2, "batch_size": 2}
    train(TrainConfig.from_dict(settings), data, tmp_path / "inline", progress=False)
    train(TrainConfig.from_dict(settings | {"workers": 2}), data, tmp_path / "workers", progress=False)
    a = evitsam.load_model(tmp_path / "inline" / "model.safetensors").state_dict()
    b = evitsam.load_model(tmp_path / "workers" / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="workers"):
        TrainConfig.from_dict({"workers": -1})


@pytest.mark.slow
def test_time_box_shortens_the_schedule_and_ends_with_final_weights(tmp_path, data):
    config = TrainConfig.from_dict(FAST | {"max_steps": 50, "max_minutes": 1e-4, "warmup_steps": 0})
    train(config, data, tmp_path / "boxed", progress=False)
    records = [json.loads(line) for line in (tmp_path / "boxed" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] < 50 and records[-1]["lr"] == 0.0  # stopped early, schedule decayed to zero
    assert (tmp_path / "boxed" / "model.safetensors").is_file()
    assert f"max_steps: {records[-1]['step']}" in (tmp_path / "boxed" / "config.yaml").read_text()
    roomy = TrainConfig.from_dict(FAST | {"max_steps": 3, "max_minutes": 10.0})
    train(roomy, data, tmp_path / "roomy", progress=False)
    assert [json.loads(line)["step"] for line in (tmp_path / "roomy" / "metrics.jsonl").open()] == [1, 2, 3]


@pytest.mark.slow
def test_gpu_training_script_runs_end_to_end_on_cpu(tmp_path):
    """The one-call GPU script, shrunk: scenes, training with workers, fp16 export, summary line."""
    env = os.environ | {"OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path), "PYTHON": sys.executable}
    command = ["bash", "benchmarks/gpu_train.sh", "--device", "cpu", "--max-steps", "1", "--scenes", "4",
               "--batch", "2", "--workers", "1"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "steps 1, images/s" in result.stdout
    model = evitsam.load_model(tmp_path / "out" / "model.safetensors")
    assert model.variant == "nano"
    assert {"metrics.jsonl", "config.yaml", "synth.json"} <= set(os.listdir(tmp_path / "out"))
