"""Synthetic training scenes: reproducible bytes, masks equal to what is painted, COCO files that load,
resumable generation, and the guard that keeps the val2017 evaluation images out of training data."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from typer.testing import CliRunner

from evitsam.cli import app
from evitsam.data import open_dataset
from evitsam.data.procedural import Patch, filled_shape
from evitsam.data.scenes import Scene, SceneOptions, compose
from evitsam.data.synthetic import STATE, SynthSettings, generate, render

SIZE = 192


@pytest.fixture(scope="module")
def train_photos(shared_data: Path) -> Path:
    return shared_data / "coco_train_subset"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, train_photos: Path) -> Path:
    """Six scenes with photos (every recipe occurs with seed 7), drawn by two worker processes."""
    out = tmp_path_factory.mktemp("synth") / "set"
    summary = generate(out, 6, seed=7, size=SIZE, coco=train_photos, workers=2, progress=False)
    assert summary["images"] == 6 and summary["generated"] == 6
    return out


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def colours(image: np.ndarray) -> list[tuple]:
    return [tuple(c) for c in image.reshape(-1, 3)]


# ------------------------------------------------------------------------------------ masks = drawing
def solid(patch: Patch, colour: tuple[int, int, int]) -> Patch:
    patch.pixels = np.broadcast_to(np.array(colour, dtype=np.uint8), (*patch.mask.shape, 3)).copy()
    return patch


def squares_inside(mask: np.ndarray, side: int, count: int) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` disjoint side x side squares lying wholly inside ``mask``."""
    found: list[tuple[int, int]] = []
    for y in range(0, mask.shape[0] - side, side):
        for x in range(0, mask.shape[1] - side, side):
            if mask[y : y + side, x : x + side].all() and len(found) < count:
                found.append((y, x))
    assert len(found) == count, "the mask is too small for the test"
    return found


def test_masks_are_the_painted_pixels_minus_what_covers_them():
    rng = np.random.default_rng(0)
    canvas, grey = (120, 160), (128, 128, 128)
    scene = Scene(np.full((*canvas, 3), grey, dtype=np.uint8))
    red = solid(filled_shape(rng, canvas, "ellipse", (60, 60), 40), (255, 0, 0))
    blue = solid(filled_shape(rng, canvas, "star", (100, 60), 40), (0, 0, 255))
    first, second = scene.add(red, 1), scene.add(blue, 1)
    is_red, is_blue = (scene.image == (255, 0, 0)).all(-1), (scene.image == (0, 0, 255)).all(-1)
    assert scene.masks[second].sum() == blue.mask.sum() > 0
    np.testing.assert_array_equal(scene.masks[first], is_red)  # the visible part only
    np.testing.assert_array_equal(scene.masks[second], is_blue)
    drawn_red = np.zeros(canvas, dtype=bool)
    drawn_red[red.window] = red.mask
    assert (drawn_red & is_blue).any(), "the test needs the star to cover part of the ellipse"
    np.testing.assert_array_equal(scene.masks[first], drawn_red & ~is_blue)

    # A part nested in the red object stays in its parent's mask; an object lying on it does not.
    (y0, x0), (y1, x1) = squares_inside(scene.masks[first], 8, 2)
    part = solid(Patch(y0, x0, np.ones((8, 8), dtype=bool)), (0, 255, 0))
    on_top = solid(Patch(y1, x1, np.ones((8, 8), dtype=bool)), (255, 255, 0))
    assert scene.masks[first][part.window].all() and scene.masks[first][on_top.window].all()
    child = scene.add(part, 1, parent=first)
    scene.add(on_top, 1)
    assert scene.masks[first][part.window].all() and not scene.masks[first][on_top.window].any()
    np.testing.assert_array_equal(scene.masks[child], (scene.image == (0, 255, 0)).all(-1))
    painted = ~(scene.image == grey).all(-1)
    np.testing.assert_array_equal(np.any(scene.masks, axis=0), painted)


def test_a_ring_has_a_hole_that_shows_the_background():
    rng = np.random.default_rng(3)
    ring = filled_shape(rng, (200, 200), "ring", (100, 100), 80)
    outside = Image.fromarray(np.pad(~ring.mask, 1).astype(np.uint8) * 255)
    ImageDraw.floodfill(outside, (0, 0), 0)  # what stays 255 is enclosed by the ring
    assert np.count_nonzero(np.asarray(outside)) > 100


def test_composed_scene_masks_overlap_only_between_part_and_whole():
    scene = compose(np.random.default_rng(1), (160, 240), None, SceneOptions(objects=(25, 25), nest_probability=0.5))
    assert len(scene.masks) >= 20
    nested = 0
    for later in range(len(scene.masks)):
        ancestors, parent = set(), scene.parents[later]
        while parent is not None:
            ancestors.add(parent)
            parent = scene.parents[parent]
        if ancestors:  # a part lies inside its whole
            nested += bool((scene.masks[later] & scene.masks[scene.parents[later]]).any())
        for earlier in range(later):
            if (scene.masks[earlier] & scene.masks[later]).any():
                assert earlier in ancestors, (earlier, later)
    assert nested, "no visible part inside its parent was drawn"


# ----------------------------------------------------------------------------------- dataset files
def test_same_seed_same_bytes_other_seed_other_scenes(dataset, train_photos, tmp_path):
    again = tmp_path / "again"
    generate(again, 6, seed=7, size=SIZE, coco=train_photos, workers=1, progress=False)
    assert folder_bytes(again) == folder_bytes(dataset)
    other = tmp_path / "other"
    generate(other, 2, seed=1000, size=SIZE, coco=train_photos, progress=False)
    assert (other / "images/000000.jpg").read_bytes() != (dataset / "images/000000.jpg").read_bytes()


def test_coco_file_loads_and_annotations_are_the_rendered_masks(dataset, train_photos):
    coco = load_coco(dataset / "annotations.json")
    assert len(coco.imgs) == 6 and len(coco.anns) > 30
    settings = SynthSettings(seed=7, size=SIZE, coco=str(train_photos.resolve()))
    assert json.loads((dataset / STATE / "settings.json").read_text()) == asdict(settings)
    categories = set()
    for image_id, info in coco.imgs.items():
        with Image.open(dataset / "images" / info["file_name"]) as image:
            assert image.format == "JPEG" and image.size == (info["width"], info["height"])
        assert max(info["width"], info["height"]) == SIZE
        pixels, _, objects = render(settings, image_id - 1)
        annotations = coco.imgToAnns[image_id]
        assert len(annotations) == len(objects) > 0
        for annotation, (mask, category) in zip(annotations, objects):
            decoded = coco.annToMask(annotation).astype(bool)
            np.testing.assert_array_equal(decoded, mask)
            ys, xs = np.nonzero(decoded)
            assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert annotation["area"] == decoded.sum() >= 64
            assert annotation["iscrowd"] == 0 and annotation["category_id"] == category
            categories.add(category)
    assert categories == {1, 2, 3, 4, 5}, "every kind of object (shape, blob, ring, thin, photo) occurs"

    data = open_dataset(dataset)
    assert len(data) == 6
    sample = data[0]
    first = coco.imgToAnns[1]
    assert sample.masks.shape == (len(first), *sample.image.shape[:2])
    boxes = np.array([a["bbox"] for a in first], dtype=np.float32)
    boxes[:, 2:] += boxes[:, :2]
    np.testing.assert_array_equal(sample.boxes, boxes)


def test_generation_resumes_without_redrawing(dataset, train_photos, tmp_path):
    out = tmp_path / "resumed"
    assert generate(out, 2, seed=7, size=SIZE, coco=train_photos, progress=False)["generated"] == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    (out / STATE / "parts" / "000001.json").unlink()  # as if interrupted after the image, before its part
    summary = generate(out, 6, seed=7, size=SIZE, coco=train_photos, progress=False)
    assert summary["generated"] == 5 and summary["images"] == 6
    assert (out / "images/000000.jpg").stat().st_mtime_ns == stamps["000000.jpg"]
    assert folder_bytes(out) == folder_bytes(dataset)
    with pytest.raises(ValueError, match=r"other settings \(seed 7 -> 8\)"):
        generate(out, 6, seed=8, size=SIZE, coco=train_photos, progress=False)


def test_real_photos_are_listed_as_they_are(train_photos, tmp_path):
    out = tmp_path / "real"
    generate(out, 1, seed=0, size=SIZE, coco=train_photos, real=True, min_area=100, progress=False)
    coco, source = load_coco(out / "annotations.json"), load_coco(train_photos / "annotations.json")
    real = [i for i in coco.imgs.values() if i["file_name"].startswith("real_")]
    assert len(real) == len(source.imgs) == 6  # the 6 images of tests/data/coco_train_subset
    for info in real[:5]:
        original = info["file_name"].removeprefix("real_")
        assert (out / "images" / info["file_name"]).read_bytes() == (train_photos / "images" / original).read_bytes()
    expected = [a for a in source.anns.values() if not a["iscrowd"] and source.annToMask(a).sum() >= 100]
    kept = [a for a in coco.anns.values() if a["image_id"] in {i["id"] for i in real}]
    assert len(kept) == len(expected) and all(a["area"] >= 100 for a in kept)
    assert mask_utils.area([a["segmentation"] for a in kept[:3]]).tolist() == [a["area"] for a in kept[:3]]


# ---------------------------------------------------------------------------- guard and CLI errors
def test_the_val2017_evaluation_set_is_refused(shared_data, train_photos, tmp_path):
    # tests/data/coco_subset holds val2017 images: refused by what its annotations say, not by its name.
    with pytest.raises(ValueError, match="val2017 evaluation set"):
        generate(tmp_path / "a", 1, coco=shared_data / "coco_subset", progress=False)
    with pytest.raises(ValueError, match="val2017 evaluation set"):
        generate(tmp_path / "a", 1, coco=shared_data / "coco_subset" / ".." / "coco_subset" / "images", progress=False)
    # Any folder whose images come from val2017, under whatever name.
    renamed = tmp_path / "photos"
    (renamed / "images").mkdir(parents=True)
    annotations = json.loads((train_photos / "annotations.json").read_text())
    annotations["images"] = annotations["images"][:1]
    annotations["images"][0]["coco_url"] = (
        "http://images.cocodataset.org/val2017/" + annotations["images"][0]["file_name"]
    )
    (renamed / "annotations.json").write_text(json.dumps(annotations))
    with pytest.raises(ValueError, match=r"images \(e.g. 000000\d+.jpg\) come from the COCO val2017 evaluation set"):
        generate(tmp_path / "a", 1, coco=renamed, progress=False)
    # A folder named val2017 (the official layout), before anything in it is read.
    with pytest.raises(ValueError, match="a val2017 folder is the COCO val2017 evaluation set"):
        generate(tmp_path / "a", 1, coco=tmp_path / "coco" / "val2017", progress=False)
    assert not (tmp_path / "a").exists()


def test_cli_writes_a_dataset(tmp_path):
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--images", "2", "--size", "96"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 2 and summary["annotations"] > 0
    assert len(open_dataset(tmp_path / "d")) == 2


@pytest.fixture
def foreign(tmp_path: Path, shared_data: Path) -> Path:
    """A folder that holds someone's data: it must not be touched."""
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(shared_data / "images" / "evit_cat.jpg", folder)
    return folder


CLI_ERRORS = {
    "no images": (["--images", "0"], "images must be a whole number >= 1"),
    "size": (["--images", "1", "--size", "10"], "between 64 and 4096"),
    "seed": (["--images", "1", "--seed", "-1"], "seed must be"),
    "workers": (["--images", "1", "--workers", "0"], "workers must be >= 1"),
    "real without coco": (["--images", "1", "--real"], "give --coco PATH"),
    "missing coco": (["--images", "1", "--coco", "{tmp}/nowhere"], "--coco folder not found"),
    "not coco": (["--images", "1", "--coco", "{tmp}"], "expected a COCO folder"),
    "val2017": (["--images", "1", "--coco", "{data}/coco_subset"], "val2017 evaluation set"),
    "foreign out": (["--images", "1", "--out", "{mine}"], "is not a synthetic dataset folder"),
}


@pytest.mark.parametrize("case", CLI_ERRORS)
def test_cli_user_errors_are_one_line_and_exit_2(case, tmp_path, shared_data, foreign):
    args, message = CLI_ERRORS[case]
    places = {"tmp": tmp_path, "data": shared_data, "mine": foreign}
    args = [arg.format(**places) for arg in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, ["data", "synth", *out, *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in foreign.iterdir()] == ["evit_cat.jpg"]
