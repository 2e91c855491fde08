"""``evitsam label``: one process and two (torchrun, gloo) give the same COCO file, a killed rank resumes to
the same bytes, unreadable images are listed, merging is idempotent, the masks are the predictor's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from support import load_photo
from typer.testing import CliRunner

import evitsam
from evitsam.cli import app
from evitsam.labelling import load_collection

runner = CliRunner()
PHOTOS = ("dog.jpg", "evit_cat.jpg", "groceries.jpg", "truck.jpg", "evit_indoor.jpg")
LONG_SIDE = 96
# Small chunks and batches: several units of work per process, batches of two images through the encoder.
FAST = ["--chunk-size", "2", "--batch-size", "2", "--device", "cpu", "--no-progress"]


def _boxes(rng: np.random.Generator, width: int, height: int, count: int) -> list[list[float]]:
    boxes = []
    for _ in range(count):
        x0, y0 = rng.uniform(0, width * 0.6), rng.uniform(0, height * 0.6)
        boxes.append(
            [round(x0, 2), round(y0, 2), round(rng.uniform(8, width - x0), 2), round(rng.uniform(8, height - y0), 2)]
        )
    return boxes


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    """A folder of 9 small photos (one in a subfolder, one PNG) and an unreadable file, with detections."""
    root = tmp_path_factory.mktemp("label")
    images = root / "images"
    (images / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    detections = []
    names = []
    for i, photo in enumerate(PHOTOS * 2):
        if i == 9:
            break
        picture = Image.fromarray(load_photo(photo, portrait=i >= 5))
        picture.thumbnail((LONG_SIDE, LONG_SIDE))
        name = f"more/{i}.png" if i == 4 else f"{i}_{photo.replace('.jpg', '.png' if i == 2 else '.jpg')}"
        picture.save(images / name)
        names.append(name)
        for box in _boxes(rng, picture.width, picture.height, 1 + i % 3):
            detections.append(
                {"file_name": name, "bbox": box, "category_id": 1 + i % 2, "score": round(rng.uniform(0.3, 1), 3)}
            )
    (images / "9_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 a truncated jpeg")
    detections.append({"file_name": "9_broken.jpg", "bbox": [1, 1, 5, 5], "category_id": 1, "score": 0.9})
    # Detections may name their image by id too (folder images are numbered 1, 2, ... in sorted order).
    ids = {entry.file_name: entry.id for entry in load_collection(images).images}
    for det in detections[::3]:
        det["image_id"] = ids[det.pop("file_name")]
    (root / "detections.json").write_text(json.dumps(detections))
    return {"root": root, "images": images, "detections": root / "detections.json", "count": 10}


def _args(job: dict, output: Path, *extra: str) -> list[str]:
    return ["label", str(job["images"]), "--boxes", str(job["detections"]), "--output", str(output), *FAST, *extra]


def _run_here(args: list[str]):
    """In this process, on one thread, as every torchrun worker runs (CPU kernels round by thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return runner.invoke(app, args)
    finally:
        torch.set_num_threads(threads)


def _torchrun(args: list[str], **popen) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "evitsam"]
    return subprocess.Popen(command + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)


@pytest.fixture(scope="module")
def reference(job) -> dict:
    """One uninterrupted single-process run (no image-reading workers)."""
    output = job["root"] / "one" / "labels.json"
    result = _run_here(_args(job, output, "--workers", "0"))
    assert result.exit_code == 0, result.output
    return {"output": output, "summary": json.loads(result.stdout), "bytes": output.read_bytes()}


@pytest.mark.slow
def test_two_processes_write_the_same_coco_file_as_one(job, reference):
    output = job["root"] / "two" / "labels.json"
    process = _torchrun(_args(job, output, "--workers", "1"))
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert output.read_bytes() == reference["bytes"]
    assert summary["processes"] == 2 and summary["processed"] == job["count"]
    assert (summary["images"], summary["labelled"], summary["failed"]) == (10, 9, 1)

    failures = json.loads((job["root"] / "two" / "labels.failures.json").read_text())
    assert [f["file_name"] for f in failures] == ["9_broken.jpg"] and "ImageReadError" in failures[0]["error"]
    coco = COCO(str(output))  # the file loads as a COCO instances file...
    ids = {entry.file_name: entry.id for entry in load_collection(job["images"]).images}
    assert sorted(coco.getImgIds()) == sorted(i for name, i in ids.items() if name != "9_broken.jpg")
    assert sorted(coco.getCatIds()) == [1, 2]
    results = coco.loadRes(json.loads(output.read_text())["annotations"])  # ...and its annotations as results
    assert len(results.getAnnIds()) == len(coco.getAnnIds())

    detections = json.loads(job["detections"].read_text())
    annotations = coco.loadAnns(coco.getAnnIds())
    assert sorted(a["detection_id"] for a in annotations) == list(range(len(detections) - 1))  # all but the broken
    for annotation in annotations:
        det = detections[annotation["detection_id"]]
        image = coco.loadImgs(annotation["image_id"])[0]
        assert image["file_name"] == det.get("file_name", image["file_name"]) and annotation["box"] == det["bbox"]
        assert annotation["category_id"] == det["category_id"] and annotation["box_score"] == det["score"]
        assert annotation["score"] == pytest.approx(det["score"] * annotation["predicted_iou"], abs=1e-12)
        mask = coco.annToMask(annotation)
        assert mask.shape == (image["height"], image["width"]) and int(mask.sum()) == annotation["area"]


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun worker ``rank`` (read from the workers' environments)."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


@pytest.mark.slow
def test_a_rank_killed_mid_run_and_a_rerun_give_the_same_file(job, reference):
    output = job["root"] / "killed" / "labels.json"
    parts = output.with_suffix(".parts")
    process = _torchrun(_args(job, output, "--workers", "1"))
    deadline = time.monotonic() + 120
    killed = None
    while time.monotonic() < deadline and process.poll() is None:
        pid = _rank_pid(process.pid, 1)
        if pid is not None and parts.is_dir() and any(p.name.startswith("chunk-") for p in parts.iterdir()):
            os.kill(pid, signal.SIGKILL)
            killed = pid
            break
        time.sleep(0.005)
    process.communicate(timeout=120)
    assert killed is not None, "the job ended before a rank could be killed"
    assert process.returncode != 0 and not output.exists()
    chunks = [p for p in parts.iterdir() if p.name.startswith("chunk-")]
    assert 0 < len(chunks) < 5  # stopped mid-run: some chunks done, some not

    rerun = _run_here(_args(job, output, "--workers", "0"))  # another process count: the same chunks
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)
    assert 0 < summary["resumed"] < job["count"] and summary["processed"] + summary["resumed"] == job["count"]
    assert output.read_bytes() == reference["bytes"]


@pytest.mark.slow
def test_merge_is_idempotent_and_needs_every_chunk(job, reference, tmp_path):
    parts = reference["output"].with_suffix(".parts")
    for _ in range(2):
        merged = runner.invoke(app, ["label", "--merge", str(parts)])
        assert merged.exit_code == 0, merged.output
        assert reference["output"].read_bytes() == reference["bytes"]
    elsewhere = tmp_path / "copy.json"
    assert runner.invoke(app, ["label", "--merge", str(parts), "--output", str(elsewhere)]).exit_code == 0
    assert elsewhere.read_bytes() == reference["bytes"]
    assert json.loads((tmp_path / "copy.failures.json").read_text())[0]["file_name"] == "9_broken.jpg"

    partial = tmp_path / "partial.parts"
    partial.mkdir()
    for path in parts.iterdir():
        if path.name != "chunk-00000001.json":
            (partial / path.name).write_bytes(path.read_bytes())
    incomplete = runner.invoke(app, ["label", "--merge", str(partial), "--output", str(tmp_path / "p.json")])
    assert incomplete.exit_code == 2 and "1 of 5 chunks are not labelled yet" in incomplete.stderr
    assert not (tmp_path / "p.json").exists()


@pytest.mark.slow
def test_a_rerun_skips_finished_chunks_and_refuses_another_job(job, reference):
    again = _run_here(_args(job, reference["output"], "--workers", "0"))
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["processed"] == 2 and summary["resumed"] == 8  # only the chunk with the unreadable image
    assert reference["output"].read_bytes() == reference["bytes"]
    other = runner.invoke(app, _args(job, reference["output"], "--min-score", "0.5"))
    assert other.exit_code == 2 and "different labelling job" in other.stderr and "min_score" in other.stderr


@pytest.mark.slow
def test_masks_and_scores_are_the_predictors(job, reference):
    """The batched, mean-padded encoder path gives the masks of ``SamPredictor`` (best of three, box prompt)."""
    predictor = evitsam.SamPredictor(evitsam.load_model("nano").eval())
    coco = COCO(str(reference["output"]))
    for image in coco.loadImgs(coco.getImgIds()):
        predictor.set_image(np.asarray(Image.open(job["images"] / image["file_name"]).convert("RGB")))
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            x, y, w, h = annotation["box"]
            masks, scores, _ = predictor.predict(box=np.array([x, y, x + w, y + h]), multimask_output=True)
            best = int(np.argmax(scores))
            ours = coco.annToMask(annotation).astype(bool)
            union = np.count_nonzero(ours | masks[best])
            assert np.count_nonzero(ours & masks[best]) >= 0.99 * union
            assert annotation["predicted_iou"] == pytest.approx(float(scores[best]), abs=1e-4)


@pytest.mark.slow
def test_coco_images_list_carries_categories_and_everything_mode(job, tmp_path):
    names = sorted(p.name for p in job["images"].glob("*.jpg") if "broken" not in p.name)[:2]
    categories = [{"id": 7, "name": "thing"}, {"id": 9, "name": "other"}]
    listing = {"images": [{"id": 100 + i, "file_name": n} for i, n in enumerate(names)], "categories": categories}
    (job["images"] / "list.json").write_text(json.dumps(listing))
    try:
        dets = [{"image_id": 101, "bbox": [2, 3, 30, 40], "category_id": 9, "score": 0.8},
                {"image_id": 100, "bbox": [1, 1, 20, 20], "category_id": 7, "score": 0.2}]  # fmt: skip
        (tmp_path / "d.json").write_text(json.dumps(dets))
        boxed = runner.invoke(app, ["label", str(job["images"] / "list.json"), "--boxes", str(tmp_path / "d.json"),
                                    "--min-score", "0.5", "-o", str(tmp_path / "b.json"), *FAST])  # fmt: skip
        assert boxed.exit_code == 0, boxed.output
        assert json.loads(boxed.stdout)["detections"] == {"detections": 2, "below_min_score": 1, "unmatched": 0}
        data = json.loads((tmp_path / "b.json").read_text())
        assert data["categories"] == categories and [a["image_id"] for a in data["annotations"]] == [101]

        result = runner.invoke(app, ["label", str(job["images"] / "list.json"), "--everything", "--points-per-side",
                                     "4", "-o", str(tmp_path / "e.json"), *FAST])  # fmt: skip
        assert result.exit_code == 0, result.output
    finally:
        (job["images"] / "list.json").unlink()
    coco = COCO(str(tmp_path / "e.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["object"]
    assert sorted(coco.getImgIds()) == [100, 101] and coco.getAnnIds()
    for annotation in coco.loadAnns(coco.getAnnIds()):
        assert annotation["score"] == annotation["predicted_iou"] and annotation["category_id"] == 1
        assert coco.annToMask(annotation).sum() == annotation["area"] > 0
        assert annotation["bbox"] == mask_utils.toBbox(annotation["segmentation"]).tolist()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "exactly one of --boxes"),
        (["--everything", "--boxes", "DETS"], "exactly one of --boxes"),
        (["--boxes", "NOMATCH"], "none of the 1 detections"),
        (["--boxes", "DETS", "--chunk-size", "0"], "chunk_size"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(job, tmp_path, extra, message):
    (tmp_path / "nomatch.json").write_text(json.dumps([{"file_name": "absent.jpg", "bbox": [0, 0, 4, 4]}]))
    swap = {"DETS": str(job["detections"]), "NOMATCH": str(tmp_path / "nomatch.json")}
    args = ["label", str(job["images"]), "-o", str(tmp_path / "x.json"), *[swap.get(a, a) for a in extra]]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_a_chunk_size_that_leaves_processes_idle_gets_a_notice(job, tmp_path, monkeypatch):
    """10 images in one chunk of 32 for 4 processes: three would idle (the job itself runs here on one)."""
    import evitsam.distributed

    monkeypatch.setattr(evitsam.distributed, "init_distributed", lambda device: (0, 4, torch.device("cpu")))
    args = ["label", str(job["images"]), "--boxes", str(job["detections"]), "--device", "cpu", "--no-progress"]
    idle = _run_here([*args, "--output", str(tmp_path / "a.json"), "--chunk-size", "32"])
    assert idle.exit_code == 0, idle.output
    assert "notice: 10 images make 1 chunk(s) of --chunk-size 32 for 4 processes, so 3 of them" in idle.stderr
    assert "--chunk-size 3 gives each a share" in idle.stderr
    shared = _run_here([*args, "--output", str(tmp_path / "b.json"), "--chunk-size", "2"])
    assert shared.exit_code == 0, shared.output
    assert "nothing to do" not in shared.stderr


def test_processes_claim_chunks_as_they_free_up():
    """Two loaders on one counter: each chunk is claimed once, by whichever asks first, and only when asked."""
    from evitsam.distributed import SharedCounter
    from evitsam.labelling.runner import _ClaimedBatches

    todo = [0, 2, 3, 5]  # chunks 1 and 4 were finished by an earlier run
    counter = SharedCounter("claims")
    fast, slow = (iter(_ClaimedBatches(todo, counter, 3, 17, 2)) for _ in range(2))
    assert counter._next == 0  # nothing claimed before a loader asks
    taken = [next(fast), next(fast), next(slow), next(fast), next(fast)]
    assert taken == [[(0, 0), (0, 1)], [(0, 2)], [(2, 6), (2, 7)], [(3, 9), (3, 10)], [(3, 11)]]
    assert list(slow) == [[(2, 8)], [(5, 15), (5, 16)]]  # the last chunk holds the collection's last 2 images
    assert list(fast) == []
    assert counter._next == 6  # one claim past the end per loader
