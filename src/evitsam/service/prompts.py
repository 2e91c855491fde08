"""Prompts to masks: the request models of ``/v1/predict`` and ``/v1/everything``, their checks against the
image, and the masks' encodings (COCO RLE or PNG)."""

from __future__ import annotations

import base64
import io
import math
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pydantic import BaseModel, ConfigDict, Field

from ..everything.mask_ops import encode_rle
from .errors import ApiError
from .images import CachedImage


class PredictRequest(BaseModel):
    """Prompts in image pixels: ``points`` as ``[x, y, label]`` (1 foreground, 0 background), ``boxes`` as
    ``[x0, y0, x1, y1]`` (several boxes: one mask each), ``mask_input`` a ``low_res`` handle of an earlier
    answer on the same image (refinement)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    image_id: str | None = Field(None, description="id from POST /v1/images")
    image: str | None = Field(None, description="or the image itself: base64 or a data: URI")
    points: list[tuple[float, float, Literal[0, 1]]] = Field(default_factory=list, examples=[[[500, 375, 1]]])
    boxes: list[tuple[float, float, float, float]] = Field(default_factory=list, examples=[[[75, 275, 1725, 850]]])
    mask_input: str | None = Field(None, description="low_res handle from an earlier answer on this image")
    multimask: bool = Field(False, description="3 candidate masks for an ambiguous prompt, best first")
    format: Literal["rle", "png"] = "rle"


class EverythingRequest(BaseModel):
    """Segment-everything options (those of ``evitsam.MaskGenerator``); thresholds default to the model's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    image_id: str
    points_per_side: int = Field(32, ge=1)
    pred_iou_thresh: float | None = Field(None, ge=0, le=1)
    stability_score_thresh: float | None = Field(None, ge=0, le=1)
    box_nms_thresh: float = Field(0.7, ge=0, le=1)
    crop_n_layers: int = Field(0, ge=0, le=2)
    min_mask_region_area: int = Field(0, ge=0)
    sampling: Literal["grid", "coverage"] = "grid"


def check_prompts(request: PredictRequest, entry: CachedImage, max_prompts: int) -> None:
    """Refuse prompts the model cannot use, naming the prompt and the image size (422)."""
    width, height = entry.width, entry.height
    if not request.points and not request.boxes and request.mask_input is None:
        raise ApiError(422, "points", "give at least one prompt: points, boxes or mask_input")
    for name, items in (("points", request.points), ("boxes", request.boxes)):
        if len(items) > max_prompts:
            raise ApiError(422, name, f"at most {max_prompts} {name} per request, got {len(items)}")
    for i, (x, y, _) in enumerate(request.points):
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= width and 0 <= y <= height):
            raise ApiError(
                422,
                f"points[{i}]",
                f"point ({x:g}, {y:g}) lies outside the {width}x{height} image; "
                f"expected 0 <= x <= {width}, 0 <= y <= {height}",
            )
    for i, (x0, y0, x1, y1) in enumerate(request.boxes):
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ApiError(
                422,
                f"boxes[{i}]",
                f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is not inside the {width}x{height} image "
                "with x0 < x1 and y0 < y1",
            )
    if request.mask_input is not None and len(request.boxes) > 1:
        raise ApiError(422, "mask_input", "refinement takes one object: give at most one box with mask_input")


def run_prompts(
    entry: CachedImage, request: PredictRequest, mask_input: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks (M, H, W), scores (M,) and low-res logits (M, S, S), best first (several boxes: box order).

    One object goes through ``SamPredictor.predict``, exactly what a library user gets; several boxes go
    through one batched ``predict_torch`` call, with the points (if any) given to every box.
    """
    predictor = entry.predictor
    coords = np.array([p[:2] for p in request.points], dtype=np.float64) if request.points else None
    labels = np.array([p[2] for p in request.points], dtype=np.int64) if request.points else None
    with entry.lock:
        if len(request.boxes) <= 1:
            box = np.array(request.boxes[0], dtype=np.float64) if request.boxes else None
            masks, scores, low_res = predictor.predict(coords, labels, box, mask_input, request.multimask)
            if len(scores) == 1:
                return masks, scores, low_res
            order = np.argsort(-scores, kind="stable")
            return masks[order], scores[order], low_res[order]
        size = predictor.original_size
        boxes = torch.as_tensor(predictor.transform.apply_boxes(np.array(request.boxes), size), dtype=torch.float)
        count = len(request.boxes)
        point_coords = point_labels = None
        if coords is not None:
            frame = predictor.transform.apply_coords(coords, size)
            point_coords = torch.as_tensor(frame, dtype=torch.float)[None].repeat(count, 1, 1)
            point_labels = torch.as_tensor(labels, dtype=torch.float)[None].repeat(count, 1)
        device = predictor.device
        to = lambda t: None if t is None else t.to(device)  # noqa: E731
        masks, scores, low_res = predictor.predict_torch(
            to(point_coords), to(point_labels), to(boxes), None, request.multimask
        )
        best = scores.argmax(dim=1)  # one mask per box: its best candidate
        rows = torch.arange(count)
        return (
            masks[rows, best].cpu().numpy(),
            scores[rows, best].float().cpu().numpy(),
            low_res[rows, best].float().cpu().numpy(),
        )


def png_base64(mask: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def mask_record(mask: np.ndarray, score: float, fmt: str) -> dict:
    rle = encode_rle(mask[None])[0]
    rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}
    compressed = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    area, bbox = int(mask_utils.area(compressed)), [float(v) for v in mask_utils.toBbox(compressed)]
    segmentation = rle if fmt == "rle" else {"size": rle["size"], "png": png_base64(mask)}
    return {"segmentation": segmentation, "score": float(score), "bbox": bbox, "area": area}
