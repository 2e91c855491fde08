"""The HTTP service's REST API: each route's answers and refusals, the cache, concurrency, auth, a real server."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import assert_error, decode_coco, upload

from evitsam import MaskGenerator, SamPredictor
from evitsam.io import read_image
from evitsam.service import Service
from evitsam.service.images import image_predictor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def truck(shared_data: Path) -> bytes:
    return (shared_data / "images" / "truck.jpg").read_bytes()


@pytest.fixture(scope="module")
def truck_id(client: TestClient, truck: bytes) -> str:
    return upload(client, truck).json()["image_id"]


@pytest.fixture(scope="module")
def reference(service: Service, truck: bytes) -> SamPredictor:
    """The library's own predictor on the same photo: what every mask over HTTP must equal."""
    predictor = SamPredictor(service.model)
    predictor.set_image(read_image(truck))
    return predictor


def test_upload_answers_id_and_size_and_second_upload_costs_nothing(client, service, truck):
    first = upload(client, truck).json()
    encoder_runs = service.metrics.encoder_seconds._sum.get()
    second = upload(client, truck)
    assert second.status_code == 200
    assert first["image_id"] == second.json()["image_id"] == hashlib.sha256(truck).hexdigest()
    assert (first["width"], first["height"]) == (1800, 1200)
    assert second.json()["cached"] is True
    assert service.metrics.encoder_seconds._sum.get() == encoder_runs  # no encoder pass for the second upload
    assert "evitsam_cache_hits_total" in client.get("/metrics").text


@pytest.mark.parametrize(
    "prompt",
    [
        {"points": [[500, 375, 1]], "multimask": True},
        {"points": [[500, 375, 1], [1125, 625, 0]]},
        {"boxes": [[425, 600, 700, 875]]},
        {"points": [[575, 750, 0]], "boxes": [[425, 600, 700, 875]], "multimask": True},
    ],
)
def test_predict_masks_equal_sam_predictor(client, truck_id, reference, prompt):
    answer = client.post("/v1/predict", json={"image_id": truck_id, **prompt})
    assert answer.status_code == 200, answer.text
    points = np.array([p[:2] for p in prompt.get("points", [])]) if "points" in prompt else None
    labels = np.array([p[2] for p in prompt.get("points", [])]) if "points" in prompt else None
    box = np.array(prompt["boxes"][0]) if "boxes" in prompt else None
    masks, scores, _ = reference.predict(points, labels, box, multimask_output=prompt.get("multimask", False))
    order = np.argsort(-scores)
    records = answer.json()["masks"]
    assert len(records) == len(masks)
    for record, index in zip(records, order):
        got = decode_coco(record["segmentation"])
        assert np.array_equal(got, masks[index])
        assert record["score"] == pytest.approx(float(scores[index]), abs=1e-6)
        assert record["area"] == int(masks[index].sum())
        ys, xs = np.nonzero(masks[index])
        assert record["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_refinement_with_low_res_handle_equals_sam_predictor(client, truck_id, reference):
    first = client.post("/v1/predict", json={"image_id": truck_id, "points": [[500, 375, 1]], "multimask": True})
    handle = first.json()["low_res"]
    point = np.array([[500, 375]]), np.array([1])
    masks, scores, logits = reference.predict(*point, multimask_output=True)
    best = int(np.argmax(scores))
    second = client.post(
        "/v1/predict", json={"image_id": truck_id, "points": [[500, 375, 1], [1125, 625, 1]], "mask_input": handle}
    )
    assert second.status_code == 200, second.text
    expected, _, _ = reference.predict(
        np.array([[500, 375], [1125, 625]]), np.array([1, 1]), mask_input=logits[best][None], multimask_output=False
    )
    assert np.array_equal(decode_coco(second.json()["masks"][0]["segmentation"]), expected[0])


def test_several_boxes_give_one_mask_each_in_box_order(client, truck_id, reference):
    boxes = [[75, 275, 1725, 850], [425, 600, 700, 875], [1375, 550, 1650, 800]]
    answer = client.post("/v1/predict", json={"image_id": truck_id, "boxes": boxes})
    assert answer.status_code == 200, answer.text
    records = answer.json()["masks"]
    assert len(records) == 3
    for record, box in zip(records, boxes):
        expected, _, _ = reference.predict(box=np.array(box), multimask_output=False)
        got = decode_coco(record["segmentation"])
        assert (got & expected[0]).sum() / (got | expected[0]).sum() > 0.999  # batched vs one at a time


def test_png_format_holds_the_same_mask(client, truck_id):
    prompt = {"image_id": truck_id, "points": [[500, 375, 1]]}
    rle = client.post("/v1/predict", json=prompt).json()["masks"][0]
    png = client.post("/v1/predict", json={**prompt, "format": "png"}).json()["masks"][0]
    import base64

    from PIL import Image

    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(png["segmentation"]["png"]))).convert("L")) > 0
    assert np.array_equal(decoded, decode_coco(rle["segmentation"]))
    assert png["segmentation"]["size"] == [1200, 1800]


def test_predict_with_the_image_in_the_request(client, truck, truck_id):
    import base64

    image = "data:image/jpeg;base64," + base64.b64encode(truck).decode()
    inline = client.post("/v1/predict", json={"image": image, "points": [[500, 375, 1]]})
    by_id = client.post("/v1/predict", json={"image_id": truck_id, "points": [[500, 375, 1]]})
    assert inline.status_code == 200 and inline.json()["image_id"] == truck_id
    assert inline.json()["masks"][0]["segmentation"] == by_id.json()["masks"][0]["segmentation"]


def test_embedding_is_npy_with_what_a_client_needs_to_decode(client, truck_id, reference):
    half = client.get(f"/v1/images/{truck_id}/embedding")
    full = client.get(f"/v1/images/{truck_id}/embedding", params={"dtype": "float32"})
    expected = reference.get_image_embedding().numpy()
    array16, array32 = np.load(io.BytesIO(half.content)), np.load(io.BytesIO(full.content))
    assert array16.dtype == np.float16 and array32.dtype == np.float32
    assert np.array_equal(array32, expected)
    assert np.array_equal(array16, expected.astype(np.float16))
    headers = full.headers
    assert headers["x-original-size"] == "1200,1800"
    assert headers["x-input-size"] == "{},{}".format(*reference.input_size)
    assert headers["x-encoder-size"] == str(reference.model.encoder_size)
    assert headers["x-embedding-shape"] == ",".join(map(str, expected.shape))
    assert_error(client.get(f"/v1/images/{truck_id}/embedding", params={"dtype": "int8"}), 422, "dtype")


@pytest.mark.slow
def test_everything_equals_mask_generator(client, service, truck, truck_id):
    answer = client.post("/v1/everything", json={"image_id": truck_id, "points_per_side": 8})
    assert answer.status_code == 200, answer.text
    iou, stability = service.everything_defaults()
    generator = MaskGenerator(
        image_predictor(service.predictor),
        points_per_side=8,
        pred_iou_thresh=iou,
        stability_score_thresh=stability,
        output_mode="coco_rle",
    )
    expected = generator.generate(read_image(truck))
    records = answer.json()["masks"]
    assert len(records) == len(expected) > 0
    for record, reference_record in zip(records, expected):
        assert record["segmentation"]["counts"] == reference_record["segmentation"]["counts"]
        assert record["area"] == reference_record["area"]
    assert_error(
        client.post("/v1/everything", json={"image_id": truck_id, "points_per_side": 500}), 422, "points_per_side"
    )


def test_model_health_readiness_and_metrics(client, service):
    info = client.get("/v1/model").json()
    assert info["variant"] == service.model.config.name and info["encoder_size"] == service.model.encoder_size
    assert {"runtime", "precision", "version"} <= set(info)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    text = client.get("/metrics").text
    assert 'evitsam_requests_total{method="GET",route="/v1/model",status="200"}' in text
    assert "evitsam_request_seconds_bucket" in text and "evitsam_cache_bytes" in text
    assert client.get("/docs").status_code == 200 and "/v1/predict" in client.get("/openapi.json").json()["paths"]
