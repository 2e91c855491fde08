"""SA-1B and COCO datasets on the committed samples: layouts, decoding, subsets, and bad files skipped; plain image
folders (distillation)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from support import load_photo

from evitsam.data import CocoDataset, ImageFolder, SA1BDataset, SampleError, collate_samples, open_dataset


@pytest.fixture(scope="module")
def sa1b_root(shared_data):
    return shared_data / "sa1b_sample" / "derived_from_coco"


@pytest.fixture(scope="module")
def coco(shared_data):
    return CocoDataset(shared_data / "coco_subset")


def test_sa1b_official_layout_matches_the_coco_source(sa1b_root, coco):
    """The SA-1B sample was rasterised from coco_subset: every decoded mask equals the COCO polygon's."""
    dataset = open_dataset(sa1b_root)
    assert isinstance(dataset, SA1BDataset) and dataset.layout == "official"
    assert len(dataset) == 3
    counts = []
    for index in range(len(dataset)):
        sample = dataset[index]
        record = json.loads(dataset.pairs[index][1].read_text())
        counts.append(len(sample.masks))
        assert sample.image.dtype == np.uint8 and sample.image.shape[2] == 3
        assert sample.masks.shape[1:] == sample.image.shape[:2] and sample.masks.dtype == bool
        for mask, box, annotation in zip(sample.masks, sample.boxes, record["annotations"]):
            np.testing.assert_array_equal(mask, coco.coco.annToMask(coco.coco.anns[annotation["id"]]).astype(bool))
            x, y, w, h = annotation["bbox"]
            np.testing.assert_allclose(box, [x, y, x + w, y + h])
    assert counts == [19, 18, 10]


def test_sa1b_extracted_layout_and_mask_subsets(tmp_path, sa1b_root):
    folder = tmp_path / "sa_000000"
    folder.mkdir()
    for jpg in (sa1b_root / "images").glob("*.jpg"):
        shutil.copy(jpg, folder / jpg.name)
        shutil.copy(sa1b_root / "masks" / f"{jpg.stem}.json", folder / f"{jpg.stem}.json")
    full = open_dataset(tmp_path)
    assert full.layout == "extracted" and len(full) == 3
    subset = SA1BDataset(tmp_path, max_masks=4, seed=1)
    again = SA1BDataset(tmp_path, max_masks=4, seed=1)
    for index in range(3):
        sample, complete = subset[index], full[index]
        assert len(sample.masks) == 4
        np.testing.assert_array_equal(sample.masks, again[index].masks)  # reproducible per seed and index
        chosen = [np.flatnonzero([(m == c).all() for c in complete.masks])[0] for m in sample.masks]
        assert len(set(chosen)) == 4  # without replacement, drawn from the image's own masks


def test_sa1b_synthetic_fixture(shared_data):
    dataset = open_dataset(shared_data / "sa1b_sample" / "datumaro_synthetic")
    sample = dataset[0]
    assert sample.image.shape == (5, 10, 3) and sample.masks.shape[1:] == (5, 10) and sample.masks.any()


def test_coco_polygons_rle_and_crowd(shared_data, coco):
    assert len(coco) == 11  # 1 of the 12 images of tests/data/coco_subset has no annotations (tests/data/README.md)
    crowd = CocoDataset(shared_data / "coco_subset", include_crowd=True)
    n_plain = sum(len(v) for v in coco.annotations.values())
    n_crowd = sum(len(v) for v in crowd.annotations.values())
    assert n_crowd - n_plain == 2  # the 2 iscrowd=1 regions (uncompressed RLE) only when asked for
    crowd_index = next(
        i for i, image_id in enumerate(crowd.image_ids) if any(a["iscrowd"] for a in crowd.annotations[image_id])
    )
    sample = crowd[crowd_index]
    assert sample.masks.any(axis=(1, 2)).all()
    for mask, box in zip(sample.masks, sample.boxes):
        ys, xs = np.nonzero(mask)
        assert box[0] - 1 <= xs.min() and xs.max() <= box[2] + 1 and box[1] - 1 <= ys.min() and ys.max() <= box[3] + 1


@pytest.mark.parametrize("layout", ["coco_subset", "sa1b_sample/derived_from_coco"])
def test_small_masks_can_be_left_out(shared_data, layout):
    everything = open_dataset(shared_data / layout)
    large = open_dataset(shared_data / layout, min_area=2000)
    same = {large.image_path(i): [j for j in range(len(everything)) if everything.image_path(j) == large.image_path(i)]
            for i in range(len(large))}  # fmt: skip
    pairs = [(large[i], everything[same[large.image_path(i)][0]]) for i in range(len(large))]
    kept, full = next((a, b) for a, b in pairs if 0 < len(a.masks) < len(b.masks))
    assert kept.masks.sum((1, 2)).min() >= 2000 * 0.95  # areas as recorded, up to rasterisation
    assert full.masks.sum((1, 2)).min() < 2000


def test_bad_files_are_skipped_and_counted(tmp_path, sa1b_root):
    shutil.copytree(sa1b_root, tmp_path / "sa", dirs_exist_ok=True)
    root = tmp_path / "sa"
    ids = (root / "sa_images_ids.txt").read_text().split()
    jpg = root / "images" / f"sa_{ids[0]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:2000])  # truncated image
    (root / "masks" / f"sa_{ids[1]}.json").unlink()  # missing annotations
    dataset = open_dataset(root)
    with pytest.warns(UserWarning, match="skipping sample"):
        batch = [dataset[i] for i in range(len(dataset))]
    assert batch[0] is None and batch[1] is None and batch[2] is not None
    assert dataset.skipped == 2
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_samples)
    with pytest.warns(UserWarning):
        (only,) = list(loader)
    assert [s.image_id for s in only] == [f"sa_{ids[2]}"]
    with pytest.raises(SampleError):
        dataset.load(0, np.random.default_rng(0))


def test_unknown_layouts_and_arguments(tmp_path, sa1b_root):
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the layout.*plain folder of images serves distillation only"):
        open_dataset(tmp_path)
    with pytest.raises(ValueError, match="max_masks"):
        SA1BDataset(sa1b_root, max_masks=0)
    with pytest.raises(IndexError):
        SA1BDataset(sa1b_root)[3]


def test_plain_image_folders_are_read_recursively_and_sorted(tmp_path):
    photo = Image.fromarray(load_photo("dog.jpg")).resize((80, 53))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: read upright
    for name in ["b/x.jpg", "a/x.jpg", "a/x.png", "top.PNG", ".hidden/h.jpg", "a/.h.jpg", "phone.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        photo.save(tmp_path / name, exif=exif.tobytes() if name == "phone.jpg" else b"")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "broken.jpg").write_bytes(b"not a jpeg either")
    dataset = open_dataset(tmp_path, images_only=True)
    assert isinstance(dataset, ImageFolder)
    names = [p.relative_to(tmp_path).as_posix() for p in dataset.files]
    assert names == ["a/x.jpg", "a/x.png", "b/broken.jpg", "b/x.jpg", "phone.jpg", "top.PNG"]
    keys = [dataset.image_key(i) for i in range(len(dataset))]
    assert len(set(keys)) == len(keys) and keys[0] == "a%2Fx.jpg" and keys[-1] == "top.PNG"
    assert dataset.read_image(0).shape == (53, 80, 3)
    assert dataset.read_image(4).shape == (80, 53, 3)  # EXIF orientation 6 applied
    with pytest.warns(UserWarning, match="skipping sample 2: cannot read image .*broken.jpg"):
        assert dataset.read_image(2) is None
    sample = dataset[3]
    assert sample.image.shape == (53, 80, 3) and sample.masks.shape == (0, 53, 80) and sample.boxes.shape == (0, 4)
    assert dataset.skipped == 1
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(tmp_path / "a" / "empty" if (tmp_path / "a" / "empty").mkdir() is None else tmp_path)
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "missing")
