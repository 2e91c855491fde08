"""MaskGenerator ("segment everything") against the official generator and SAM's algorithm.

Two oracles, both on seeded random weights:
* the official EfficientViT-SAM generator on the same L0 weights: model + algorithm end to end;
* the same official algorithm driven by *our* predictor on the tiny variant (fast): crops,
  small-region cleanup and output modes, where the model is not what is being tested.
Random weights give tiny logits that no mask survives SAM's filters with; ``for_amg_`` scales the
mask and IoU heads so that a realistic share of masks passes (same change on both sides).
"""

from __future__ import annotations

import functools
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import load_photo, randomize_
from typer.testing import CliRunner

from evitsam import MaskGenerator, SamPredictor, build_model
from evitsam.cli import app
from evitsam.everything.mask_ops import decode_rle, encode_rle, masks_to_boxes, rle_area, uncompressed_rle

official_zoo = pytest.importorskip("efficientsam.sam_model_zoo", reason="install the [test] extra")
from efficientsam.models.efficientvit.sam import EfficientViTSamAutomaticMaskGenerator  # noqa: E402
from efficientsam.segment_anything.utils import amg as sam_amg  # noqa: E402

PIXEL_AGREEMENT = 0.9999
NO_FILTERS = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


@torch.no_grad()
def for_amg_(model: torch.nn.Module) -> torch.nn.Module:
    """Logits of a trained model's magnitude (tens) and IoU predictions around SAM's 0.88 threshold."""
    for mlp in model.mask_decoder.output_hypernetworks_mlps:
        mlp.layers[2].weight.mul_(100)
        mlp.layers[2].bias.mul_(100)
    model.mask_decoder.iou_prediction_head.layers[2].bias.add_(0.88)
    return model


@functools.cache
def l0_pair():
    reference = official_zoo.create_efficientvit_sam_model("efficientvit-sam-l0", pretrained=False).eval()
    randomize_(reference, seed=0)
    ours = build_model("l0").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return for_amg_(reference), for_amg_(ours)


@functools.cache
def tiny_predictor() -> SamPredictor:
    return SamPredictor(for_amg_(randomize_(build_model("tiny").eval(), seed=1)))


def sam_algorithm(predictor: SamPredictor, **kwargs) -> EfficientViTSamAutomaticMaskGenerator:
    """SAM's generator (via the official subclass) running on our predictor."""
    generator = EfficientViTSamAutomaticMaskGenerator(predictor.model, **kwargs)
    generator.predictor = predictor
    return generator


def by_point(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (tuple(r["point_coords"][0]), -r["predicted_iou"]))


def assert_same_records(reference: list[dict], ours: list[dict]) -> None:
    assert len(ours) == len(reference)
    for ref, out in zip(by_point(reference), by_point(ours)):
        assert out["point_coords"] == ref["point_coords"]
        assert out["predicted_iou"] == pytest.approx(ref["predicted_iou"], abs=1e-4)
        assert out["stability_score"] == pytest.approx(ref["stability_score"], abs=1e-3, nan_ok=True)
        assert out["crop_box"] == ref["crop_box"]
        assert np.abs(np.subtract(out["bbox"], ref["bbox"])).max() <= 1
        assert abs(out["area"] - ref["area"]) <= (1 - PIXEL_AGREEMENT) * out["segmentation"].size
        assert (out["segmentation"] == ref["segmentation"]).mean() >= PIXEL_AGREEMENT
        assert type(out["segmentation"]) is type(ref["segmentation"])
        assert all(type(value) is int for value in out["bbox"] + out["crop_box"])  # pixels, as SAM's bbox


@pytest.mark.slow
def test_every_record_matches_official_without_filters():
    reference, ours = l0_pair()
    image = load_photo("evit_cat.jpg")
    expected = EfficientViTSamAutomaticMaskGenerator(reference, points_per_side=2, **NO_FILTERS).generate(image)
    records = MaskGenerator(ours, points_per_side=2, points_per_batch=3, **NO_FILTERS).generate(image)
    assert len(records) == 3 * 4
    assert_same_records(expected, records)


@pytest.mark.slow
def test_kept_set_matches_official_with_default_filters():
    reference, ours = l0_pair()
    image = load_photo("groceries.jpg", portrait=True)
    expected = EfficientViTSamAutomaticMaskGenerator(reference, points_per_side=3).generate(image)
    records = MaskGenerator(SamPredictor(ours), points_per_side=3).generate(image)
    assert 0 < len(records) < 3 * 9  # the filters and NMS did remove masks
    assert [r["predicted_iou"] for r in records] == sorted((r["predicted_iou"] for r in records), reverse=True)
    assert_same_records(expected, records)


@pytest.mark.slow
def test_crops_and_small_region_cleanup_follow_sam():
    predictor = tiny_predictor()
    image = load_photo("dog.jpg")
    kwargs = dict(points_per_side=2, crop_n_layers=1, crop_n_points_downscale_factor=2, min_mask_region_area=400)
    kwargs |= dict(pred_iou_thresh=0.5, stability_score_thresh=0.5)
    expected = sam_algorithm(predictor, **kwargs).generate(image)
    generator = MaskGenerator(predictor, **kwargs)
    records = generator.generate(image)
    assert generator.points_decoded == 4 + 4 * 1  # the image, then four crops with a 1x1 grid
    assert records
    assert_same_records(expected, records)


@pytest.mark.slow
def test_output_modes_match_sam():
    predictor = tiny_predictor()
    image = load_photo("evit_cat.jpg")
    binary = by_point(MaskGenerator(predictor, points_per_side=2, **NO_FILTERS).generate(image))
    for mode in ("coco_rle", "uncompressed_rle"):
        expected = sam_algorithm(predictor, points_per_side=2, output_mode=mode, **NO_FILTERS).generate(image)
        records = MaskGenerator(predictor, points_per_side=2, output_mode=mode, **NO_FILTERS).generate(image)
        assert len(records) == len(expected) == len(binary) == 12
        for ref, out, mask in zip(by_point(expected), by_point(records), binary):
            assert out["segmentation"]["size"] == list(image.shape[:2])
            np.testing.assert_array_equal(decode_rle([out["segmentation"]])[0], mask["segmentation"])
            if out["segmentation"] == ref["segmentation"]:
                continue
            # tiny float differences may flip a pixel: then the RLE must still be SAM's RLE of our mask
            sam_rle = sam_amg.mask_to_rle_pytorch(torch.from_numpy(mask["segmentation"])[None])[0]
            assert out["segmentation"] == (sam_amg.coco_encode_rle(sam_rle) if mode == "coco_rle" else sam_rle)


def test_mask_utilities_match_sam():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 37, 53, generator=generator) > 0.7
    masks[0] = False
    masks[1, :, :] = True
    masks[2] = False
    masks[2, 5:9, 40] = True
    torch.testing.assert_close(masks_to_boxes(masks), sam_amg.batched_mask_to_box(masks))
    for mask, rle in zip(masks, encode_rle(masks)):
        sam_rle = sam_amg.mask_to_rle_pytorch(mask[None])[0]
        assert uncompressed_rle(mask.numpy()) == sam_rle
        assert rle == sam_amg.coco_encode_rle(sam_rle)
    np.testing.assert_array_equal(decode_rle(encode_rle(masks)), masks.numpy())


@pytest.mark.slow
def test_coverage_sampling_decodes_fewer_points_and_keeps_most_masks():
    predictor = tiny_predictor()
    image = load_photo("evit_cat.jpg")
    full_generator = MaskGenerator(predictor, points_per_side=4, **NO_FILTERS)
    full = full_generator.generate(image)
    fast_generator = MaskGenerator(predictor, points_per_side=4, sampling="coverage", **NO_FILTERS)
    fast = fast_generator.generate(image)
    assert full_generator.points_decoded == 16
    assert 4 <= fast_generator.points_decoded < 16
    assert 0 < len(fast) <= len(full)
    # The same point decoded in another batch may differ in the last float bits (batched GEMM kernels
    # split work by batch size), so a record is the full grid's own if point and predicted IoU agree.
    full_masks = [(tuple(r["point_coords"][0]), r["predicted_iou"]) for r in full]
    found = [
        any(point == tuple(r["point_coords"][0]) and abs(iou - r["predicted_iou"]) <= 1e-4 for point, iou in full_masks)
        for r in fast
    ]
    assert np.mean(found) >= 0.5  # most of its masks are the full grid's own


def test_prompt_workers_give_the_single_thread_records_and_leave_threads_alone():
    """Chunks decoded and resized on worker threads come back in order: the records of one thread."""
    predictor = tiny_predictor()
    image = load_photo("evit_cat.jpg")
    kwargs = dict(
        points_per_side=6, points_per_batch=20, pred_iou_thresh=0.5, stability_score_thresh=0.5, box_nms_thresh=1.0
    )
    expected = MaskGenerator(predictor, workers=1, **kwargs).generate(image)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's setting, which the workers (one intra-op thread each) must not change
    try:
        records = MaskGenerator(predictor, workers=3, **kwargs).generate(image)
        started_later = []
        worker = threading.Thread(target=lambda: started_later.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert torch.get_num_threads() == 2 and started_later == [2]
    finally:
        torch.set_num_threads(threads)
    assert len(expected) > 3
    assert [r["point_coords"] for r in records] == [r["point_coords"] for r in expected]
    assert_same_records(expected, records)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(workers=0), "workers must be an integer >= 1"),
        (dict(points_per_side=None), "exactly one of points_per_side and point_grids"),
        (dict(point_grids=[np.zeros((4, 2))]), "exactly one of points_per_side and point_grids"),
        (dict(points_per_side=0), "points_per_side must be an integer >= 1"),
        (dict(points_per_batch=0), "points_per_batch must be an integer >= 1"),
        (dict(pred_iou_thresh=1.5), r"pred_iou_thresh must be a number in \[0, 1\]"),
        (dict(output_mode="png"), "output_mode must be one of"),
        (dict(sampling="random"), "sampling must be one of"),
        (dict(points_per_side=None, point_grids=[np.full((3, 2), 2.0)]), r"\(x, y\) in \[0, 1\]"),
    ],
)
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskGenerator(tiny_predictor(), **kwargs)
    with pytest.raises(ValueError, match="model must be an EfficientViTSam or a SamPredictor"):
        MaskGenerator("l0")


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(tiny_predictor().model.state_dict(), path)
    return path


def run_cli(*args: object):
    return CliRunner().invoke(app, ["everything", *map(str, args)])


@pytest.mark.slow
def test_cli_folder_writes_sam_records_skips_bad_files_and_resumes(tiny_checkpoint, shared_data, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("evit_cat.jpg", "dog.jpg"):
        shutil.copy(shared_data / "images" / name, photos / name)
    (photos / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    args = (photos, "--output", out, "--checkpoint", tiny_checkpoint, "--points-per-side", 2, "--overlay")
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert "warning: skipping" in result.stderr and "broken.png" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["failed"] == ["broken.png"] and summary["skipped"] == []
    assert sorted(p.name for p in out.iterdir()) == [
        "dog.json", "dog_overlay.jpg", "evit_cat.json", "evit_cat_overlay.jpg"
    ]  # fmt: skip

    image = load_photo("evit_cat.jpg")
    expected = MaskGenerator(tiny_predictor(), points_per_side=2, output_mode="coco_rle").generate(image)
    written = json.loads((out / "evit_cat.json").read_text())
    assert written["image"] == {"file_name": "evit_cat.jpg", "height": 480, "width": 640}
    assert len(written["annotations"]) == len(expected) > 0
    for got, want in zip(written["annotations"], expected):
        assert got["point_coords"] == want["point_coords"] and got["bbox"] == want["bbox"]
        agreement = (decode_rle([got["segmentation"]]) == decode_rle([want["segmentation"]])).mean()
        assert agreement >= PIXEL_AGREEMENT
    with Image.open(out / "evit_cat_overlay.jpg") as overlay:
        assert overlay.size == (640, 480)
        assert np.abs(np.asarray(overlay).astype(int) - image).mean() > 5, "no masks drawn"

    # Resume: finished images are not redone; an image without its masks file is.
    stamp = (out / "evit_cat.json").stat().st_mtime_ns
    (out / "dog.json").unlink()
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["skipped"] == ["evit_cat.jpg"] and [d["image"] for d in summary["done"]] == ["dog.jpg"]
    assert (out / "evit_cat.json").stat().st_mtime_ns == stamp
    assert (out / "dog.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_cli_png_format_writes_one_png_per_mask(tiny_checkpoint, shared_data, tmp_path):
    photo = shared_data / "images" / "evit_cat.jpg"
    result = run_cli(photo, "-o", tmp_path, "--checkpoint", tiny_checkpoint, "--points-per-side", 2, "--format", "png")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "evit_cat" / "masks.json").read_text())
    assert meta["annotations"] and all("segmentation" not in a for a in meta["annotations"])
    for record in meta["annotations"]:
        with Image.open(tmp_path / "evit_cat" / record["file"]) as png:
            mask = np.asarray(png)
        assert mask.shape == (480, 640) and set(np.unique(mask)) <= {0, 255}
        assert int((mask > 0).sum()) == record["area"]


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_other_runtimes_give_the_torch_records(runtime, tmp_path, monkeypatch):
    monkeypatch.setenv("EVITSAM_HOME", str(tmp_path))  # exported graphs go to a private cache
    model, image = tiny_predictor().model, load_photo("evit_cat.jpg")
    want = MaskGenerator(model, points_per_side=3, **NO_FILTERS).generate(image)
    generator = MaskGenerator(model, points_per_side=3, runtime=runtime, **NO_FILTERS)
    assert generator.predictor.runtime == runtime
    got = generator.generate(image)
    assert len(got) == len(want) == 27  # 3x3 points, 3 masks each, no filter
    for g, w in zip(got, want):
        assert g["point_coords"] == w["point_coords"]
        assert abs(g["predicted_iou"] - w["predicted_iou"]) <= 1e-3
        assert (g["segmentation"] == w["segmentation"]).mean() >= 0.995
    with pytest.raises(ValueError, match="belong to the SamPredictor"):
        MaskGenerator(tiny_predictor(), runtime=runtime)


@pytest.mark.slow
def test_cli_runs_everything_on_openvino(tiny_checkpoint, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("EVITSAM_HOME", str(tmp_path / "home"))
    photo = shared_data / "images" / "evit_cat.jpg"
    args = (photo, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "--points-per-side", 2)
    result = run_cli(*args, "--runtime", "openvino")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["runtime"], summary["precision"]) == ("openvino", "fp32")
    written = json.loads((tmp_path / "out" / "evit_cat.json").read_text())["annotations"]
    expected = MaskGenerator(tiny_predictor(), points_per_side=2).generate(load_photo("evit_cat.jpg"))
    points = [r["point_coords"] for r in expected]
    assert written and np.mean([a["point_coords"] in points for a in written]) >= 0.5  # filters near thresholds


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jpg", "-o", "out"], "missing.jpg"),
        (["{photo}", "-o", "out", "--runtime", "tensorrt"], "runtime must be one of"),
        (["{photo}", "-o", "out", "--format", "tiff"], "--format 'tiff': expected one of coco, json, png"),
        (["{photo}", "-o", "out", "--model", "l0", "--checkpoint", "x.pt"], "mutually exclusive"),
        (["{empty}", "-o", "out"], "no image files in folder"),
        (["{photo}", "-o", "out", "--pred-iou-thresh", "1.5"], "--pred-iou-thresh 1.5: expected a number in [0, 1]"),
    ],
)
def test_cli_errors_are_one_line(args, message, shared_data, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [a.format(photo=shared_data / "images" / "evit_cat.jpg", empty=tmp_path / "empty") for a in args]
    result = run_cli(*args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_batch_where_no_mask_passes_the_iou_filter_is_skipped():
    """Random heads predict IoUs near 0: nothing passes 0.88, so no mask is upscaled and none is returned."""
    model = randomize_(build_model("tiny").eval(), seed=2)
    generator = MaskGenerator(model, points_per_side=3, points_per_batch=4)
    assert generator.generate(load_photo("evit_cat.jpg")) == []
    assert generator.points_decoded == 9


@torch.no_grad()
@pytest.mark.parametrize("input_size", [(768, 1024), (1024, 680), (1024, 1024), (1024, 3)])
def test_masks_skip_the_padding_rows_and_columns_exactly(input_size):
    """Everything computes low-res logits only where post-processing reads them: same masks."""
    model = randomize_(build_model("l0"), seed=5).eval()
    generator = torch.Generator().manual_seed(6)
    embedding = torch.randn(1, 256, 64, 64, generator=generator)
    decoder = model.fast_decoder()
    state = decoder.attend(embedding, torch.rand(3, 1, 2, generator=generator) * 1000, torch.ones(3, 1))
    full = decoder.mask_logits(state, slice(1, None))
    extent = model.low_res_extent(input_size)
    part = decoder.mask_logits(state, slice(1, None), extent)
    assert part.shape[-2:] == extent and extent[0] % 4 == 0 and extent[1] % 4 == 0
    assert extent[0] < 256 or extent[1] < 256 or input_size == (1024, 1024)
    torch.testing.assert_close(part, full[..., : extent[0], : extent[1]], rtol=0, atol=0)
    original = (input_size[0] * 3 // 4 or 1, input_size[1] * 3 // 4 or 1)
    torch.testing.assert_close(
        model.postprocess_masks(part, input_size, original), model.postprocess_masks(full, input_size, original)
    )
    with pytest.raises(ValueError, match="extent must be multiples of 4"):
        decoder.mask_logits(state, slice(1, None), (6, 8))


def test_areas_of_many_masks():
    """pycocotools' area() overflows at 256 RLEs; every-point output without filters has thousands."""
    masks = torch.zeros(600, 9, 7, dtype=torch.bool)
    for i in range(600):
        masks[i, : i % 9 + 1, : i % 7 + 1] = True
    assert rle_area(encode_rle(masks)) == [(i % 9 + 1) * (i % 7 + 1) for i in range(600)]
    assert rle_area([]) == []
