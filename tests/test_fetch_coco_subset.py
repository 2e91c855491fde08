"""scripts/fetch_coco_subset.py offline: the filter keeps upstream fields and order, and a whole fetch runs on
file:// URLs (a stand-in for the official annotations zip and image server)."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest
from support import REPO

spec = importlib.util.spec_from_file_location("fetch_coco_subset", REPO / "scripts" / "fetch_coco_subset.py")
fetch_coco_subset = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch_coco_subset)


@pytest.fixture(scope="module")
def official(shared_data: Path) -> dict:
    """A COCO instances file as upstream writes it: the fixture's val2017 subset."""
    return json.loads((shared_data / "coco_subset" / "annotations.json").read_text())


def test_filter_keeps_the_chosen_images_with_every_field_in_file_order(official):
    chosen = [official["images"][4]["id"], official["images"][1]["id"]]  # asked for out of file order
    subset = fetch_coco_subset.filter_annotations(official, chosen)
    assert subset["images"] == [official["images"][1], official["images"][4]]  # upstream dicts, upstream order
    assert subset["annotations"] == [a for a in official["annotations"] if a["image_id"] in chosen]
    assert subset["annotations"] and all(a["image_id"] in chosen for a in subset["annotations"])
    assert {k: v for k, v in subset.items() if k not in ("images", "annotations")} == {
        k: v for k, v in official.items() if k not in ("images", "annotations")
    }  # categories, licenses, info, type untouched
    assert len(official["images"]) == 12  # the input is not modified


def test_filter_names_missing_ids(official):
    with pytest.raises(ValueError, match=r"image ids not in the annotation file: \[1, 2\]"):
        fetch_coco_subset.filter_annotations(official, [official["images"][0]["id"], 2, 1])


def test_default_ids_are_the_benchmark_sets_and_hold_the_fixtures(official, shared_data):
    val, train = fetch_coco_subset.DEFAULT_IDS["val2017"], fetch_coco_subset.DEFAULT_IDS["train2017"]
    assert len(set(val)) == len(val) == 40 and len(set(train)) == len(train) == 50
    assert {image["id"] for image in official["images"]} <= set(val)  # the fixture is a part of the benchmark set
    train_fixture = json.loads((shared_data / "coco_train_subset" / "annotations.json").read_text())
    assert {image["id"] for image in train_fixture["images"]} <= set(train)


def test_a_whole_fetch_from_file_urls(tmp_path, official, shared_data, monkeypatch):
    images = shared_data / "coco_subset" / "images"
    served = json.loads(json.dumps(official))
    for image in served["images"]:  # the image server: the fixture's own files
        image["coco_url"] = (images / image["file_name"]).as_uri()
    archive = tmp_path / "annotations_trainval2017.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("annotations/instances_val2017.json", json.dumps(served))
    monkeypatch.setattr(fetch_coco_subset, "ANNOTATIONS_ZIP", archive.as_uri())
    chosen = [served["images"][2]["id"], served["images"][0]["id"]]
    out = tmp_path / "out"
    fetch_coco_subset.main([str(out), "--ids", *map(str, chosen)])
    written = json.loads((out / "annotations.json").read_text())
    assert written == fetch_coco_subset.filter_annotations(served, chosen)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(i["file_name"] for i in written["images"])
    for image in written["images"]:
        assert (out / "images" / image["file_name"]).read_bytes() == (images / image["file_name"]).read_bytes()
    assert (out / archive.name).read_bytes() == archive.read_bytes()  # downloaded once, kept for the next run
    assert not list(out.rglob("*.part"))
    (out / "images" / written["images"][0]["file_name"]).write_bytes(b"kept")
    fetch_coco_subset.main([str(out), "--ids", *map(str, chosen), "--annotations", str(archive)])
    assert (out / "images" / written["images"][0]["file_name"]).read_bytes() == b"kept"  # present: not fetched again
