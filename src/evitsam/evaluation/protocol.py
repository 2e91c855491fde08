"""One image through the paper's protocol: prompts in, best masks out, one record per object.

Every prompt asks for the three multimask outputs and keeps the one with the highest predicted
IoU. All prompts of an image go through the decoder together (``predict_torch``), in chunks of
``batch_size`` to bound memory; prompts are mapped into the model's frame exactly as
``SamPredictor.predict`` maps one (float64 arithmetic, then float32), so batching changes
nothing but speed.

The model is anything with the ``SamPredictor`` interface: ``set_image``, ``original_size``,
``device``, ``transform.apply_coords`` / ``apply_boxes`` and ``predict_torch``. That is how
other models, and the tests' oracles, are evaluated by the same code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ..models import EfficientViTSam
from ..predictor import SamPredictor
from .clicker import Clicker
from .dataset import EvalDataset, EvalImage, xywh_to_xyxy
from .metrics import mask_ious

PREDICTOR_INTERFACE = ("set_image", "predict_torch", "transform", "device")
# A zero-width or zero-height box (a valid COCO bbox) is widened by this many pixels: the
# predictor rejects degenerate boxes, and the prompt embedding moves by ~1e-4 at most.
MIN_BOX_SIZE = 1e-2


def as_predictor(model_or_predictor: Any) -> Any:
    """A predictor for an :class:`EfficientViTSam` (switched to eval mode, as the official script does),
    or the given object if it acts like one."""
    if isinstance(model_or_predictor, EfficientViTSam):
        return SamPredictor(model_or_predictor.eval())
    if all(hasattr(model_or_predictor, name) for name in PREDICTOR_INTERFACE):
        return model_or_predictor
    raise ValueError(
        "model must be an EfficientViTSam or an object with the SamPredictor interface "
        f"({', '.join(PREDICTOR_INTERFACE)}), got {type(model_or_predictor).__name__}"
    )


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def box_prompts(bboxes: Sequence[Sequence[float]]) -> np.ndarray:
    """(K, 4) XYXY float64 boxes from COCO ``[x, y, w, h]`` boxes."""
    boxes = np.array([xywh_to_xyxy(b) for b in bboxes], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + MIN_BOX_SIZE)
    return boxes


def best_masks(
    predictor: Any, coords: np.ndarray | None = None, labels: np.ndarray | None = None, boxes: np.ndarray | None = None
) -> np.ndarray:
    """(B, H, W) bool: per prompt, the multimask output with the highest predicted IoU.

    ``coords`` (B, N, 2) (x, y) pixels with ``labels`` (B, N), or ``boxes`` (B, 4) XYXY pixels.
    """
    size, device = predictor.original_size, predictor.device
    point_coords = point_labels = box_tensor = None
    if coords is not None:
        point_coords = torch.as_tensor(predictor.transform.apply_coords(coords, size), dtype=torch.float).to(device)
        point_labels = torch.as_tensor(labels, dtype=torch.float).to(device)
    if boxes is not None:
        box_tensor = torch.as_tensor(predictor.transform.apply_boxes(boxes, size), dtype=torch.float).to(device)
    masks, scores, _ = predictor.predict_torch(point_coords, point_labels, box_tensor, multimask_output=True)
    best = scores.argmax(dim=1)
    return masks[torch.arange(len(best), device=masks.device), best.to(masks.device)].cpu().numpy()


def _object_records(image: EvalImage, objects: Sequence[dict], ious: list[float]) -> list[dict]:
    return [
        {"image_id": image.id, "id": obj.get("id"), "area": obj["area"], "iou": iou}
        for obj, iou in zip(objects, ious, strict=True)
    ]


def box_objects(
    predictor: Any, data: EvalDataset, image: EvalImage, objects: Sequence[dict], batch_size: int
) -> list[dict]:
    """Each object prompted with its ground-truth box; records ``{image_id, id, area, iou}``."""
    records = []
    for chunk in chunks(objects, batch_size):
        predicted = best_masks(predictor, boxes=box_prompts([obj["bbox"] for obj in chunk]))
        records += _object_records(image, chunk, mask_ious(predicted, data.masks(chunk, image)))
    return records


def point_objects(
    predictor: Any, data: EvalDataset, image: EvalImage, objects: Sequence[dict], clicks: int, batch_size: int
) -> list[dict]:
    """Each object prompted by ``clicks`` simulated clicks (all so far each time); IoU after the last."""
    records = []
    for chunk in chunks(objects, batch_size):
        targets = data.masks(chunk, image)
        clickers = [Clicker(target) for target in targets]
        predicted = np.zeros_like(targets)
        for _ in range(clicks):
            for clicker, mask in zip(clickers, predicted):
                clicker.click(mask)
            coords = np.stack([clicker.coords for clicker in clickers])
            labels = np.stack([clicker.labels for clicker in clickers])
            predicted = best_masks(predictor, coords, labels)
        records += _object_records(image, chunk, mask_ious(predicted, targets))
    return records


def detector_masks(predictor: Any, detections: Sequence[dict], batch_size: int) -> list[dict]:
    """The detections with the predicted mask of their box added as compressed RLE ``segmentation``."""
    records = []
    for chunk in chunks(detections, batch_size):
        predicted = best_masks(predictor, boxes=box_prompts([det["bbox"] for det in chunk]))
        rles = mask_utils.encode(np.asfortranarray(predicted.transpose(1, 2, 0).astype(np.uint8)))
        for det, rle in zip(chunk, rles, strict=True):
            records.append({**det, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    return records
