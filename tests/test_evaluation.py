"""The zero-shot protocol, proven with oracles and independent computations, plus real runs.

Oracles (``tests/oracles.py``) answer prompts from the ground truth: the GT mask must score
mIoU 100 and AP 100, and the box-filled mask must score exactly what pycocotools computes on
its own. The clicker is checked against a brute-force distance transform.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from oracles import OraclePredictor
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from support import randomize_
from typer.testing import CliRunner

import evitsam
from evitsam import SamPredictor
from evitsam.cli import app
from evitsam.evaluation import Clicker, EvalDataset, evaluate, mask_ious, miou_by_size

runner = CliRunner()


@pytest.fixture(scope="module")
def coco(shared_data: Path) -> tuple[Path, Path, dict]:
    root = shared_data / "coco_subset"
    return root / "images", root / "annotations.json", json.loads((root / "annotations.json").read_text())


@pytest.fixture(scope="module")
def person(shared_data: Path) -> tuple[Path, Path, dict, Path]:
    root = shared_data / "coco_person_subset"
    annotations = json.loads((root / "annotations.json").read_text())
    return root / "images", root / "annotations.json", annotations, root / "detections_person_AP_H_56.json"


@pytest.fixture(scope="module")
def few_objects(tmp_path_factory: pytest.TempPathFactory, coco) -> Path:
    """4 COCO images with 5 objects in all (one image has none): real models decode few prompts."""
    _, _, data = coco
    images = [data["images"][i] for i in (3, 4, 9, 6)]  # ids 403385, 6818, 226111, 331352: 2 + 1 + 0 + 2 objects
    ids = {image["id"] for image in images}
    path = tmp_path_factory.mktemp("annotations") / "few.json"
    path.write_text(
        json.dumps({**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]})
    )
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(randomize_(evitsam.build_model("tiny"), seed=3).state_dict(), path)
    return path


# ---------------------------------------------------------------------------------------- clicker
def brute_force_click(gt: np.ndarray, pred: np.ndarray, clicked: np.ndarray) -> tuple[int, int, bool]:
    """The protocol's next click, with distances by exhaustive search instead of OpenCV."""

    def depth(region: np.ndarray) -> np.ndarray:
        padded = np.pad(region, 1)
        zy, zx = np.nonzero(~padded)
        yy, xx = np.mgrid[: padded.shape[0], : padded.shape[1]]
        dist = np.sqrt(((yy[..., None] - zy) ** 2 + (xx[..., None] - zx) ** 2).min(-1))
        return np.where(padded, dist, 0)[1:-1, 1:-1] * ~clicked

    fn, fp = depth(gt & ~pred), depth(~gt & pred)
    positive = fn.max() > fp.max()
    chosen = fn if positive else fp
    ys, xs = np.nonzero(chosen == chosen.max())
    return int(xs[0]), int(ys[0]), bool(positive)


def test_clicker_on_hand_made_masks():
    gt = np.zeros((8, 10), dtype=bool)
    gt[2:5, 3:8] = True  # 3x5 block: depth 2 along row 3 at x = 4, 5, 6
    clicker = Clicker(gt)
    assert clicker.click() == (4, 3, True)  # ties: first in row-major order
    assert clicker.click(np.zeros_like(gt)) == (5, 3, True)  # an already clicked pixel is skipped
    assert clicker.coords.tolist() == [[4, 3], [5, 3]] and clicker.labels.tolist() == [1, 1]
    assert Clicker(gt).click(gt) == (0, 0, False)  # nothing left to correct

    full = Clicker(np.ones((5, 5), dtype=bool))  # the image border counts as boundary
    assert full.click() == (2, 2, True)

    gt = np.zeros((5, 12), dtype=bool)
    gt[1:4, 1:6] = True
    pred = np.zeros_like(gt)
    pred[1:4, 6:11] = True  # false negatives and false positives equally deep: the click is negative
    assert Clicker(gt).click(pred) == (7, 2, False)

    pred = gt.copy()
    pred[0:5, 8:12] = True  # a false-positive region deeper than any false negative
    pred[2, 2] = False  # a one-pixel false negative
    assert Clicker(gt).click(pred) == (9, 1, False)  # depth 2 at rows 1-3 of x = 9, 10
    with pytest.raises(ValueError, match="shape"):
        Clicker(gt).click(pred[:3])


def test_first_clicks_match_the_official_full_image_computation(coco):
    """On real objects, the official formulation (float distances of the whole padded image) agrees."""
    images, annotations, _ = coco
    data = EvalDataset(images, annotations)
    count = 0
    for image in data.images:
        objects = data.objects(image.id)
        for mask in data.masks(objects, image) if objects else []:
            depth = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 0)[1:-1, 1:-1]
            ys, xs = np.where(depth == depth.max())
            assert Clicker(mask).click() == (xs[0], ys[0], True)
            count += 1
    assert count == 112  # every object of tests/data/coco_subset (tests/data/README.md)


def test_clicker_matches_brute_force_distances():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = rng.integers(4, 16, size=2)
        gt = np.zeros((h, w), dtype=bool)
        for _ in range(rng.integers(1, 4)):  # unions of rectangles: many ties
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            gt[y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
        clicker, clicked = Clicker(gt), np.zeros_like(gt)
        pred = np.zeros_like(gt)
        for _ in range(4):
            expected = brute_force_click(gt, pred, clicked)
            assert clicker.click(pred) == expected
            clicked[expected[1], expected[0]] = True
            pred = rng.random((h, w)) < 0.4 if rng.random() < 0.7 else gt ^ (rng.random((h, w)) < 0.2)


# ---------------------------------------------------------------------------------------- metrics
def test_size_buckets_include_both_bounds():
    areas = [1023, 1024, 1025, 9215, 9216, 9217]
    records = [{"area": area, "iou": 10.0 * (i + 1)} for i, area in enumerate(areas)]
    assert miou_by_size(records) == {"all": 35.0, "large": 55.0, "medium": 35.0, "small": 15.0}
    assert miou_by_size(records[:1]) == {"all": 10.0, "large": None, "medium": None, "small": 10.0}


def test_mask_iou_is_the_official_formula():
    pred = np.zeros((3, 4, 4), dtype=bool)
    gt = np.zeros_like(pred)
    pred[0, 0, :2] = gt[0, 0, :1] = True  # 1 of 2 pixels
    gt[1] = pred[1] = True  # identical
    assert mask_ious(pred, gt) == [float(1 / (2 + 1e-7)) * 100, float(16 / (16 + 1e-7)) * 100, 0.0]


# ---------------------------------------------------------------------------------------- oracles
def independent_box_filled_miou(coco_data: dict) -> dict:
    """mIoU of box-filled masks by pycocotools alone (its RLE IoU), buckets written out by hand."""
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = coco_data
        api.createIndex()
    by_bucket = {"all": [], "large": [], "medium": [], "small": []}
    for ann in api.dataset["annotations"]:
        if ann["area"] < 1:
            continue
        image = api.imgs[ann["image_id"]]
        box = mask_utils.frPyObjects(np.array([ann["bbox"]], dtype=np.float64), image["height"], image["width"])
        iou = float(mask_utils.iou(box, [api.annToRLE(ann)], [0])[0, 0]) * 100
        by_bucket["all"].append(iou)
        by_bucket["small"] += [iou] if ann["area"] <= 1024 else []
        by_bucket["medium"] += [iou] if 1024 <= ann["area"] <= 9216 else []
        by_bucket["large"] += [iou] if ann["area"] >= 9216 else []
    return {key: float(np.mean(values)) for key, values in by_bucket.items()}


def test_gt_oracle_scores_100_with_boxes_and_clicks(coco):
    images, annotations, data = coco
    oracle = OraclePredictor(images, data, "gt")
    assert sum(ann["area"] >= 1 for ann in data["annotations"]) == 112  # crowd regions included (tests/data/README.md)
    for prompt, clicks, limit in (("box", 1, None), ("point", 1, None), ("point", 3, 8)):
        results = evaluate(oracle, images, annotations, prompt=prompt, clicks=clicks, limit=limit, progress=False)
        assert results["num_images"] == (limit or 12)  # the 12 fixture images
        first = {image["id"] for image in data["images"][: limit or 12]}
        assert results["num_objects"] == sum(a["area"] >= 1 and a["image_id"] in first for a in data["annotations"])
        assert results["clicks"] == (clicks if prompt == "point" else None)
        assert results["miou"] == pytest.approx(dict.fromkeys(("all", "large", "medium", "small"), 100.0), abs=1e-5)


def test_box_filled_oracle_matches_pycocotools(coco):
    images, annotations, data = coco
    results = evaluate(OraclePredictor(images, data, "box"), images, annotations, batch_size=7, progress=False)
    assert results["miou"] == pytest.approx(independent_box_filled_miou(data), rel=1e-9)


def test_detector_prompt_gt_oracle_scores_ap_100(coco):
    images, annotations, data = coco
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in data["annotations"]
        if not a["iscrowd"]
    ]
    oracle = OraclePredictor(images, data, "gt", detections)
    results = evaluate(oracle, images, annotations, prompt="detector", detections=detections, limit=8, progress=False)
    first = {image["id"] for image in data["images"][:8]}  # AP over the evaluated images only (8 of 12)
    assert results["num_images"] == 8 and results["num_detections"] == sum(d["image_id"] in first for d in detections)
    assert results["ap"] == pytest.approx(dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl"), 100.0))


def test_detector_prompt_box_filled_matches_cocoeval(person):
    images, annotations, data, detections_file = person
    detections = json.loads(detections_file.read_text())
    oracle = OraclePredictor(images, data, "box", detections)
    results = evaluate(
        oracle,
        images,
        annotations,
        prompt="detector",
        detections=detections_file,
        keep_predictions=True,
        progress=False,
    )
    assert results["num_images"] == 4 and results["num_detections"] == len(detections) == 118
    order = [image["id"] for image in data["images"]]
    in_order = sorted(detections, key=lambda d: order.index(d["image_id"]))  # images in order, file order within
    assert [p["score"] for p in results["predictions"]] == [d["score"] for d in in_order]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        sizes = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
        filled = [
            {
                "image_id": d["image_id"],
                "category_id": d["category_id"],
                "score": d["score"],
                "segmentation": mask_utils.frPyObjects(np.array([d["bbox"]], dtype=np.float64), *sizes[d["image_id"]])[
                    0
                ],
            }
            for d in detections
        ]
        evaluator = COCOeval(gt, gt.loadRes(filled), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    expected = [None if v < 0 else v * 100 for v in evaluator.stats[:6]]
    assert list(results["ap"].values()) == pytest.approx(expected, rel=1e-12)
    assert 0 < results["ap"]["AP"] < 100


def lvis_subset(tmp_path: Path, coco_images: Path, coco_data: dict, count: int = 4) -> tuple[Path, dict]:
    """A hand-made LVIS v1 file for a few COCO images, laid out as LVIS expects (images_dir/val2017/)."""
    (tmp_path / "val2017").mkdir()
    images = coco_data["images"][:count]
    for image in images:
        (tmp_path / "val2017" / image["file_name"]).symlink_to(coco_images / image["file_name"])
    ids = {image["id"] for image in images}
    anns = [dict(a) for a in coco_data["annotations"] if a["image_id"] in ids and not a["iscrowd"]]
    used = sorted({a["category_id"] for a in anns})
    lvis = {
        "images": [
            {
                "id": im["id"], "height": im["height"], "width": im["width"],
                "coco_url": f"http://images.cocodataset.org/val2017/{im['file_name']}",
                "neg_category_ids": [], "not_exhaustive_category_ids": [],
            }
            for im in images
        ],
        "annotations": anns,
        "categories": [{"id": c, "name": str(c), "frequency": "rcf"[i % 3]} for i, c in enumerate(used)],
    }  # fmt: skip
    return tmp_path, lvis


def test_lvis_layout_and_ap_with_the_lvis_package(tmp_path, coco):
    coco_images, _, data = coco
    images, lvis = lvis_subset(tmp_path, coco_images, data)
    oracle = OraclePredictor(coco_images, data, "gt")
    results = evaluate(oracle, images, lvis, prompt="box", dataset="lvis", progress=False)
    assert results["num_objects"] == len(lvis["annotations"])
    assert results["miou"]["all"] == pytest.approx(100.0, abs=1e-5)
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in lvis["annotations"]
    ]
    oracle = OraclePredictor(coco_images, data, "gt", detections)
    results = evaluate(oracle, images, lvis, prompt="detector", detections=detections, dataset="lvis", progress=False)
    assert set(results["ap"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"}
    assert all(value == pytest.approx(100.0) for value in results["ap"].values() if value is not None)
    assert results["ap"]["APr"] is not None and results["ap"]["AP"] is not None
    assert not hasattr(np, "float")  # the NumPy alias lvis needs is removed again


# ------------------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_batched_decoding_matches_one_prompt_at_a_time(coco, few_objects, tiny_checkpoint):
    """The official script predicts one object per call; batching must give the same IoUs."""
    images, _, _ = coco
    data = json.loads(few_objects.read_text())
    model = evitsam.load_model(tiny_checkpoint)
    results = evaluate(
        model, images, few_objects, prompt="point", clicks=2, limit=1, keep_predictions=True, progress=False
    )
    predictor = SamPredictor(model)
    expected = []
    for image in data["images"][:1]:
        objects = [a for a in data["annotations"] if a["image_id"] == image["id"] and a["area"] >= 1]
        if not objects:
            continue
        predictor.set_image(Image.open(images / image["file_name"]))
        for ann in objects:
            rle = mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"])
            gt = mask_utils.decode(mask_utils.merge(rle) if isinstance(rle, list) else rle) > 0
            clicker, mask = Clicker(gt), np.zeros_like(gt)
            for _ in range(2):
                clicker.click(mask)
                masks, scores, _ = predictor.predict(clicker.coords, clicker.labels, multimask_output=True)
                mask = masks[scores.argmax()]
            expected.append(mask_ious(mask[None], gt[None])[0])
    assert results["num_images"] == 1 and results["num_objects"] == len(expected) == 2
    assert [p["iou"] for p in results["predictions"]] == pytest.approx(expected, abs=0.05)
    assert any(iou > 0 for iou in expected)


def test_cli_writes_results_table_and_summary(tmp_path, coco, few_objects, tiny_checkpoint):
    images, _, _ = coco
    out = tmp_path / "results.json"
    result = runner.invoke(
        app, ["eval", "--images", str(images), "--annotations", str(few_objects), "--prompt", "box",
              "--checkpoint", str(tiny_checkpoint), "--limit", "3", "--output", str(out), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert list(saved) == ["dataset", "prompt", "clicks", "num_images", "num_objects", "miou", "model", "variant"]
    assert saved["num_images"] == 3 and saved["variant"] == "tiny"
    assert set(saved["miou"]) == {"all", "large", "medium", "small"} and 0 <= saved["miou"]["all"] <= 100
    assert result.stdout.startswith(f"COCO GT box mIoU: all={saved['miou']['all']:.3f}, large=")
    table = out.with_suffix(".md").read_text()
    assert table.startswith("| model | dataset | prompt |") and f"{saved['miou']['all']:.3f}" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "detector"], "needs detections"),
        (["--prompt", "point", "--clicks", "0"], "clicks must be"),
        (["--model", "l0", "--checkpoint", "x.pt"], "mutually exclusive"),
        (["--dataset", "voc"], "dataset must be one of"),
        (["--annotations", "missing.json"], "annotations file not found"),
        (["--images", "."], "images listed in the annotations are not in"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, coco, tiny_checkpoint, args, message):
    images, annotations, _ = coco
    base = {"--images": str(images), "--annotations": str(annotations), "--checkpoint": str(tiny_checkpoint)}
    for key, value in zip(args[::2], args[1::2]):
        base[key] = value
    if "--model" in base:
        base.pop("--checkpoint")
        base["--checkpoint"] = "x.pt"
    argv = ["eval", "--output", str(tmp_path / "r.json")] + [item for pair in base.items() for item in pair]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(tmp_path, coco, few_objects, tiny_checkpoint):
    """A real 2-process gloo job: 3 images dealt to 2 ranks, results identical to one process."""
    images, _, _ = coco
    common = ["eval", "--images", str(images), "--annotations", str(few_objects), "--prompt", "point", "--limit",
              "3", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--no-progress"]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers below: CPU kernels round differently with more threads
    try:
        single = runner.invoke(
            app, common + ["--output", str(tmp_path / "one.json"), "--predictions", str(tmp_path / "one_p.json")]
        )
    finally:
        torch.set_num_threads(threads)
    assert single.exit_code == 0, single.output
    env = dict(os.environ, OMP_NUM_THREADS="1")
    job = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "evitsam", *common,
         "--output", str(tmp_path / "two.json"), "--predictions", str(tmp_path / "two_p.json")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.stdout.count("mIoU") == 1  # only rank 0 reports
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one == two
    assert json.loads((tmp_path / "one_p.json").read_text()) == json.loads((tmp_path / "two_p.json").read_text())
