"""The ``evitsam`` command line, run in-process on a real photo with a random-weight L0 checkpoint.

Official weights cannot be downloaded here, so the checkpoint is made from seeded random weights;
every mask the CLI writes is compared with a direct ``SamPredictor`` call on the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from support import randomize_
from typer.testing import CliRunner

import evitsam
from evitsam import SamPredictor
from evitsam.cli import app
from evitsam.visualize import render_overlay

POINT, NEGATIVE_POINT = (320, 240), (50, 40)
BOXES = ((100, 80, 400, 380), (300, 50, 600, 300))
runner = CliRunner()


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model name must never start a download from a test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An official-style ``.pt`` state dict, named as the cache expects it."""
    path = tmp_path_factory.mktemp("cache") / "efficientvit_sam_l0.pt"
    torch.save(randomize_(evitsam.build_model("l0"), seed=0).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def photo(shared_data: Path) -> Path:
    return shared_data / "images" / "evit_cat.jpg"


@pytest.fixture(scope="module")
def reference(checkpoint: Path, photo: Path) -> SamPredictor:
    """The library used directly, with the same weights and image the CLI gets."""
    predictor = SamPredictor(evitsam.load_model(checkpoint))
    predictor.set_image(np.asarray(Image.open(photo).convert("RGB")))
    return predictor


def run(*args: object, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(arg) for arg in args], env=env)


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L", f"{path} is {image.mode}, expected single-channel 8-bit"
        return np.asarray(image)


def bbox(mask: np.ndarray) -> list[int] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])] if rows.size else None


@pytest.mark.slow
def test_point_prompt_writes_the_predictor_mask(checkpoint, photo, reference, tmp_path):
    out = tmp_path / "new" / "dir" / "mask.png"
    result = run(
        "segment", photo, "--checkpoint", checkpoint, "--point", "320,240", "--point", "50,40,0", "--output", out
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""

    masks, scores, _ = reference.predict(np.array([POINT, NEGATIVE_POINT]), np.array([1, 0]), multimask_output=False)
    expected = masks[0]
    assert 0.01 < expected.mean() < 0.99, "the reference mask is blank: the comparison would prove nothing"
    got = read_mask(out)
    width, height = Image.open(photo).size
    assert got.shape == (height, width)
    assert set(np.unique(got).tolist()) == {0, 255}
    np.testing.assert_array_equal(got, expected.astype(np.uint8) * 255)
    assert os.listdir(out.parent) == ["mask.png"], "temporary files left behind"

    summary = json.loads(result.stdout)
    assert summary == {
        "image": str(photo),
        "model": str(checkpoint),
        "variant": "l0",
        "runtime": "torch",
        "precision": "fp32",
        "masks": [
            {
                "file": str(out),
                "score": pytest.approx(float(scores[0]), abs=1e-3),
                "area": int(expected.sum()),
                "box": bbox(expected),
            }
        ],
        "overlay": None,
    }


@pytest.mark.slow
def test_several_boxes_write_one_mask_each_and_an_overlay(checkpoint, photo, reference, tmp_path):
    out, overlay = tmp_path / "mask.png", tmp_path / "mask_overlay.jpg"
    boxes = [",".join(map(str, box)) for box in BOXES]
    result = run(
        "segment", photo, "--checkpoint", checkpoint, "--box", boxes[0], "--box", boxes[1],
        "--point", "320,240", "--multimask", "-o", out, "--overlay",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [m["file"] for m in summary["masks"]] == [str(tmp_path / "mask_0.png"), str(tmp_path / "mask_1.png")]
    assert summary["overlay"] == str(overlay)
    assert not out.exists()

    # Each box's mask is what the predictor gives for that box alone (+ the shared point), best of 3.
    expected = []
    for i, box in enumerate(BOXES):
        masks, scores, _ = reference.predict(np.array([POINT]), np.array([1]), np.array(box), multimask_output=True)
        best = int(np.argmax(scores))
        expected.append(masks[best])
        np.testing.assert_array_equal(read_mask(tmp_path / f"mask_{i}.png"), masks[best].astype(np.uint8) * 255)
        assert summary["masks"][i]["score"] == pytest.approx(float(scores[best]), abs=1e-3)
        assert summary["masks"][i]["area"] == int(masks[best].sum())
    assert (expected[0] != expected[1]).any()

    original = np.asarray(Image.open(photo).convert("RGB")).astype(int)
    with Image.open(overlay) as image:
        assert image.size == Image.open(photo).size
        drawn = np.asarray(image.convert("RGB")).astype(int)
    covered = expected[0] | expected[1]
    assert np.abs(drawn - original)[covered].mean() > 20, "masks are not blended in"
    # The library's one renderer, given the same masks and prompts, draws the same picture (to JPEG rounding).
    points = [(*POINT, 1)]
    library = np.asarray(render_overlay(original.astype(np.uint8), expected, points, BOXES)).astype(int)
    assert np.abs(drawn - library).mean() < 4, "the CLI's overlay is not the library renderer's"
    red, green, blue = drawn[POINT[1], POINT[0]]
    assert green > 150 and red < 80 and blue < 80, "the foreground point is not drawn as a green dot"


@pytest.mark.slow
def test_model_name_resolves_from_the_cache(checkpoint, photo, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("EVITSAM_HOME", str(checkpoint.parent))
    out = tmp_path / "mask.png"
    result = run("segment", photo, "--model", "l0", "--box", ",".join(map(str, BOXES[0])), "-o", out)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == "l0"
    masks, _, _ = reference.predict(box=np.array(BOXES[0]), multimask_output=False)
    np.testing.assert_array_equal(read_mask(out), masks[0].astype(np.uint8) * 255)


@pytest.mark.slow
def test_convert_writes_safetensors_that_load_identically(checkpoint, photo, reference, tmp_path):
    target = tmp_path / "converted" / "l0.safetensors"
    result = run("convert", checkpoint, target)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {target} (variant l0)\n"

    model = evitsam.load_model(target)
    original = torch.load(checkpoint, map_location="cpu", weights_only=True)
    converted = model.state_dict()
    assert all(torch.equal(converted[key], value) for key, value in original.items())
    predictor = SamPredictor(model)
    predictor.set_image(np.asarray(Image.open(photo).convert("RGB")))
    assert torch.equal(predictor.get_image_embedding(), reference.get_image_embedding())


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> SimpleNamespace:
    """A text file posing as an image and a checkpoint cut in half (made once: 140 MB)."""
    folder = tmp_path_factory.mktemp("broken")
    not_image = folder / "notes.jpg"
    not_image.write_text("not an image\n")
    truncated = folder / "truncated.pt"
    data = checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return SimpleNamespace(not_image=not_image, truncated=truncated)


@pytest.fixture
def files(checkpoint: Path, photo: Path, broken: SimpleNamespace, tmp_path: Path) -> SimpleNamespace:
    """Paths the error cases refer to; outputs go to a fresh tmp_path."""
    (tmp_path / "empty_cache").mkdir()
    return SimpleNamespace(photo=photo, ckpt=checkpoint, tmp=tmp_path, **vars(broken))


def _seg(f, *args, image=None, model=("--checkpoint",)) -> list:
    """A segment command writing to tmp/out.png, with the checkpoint unless ``model`` says otherwise."""
    source = [*model, f.ckpt] if model == ("--checkpoint",) else list(model)
    return ["segment", image or f.photo, *source, *args, "-o", f.tmp / "out.png"]


USER_ERRORS = {
    "missing image": (lambda f: _seg(f, "-p", "1,1", image=f.tmp / "missing.jpg"), "image not found"),
    "unreadable image": (lambda f: _seg(f, "-p", "1,1", image=f.not_image), "cannot read image"),
    "point syntax": (lambda f: _seg(f, "-p", "3,x"), "--point '3,x': expected X,Y or X,Y,LABEL with numbers"),
    "point arity": (lambda f: _seg(f, "-p", "1,2,1,0"), "--point '1,2,1,0'"),
    "point not finite": (lambda f: _seg(f, "-p", "nan,3"), "--point 'nan,3'"),
    "point label": (lambda f: _seg(f, "-p", "3,4,2"), "LABEL must be 1 (foreground) or 0 (background)"),
    "box syntax": (lambda f: _seg(f, "--box", "1,2,3"), "--box '1,2,3': expected X0,Y0,X1,Y1"),
    "box corners": (lambda f: _seg(f, "--box", "50,50,10,10"), "--box '50,50,10,10'"),
    "no prompt": (lambda f: _seg(f), "no prompt"),
    "model and checkpoint": (lambda f: _seg(f, "-p", "1,1", "--model", "l0"), "--model and --checkpoint"),
    "unpublished model": (lambda f: _seg(f, "-p", "1,1", model=("--model", "tiny")), "no published weights"),
    "unknown model": (lambda f: _seg(f, "-p", "1,1", model=("--model", "l9")), "unknown variant 'l9'"),
    "model not cached": (lambda f: _seg(f, "-p", "1,1", model=("--model", "l0")), "not in the cache"),
    "missing checkpoint": (lambda f: _seg(f, "-p", "1,1", model=("--checkpoint", f.tmp / "no.pt")), "not found"),
    "wrong variant": (lambda f: _seg(f, "-p", "1,1", "--variant", "l1"), "does not fit variant 'l1'"),
    "truncated checkpoint": (lambda f: _seg(f, "-p", "1,1", model=("--checkpoint", f.truncated)), "truncated"),
    "output not png": (lambda f: [*_seg(f, "-p", "1,1"), "-o", f.tmp / "out.jpg"], "use a .png name"),
    "bad device": (lambda f: _seg(f, "-p", "1,1", "--device", "toaster"), "device"),
    "convert missing": (lambda f: ["convert", f.tmp / "no.pt", f.tmp / "out.safetensors"], "not found"),
    "convert truncated": (lambda f: ["convert", f.truncated, f.tmp / "out.safetensors"], "truncated"),
    "convert wrong variant": (lambda f: ["convert", f.ckpt, f.tmp / "out.safetensors", "--variant", "xl1"], "'xl1'"),
    "convert target": (lambda f: ["convert", f.ckpt, f.tmp / "out.bin"], ".safetensors"),
}


@pytest.mark.parametrize("case", USER_ERRORS)
def test_user_errors_are_one_line_and_exit_2(case, files):
    make_args, message = USER_ERRORS[case]
    result = run(*make_args(files), env={"EVITSAM_HOME": str(files.tmp / "empty_cache")})
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert not list(files.tmp.glob("out*")), "an output was written despite the error"


@pytest.mark.parametrize("args", [["segment", "image.jpg", "-p", "1,1"], ["bogus"]], ids=["missing option", "command"])
def test_usage_errors_stay_short(args):
    result = run(*args)
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) <= 4, result.stderr
    assert "Traceback" not in result.output and "╭" not in result.output


@pytest.mark.parametrize("entry", ["module", "script"])
def test_entry_points_report_errors_in_one_line(entry, tmp_path):
    script = Path(sys.executable).with_name("evitsam")
    if entry == "script" and not script.exists():
        pytest.skip("the evitsam console script is not installed in this environment")
    command = [sys.executable, "-m", "evitsam"] if entry == "module" else [str(script)]
    missing = tmp_path / "missing.jpg"
    args = ["segment", str(missing), "--model", "l0", "-p", "1,1", "-o", str(tmp_path / "out.png")]
    done = subprocess.run(command + args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: image not found: {missing}\n"
    assert done.stdout == ""
