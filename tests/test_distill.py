"""Stage-1 distillation: SAM ViT teacher parity, the embedding cache, the distill loop and CLI."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from support import load_photo, randomize_
from typer.testing import CliRunner

import evitsam
from evitsam.cli import app
from evitsam.models.sam_vit import SamViTEncoder
from evitsam.training.config import DistillConfig
from evitsam.training.distill import DistillStep, EmbeddingCache, distill, precompute
from evitsam.training.teacher import load_teacher, match_grid, sam_vit_config
from evitsam.weights import save_safetensors

FAST = dict(batch_size=1, max_steps=2, log_every=1, ckpt_every=1, val_every=2, hflip=0.0)


@pytest.fixture(scope="module")
def data(shared_data):
    return shared_data / "sa1b_sample" / "derived_from_coco"


def small_sam_encoder():
    """Meta's ViT image encoder at a toy width (windowed + global blocks, relative positions)."""
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    encoder = ImageEncoderViT(
        embed_dim=64, depth=3, num_heads=2, qkv_bias=True, use_rel_pos=True, window_size=14,
        global_attn_indexes=(1,), norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
    )  # fmt: skip
    return randomize_(encoder.eval(), seed=3)


@pytest.mark.slow
def test_sam_vit_encoder_matches_segment_anything():
    reference = small_sam_encoder()
    config = sam_vit_config(reference.state_dict())
    assert (config.width, config.depth, config.heads, config.global_blocks) == (64, 3, 2, (1,))
    ours = SamViTEncoder(config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = reference(images), ours(images)
    assert actual.shape == (1, 256, 64, 64)
    assert ((actual - expected).norm() / expected.norm()).item() < 1e-5


def test_teacher_from_a_sam_checkpoint_file(tmp_path, monkeypatch):
    sam_like = {f"image_encoder.{k}": v for k, v in small_sam_encoder().state_dict().items()}
    decoder = {k: v for k, v in evitsam.build_model("tiny").state_dict().items() if k.startswith("mask_decoder.")}
    torch.save(sam_like | decoder, tmp_path / "sam_vit_toy.pth")
    teacher = load_teacher(str(tmp_path / "sam_vit_toy.pth"))
    assert teacher.encoder_size == 1024 and set(teacher.decoder_state) == set(decoder)
    image = np.zeros((300, 400, 3), np.uint8)
    assert teacher.embed([image]).shape == (1, 256, 64, 64)
    monkeypatch.setenv("EVITSAM_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("evitsam.weights._host_resolvable", lambda host: False)
    with pytest.raises(FileNotFoundError, match="sam_vit_h_4b8939.pth.*dl.fbaipublicfiles.com"):
        load_teacher("vit_h")


@pytest.mark.slow
def test_distillation_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    student = evitsam.build_model("tiny").train()
    teacher = randomize_(evitsam.build_model("tiny"), seed=1)
    images = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = teacher.encode(images)
    step = DistillStep(student)
    optimizer = torch.optim.AdamW(student.image_encoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = step(images, targets, None)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_teacher_grid_is_pooled_to_the_student_grid():
    targets = torch.arange(16.0).reshape(1, 1, 4, 4)
    pooled = match_grid(targets, 2)
    assert pooled.tolist() == [[[[2.5, 4.5], [10.5, 12.5]]]]
    assert match_grid(targets, 4) is targets


def test_gradient_checkpointing_gives_the_same_gradients():
    model = evitsam.build_model("tiny").eval()  # eval: BN statistics are not updated twice
    images = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.image_encoder.backbone.gradient_checkpointing = flag
        model.encode(images).square().mean().backward()
        grads.append([p.grad.clone() for p in model.image_encoder.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(*grads, strict=True))


@pytest.mark.slow
def test_precompute_then_distill_then_train(tmp_path, data):
    """The whole stage-1 path on the CLI: cache (resumable), distil from it, continue with stage 2."""
    teacher_path = tmp_path / "teacher.safetensors"
    teacher_model = randomize_(evitsam.build_model("tiny"), seed=5)
    save_safetensors(teacher_model.state_dict(), teacher_path, "tiny")
    cache = tmp_path / "cache"
    runner = CliRunner()
    args = ["distill", "precompute", "--teacher", str(teacher_path), "--data", str(data), "--out", str(cache)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    entries = sorted(cache.glob("*.npy"))
    assert len(entries) == 3 and "3 embeddings written" in result.stdout
    first = np.load(entries[0])
    assert first.dtype == np.float16 and first.shape == (256, 32, 32)
    entries[0].unlink()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "1 embeddings written" in again.stdout  # resumed, not redone
    np.testing.assert_array_equal(np.load(entries[0]), first)

    out = tmp_path / "stage1"
    sets = [x for key, value in FAST.items() for x in ("--set", f"{key}={value}")]
    result = runner.invoke(app, ["distill", "configs/tiny-distill.yaml", "--data", str(data), "--out", str(out),
                                 "--cache", str(cache), *sets])  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[-1]["val_mse"] > 0
    student = evitsam.load_model(out / "model.safetensors")
    teacher_state = teacher_model.state_dict()
    assert all(torch.equal(v, teacher_state[k]) for k, v in student.state_dict().items() if k.startswith("mask_"))

    stage2 = tmp_path / "stage2"
    result = runner.invoke(app, ["train", "configs/tiny.yaml", "--data", str(data), "--out", str(stage2), "--init",
                                 str(out / "model.safetensors"), "--max-steps", "1", "--set", "max_masks=2",
                                 "--set", "num_points=256", "--set", "correction_iters=0"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert evitsam.load_model(stage2 / "model.safetensors").variant == "tiny"


@pytest.mark.slow
def test_distill_resume_continues_exactly(tmp_path, data):
    teacher = load_teacher(str(_teacher_file(tmp_path)))
    config = DistillConfig.from_dict(FAST | {"max_steps": 3})
    distill(config, data, tmp_path / "a", teacher=teacher, progress=False)
    config = DistillConfig.from_dict(FAST | {"max_steps": 3})
    distill(config, data, tmp_path / "b", teacher=teacher, progress=False, stop_at=2)
    distill(config, data, tmp_path / "b", teacher=teacher, progress=False, resume=True)
    a = evitsam.load_model(tmp_path / "a" / "model.safetensors").state_dict()
    b = evitsam.load_model(tmp_path / "b" / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _teacher_file(tmp_path):
    path = tmp_path / "teacher.safetensors"
    save_safetensors(randomize_(evitsam.build_model("tiny"), seed=7).state_dict(), path, "tiny")
    return path


@pytest.mark.slow
def test_distill_on_a_plain_folder_of_photos(tmp_path):
    """Stage 1 needs images only: any folder of photos (sub-folders too) is distillation data."""
    photos = tmp_path / "photos"
    for i, name in enumerate(["dog.jpg", "groceries.jpg", "evit_cat.jpg"]):
        folder = photos / ("holiday" if i else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(load_photo(name)).resize((96, 64)).save(folder / f"{i}.png")
    teacher = load_teacher(str(_teacher_file(tmp_path)))
    run = tmp_path / "run"
    distill(DistillConfig.from_dict(FAST), photos, run, teacher=teacher, progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[-1]["loss"] > 0
    assert evitsam.load_model(run / "model.safetensors").variant == "tiny"
    assert precompute(teacher, photos, tmp_path / "cache", progress=False) == 3
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.npy")) == ["0.png.npy", "holiday%2F1.png.npy",
                                                                          "holiday%2F2.png.npy"]  # fmt: skip


def test_distill_errors_are_specific(tmp_path, data):
    runner = CliRunner()
    result = runner.invoke(app, ["distill", "configs/tiny-distill.yaml", "--data", str(data), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--teacher" in result.stderr and "--cache" in result.stderr
    result = runner.invoke(app, ["distill", "configs/tiny-distill.yaml", "--data", str(data), "--out", str(tmp_path),
                                 "--cache", str(tmp_path / "nothing")])  # fmt: skip
    assert result.exit_code == 2 and "no embedding cache" in result.stderr
    with pytest.raises(FileNotFoundError, match="no embedding cache"):
        EmbeddingCache(tmp_path)
