"""Zero-shot evaluation over a dataset, on one process or sharded across ``torchrun`` processes.

Images are dealt to ranks round-robin (rank r takes images r, r + W, ...), each rank runs the
protocol on its share, and the per-object records are gathered and put back in dataset order,
so the numbers are those of a single process on the same device and thread count. (The official
script pads its sampler, which evaluates a few images twice when the image count is not a
multiple of the world size.)
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm

from ..distributed import broadcast, gather_lists, rank_and_world
from .dataset import EvalDataset, load_detections
from .metrics import coco_mask_ap, lvis_mask_ap, miou_by_size, require_lvis
from .protocol import as_predictor, box_objects, detector_masks, point_objects

PROMPTS = ("box", "point", "detector")
DEFAULT_BATCH_SIZE = 64  # prompts per decoder call


def check_settings(
    dataset: str, prompt: str, clicks: int, has_detections: bool, limit: int | None, batch_size: int
) -> None:
    """Validate the run's settings before anything heavy (model, images) is touched."""
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
    if not isinstance(clicks, int) or clicks < 1:
        raise ValueError(f"clicks must be an integer >= 1, got {clicks!r}")
    if prompt == "detector" and not has_detections:
        raise ValueError("prompt 'detector' needs detections: a COCO results file of detector boxes")
    if prompt != "detector" and has_detections:
        raise ValueError(f"detections are only used with prompt 'detector', not {prompt!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1 (number of images) or None, got {limit!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if prompt == "detector" and dataset == "lvis":
        require_lvis()


def evaluate(
    model_or_predictor: Any,
    images_dir: str | os.PathLike,
    annotations: str | os.PathLike | dict,
    prompt: str = "box",
    clicks: int = 1,
    detections: str | os.PathLike | list | None = None,
    dataset: str = "coco",
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    keep_predictions: bool = False,
) -> dict:
    """Evaluate a model with the paper's zero-shot protocol; returns the RESULTS dict.

    ``model_or_predictor``: an :class:`~evitsam.EfficientViTSam` or anything with the
    ``SamPredictor`` interface. ``prompt``: ``"box"`` (ground-truth boxes), ``"point"``
    (``clicks`` simulated clicks) or ``"detector"`` (boxes from ``detections``, a COCO results
    file; AP with pycocotools, or ``lvis`` for ``dataset="lvis"``). ``limit`` evaluates the
    first N images only. Under ``torchrun`` with a process group started (see
    :func:`evitsam.distributed.init_distributed`) the images are sharded across processes and
    every process returns the same dict (``predictions`` only on rank 0).

    Result keys: ``dataset, prompt, clicks, num_images`` and ``num_objects`` + ``miou`` (``all,
    large, medium, small``, percent) or ``num_detections`` + ``ap`` (``AP, AP50, AP75, APs, APm,
    APl``, + ``APr, APc, APf`` for LVIS, percent); a metric with nothing to measure is None.
    ``keep_predictions`` adds ``predictions``: per-object IoU records, or the detections with
    their RLE masks (COCO results format).
    """
    check_settings(dataset, prompt, clicks, detections is not None, limit, batch_size)
    data = EvalDataset(images_dir, annotations, dataset)
    grouped = load_detections(detections) if detections is not None else None
    return run_evaluation(
        model_or_predictor, data, prompt, clicks, grouped, limit, batch_size, progress, keep_predictions
    )


def run_evaluation(
    model_or_predictor: Any,
    data: EvalDataset,
    prompt: str = "box",
    clicks: int = 1,
    detections: dict[int, list[dict]] | None = None,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    keep_predictions: bool = False,
) -> dict:
    """:func:`evaluate` on an already opened dataset and grouped detections (``load_detections``)."""
    check_settings(data.dataset, prompt, clicks, detections is not None, limit, batch_size)
    images = data.images[:limit]
    prompts = [detections.get(im.id, []) if prompt == "detector" else data.objects(im.id) for im in images]
    if prompt == "detector" and not isinstance(data.data.get("categories"), list):
        raise ValueError("annotations need a 'categories' list to compute AP")
    if not any(prompts):
        what = "detections" if prompt == "detector" else "annotations with area >= 1"
        raise ValueError(f"nothing to evaluate: the {len(images)} chosen images have no {what}")
    predictor = as_predictor(model_or_predictor)
    rank, world = rank_and_world()

    local = []
    shard = range(rank, len(images), world)
    for index in tqdm(shard, desc=f"eval {prompt}", unit="img", disable=not progress or rank != 0):
        image, items = images[index], prompts[index]
        if not items:
            continue
        predictor.set_image(data.read_image(image))
        if prompt == "box":
            records = box_objects(predictor, data, image, items, batch_size)
        elif prompt == "point":
            records = point_objects(predictor, data, image, items, clicks, batch_size)
        else:
            records = detector_masks(predictor, items, batch_size)
        local.append((index, records))
    records = [record for _, part in sorted(gather_lists(local), key=lambda pair: pair[0]) for record in part]

    results = None
    if rank == 0:
        results = {"dataset": data.dataset, "prompt": prompt, "clicks": clicks if prompt == "point" else None}
        results["num_images"] = len(images)
        if prompt == "detector":
            image_ids = [image.id for image in images]
            score = lvis_mask_ap if data.dataset == "lvis" else coco_mask_ap
            results.update(num_detections=len(records), ap=score(data.data, records, image_ids))
        else:
            results.update(num_objects=len(records), miou=miou_by_size(records))
    results = broadcast(results)
    if rank == 0 and keep_predictions:
        results["predictions"] = records
    return results
