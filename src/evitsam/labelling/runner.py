"""Label an image collection: every process takes the next chunk still to do whenever it is ready for more
(a counter shared by the job's processes), so all finish together however uneven the images; each finished
chunk is recorded in a file of its own.

Per process: DataLoader workers read and resize images ahead of the model; the encoder embeds several
images per call; per image, the decoder takes the detector's boxes in batches and the best of the
three multimask outputs (highest predicted IoU, the paper's box protocol) is kept. "Everything" runs
the automatic mask generator per image instead. Rank 0 shows the whole job's progress and merges.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..distributed import SharedCounter, broadcast, gather_lists, rank_and_world
from ..evaluation.protocol import box_prompts
from ..everything import MaskGenerator
from ..everything.mask_ops import encode_rle
from ..io import read_image
from ..models.sam import PIXEL_MEAN
from ..predictor import SamPredictor
from ..transforms import PROMPT_FRAME, get_preprocess_shape
from .inputs import Collection, ImageEntry, categories_for
from .parts import chunk_path, clean_chunks, finished_chunks, merge, open_job, parts_dir_for, write_chunk

MODES = ("boxes", "everything")
# Images per encoder call on a GPU by default. On CPUs one at a time is fastest: the encoder's
# activations of several images no longer fit in cache (measured on L0: 4 images a call ~20 % slower).
CUDA_BATCH = 8
POLL_SECONDS = 0.5  # how often rank 0 looks for other processes' finished chunks


@dataclass(frozen=True)
class LabelSettings:
    """How a job runs. ``chunk_size`` and ``batch_size`` decide how images are grouped, so they are part of
    the job's identity (a rerun with other values is another job); the rest only change speed."""

    mode: str = "boxes"
    min_score: float = 0.0
    batch_size: int | None = None  # images per encoder call; None: 1 on CPU (cache-bound), 8 on CUDA
    box_batch: int = 64  # boxes per decoder call
    chunk_size: int = 32  # images per unit of work and of resumption
    workers: int = 2  # DataLoader processes reading and resizing images
    points_per_side: int = 32  # "everything" grid
    progress: bool = True

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("batch_size", "box_batch", "chunk_size", "points_per_side"):
            value = getattr(self, name)
            if name == "batch_size" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {self.workers!r}")
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score!r}")


class _Images(Dataset):
    """Reads an image in a worker: the encoder-sized image (boxes) or the full image (everything).
    Indexed by (chunk, image index in the collection)."""

    def __init__(self, images: list[ImageEntry], encoder_size: int | None) -> None:
        self.images = images
        self.encoder_size = encoder_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: tuple[int, int]) -> dict:
        chunk, image_index = index
        entry = self.images[image_index]
        item: dict[str, Any] = {"chunk": chunk, "entry": entry}
        try:
            image = read_image(entry.path)
        except Exception as error:  # an unreadable image is recorded, never fatal
            item["error"] = f"{type(error).__name__}: {' '.join(str(error).split())}"
            return item
        item["size"] = image.shape[:2]
        if self.encoder_size is not None:
            from PIL import Image

            h, w = get_preprocess_shape(*image.shape[:2], self.encoder_size)
            if (h, w) != image.shape[:2]:
                image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        item["image"] = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)
        return item


def _collate(items: list[dict]) -> list[dict]:
    return items


class _ClaimedBatches:
    """The DataLoader's batch sampler: claims the next chunk still to do from the job's shared counter whenever
    the loader wants more work, and yields its encoder batches of (chunk, image index), never across a chunk."""

    def __init__(self, todo: list[int], counter: SharedCounter, chunk_size: int, count: int, batch_size: int) -> None:
        self.todo, self.counter = todo, counter
        self.chunk_size, self.count, self.batch_size = chunk_size, count, batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        while (claim := self.counter.take()) < len(self.todo):
            chunk = self.todo[claim]
            indices = range(chunk * self.chunk_size, min(self.count, (chunk + 1) * self.chunk_size))
            for start in range(0, len(indices), self.batch_size):
                yield [(chunk, i) for i in indices[start : start + self.batch_size]]


def _rle_records(rles: list[dict]) -> tuple[list[list[float]], list[int]]:
    boxes = mask_utils.toBbox(rles).tolist() if rles else []
    areas = mask_utils.area(rles).tolist() if rles else []
    return boxes, [int(a) for a in areas]


class _Labeller:
    """Turns decoded images into per-image records (COCO annotations without ids)."""

    def __init__(self, predictor: SamPredictor, settings: LabelSettings, detections: dict | None) -> None:
        self.predictor = predictor
        self.model = predictor.model
        self.engine = predictor.engine
        self.settings = settings
        self.detections = detections
        self.generator = None
        if settings.mode == "everything":
            from ..variants import get_variant

            iou, stability = get_variant(self.model.variant).everything_thresholds
            self.generator = MaskGenerator(
                predictor, points_per_side=settings.points_per_side, output_mode="coco_rle",
                pred_iou_thresh=max(iou, settings.min_score), stability_score_thresh=stability,
            )  # fmt: skip

    @torch.inference_mode()
    def label(self, items: list[dict]) -> list[dict]:
        """Records for a batch of read images, in order."""
        if self.generator is not None:
            return [self._everything(item) for item in items]
        prompted = [item for item in items if self.detections.get(item["entry"].file_name)]
        embeddings = dict(zip([id(item) for item in prompted], self._embed(prompted), strict=True))
        return [self._boxes(item, embeddings.get(id(item))) for item in items]

    def _embed(self, items: list[dict]) -> list[torch.Tensor]:
        if not items:
            return []
        if self.engine.runtime != "torch":  # the exported graphs take one image
            return [self.engine.embed(item["image"][None].float()) for item in items]
        size = self.model.encoder_size
        # Padding with the pixel mean normalises to exactly the zeros the model pads with.
        canvas = torch.empty(len(items), 3, size, size).copy_(torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1))
        for i, item in enumerate(items):
            image = item["image"]
            canvas[i, :, : image.shape[1], : image.shape[2]] = image
        embeddings = self.engine.embed(canvas)
        return list(embeddings.split(1))

    def _record(self, item: dict, annotations: list[dict]) -> dict:
        entry, (height, width) = item["entry"], item["size"]
        return {"id": entry.id, "file_name": entry.file_name, "width": int(width), "height": int(height),
                "annotations": annotations}  # fmt: skip

    def _boxes(self, item: dict, features: torch.Tensor | None) -> dict:
        detections = self.detections.get(item["entry"].file_name, [])
        if features is None or not detections:
            return self._record(item, [])
        size = tuple(int(s) for s in item["size"])
        input_size = get_preprocess_shape(*size, PROMPT_FRAME)
        boxes = box_prompts([det["bbox"] for det in detections])
        prompts = torch.as_tensor(self.predictor.transform.apply_boxes(boxes, size), dtype=torch.float)
        prompts = prompts.to(self.model.device)
        side = self.engine.prepare(features)  # None for exported graphs, which take the embedding whole
        annotations = []
        step = self.settings.box_batch
        for start in range(0, len(detections), step):
            low, ious = self._decode_best(features, prompts[start : start + step], input_size, side)
            masks = self.model.postprocess_masks(low, input_size, size, self.model.mask_threshold)
            rles = encode_rle(masks[:, 0])
            bboxes, areas = _rle_records(rles)
            for det, rle, bbox, area, iou in zip(
                detections[start : start + step], rles, bboxes, areas, ious.float().tolist(), strict=True
            ):
                annotations.append({
                    "category_id": det["category_id"], "segmentation": rle, "area": area, "bbox": bbox,
                    "score": det["score"] * iou, "box_score": det["score"], "predicted_iou": iou,
                    "detection_id": det["detection_id"], "box": det["bbox"],
                })  # fmt: skip
        return self._record(item, annotations)

    def _decode_best(
        self, features: torch.Tensor, boxes: torch.Tensor, input_size: tuple[int, int], side: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (B, 1, h, w) and predicted IoU (B,) of each box's best multimask output.

        With the model's own decoder (torch runtime) only the chosen mask of each box is computed, and
        only the part of it the resize to the image reads, as "everything" does; exported graphs
        return all three masks and the best is picked from them.
        """
        if side is None:
            low, ious = self.engine.decode(features, None, None, boxes, None, True)
            best = ious.argmax(dim=1)
            rows = torch.arange(len(best), device=best.device)
            return low[rows, best][:, None], ious[rows, best]
        decoder = self.model.fast_decoder()
        state = decoder.attend(features, None, None, boxes, None, side)
        ious = decoder.predict_iou(state)[:, 1:]
        best = ious.argmax(dim=1)
        extent = self.model.low_res_extent(input_size)
        low = torch.empty(len(best), 1, *extent, device=features.device)
        for token in best.unique().tolist():
            rows = (best == token).nonzero().flatten()
            low[rows] = decoder.mask_logits(state.select(rows), slice(1 + token, 2 + token), extent).to(low.dtype)
        return low, ious[torch.arange(len(best), device=best.device), best]

    def _everything(self, item: dict) -> dict:
        records = self.generator.generate(item["image"].permute(1, 2, 0).numpy())
        rles = [record["segmentation"] for record in records]
        bboxes, _ = _rle_records(rles)
        annotations = [
            {"category_id": 1, "segmentation": record["segmentation"], "area": int(record["area"]), "bbox": bbox,
             "score": record["predicted_iou"], "predicted_iou": record["predicted_iou"],
             "stability_score": record["stability_score"], "point_coords": record["point_coords"]}
            for record, bbox in zip(records, bboxes, strict=True)
        ]  # fmt: skip
        return self._record(item, annotations)


def label_images(
    predictor: SamPredictor,
    collection: Collection,
    output: str | Path,
    detections: dict[str, list[dict]] | None = None,
    settings: LabelSettings = LabelSettings(),
    job: dict | None = None,
    info: dict | None = None,
) -> dict | None:
    """Label ``collection`` into the COCO file ``output``; resumes a job started before.

    ``detections`` (``inputs.load_detections``) prompts one mask per box (``settings.mode`` "boxes");
    None with mode "everything". Under ``torchrun`` every process calls this with the same arguments
    and takes a disjoint share of the chunks; rank 0 merges once all are done and returns the summary
    (None on the other ranks). ``job`` identifies the model and anything else that changes the results
    (a different ``job`` refuses to reuse the parts folder); ``info`` goes into the output's ``info``.
    """
    settings.check()
    if settings.batch_size is None:
        settings = replace(settings, batch_size=CUDA_BATCH if predictor.device.type == "cuda" else 1)
    if (settings.mode == "boxes") != (detections is not None):
        raise ValueError("mode 'boxes' needs detections, and mode 'everything' takes none")
    output = Path(output)
    if output.suffix.lower() != ".json":
        raise ValueError(f"--output '{output}': the labels are written as COCO JSON, use a .json name")
    started = time.perf_counter()
    rank, world = rank_and_world()
    parts = parts_dir_for(output)
    count, size = len(collection.images), settings.chunk_size
    num_chunks = -(-count // size)
    identity = {"images": collection.fingerprint(), "mode": settings.mode, "min_score": settings.min_score,
                "chunk_size": size, "batch_size": settings.batch_size, **(job or {})}  # fmt: skip
    if settings.mode == "everything":
        identity["points_per_side"] = settings.points_per_side
    manifest = {"format": 1, "output": str(output.resolve()), "job": identity, "num_images": count, "chunk_size": size,
                "num_chunks": num_chunks, "categories": categories_for(collection, detections),
                "info": {"description": "instance masks by evitsam label", **(info or {})}}  # fmt: skip

    plan: dict[str, Any] = {}
    if rank == 0:
        try:
            open_job(parts, manifest)
            done = clean_chunks(parts)
            plan["todo"] = [i for i in range(num_chunks) if i not in done]
            plan["run"] = secrets.token_hex(8)  # names this run's counter of claimed chunks
            for index in plan["todo"]:  # stale failures of chunks about to be redone
                chunk_path(parts, index, True).unlink(missing_ok=True)
        except (ValueError, OSError) as error:
            plan["error"] = (type(error).__name__, str(error))
    plan = broadcast(plan)
    if "error" in plan:
        kind, message = plan["error"]
        raise (FileNotFoundError if kind == "FileNotFoundError" else ValueError)(message)
    todo: list[int] = plan["todo"]
    chunk_images = {c: min(count, (c + 1) * size) - c * size for c in todo}

    encoder_size = None if settings.mode == "everything" else predictor.model.encoder_size
    claims = _ClaimedBatches(todo, SharedCounter(f"evitsam-label/{plan['run']}"), size, count, settings.batch_size)
    loader = DataLoader(
        _Images(collection.images, encoder_size), batch_sampler=claims, num_workers=settings.workers,
        collate_fn=_collate, pin_memory=predictor.device.type == "cuda", persistent_workers=False,
    )  # fmt: skip
    labeller = _Labeller(predictor, settings, detections)
    total = sum(chunk_images.values())
    bar = tqdm(total=total, desc=f"label {settings.mode}", unit="img", disable=not settings.progress or rank != 0)
    unseen = set(todo)  # rank 0: chunks of any process whose file it has not seen yet
    written = 0

    def poll() -> None:
        nonlocal written
        present = finished_chunks(parts)
        for chunk in [c for c in unseen if c in present]:
            unseen.discard(chunk)
            written += chunk_images[chunk]
        bar.n = written + len(records) + len(failures)
        bar.refresh()

    own, failed = 0, 0
    records: list[dict] = []
    failures: list[dict] = []
    last_poll = time.monotonic()
    for items in loader:
        ok = [item for item in items if "error" not in item]
        for item in items:
            if "error" in item:
                failures.append({"id": item["entry"].id, "file_name": item["entry"].file_name, "error": item["error"]})
        records += labeller.label(ok)
        own += len(items)
        chunk = items[-1]["chunk"]
        if len(records) + len(failures) == chunk_images[chunk]:
            write_chunk(parts, chunk, records, failures)
            failed += len(failures)
            records, failures = [], []
        if rank == 0 and time.monotonic() - last_poll > POLL_SECONDS:
            poll()
            last_poll = time.monotonic()
    if rank == 0:
        poll()
        while unseen:
            time.sleep(POLL_SECONDS)
            poll()
    bar.close()
    stats = gather_lists([{"rank": rank, "processed": own, "failed": failed}])
    if rank != 0:
        return None
    summary = merge(parts, output)
    seconds = time.perf_counter() - started
    processed = sum(s["processed"] for s in stats)
    summary.update(
        processed=processed, resumed=count - processed, processes=world, seconds=round(seconds, 3),
        images_per_s=round(processed / seconds, 3) if seconds > 0 else None,
    )  # fmt: skip
    return summary
