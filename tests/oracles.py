"""Stand-in models for testing the evaluation protocol: they answer prompts from the ground truth.

An oracle has the ``SamPredictor`` interface the evaluation uses. It recognises the image by its
pixels and the object by its prompt (a box must map back to a known box; a first click must be
the object's deepest interior point), then answers with the ground-truth mask (``"gt"``) or the
mask filled by the prompt box (``"box"``, rasterised by pycocotools; ``"box_touched"``, every
pixel the box touches). Its three "multimask"
outputs hold the answer in the middle slot only, with the highest score, so picking any other
output than the highest predicted IoU breaks the expected numbers.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from evitsam.transforms import SamTransform

SCORES = (0.2, 0.9, 0.5)  # the answer goes in slot 1
BOX_TOLERANCE = 1e-2  # pixels, after the round trip through the 1024 prompt frame


def box_mask(bbox: list[float], height: int, width: int) -> np.ndarray:
    """The box [x, y, w, h] filled, rasterised as pycocotools rasterises boxes."""
    return mask_utils.decode(mask_utils.frPyObjects(np.array([bbox], dtype=np.float64), height, width))[:, :, 0] > 0


def touched_box_mask(bbox: list[float], height: int, width: int) -> np.ndarray:
    """Every pixel the box [x, y, w, h] touches (its corners rounded outwards)."""
    x, y, w, h = bbox
    mask = np.zeros((height, width), dtype=bool)
    mask[int(np.floor(y)) : int(np.ceil(y + h)), int(np.floor(x)) : int(np.ceil(x + w))] = True
    return mask


def gt_mask(ann: dict, height: int, width: int) -> np.ndarray:
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = mask_utils.frPyObjects(segmentation, height, width)
    return mask_utils.decode(rle) > 0


def image_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


class OraclePredictor:
    def __init__(
        self,
        images_dir: Path,
        annotations: dict,
        answer: str = "gt",
        detections: list[dict] | None = None,
        encoder_size: int = 1024,
    ) -> None:
        self.answer = answer
        self.transform = SamTransform(encoder_size)
        self.device = torch.device("cpu")
        self.images = {}
        paths = {image["id"]: Path(images_dir) / image["file_name"] for image in annotations["images"]}
        for image_id, path in paths.items():
            self.images[image_key(np.asarray(Image.open(path).convert("RGB")))] = image_id
        self.objects = defaultdict(list)
        for ann in annotations["annotations"]:
            self.objects[ann["image_id"]].append(ann)
        self.detections = defaultdict(list)
        for det in detections or []:
            self.detections[det["image_id"]].append(det)
        self.image_id = None
        self.original_size = None
        self.calls = 0

    def set_image(self, image: np.ndarray) -> None:
        self.image_id = self.images[image_key(image)]
        self.original_size = h, w = image.shape[:2]
        self.records = self.objects[self.image_id] + self.detections[self.image_id]
        self.known_boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (r["bbox"] for r in self.records)])
        self._masks = {}
        self.deepest = None  # per object: its deepest interior pixels (x, y), computed for clicks only

    def _deepest_points(self) -> list[set]:
        if self.deepest is None:
            self.deepest = []
            for i, record in enumerate(self.records):
                points = set()
                if "segmentation" in record:
                    ys, xs = np.nonzero(self.mask(i))
                    crop = self.mask(i)[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]  # + zero ring: same depths
                    depth = cv2.distanceTransform(np.pad(crop.astype(np.uint8), 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
                    deepest = depth[1:-1, 1:-1] >= depth.max() - 1e-4  # OpenCV rounding: ~1e-6
                    ys, xs = np.nonzero(deepest) + np.array([[ys.min()], [xs.min()]])
                    points = set(zip(xs.tolist(), ys.tolist()))
                self.deepest.append(points)
        return self.deepest

    def mask(self, index: int) -> np.ndarray:
        if index not in self._masks:
            self._masks[index] = gt_mask(self.records[index], *self.original_size)
        return self._masks[index]

    def _to_pixels(self, frame_coords: torch.Tensor) -> np.ndarray:
        sx, sy = self.transform._scale(self.original_size)
        return frame_coords.double().numpy() / np.array([sx, sy])

    def _for_box(self, frame_box: torch.Tensor) -> np.ndarray:
        box = self._to_pixels(frame_box.reshape(2, 2)).reshape(4)
        matches = np.nonzero(np.abs(self.known_boxes - box).max(axis=1) < BOX_TOLERANCE)[0]
        assert len(matches), f"no known box matches {box}"
        bbox = self.records[matches[0]]["bbox"]
        if self.answer == "box":
            return box_mask(bbox, *self.original_size)
        if self.answer == "box_touched":
            return touched_box_mask(bbox, *self.original_size)
        return self.mask(matches[0])

    def _for_click(self, frame_point: torch.Tensor) -> np.ndarray:
        x, y = np.rint(self._to_pixels(frame_point)).astype(int).tolist()
        candidates = [i for i, points in enumerate(self._deepest_points()) if (x, y) in points]
        assert candidates, f"no object has its deepest point at {(x, y)}"
        return self.mask(candidates[0])

    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True, **_):
        assert multimask_output and mask_input is None
        self.calls += 1
        count = len(boxes) if boxes is not None else len(point_coords)
        h, w = self.original_size
        masks = np.zeros((count, 3, h, w), dtype=bool)
        for b in range(count):
            masks[b, 1] = self._for_box(boxes[b]) if boxes is not None else self._for_click(point_coords[b, 0])
        masks[:, 0] = ~masks[:, 1]  # wrong answers in the other slots
        masks[:, 2] = True
        scores = torch.tensor(SCORES).repeat(count, 1)
        return torch.from_numpy(masks), scores, None
