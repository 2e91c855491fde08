"""The paper's numbers: per-object mask IoU with size buckets, and detector-box mask AP.

mIoU follows the official code to the letter: IoU = |A and B| / (|A or B| + 1e-7) x 100 per
object, buckets by the annotation's ``area`` with both bounds inclusive (an object of area
exactly 32² is small *and* medium). AP is pycocotools' COCOeval (segm) for COCO and the ``lvis``
package's LVISEval (segm, at most 300 detections per image) for LVIS, in percent.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

SMALL_MAX = 32**2  # area <= 1024: small
LARGE_MIN = 96**2  # area >= 9216: large; medium is 1024 <= area <= 9216
COCO_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]
LVIS_AP_KEYS = COCO_AP_KEYS + ("APr", "APc", "APf")
LVIS_MAX_DETS = 300


class MissingDependencyError(ImportError, ValueError):
    """An optional package a requested evaluation needs is not installed (a ValueError for the CLI)."""


def require_lvis() -> None:
    """Fail early, before any image is processed, when LVIS AP cannot be computed."""
    import importlib.util

    if importlib.util.find_spec("lvis") is None:
        raise MissingDependencyError("LVIS AP needs the lvis package: pip install 'evitsam[lvis]'")


def mask_ious(predictions: np.ndarray, targets: np.ndarray) -> list[float]:
    """IoU in percent of each (H, W) bool prediction with its target, for (K, H, W) stacks."""
    if predictions.shape != targets.shape or predictions.ndim != 3:
        raise ValueError(f"predictions and targets must both be (K, H, W), got {predictions.shape}, {targets.shape}")
    inter = np.count_nonzero(predictions & targets, axis=(1, 2))
    union = np.count_nonzero(predictions | targets, axis=(1, 2))
    return [float(i / (u + 1e-7)) * 100 for i, u in zip(inter.tolist(), union.tolist())]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def miou_by_size(objects: Iterable[dict]) -> dict[str, float | None]:
    """``{all, large, medium, small}`` mean IoU of records with ``area`` and ``iou``; None if a bucket is empty."""
    objects = list(objects)
    return {
        "all": _mean([o["iou"] for o in objects]),
        "large": _mean([o["iou"] for o in objects if o["area"] >= LARGE_MIN]),
        "medium": _mean([o["iou"] for o in objects if SMALL_MAX <= o["area"] <= LARGE_MIN]),
        "small": _mean([o["iou"] for o in objects if o["area"] <= SMALL_MAX]),
    }


def _percent(value: float) -> float | None:
    """pycocotools/lvis report -1 for a metric with nothing to measure (e.g. no small objects)."""
    return None if value < 0 else float(value) * 100


def _segm_results(detections: Sequence[dict]) -> list[dict]:
    """Copies without ``bbox``, so areas and boxes come from the predicted masks (as the official code)."""
    if not detections:
        raise ValueError("no detections to evaluate for the chosen images")
    return [{k: v for k, v in det.items() if k != "bbox"} for det in detections]


def _ground_truth_copy(data: dict) -> dict:
    """Both evaluators rewrite ground-truth annotations in place; give them their own dicts."""
    if not isinstance(data.get("categories"), list):
        raise ValueError("annotations need a 'categories' list to compute AP")
    return {**data, "annotations": [dict(ann) for ann in data["annotations"]]}


def coco_mask_ap(data: dict, detections: Sequence[dict], image_ids: Iterable[int]) -> dict[str, float | None]:
    """COCOeval (segm, maxDets 1/10/100) of detections carrying RLE ``segmentation`` over ``image_ids``."""
    results = _segm_results(detections)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        ground_truth = COCO()
        ground_truth.dataset = _ground_truth_copy(data)
        ground_truth.createIndex()
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), "segm")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {key: _percent(value) for key, value in zip(COCO_AP_KEYS, evaluator.stats)}


@contextlib.contextmanager
def _numpy_float_alias():
    """lvis 0.5.3 (its last release) calls ``np.float``, gone since NumPy 1.24: alias it while it runs."""
    added = "float" not in np.__dict__
    if added:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if added:
            del np.float  # type: ignore[attr-defined]


def lvis_mask_ap(
    data: dict, detections: Sequence[dict], image_ids: Iterable[int], max_dets: int = LVIS_MAX_DETS
) -> dict[str, float | None]:
    """LVISEval (segm) of detections carrying RLE ``segmentation``, at most ``max_dets`` per image."""
    require_lvis()
    from lvis import LVIS, LVISEval, LVISResults

    class _InMemoryLVIS(LVIS):
        """LVIS from an already parsed dict (its constructor only reads files, and LVIS files are hundreds of MB)."""

        def __init__(self, dataset: dict) -> None:
            self.logger = logging.getLogger("lvis.lvis")
            self.dataset = dataset
            self._create_index()

    results = _segm_results(detections)
    lvis_logger = logging.getLogger("lvis")
    level = lvis_logger.level
    lvis_logger.setLevel(logging.ERROR)  # "Assuming user provided the results in correct format."
    try:
        with warnings.catch_warnings(), _numpy_float_alias():
            warnings.simplefilter("ignore", DeprecationWarning)  # lvis calls the deprecated Logger.warn
            ground_truth = _InMemoryLVIS(_ground_truth_copy(data))
            evaluator = LVISEval(ground_truth, LVISResults(ground_truth, results, max_dets), "segm")
            evaluator.params.img_ids = sorted(image_ids)
            evaluator.run()
    finally:
        lvis_logger.setLevel(level)
    metrics = evaluator.get_results()
    return {key: _percent(metrics[key]) for key in LVIS_AP_KEYS}
