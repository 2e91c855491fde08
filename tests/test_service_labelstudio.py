"""The Label Studio ML backend: requests shaped exactly as Label Studio sends them (``label_studio.ml.api_connector``),
brush masks checked with Label Studio's own decoder, and the only places images are read from."""

from __future__ import annotations

import base64
import importlib.util
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from clients import install_client
from fastapi.testclient import TestClient
from service_support import assert_error

from evitsam import SamPredictor
from evitsam.io import read_image
from evitsam.service import Service, ServiceConfig, create_app
from evitsam.service.brush import mask_to_brush_rle

CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Truck" background="#FF0000"/></BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Truck" smart="true"/></KeyPointLabels>
  <RectangleLabels name="tag3" toName="image" smart="true"><Label value="Truck" smart="true"/></RectangleLabels>
</View>"""
TOKEN = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def ls_decode():
    """``decode_rle`` of the real label-studio-converter package (its brush module needs only numpy and Pillow)."""
    folder = install_client("label-studio-converter==0.0.59")
    spec = importlib.util.spec_from_file_location("ls_brush", folder / "label_studio_converter" / "brush.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.decode_rle


@pytest.fixture(scope="module")
def truck(shared_data: Path) -> bytes:
    return (shared_data / "images" / "truck.jpg").read_bytes()


class _Host(BaseHTTPRequestHandler):
    """A stand-in Label Studio host: serves the photo at /data/upload/1/truck.jpg to requests with its token."""

    def __init__(self, image: bytes, seen: list, *args, **kwargs):
        self.image, self.seen = image, seen
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802
        self.seen.append((self.path, self.headers.get("Authorization")))
        ok = self.path == "/data/upload/1/truck.jpg" and self.headers.get("Authorization") == f"Token {TOKEN}"
        self.send_response(200 if ok else 401)
        self.end_headers()
        if ok:
            self.wfile.write(self.image)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def host(truck):
    seen: list = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Host, truck, seen))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


@pytest.fixture(scope="module")
def local_root(tmp_path_factory, truck) -> Path:
    root = tmp_path_factory.mktemp("local-files")
    (root / "photos").mkdir()
    (root / "photos" / "truck.jpg").write_bytes(truck)
    (root.parent / "secret.jpg").write_bytes(truck)
    (root / "photos" / "link.jpg").symlink_to(root.parent / "secret.jpg")  # inside the root, pointing out of it
    return root


@pytest.fixture(scope="module")
def client(host, local_root) -> TestClient:
    config = ServiceConfig(label_studio_url=host[0], label_studio_token=TOKEN, local_files_root=local_root)
    service = Service.load(config)
    service.warm_up()
    return TestClient(create_app(service))


@pytest.fixture(scope="module")
def reference(client, truck) -> SamPredictor:
    predictor = SamPredictor(client.app.state.service.model)
    predictor.set_image(read_image(truck))
    return predictor


def keypoint(x: float, y: float, positive: bool = True) -> dict:
    return {
        "original_width": 1800, "original_height": 1200, "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.32, "keypointlabels": ["Truck"]},
        "is_positive": positive, "id": "fBWv1t0S2L", "from_name": "tag2", "to_name": "image",
        "type": "keypointlabels", "origin": "manual",
    }  # fmt: skip


def rectangle(x: float, y: float, w: float, h: float) -> dict:
    return {
        "original_width": 1800, "original_height": 1200, "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["Truck"]},
        "id": "r1", "from_name": "tag3", "to_name": "image", "type": "rectanglelabels", "origin": "manual",
    }  # fmt: skip


def predict_request(image: str, context: dict | None) -> dict:
    """What ``MLApi._prep_prediction_req`` posts."""
    task = {"id": 7, "data": {"image": image}, "meta": {}, "annotations": [], "predictions": [], "drafts": []}
    return {
        "tasks": [task],
        "project": "1.1764460800",
        "label_config": CONFIG,
        "params": {"login": None, "password": None, "context": context},
    }


def brush_mask(answer, ls_decode) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["results"]
    (result,) = prediction["result"]
    assert result["type"] == "brushlabels" and result["from_name"] == "tag" and result["to_name"] == "image"
    assert result["value"]["format"] == "rle" and result["value"]["brushlabels"] == ["Truck"]
    height, width = result["original_height"], result["original_width"]
    return ls_decode(result["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 0


def test_brush_rle_decodes_with_label_studio_decoder(ls_decode):
    rng = np.random.default_rng(0)
    masks = [rng.random((37, 41)) < p for p in (0.0, 0.05, 0.5, 1.0)]
    big = np.zeros((700, 900), bool)  # runs longer than the largest length field (2^16 values)
    big[100:650, 50:880] = True
    for mask in [*masks, big, np.ones((1, 1), bool)]:
        decoded = ls_decode(mask_to_brush_rle(mask)).reshape(*mask.shape, 4)
        assert np.array_equal(decoded[:, :, 3] == 255, mask) and set(np.unique(decoded)) <= {0, 255}


def test_keypoints_from_the_label_studio_host_give_sam_predictor_mask(client, host, ls_decode, reference):
    context = {"result": [keypoint(27.78, 31.25), keypoint(62.5, 52.08, positive=False)]}
    answer = client.post("/predict", json=predict_request("/data/upload/1/truck.jpg", context))
    points = np.array([[0.2778 * 1800, 0.3125 * 1200], [0.625 * 1800, 0.5208 * 1200]])
    expected, _, _ = reference.predict(points, np.array([1, 0]), multimask_output=False)
    assert np.array_equal(brush_mask(answer, ls_decode), expected[0])
    assert host[1][-1] == ("/data/upload/1/truck.jpg", f"Token {TOKEN}")
    fetched = len(host[1])
    client.post("/predict", json=predict_request("/data/upload/1/truck.jpg", {"result": [keypoint(50, 50)]}))
    assert len(host[1]) == fetched  # the next click on the task reuses the cached embedding


def test_rectangle_from_a_local_file_gives_the_box_mask(client, ls_decode, reference):
    context = {"result": [rectangle(23.6, 50.0, 15.3, 22.9)]}
    answer = client.post("/predict", json=predict_request("/data/local-files/?d=photos/truck.jpg", context))
    box = np.array([0.236 * 1800, 0.5 * 1200, (0.236 + 0.153) * 1800, (0.5 + 0.229) * 1200])
    expected, _, _ = reference.predict(box=box, multimask_output=False)
    assert np.array_equal(brush_mask(answer, ls_decode), expected[0])


def test_data_uri_image(client, truck, ls_decode, reference):
    uri = "data:image/jpeg;base64," + base64.b64encode(truck).decode()
    answer = client.post("/predict", json=predict_request(uri, {"result": [keypoint(50, 50)]}))
    expected, _, _ = reference.predict(np.array([[900.0, 600.0]]), np.array([1]), multimask_output=False)
    assert np.array_equal(brush_mask(answer, ls_decode), expected[0])


def test_without_context_there_is_nothing_to_predict(client):
    answer = client.post("/predict", json=predict_request("/data/upload/1/truck.jpg", None))
    assert answer.status_code == 200 and answer.json()["results"] == []


@pytest.mark.parametrize(
    ("image", "status"),
    [
        ("/etc/passwd", 502),  # a path on the Label Studio host: asked of that host only (which has no such file)
        ("file:///etc/passwd", 422),
        ("http://example.com/truck.jpg", 422),
        ("//example.com/truck.jpg", 422),
        ("http://localhost:{port}/data/upload/1/truck.jpg", 422),  # the same server under another name
        ("/data/local-files/?d=../secret.jpg", 422),
        ("/data/local-files/?d=/etc/passwd", 422),
        ("/data/local-files/?d=photos/../../secret.jpg", 422),
        ("/data/local-files/?d=photos/link.jpg", 404),
    ],
)
def test_images_are_read_only_from_the_allowed_places(client, host, image, status):
    port = host[0].rsplit(":", 1)[1]
    seen = len(host[1])
    answer = client.post("/predict", json=predict_request(image.format(port=port), {"result": [keypoint(50, 50)]}))
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["field"] == "tasks[0].data.image"
    assert all(path.startswith("/etc/passwd") for path, _ in host[1][seen:])  # nothing else was fetched


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.update(tasks=[]), "tasks"),
        (lambda r: r["tasks"][0].pop("data"), "tasks[0].data.image"),
        (lambda r: r.update(label_config="<View><Image name='image' value='$image'/></View>"), "label_config"),
        (lambda r: r.update(label_config="<View><BrushLabels"), "label_config"),
        (lambda r: r["params"]["context"]["result"][0]["value"].update(x="left"), "params.context.result[0].value.x"),
        (lambda r: r["params"]["context"]["result"][0]["value"].update(y=140), "params.context.result[0].value.y"),
        (
            lambda r: r["params"]["context"]["result"][0].update(original_width=99),
            "params.context.result[0].original_width",
        ),
        (lambda r: r["params"]["context"].update(result=[{"type": "choices", "value": {}}]), "params.context.result"),
    ],
)
def test_malformed_label_studio_requests_name_the_field(client, change, field):
    request = predict_request("/data/upload/1/truck.jpg", {"result": [keypoint(50, 50)]})
    change(request)
    answer = client.post("/predict", json=request)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text


def test_health_setup_versions_and_webhook(client):
    health = client.get("/health").json()
    assert health["status"] == "UP"
    setup = {"project": "1.1764460800", "schema": CONFIG, "hostname": "http://localhost:8080", "access_token": "x"}
    version = client.post("/setup", json=setup).json()["model_version"]
    assert version == health["model_version"] and client.get("/versions").json()["versions"] == [version]
    assert_error(client.post("/setup", json={**setup, "schema": "<View/>"}), 422, "schema", "BrushLabels")
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED", "annotation": {}}).status_code == 200
    assert_error(client.post("/webhook", content=b"{", headers={"content-type": "application/json"}), 400, "body")
    # /predict without label_config uses the one /setup stored for the project
    request = predict_request("/data/upload/1/truck.jpg", {"result": [keypoint(50, 50)]})
    del request["label_config"]
    assert client.post("/predict", json=request).status_code == 200
