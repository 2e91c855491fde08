"""End-to-end training on the SA-1B sample: exact resume, real 2-process DDP, CLI outputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from support import REPO, randomize_
from typer.testing import CliRunner

import evitsam
from evitsam.cli import app
from evitsam.training.config import DistillConfig, TrainConfig
from evitsam.training.train import train
from evitsam.weights import save_safetensors

FAST = dict(max_masks=2, batch_size=1, num_points=256, correction_iters=1, log_every=1, ckpt_every=1, val_every=2)


@pytest.fixture(scope="module")
def data(shared_data):
    return shared_data / "sa1b_sample" / "derived_from_coco"


def params(path):
    return evitsam.load_model(path).state_dict()


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, data):
    train(TrainConfig.from_dict(FAST | {"max_steps": 3}), data, tmp_path / "a", progress=False)
    train(TrainConfig.from_dict(FAST | {"max_steps": 3}), data, tmp_path / "b", progress=False, stop_at=2)
    assert not (tmp_path / "b" / "model.safetensors").exists()  # final weights only at the end
    train(TrainConfig.from_dict(FAST | {"max_steps": 3}), data, tmp_path / "b", resume=True, progress=False)
    a, b = params(tmp_path / "a" / "model.safetensors"), params(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # no step repeated or skipped
    first = params(tmp_path / "a" / "model.safetensors")
    assert any(not torch.equal(first[k], evitsam.build_model("tiny").state_dict()[k]) for k in first)
    with pytest.raises(FileExistsError, match="--resume"):
        train(TrainConfig.from_dict(FAST | {"max_steps": 1}), data, tmp_path / "a", progress=False)


@pytest.mark.slow
def test_cli_writes_a_complete_run_folder(tmp_path, data):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", "configs/tiny.yaml", "--data", str(data), "--out", str(out), "--max-steps", "2",
              "--set", "max_masks=2", "--set", "num_points=256", "--set", "log_every=1", "--set", "val_every=2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all({"loss", "lr"} <= r.keys() for r in records)
    assert 0 <= records[-1]["val_miou"] <= 1
    assert "max_steps: 2" in (out / "config.yaml").read_text()
    assert list((out / "tensorboard").iterdir())
    assert evitsam.load_model(out / "model.safetensors").variant == "tiny"
    bad = CliRunner().invoke(app, ["train", "configs/tiny.yaml", "--data", str(data), "--out", str(out), "--set", "lr"])
    assert bad.exit_code == 2 and "key=value" in bad.stderr


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_in_sync(tmp_path, data):
    """A real torchrun job (gloo): both ranks hold identical parameters after a step.

    (BatchNorm running statistics are per rank, as in the official recipe; DDP re-broadcasts
    rank 0's before every forward.)
    """
    script = tmp_path / "job.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from evitsam.training.config import TrainConfig\n"
        "from evitsam.training.train import train\n"
        "config = TrainConfig.from_dict(dict(max_steps=1, max_masks=2, batch_size=1, num_points=256,\n"
        "                                    correction_iters=0, val_every=100))\n"
        "model = train(config, sys.argv[1], sys.argv[2], progress=False)\n"
        "params = {k: v.detach() for k, v in model.named_parameters()}\n"
        "torch.save(params, f'{sys.argv[3]}/rank{dist.get_rank()}.pt')\n"
    )
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(data),
         str(out), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    initial = evitsam.build_model("tiny").state_dict()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert any(not torch.equal(ranks[0][k], initial[k]) for k in ranks[0] if k in initial)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 1 and math.isfinite(record["loss"]) and record["loss"] > 0


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    kind = DistillConfig if "stage1" in path.name or "distill" in path.name else TrainConfig
    config = kind.from_yaml(path)
    if path.name.endswith("-stage2.yaml"):  # the official recipe (official.md section 4)
        assert config.lr == (4e-7 if path.name.startswith("xl") else 8e-7)
        assert (config.max_masks, config.batch_size, config.weight_decay, config.epochs) == (64, 4, 0.1, 2.0)
        assert (config.grad_clip, config.grad_clip_mode, config.focal) == (2.0, "value", False)
        assert (config.box_prob, config.max_positive_points, config.max_negative_points) == (0.5, 10, 0)


def test_config_values_are_checked_and_epochs_set_the_steps():
    config = TrainConfig.from_dict({"epochs": 2.0, "batch_size": 4})
    assert config.steps_for(train_images=10, world=2) == 3  # ceil(2 * 10 / (4 * 2))
    assert TrainConfig.from_dict({"max_steps": 7}).steps_for(10, 1) == 7
    for bad, message in [
        ({"amp": "fp8"}, "amp"),
        ({"grad_clip_mode": "l1"}, "grad_clip_mode"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": "fast"}, "lr"),
        ({"nope": 1}, "unknown"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_dict(bad)
    with pytest.raises(ValueError, match="unknown"):
        DistillConfig.from_dict({"max_masks": 4})  # a stage-2 key is not a stage-1 key


def test_auto_variant_needs_init(tmp_path, data):
    with pytest.raises(ValueError, match="variant 'auto'.*--init"):
        train(TrainConfig.from_dict(FAST | {"variant": "auto", "max_steps": 1}), data, tmp_path, progress=False)


@pytest.mark.slow
def test_finetune_recipe_on_coco_data_from_a_checkpoint_under_bf16(tmp_path, shared_data):
    """configs/finetune.yaml (variant auto) on COCO-layout photos, starting from a file, autocast bf16."""
    start = tmp_path / "start.safetensors"
    initial = randomize_(evitsam.build_model("tiny"), seed=3)
    save_safetensors(initial.state_dict(), start, "tiny")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", "configs/finetune.yaml", "--data", str(shared_data / "coco_train_subset"), "--out", str(out),
              "--init", str(start), "--max-steps", "2", "--set", "max_masks=2", "--set", "num_points=256",
              "--set", "log_every=1", "--set", "amp=bf16", "--set", "include_crowd=true"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["skipped_files"] == 0 for r in records)
    assert 0 <= records[-1]["val_miou"] <= 1  # the last of the 6 photos, held out
    resolved = (out / "config.yaml").read_text()
    assert "amp: bf16" in resolved and "include_crowd: true" in resolved
    tuned = params(out / "model.safetensors")
    assert evitsam.load_model(out / "model.safetensors").variant == "tiny"
    assert any(not torch.equal(tuned[k], v) for k, v in initial.state_dict().items() if v.is_floating_point())
