"""The REST API under ``/v1``."""

from __future__ import annotations

import base64
import binascii
import io
import secrets

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from .. import MaskGenerator
from .errors import ApiError
from .images import image_predictor
from .prompts import EverythingRequest, PredictRequest, check_prompts, mask_record, run_prompts
from .state import Service
from .uploads import read_multipart

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": "the image"}},
                }
            }
        },
    }
}


def decode_base64_image(text: str, field: str, limit: int) -> bytes:
    """A base64 string or ``data:<type>;base64,<data>`` URI -> bytes (at most ``limit``)."""
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    if text.startswith("data:") and ";base64" not in text.split(",", 1)[0]:
        raise ApiError(422, field, "data: URIs must be base64 encoded (data:image/png;base64,...)")
    if len(payload) * 3 // 4 > limit:
        raise ApiError(413, field, f"larger than the server's limit of {limit / 2**20:g} MB (--max-upload-mb)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, field, "expected base64 image data or a data:image/...;base64 URI") from None


def make_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v1")
    limit = service.config.max_upload_bytes

    @router.post("/images", openapi_extra=UPLOAD_BODY, summary="Upload an image; its embedding is computed once")
    async def upload_image(request: Request) -> dict:
        parts = await read_multipart(request, limit)
        if "file" not in parts:
            raise ApiError(422, "file", f"no field 'file' in the upload (got {sorted(parts) or 'no fields'})")
        entry, cached = await service.add_image(parts["file"])
        return {"image_id": entry.image_id, "width": entry.width, "height": entry.height, "cached": cached}

    @router.get("/images/{image_id}/embedding", summary="The image embedding as .npy, to run the decoder yourself")
    async def embedding(image_id: str, dtype: str = Query("float16", pattern="^(float16|float32)$")) -> Response:
        entry = service.image(image_id)
        predictor = entry.predictor
        array = predictor.get_image_embedding().float().cpu().numpy().astype(dtype)
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        headers = {
            "X-Embedding-Shape": ",".join(str(v) for v in array.shape),
            "X-Embedding-Dtype": dtype,
            "X-Encoder-Size": str(service.model.encoder_size),
            "X-Prompt-Frame": str(predictor.transform.target_length),
            "X-Input-Size": "{},{}".format(*predictor.input_size),
            "X-Original-Size": "{},{}".format(*predictor.original_size),
        }
        return Response(buffer.getvalue(), media_type="application/octet-stream", headers=headers)

    @router.post("/predict", summary="Masks from points and boxes")
    async def predict(body: PredictRequest) -> dict:
        if (body.image_id is None) == (body.image is None):
            raise ApiError(422, "image_id", "give exactly one of image_id (from POST /v1/images) and image")
        if body.image is not None:
            entry, _ = await service.add_image(decode_base64_image(body.image, "image", limit), field="image")
        else:
            entry = service.image(body.image_id)
        check_prompts(body, entry, service.config.max_prompts)
        mask_input = None
        if body.mask_input is not None:
            stored = service.low_res.get(body.mask_input)
            if stored is None:
                raise ApiError(404, "mask_input", "unknown or expired low_res handle: predict without it again")
            if stored[0] != entry.image_id:
                raise ApiError(422, "mask_input", "this low_res handle belongs to another image")
            mask_input = stored[1]
        records, low_res = await service.run(_predict, entry, body, mask_input)
        for record, logits in zip(records, low_res):
            handle = secrets.token_urlsafe(12)
            service.low_res.put(handle, entry.image_id, logits[None].astype(np.float32))
            record["low_res"] = handle
        return {"image_id": entry.image_id, "masks": records, "low_res": records[0]["low_res"] if records else None}

    @router.post("/everything", summary="Segment everything on a stored image (COCO RLE records)")
    async def everything(body: EverythingRequest) -> dict:
        entry = service.image(body.image_id)
        if body.points_per_side > service.config.max_everything_points:
            raise ApiError(
                422, "points_per_side", f"at most {service.config.max_everything_points}, got {body.points_per_side}"
            )
        records = await service.run(_everything, service, entry, body)
        return {"image_id": entry.image_id, "width": entry.width, "height": entry.height, "masks": records}

    @router.get("/model", summary="The model this server runs")
    async def model_info() -> dict:
        return service.info()

    return router


def _predict(entry, body: PredictRequest, mask_input: np.ndarray | None) -> tuple[list[dict], np.ndarray]:
    """The masks as answer records, and their low-res logits: one trip to the worker threads per request."""
    masks, scores, low_res = run_prompts(entry, body, mask_input)
    return [mask_record(mask, score, body.format) for mask, score in zip(masks, scores)], low_res


def _everything(service: Service, entry, body: EverythingRequest) -> list[dict]:
    iou, stability = service.everything_defaults()
    image = service.decode_image(entry.data)
    generator = MaskGenerator(
        image_predictor(service.predictor),
        points_per_side=body.points_per_side,
        pred_iou_thresh=iou if body.pred_iou_thresh is None else body.pred_iou_thresh,
        stability_score_thresh=stability if body.stability_score_thresh is None else body.stability_score_thresh,
        box_nms_thresh=body.box_nms_thresh,
        crop_n_layers=body.crop_n_layers,
        min_mask_region_area=body.min_mask_region_area,
        sampling=body.sampling,
        output_mode="coco_rle",
    )
    with service.engine_lock:
        records = generator.generate(image)
    return [
        {
            "segmentation": {"size": [int(v) for v in r["segmentation"]["size"]], "counts": _text(r["segmentation"])},
            "area": int(r["area"]),
            "bbox": [float(v) for v in r["bbox"]],
            "predicted_iou": float(r["predicted_iou"]),
            "stability_score": float(r["stability_score"]),
            "point_coords": [[float(v) for v in p] for p in r["point_coords"]],
            "crop_box": [float(v) for v in r["crop_box"]],
        }
        for r in records
    ]


def _text(rle: dict) -> str:
    counts = rle["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else counts
