"""The web app's server side without a browser: page and assets, the browser decoder, folder mode and its store."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from service_support import assert_error

from evitsam.io import read_image
from evitsam.service import Service, ServiceConfig, create_app
from evitsam.service.store import AnnotationStore
from evitsam.service.webapp import WEB_DIR, default_db


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("store") / "photos"
    (root / "sub").mkdir(parents=True)
    shutil.copy(shared_data / "images" / "dog.jpg", root / "dog.jpg")
    shutil.copy(shared_data / "images" / "truck.jpg", root / "sub" / "truck.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def service(folder: Path) -> Service:
    svc = Service.load(ServiceConfig(cache_mb=64, images=folder))
    svc.warm_up()
    return svc


@pytest.fixture(scope="module")
def client(service: Service) -> TestClient:
    return TestClient(create_app(service))


def test_store_keeps_objects_across_connections_and_refuses_bad_masks(tmp_path):
    mask = np.zeros((40, 60), bool)
    mask[5:20, 10:30] = True
    store = AnnotationStore(tmp_path / "a.sqlite")
    first = store.add("x.jpg", "cat", (40, 60), rle(mask)["counts"], 0.9)
    store.add("y.jpg", "dog", (40, 60), rle(~mask)["counts"])
    assert (first["area"], first["bbox"]) == (300, [10.0, 5.0, 20.0, 15.0])
    store.close()
    again = AnnotationStore(tmp_path / "a.sqlite")
    assert [o["label"] for o in again.objects()] == ["cat", "dog"]
    assert again.counts() == {"x.jpg": 1, "y.jpg": 1}
    assert again.delete(first["id"]) and not again.delete(first["id"])
    assert [o["image"] for o in again.objects()] == ["y.jpg"]
    with pytest.raises(ValueError, match="label"):
        again.add("x.jpg", "  ", (40, 60), rle(mask)["counts"])
    with pytest.raises(ValueError, match="empty"):
        again.add("x.jpg", "cat", (40, 60), rle(np.zeros((40, 60), bool))["counts"])
    with pytest.raises(IsADirectoryError):
        AnnotationStore(tmp_path)


def test_config_for_folder_mode(tmp_path):
    with pytest.raises(ValueError, match="images"):
        ServiceConfig(images=tmp_path / "missing")
    with pytest.raises(ValueError, match="give images"):
        ServiceConfig(db=tmp_path / "a.sqlite")
    assert default_db(tmp_path / "photos") == tmp_path / "photos.evitsam.sqlite"


def test_page_and_assets_are_served_cross_origin_isolated(client):
    page = client.get("/")
    assert page.status_code == 200 and 'src="/web/app.mjs"' in page.text
    for response in (page, client.get("/web/app.mjs"), client.get("/v1/model")):
        assert response.headers["cross-origin-opener-policy"] == "same-origin"
        assert response.headers["cross-origin-embedder-policy"] == "require-corp"
    assert client.get("/web/decoder.mjs").headers["content-type"].startswith("text/javascript")
    wasm = client.get("/web/vendor/ort-wasm-simd-threaded.wasm", headers={"Accept-Encoding": "identity"})
    assert wasm.headers["content-type"] == "application/wasm" and wasm.headers["content-encoding"] == "gzip"
    raw = (WEB_DIR / "vendor" / "ort-wasm-simd-threaded.wasm.gz").read_bytes()
    assert gzip.decompress(raw)[:4] == b"\0asm"
    assert (WEB_DIR / "vendor" / "LICENSE").read_text().startswith("onnxruntime-web")
    for path in ("/web/../webapp.py", "/web/%2e%2e/webapp.py", "/web/missing.js", "/web/.hidden"):
        assert client.get(path).status_code == 404, path


def test_page_loads_without_the_token_the_api_needs(service):
    config = ServiceConfig(cache_mb=64, token="secret")
    client = TestClient(create_app(Service(service.predictor, config)))
    assert client.get("/").status_code == 200
    assert client.get("/web/app.mjs").status_code == 200
    assert client.get("/v1/web/config").status_code == 401
    assert client.get("/v1/web/config", headers={"Authorization": "Bearer secret"}).status_code == 200


def test_browser_graphs_compute_the_predictors_low_res_masks(client, service, shared_data):
    """The page's graphs (the image side once per image, with a mask prompt, then each prompt; the rest graph is
    tested in test_web_graph.py) give the predictor's own low-res masks and scores."""
    config = client.get("/v1/web/config").json()
    assert config["low_res_size"] == service.model.low_res_size and config["folder"]["name"] == "photos"
    sessions = {
        name: ort.InferenceSession(client.get(url).content, providers=["CPUExecutionProvider"])
        for name, url in config["graphs"].items()
    }
    assert_error(client.get("/v1/web/encoder.onnx"), 404, "name")
    predictor = service.predictor
    predictor.set_image(read_image(shared_data / "images" / "dog.jpg"))
    points = np.array([[300.0, 400.0], [560.0, 230.0]])
    frame = predictor.transform.apply_coords(points, predictor.original_size)
    embedding = predictor.get_image_embedding().float().numpy()
    names = [output.name for output in sessions["image"].get_outputs()]
    low = service.model.low_res_size
    grid = low // 4
    side = dict(zip(names, sessions["image"].run(None, {"image_embeddings": embedding})))

    def run(points: np.ndarray, labels: list[float], multimask: bool, mask: np.ndarray | None = None) -> list:
        feeds = {
            **side,
            "point_coords": np.concatenate([points, [[0, 0]]])[None].astype(np.float32),
            "point_labels": np.array([[*labels, -1]], np.float32),
            "extent": np.array([grid, grid], np.int64),
            "multimask": np.array([float(multimask)], np.float32),
        }
        if mask is None:
            return sessions["prompt"].run(None, feeds)[:3]
        return sessions["refine"].run(None, {**feeds, "mask_input": mask})[:3]  # with a mask prompt

    mask, iou, token = run(frame[:1], [1], multimask=True)  # one click: the best of tokens 1..3
    _, scores, low_res = predictor.predict(points[:1], np.array([1]), multimask_output=True)
    np.testing.assert_allclose(iou[0, 1:], scores, atol=1e-4)
    assert token[0] == 1 + np.argmax(scores)
    np.testing.assert_allclose(mask[0, 0], low_res[np.argmax(scores)], atol=1e-3)

    best = low_res[np.argmax(scores)][None, None].astype(np.float32)
    mask, iou, token = run(frame, [1, 0], multimask=False, mask=best)  # token 0: the single-mask output
    _, scores, low_res = predictor.predict(points, np.array([1, 0]), mask_input=best[0], multimask_output=False)
    np.testing.assert_allclose(iou[0, :1], scores, atol=1e-4)
    assert token[0] == 0
    np.testing.assert_allclose(mask[0], low_res, atol=1e-3)
    predictor.reset_image()


def test_folder_mode_lists_embeds_saves_and_exports(client, folder):
    listing = client.get("/v1/folder").json()
    assert [i["name"] for i in listing["images"]] == ["dog.jpg", "sub/truck.jpg"]
    assert listing["db"] == str(folder.parent / "photos.evitsam.sqlite")
    embedded = client.post("/v1/folder/images/1/embed").json()
    assert (embedded["width"], embedded["height"]) == (1800, 1200)
    assert client.get("/v1/folder/images/1/file").content == (folder / "sub" / "truck.jpg").read_bytes()
    mask = np.zeros((1200, 1800), bool)
    mask[100:300, 200:500] = True
    saved = client.post("/v1/folder/images/1/objects", json={"label": "truck", "segmentation": rle(mask), "score": 0.5})
    assert saved.status_code == 200, saved.text
    assert [o["label"] for o in client.get("/v1/folder/images/1/objects").json()["objects"]] == ["truck"]
    assert client.get("/v1/folder").json()["images"][1]["objects"] == 1
    document = client.get("/v1/folder/coco")
    path = folder.parent / "export.json"
    path.write_bytes(document.content)
    coco = COCO(str(path))
    assert {i["file_name"]: (i["height"], i["width"]) for i in coco.dataset["images"]} == {
        "dog.jpg": (534, 800),
        "sub/truck.jpg": (1200, 1800),
    }
    assert np.array_equal(coco.annToMask(coco.loadAnns(coco.getAnnIds())[0]).astype(bool), mask)
    assert client.delete(f"/v1/folder/objects/{saved.json()['id']}").json() == {"deleted": saved.json()["id"]}
    assert client.get("/v1/folder/images/1/objects").json()["objects"] == []


def test_folder_mode_refusals(client):
    assert_error(client.get("/v1/folder/images/7/objects"), 404, "index", "holds 2 images")
    assert_error(
        client.post("/v1/folder/images/0/objects", json={"label": "x", "segmentation": {"size": [2]}}),
        422,
        "segmentation.size",
    )
    bad = {"label": "x", "segmentation": {"size": [534, 800], "counts": 5}}
    assert_error(client.post("/v1/folder/images/0/objects", json=bad), 422, "segmentation.counts")
    empty = {"label": "x", "segmentation": rle(np.zeros((534, 800), bool))}
    assert_error(client.post("/v1/folder/images/0/objects", json=empty), 422, "segmentation", "empty")
    assert_error(client.delete("/v1/folder/objects/999"), 404, "object_id")
