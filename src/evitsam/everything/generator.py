"""Automatic mask generation ("segment everything"): SAM's ``SamAutomaticMaskGenerator``, made fast.

Same parameters, semantics and records as segment-anything's generator (and the official
EfficientViT-SAM one, which subclasses it). What differs is where the time goes. The reference
decodes 64 prompts at a time with the image embedding repeated for each, upsamples every one of the
3 x 64 candidate masks to full resolution as float logits, and only then filters most of them away.
Here:

* the image side of the decoder is computed once per image, not once per prompt, and the
  cross-attention projections are folded into the few prompt tokens (see ``models/fast_decoder.py``);
* predicted IoUs come from the decoder's transformer alone, so masks that fail ``pred_iou_thresh``
  are never produced, not even at low resolution;
* survivors are resized to the image in one matrix product per axis (no 1024x1024 intermediate),
  in small chunks that stay in cache, and only masks passing every filter are run-length encoded.

The image embedding comes from a :class:`SamPredictor`, the one place that pre-processes images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..models import EfficientViTSam
from ..models.fast_attention import ImageSide
from ..predictor import SamPredictor
from ..prompt_workers import PromptWorkers
from ..transforms import as_rgb_uint8
from .candidates import MaskCandidates
from .mask_ops import (
    box_xyxy_to_xywh,
    crop_boxes,
    crop_nms_scores,
    decode_rle,
    encode_rle,
    layer_point_grids,
    masks_to_boxes,
    near_crop_edge,
    nms,
    remove_small_regions,
    rle_area,
    stability_score,
    uncompressed_rle,
)

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
SAMPLING_MODES = ("grid", "coverage")
# Masks resized to full resolution at a time: ~20 MB of logits for a 640x480 image, cache friendly.
RESIZE_CHUNK = 16
# Prompts through the decoder at a time: its (B, 4096, 256) activations stay in cache. The image side
# every prompt shares is computed once per image (``decoder_image_side``), so small chunks lose nothing:
# 4 was 10-25 % faster than 16 on CPU (16x16 grid, L0, 1 thread).
DECODER_CHUNK = 4


class MaskGenerator:
    """Drop-in for ``segment_anything.SamAutomaticMaskGenerator`` (see its docs for the parameters).

    ``model`` is an :class:`EfficientViTSam` or a :class:`SamPredictor` (whose image embedding is
    used, so predictors with other runtimes plug in). ``points_per_batch`` bounds how many prompts
    are decoded at once; it changes speed and memory, never the result. ``sampling="coverage"``
    is a faster option beyond SAM: the grid runs coarse points first and skips later points that
    already lie inside a kept mask (measured against the full grid in ``benchmarks/everything.py``).
    ``runtime``/``precision``/``calibration`` choose the engine as for :class:`SamPredictor`
    (ONNX Runtime, OpenVINO fp32/bf16/int8) when ``model`` is an :class:`EfficientViTSam`.
    ``workers`` (CPU): threads that decode and resize chunks of prompts side by side, each with one
    intra-op thread (default ``torch.get_num_threads()``; 1: torch's own threads, as for one prompt).
    It changes speed, never the result (see :class:`PromptWorkers`).
    """

    def __init__(
        self,
        model: EfficientViTSam | SamPredictor,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        sampling: str = "grid",
        runtime: str = "torch",
        precision: str = "fp32",
        calibration: list | str | None = None,
        workers: int | None = None,
    ) -> None:
        if isinstance(model, SamPredictor):
            if (runtime, precision, calibration) != ("torch", "fp32", None):
                raise ValueError(
                    "runtime/precision/calibration belong to the SamPredictor passed as model: set them there"
                )
            self.predictor = model
        elif isinstance(model, EfficientViTSam):
            self.predictor = SamPredictor(model, runtime=runtime, precision=precision, calibration=calibration)
        else:
            raise ValueError(f"model must be an EfficientViTSam or a SamPredictor, got {type(model).__name__}")
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        _check_int("crop_n_layers", crop_n_layers, 0)
        _check_int("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1)
        if points_per_side is not None:
            _check_int("points_per_side", points_per_side, 1)
            point_grids = layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        else:
            point_grids = [np.asarray(grid, dtype=np.float64) for grid in point_grids]
            if len(point_grids) != crop_n_layers + 1:
                raise ValueError(
                    f"point_grids must hold one grid per crop layer ({crop_n_layers + 1}), got {len(point_grids)}"
                )
            for grid in point_grids:
                if grid.ndim != 2 or grid.shape[1] != 2 or not np.all((grid >= 0) & (grid <= 1)):
                    raise ValueError("point_grids must be (N, 2) arrays of (x, y) in [0, 1]")
        _check_int("points_per_batch", points_per_batch, 1)
        _check_int("min_mask_region_area", min_mask_region_area, 0)
        if workers is not None:
            _check_int("workers", workers, 1)
        for name, value in [
            ("pred_iou_thresh", pred_iou_thresh),
            ("stability_score_thresh", stability_score_thresh),
            ("box_nms_thresh", box_nms_thresh),
            ("crop_nms_thresh", crop_nms_thresh),
            ("crop_overlap_ratio", crop_overlap_ratio),
        ]:
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if not isinstance(stability_score_offset, (int, float)) or not np.isfinite(stability_score_offset):
            raise ValueError(f"stability_score_offset must be a finite number, got {stability_score_offset!r}")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        self.point_grids = point_grids
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.sampling = sampling
        self.workers = workers
        self._workers: PromptWorkers | None = None  # set while ``generate_candidates`` runs
        self.points_decoded = 0  # prompts the last ``generate`` ran through the decoder

    @property
    def model(self) -> EfficientViTSam:
        return self.predictor.model

    @torch.inference_mode()
    def generate(self, image: np.ndarray | Image.Image) -> list[dict[str, Any]]:
        """SAM's records for an HxWx3 uint8 RGB image (PIL accepted), best predicted IoU first.

        Each record: ``segmentation`` (HxW bool, or an RLE dict per ``output_mode``), ``area``,
        ``bbox`` (XYWH), ``predicted_iou``, ``point_coords`` ([[x, y]]), ``stability_score`` and
        ``crop_box`` (XYWH).
        """
        image = as_rgb_uint8(image)
        self.points_decoded = 0
        masks = self.generate_candidates(image)
        if self.min_mask_region_area > 0:
            masks = self._remove_small_regions(masks)
        return self._records(masks)

    def generate_candidates(self, image: np.ndarray) -> MaskCandidates:
        """The kept masks, before small-region cleanup and record formatting."""
        size = image.shape[:2]
        boxes, layers = crop_boxes(size, self.crop_n_layers, self.crop_overlap_ratio)
        workers = self.workers or torch.get_num_threads()
        try:
            with PromptWorkers(workers if self.predictor.device.type == "cpu" else 1) as self._workers:
                crops = [self._process_crop(image, box, layer) for box, layer in zip(boxes, layers)]
        finally:
            self._workers = None
        masks = MaskCandidates.cat(crops)
        if len(boxes) > 1 and len(masks):  # duplicates between crops: prefer masks from smaller crops
            masks = masks.take(nms(masks.boxes, crop_nms_scores(masks.crop_boxes), self.crop_nms_thresh))
        return masks

    # ------------------------------------------------------------------------------------ crops
    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int) -> MaskCandidates:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        self.predictor.set_image(crop)
        points = self.point_grids[layer] * np.array(crop.shape[1::-1], dtype=np.float64)[None]
        if self.sampling == "coverage":
            masks = self._sample_by_coverage(points, crop_box, image.shape[:2])
        else:
            masks = self._process_points(points, crop_box, image.shape[:2])
        self.predictor.reset_image()
        masks = masks.take(nms(masks.boxes, masks.iou_preds, self.box_nms_thresh))
        offset = torch.tensor([x0, y0, x0, y0])
        masks.boxes = masks.boxes + offset
        masks.points = masks.points + offset[:2]
        masks.crop_boxes = torch.tensor([crop_box] * len(masks)).reshape(-1, 4)
        return masks

    def _process_points(self, points: np.ndarray, crop_box: list[int], image_size: tuple[int, int]) -> MaskCandidates:
        step = self.points_per_batch
        return MaskCandidates.cat(
            [self._process_batch(points[i : i + step], crop_box, image_size) for i in range(0, len(points), step)]
        )

    def _sample_by_coverage(
        self, points: np.ndarray, crop_box: list[int], image_size: tuple[int, int]
    ) -> MaskCandidates:
        """Every other grid point first; then only the points no kept mask covers yet."""
        side = int(round(np.sqrt(len(points))))
        index = np.arange(len(points))
        if side * side == len(points):
            rows, cols = np.divmod(index, side)
            coarse = (rows % 2 == 0) & (cols % 2 == 0)
        else:
            coarse = index % 4 == 0
        first = self._process_points(points[coarse], crop_box, image_size)
        rest = points[~coarse]
        if len(first):
            x0, y0 = crop_box[:2]
            covered = torch.from_numpy(decode_rle(first.rles).any(axis=0))
            xs = np.clip(np.floor(rest[:, 0]).astype(int) + x0, 0, covered.shape[1] - 1)
            ys = np.clip(np.floor(rest[:, 1]).astype(int) + y0, 0, covered.shape[0] - 1)
            rest = rest[~covered[ys, xs].numpy()]
        return MaskCandidates.cat([first, self._process_points(rest, crop_box, image_size)])

    # ---------------------------------------------------------------------------------- batches
    def _process_batch(self, points: np.ndarray, crop_box: list[int], image_size: tuple[int, int]) -> MaskCandidates:
        """Decode one batch of single-point prompts and keep the masks that pass SAM's filters."""
        predictor = self.predictor
        device = predictor.device
        coords = predictor.transform.apply_coords(points, predictor.original_size)
        coords = torch.as_tensor(coords, device=device)[:, None, :]
        labels = torch.ones(len(points), 1, dtype=torch.int, device=device)
        self.points_decoded += len(points)
        embedding, side = predictor.get_image_embedding(), predictor.decoder_image_side()
        decoded = self._workers.map(
            lambda i: self._decode(embedding, side, coords[i : i + DECODER_CHUNK], labels[i : i + DECODER_CHUNK]),
            range(0, len(points), DECODER_CHUNK),
        )
        iou_preds = torch.cat([iou for iou, _ in decoded]).flatten()
        low_res = torch.cat([logits for _, logits in decoded])
        keep = self._passes_iou(iou_preds)
        point_index = torch.arange(len(points)).repeat_interleave(3)[keep.cpu()]
        pieces = self._workers.map(
            lambda start: self._resize_and_filter(low_res[start : start + RESIZE_CHUNK], crop_box, image_size),
            range(0, len(low_res), RESIZE_CHUNK),
        )
        index, stability, boxes, rles = [], [], [], []
        for start, (kept, score, box, rle) in zip(range(0, len(low_res), RESIZE_CHUNK), pieces):
            index.append(kept + start)
            stability.append(score)
            boxes.append(box)
            rles += rle
        if not rles:
            return MaskCandidates.empty()
        index = torch.cat(index)
        return MaskCandidates(
            iou_preds=iou_preds[keep].cpu()[index],
            stability_score=torch.cat(stability),
            points=torch.as_tensor(points)[point_index[index]],
            boxes=torch.cat(boxes),
            crop_boxes=torch.zeros(len(index), 4),
            rles=rles,
        )

    def _decode(
        self, embedding: torch.Tensor, side: ImageSide | None, coords: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """IoU predictions (B, 3) of the multimask outputs and low-res logits (M, rows, cols) of those passing,
        only the part ``postprocess_masks`` reads (``model.low_res_extent``), from the predictor's engine."""
        predictor = self.predictor
        extent = self.model.low_res_extent(predictor.input_size)  # logits of the frame's padding are never resized
        return predictor.engine.decode_kept(embedding, coords, labels, self._passes_iou, extent, side)

    def _passes_iou(self, iou_preds: torch.Tensor) -> torch.Tensor:
        if self.pred_iou_thresh > 0:
            return iou_preds > self.pred_iou_thresh
        return torch.ones_like(iou_preds, dtype=torch.bool)

    def _resize_and_filter(
        self, low_res: torch.Tensor, crop_box: list[int], image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        """Low-res logits (M, 256, 256) -> (kept index, stability, crop-frame boxes, full-image RLEs)."""
        predictor, threshold = self.predictor, self.model.mask_threshold
        logits = self.model.postprocess_masks(low_res, predictor.input_size, predictor.original_size)
        stability = stability_score(logits, threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0:
            keep = stability >= self.stability_score_thresh
        else:
            keep = torch.ones_like(stability, dtype=torch.bool)
        binary = logits[keep] > threshold
        boxes = masks_to_boxes(binary)
        height, width = image_size
        inside = ~near_crop_edge(boxes, crop_box, [0, 0, width, height])
        index = keep.nonzero().flatten()[inside]
        binary = binary[inside]
        x0, y0, x1, y1 = crop_box
        if (x0, y0, x1, y1) != (0, 0, width, height):
            binary = F.pad(binary, (x0, width - x1, y0, height - y1))
        return index.cpu(), stability[index].cpu(), boxes[inside].cpu(), encode_rle(binary)

    # ---------------------------------------------------------------------------------- outputs
    def _remove_small_regions(self, masks: MaskCandidates) -> MaskCandidates:
        """SAM's cleanup: fill small holes, drop small islands, then NMS preferring unchanged masks."""
        if not len(masks):
            return masks
        binary = decode_rle(masks.rles)
        cleaned, unchanged = [], []
        for mask in binary:
            mask, holes = remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, islands = remove_small_regions(mask, self.min_mask_region_area, "islands")
            cleaned.append(mask)
            unchanged.append(not (holes or islands))
        cleaned_t = torch.from_numpy(np.stack(cleaned))
        boxes = masks_to_boxes(cleaned_t)
        keep = nms(boxes, torch.tensor(unchanged, dtype=torch.float), max(self.box_nms_thresh, self.crop_nms_thresh))
        for i in keep.tolist():
            if not unchanged[i]:
                masks.rles[i] = encode_rle(cleaned_t[i : i + 1])[0]
                masks.boxes[i] = boxes[i]
        return masks.take(keep)

    def _records(self, masks: MaskCandidates) -> list[dict[str, Any]]:
        if self.output_mode == "coco_rle":
            segmentations = masks.rles
        else:
            segmentations = list(decode_rle(masks.rles))
            if self.output_mode == "uncompressed_rle":
                segmentations = [uncompressed_rle(mask) for mask in segmentations]
        return [
            {
                "segmentation": segmentation,
                "area": area,
                "bbox": box_xyxy_to_xywh(box),
                "predicted_iou": float(iou),
                "point_coords": [point.tolist()],
                "stability_score": float(stability),
                "crop_box": box_xyxy_to_xywh(crop),
            }
            for segmentation, area, box, iou, point, stability, crop in zip(
                segmentations,
                rle_area(masks.rles),
                masks.boxes,
                masks.iou_preds,
                masks.points,
                masks.stability_score,
                masks.crop_boxes,
            )
        ]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
