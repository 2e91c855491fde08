"""The ``evitsam`` command with the inputs people really have, run as a subprocess: prompts off the image,
phone photos with EXIF orientation, folders, files that are not checkpoints, outputs that cannot be
written, images over the pixel limit, and reruns with other settings.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_run import evitsam, imports
from PIL import Image

from evitsam import example_image, read_image, render_overlay
from evitsam.data.synthetic import SynthSettings, render
from evitsam.everything.mask_ops import decode_rle

pytestmark = pytest.mark.slow  # every test runs the command in a fresh process

SCENE_POINT = (586, 127)  # an object of the bundled example scene (the synthetic scene seed 21, size 800)


def one_error_line(done) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert done.stdout == ""
    return lines[0]


def scene_truth() -> np.ndarray:
    return next(m for m, _ in render(SynthSettings(seed=21, size=800), 0)[2] if m[SCENE_POINT[1], SCENE_POINT[0]])


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1072x603 picture (a phone photo's proportions): gray with a darker disc."""
    path = tmp_path_factory.mktemp("img") / "wide.png"
    yy, xx = np.mgrid[:603, :1072]
    pixels = np.where(((xx - 500) ** 2 + (yy - 300) ** 2 < 150**2)[..., None], 60, 200).astype(np.uint8)
    Image.fromarray(np.repeat(pixels, 3, axis=2)).save(path)
    return path


@pytest.mark.parametrize(
    ("prompt", "shown"),
    [
        (["--point", "5000,5000"], "--point '5000,5000' is outside the image"),
        (["--point", "-10,20"], "--point '-10,20' is outside the image"),
        (["--point", "10,20", "--point", "10,604,0"], "--point '10,604,0' is outside the image"),
        (["--box", "1100,10,1200,50"], "--box '1100,10,1200,50' is outside the image"),
    ],
)
def test_prompts_off_the_image_are_refused_before_torch(prompt, shown, wide, tmp_path):
    modules, done = imports("segment", wide, *prompt, "-o", tmp_path / "out.png")
    line = one_error_line(done)
    assert shown in line and "1072x603" in line, line
    assert "torch" not in modules, "an input error imported torch"
    assert not list(tmp_path.iterdir())


def test_a_box_reaching_past_the_edge_is_clipped_with_a_notice(tmp_path):
    image = tmp_path / "small.png"
    Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(image)
    done = evitsam("segment", image, "--box", "-20,-10,50,40", "-o", tmp_path / "out.png")
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if "--box" in line]
    assert notices == ["notice: --box '-20,-10,50,40' reaches past the 96x64 image; clipped to 0,0,50,40"]
    assert Image.open(tmp_path / "out.png").size == (96, 64)


def test_exif_orientation_gives_masks_in_the_displayed_frame(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6: the click and the mask are in the frame people see."""
    upright = Image.open(example_image()).convert("RGB")
    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(photo, exif=exif, quality=95)
    assert Image.open(photo).size == (upright.height, upright.width)  # stored sideways

    out = tmp_path / "mask.png"
    done = evitsam("segment", photo, "--point", ",".join(map(str, SCENE_POINT)), "-o", out, "--overlay")
    assert done.returncode == 0, done.stderr
    mask = np.asarray(Image.open(out)) > 0
    assert mask.shape == (upright.height, upright.width)
    truth = scene_truth()
    assert (mask & truth).sum() / (mask | truth).sum() > 0.6, "the mask is not the clicked object"
    # The overlay is the one renderer's drawing of that mask and click on the displayed image.
    drawn = np.asarray(Image.open(tmp_path / "mask_overlay.jpg").convert("RGB")).astype(int)
    expected = np.asarray(render_overlay(read_image(photo), [mask], [(*SCENE_POINT, 1)])).astype(int)
    assert np.abs(drawn - expected).mean() < 4


def test_a_folder_given_as_the_image_points_to_everything(tmp_path):
    (tmp_path / "photos").mkdir()
    modules, done = imports("segment", tmp_path / "photos", "--point", "1,1", "-o", tmp_path / "out.png")
    line = one_error_line(done)
    assert f"{tmp_path / 'photos'} is a folder, not an image" in line and "evitsam everything" in line, line
    assert "not found" not in line and "torch" not in modules


def test_random_bytes_are_not_a_checkpoint(wide, tmp_path):
    fake = tmp_path / "weights.pt"
    fake.write_bytes(b"\x13" + np.random.default_rng(0).bytes(4095))  # random bytes (not torch.save's magic)
    done = evitsam("segment", wide, "--point", "10,10", "--checkpoint", fake, "-o", tmp_path / "out.png")
    assert one_error_line(done) == f"error: {fake} is not a PyTorch checkpoint"
    done = evitsam("convert", fake, tmp_path / "out.safetensors")
    assert one_error_line(done) == f"error: {fake} is not a PyTorch checkpoint"


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a read-only folder, or /proc where permissions do not bind."""
    if os.geteuid() == 0:
        return Path("/proc")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


@pytest.mark.parametrize("case", ["file in the way", "no permission", "output is a folder"])
def test_unwritable_output_is_refused_before_the_model_loads(case, wide, tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    output = {
        "file in the way": tmp_path / "notes.txt" / "mask.png",
        "no permission": _unwritable_folder(tmp_path) / "mask.png",
        "output is a folder": tmp_path,
    }[case]
    fake = tmp_path / "not_a_checkpoint.pt"
    fake.write_bytes(b"nothing")  # loading it would fail: the output must be refused first
    modules, done = imports("segment", wide, "--point", "10,10", "--checkpoint", fake, "-o", output)
    line = one_error_line(done)
    assert line.startswith(f"error: --output '{output}"), line
    assert ".tmp" not in line and "checkpoint" not in line, line
    assert "torch" not in modules
    for command in (["everything", wide], ["export", "onnx"]):  # folder outputs are checked the same way
        done = evitsam(*command, "--checkpoint", fake, "-o", tmp_path / "notes.txt")
        assert "--output" in one_error_line(done)


def png_header(width: int, height: int) -> bytes:
    """A PNG that announces ``width`` x ``height`` gray pixels (its data is a stub: the header is what is checked)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_images_over_the_pixel_limit_get_one_line_with_the_way_out(tmp_path):
    big = tmp_path / "scan.png"
    big.write_bytes(png_header(10050, 10000))  # 100.5 MP: above Pillow's bomb warning and evitsam's 100 MP
    modules, done = imports("segment", big, "--point", "10,10", "-o", tmp_path / "out.png")
    line = one_error_line(done)
    assert "10050x10000" in line and "--max-pixels 100000000" in line and "raise the limit" in line, line
    assert "DecompressionBomb" not in done.stderr and "torch" not in modules
    # --max-pixels raises it: the header passes, and the stub data is what fails now.
    done = evitsam("segment", big, "--point", "10,10", "-o", tmp_path / "out.png", "--max-pixels", 200_000_000)
    assert "cannot read image" in one_error_line(done)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(small)
    done = evitsam("everything", small, "-o", tmp_path / "out", "--max-pixels", 1000)
    assert "--max-pixels 1000" in one_error_line(done)


def test_everything_refuses_to_mix_settings_in_one_folder(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    Image.open(example_image()).save(photos / "scene.jpg")
    done = evitsam("everything", photos, "-o", out, "--points-per-side", 2, "--overlay")
    assert done.returncode == 0, done.stderr
    written = json.loads((out / "scene.json").read_text())
    assert written["settings"]["points_per_side"] == 2 and written["settings"]["model"] == "nano"
    # One renderer: everything's overlay is the library's drawing of the records it wrote.
    masks = list(decode_rle([r["segmentation"] for r in written["annotations"]]))
    expected = np.asarray(render_overlay(read_image(photos / "scene.jpg"), masks)).astype(int)
    drawn = np.asarray(Image.open(out / "scene_overlay.jpg").convert("RGB")).astype(int)
    assert masks and np.abs(drawn - expected).mean() < 4

    stamp = (out / "scene.json").stat().st_mtime_ns
    done = evitsam("everything", photos, "-o", out, "--points-per-side", 3)
    line = one_error_line(done)
    assert "1 of 1 images" in line and "points_per_side 2 (now 3)" in line and "--overwrite" in line, line
    assert (out / "scene.json").stat().st_mtime_ns == stamp

    done = evitsam("everything", photos, "-o", out, "--points-per-side", 2)  # same settings: resumed, skipped
    assert done.returncode == 0 and json.loads(done.stdout)["skipped"] == ["scene.jpg"], done.stderr
    done = evitsam("everything", photos, "-o", out, "--points-per-side", 3, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert [d["image"] for d in json.loads(done.stdout)["done"]] == ["scene.jpg"]
    assert json.loads((out / "scene.json").read_text())["settings"]["points_per_side"] == 3
