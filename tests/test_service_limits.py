"""The HTTP service under bad input and load: every refusal names the field, the server stays healthy;
limits, the bounded cache, one encoder pass per image, token auth, CORS, and a real uvicorn process."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import assert_error, png_bytes, upload

from evitsam.service import Service, ServiceConfig, create_app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A small real-looking image built here: smooth gradients and a bright disc."""
    y, x = np.mgrid[0:240, 0:320]
    image = np.stack([x * 255 // 320, y * 255 // 240, np.full_like(x, 90)], axis=2).astype(np.uint8)
    image[(x - 160) ** 2 + (y - 120) ** 2 < 50**2] = (250, 240, 30)
    return png_bytes(image)


@pytest.fixture(scope="module")
def photo_id(client, photo) -> str:
    return upload(client, photo, "disc.png").json()["image_id"]


def test_uploads_that_are_not_images_are_refused(client, photo):
    assert_error(upload(client, b"just some text"), 415, "file", "not an image")
    assert_error(upload(client, photo[: len(photo) // 2]), 415, "file", "cannot read image")
    assert_error(upload(client, b""), 422, "file", "empty")
    assert_error(upload(client, png_bytes(np.zeros((4, 4, 3), np.uint8))), 422, "file", "smallest")
    wrong_field = client.post("/v1/images", files={"image": ("a.png", photo, "image/png")})
    assert_error(wrong_field, 422, "file", "no field 'file'")
    assert_error(client.post("/v1/images", content=photo, headers={"content-type": "image/png"}), 415, "file")


def test_decompression_bomb_is_refused_before_decoding(client):
    bomb = png_bytes(np.zeros((2000, 3000), bool), "1")  # 6 MP of one colour: a few kB, over the 5 MP limit
    assert len(bomb) < 100_000
    assert_error(upload(client, bomb), 413, "file", "million pixels")


def test_upload_over_the_limit_is_refused(client):
    assert_error(upload(client, b"\xff" * (3 * 2**20)), 413, "file", "--max-upload-mb")


def test_body_limit_refuses_while_streaming(service):
    """The app stops reading a body once it passes the limit: the rest is never asked for."""
    app = create_app(service)
    chunk, pulled = b"x" * 2**20, []

    async def run() -> list[dict]:
        async def receive():
            pulled.append(1)
            return {"type": "http.request", "body": chunk, "more_body": len(pulled) < 100}

        sent = []

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/predict",
            "raw_path": b"/v1/predict",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
            "http_version": "1.1",
            "scheme": "http",
            "server": ("test", 80),
            "client": ("test", 1),
            "root_path": "",
        }
        await app(scope, receive, send)
        return sent

    sent = asyncio.run(run())
    assert sent[0]["status"] == 413
    assert len(pulled) < 10  # of 100 MB offered, a few MB were read


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({"image_id": "0" * 64, "points": [[5, 5, 1]]}, 404, "image_id", ("upload it again",)),
        ({"points": [[5, 5, 1]]}, 422, "image_id", ("exactly one",)),
        ({"image_id": "ID", "points": [[400, 10, 1]]}, 422, "points[0]", ("320x240",)),
        ({"image_id": "ID", "points": [[10, -1, 1]]}, 422, "points[0]", ("outside",)),
        ({"image_id": "ID", "points": [[10, 10, 2]]}, 422, "points[0][2]", ()),
        ({"image_id": "ID", "points": [[10, 10]]}, 422, "points[0][2]", ("required",)),
        ({"image_id": "ID", "boxes": [[50, 50, 40, 60]]}, 422, "boxes[0]", ("x0 < x1",)),
        ({"image_id": "ID", "boxes": [[0, 0, 330, 100]]}, 422, "boxes[0]", ("320x240",)),
        ({"image_id": "ID"}, 422, "points", ("at least one prompt",)),
        ({"image_id": "ID", "points": [[5, 5, 1]] * 65}, 422, "points", ("at most 64",)),
        ({"image_id": "ID", "points": [[5, 5, 1]], "mask_input": "nope"}, 404, "mask_input", ("handle",)),
        ({"image_id": "ID", "points": [[5, 5, 1]], "format": "jpeg"}, 422, "format", ()),
        ({"image_id": "ID", "point": [[5, 5, 1]]}, 422, "point", ("unknown field",)),
        ({"image": "not base64!", "points": [[5, 5, 1]]}, 422, "image", ("base64",)),
    ],
)
def test_bad_prompts_are_refused_with_the_field_named(client, photo_id, body, status, field, words):
    if body.get("image_id") == "ID":
        body = {**body, "image_id": photo_id}
    assert_error(client.post("/v1/predict", json=body), status, field, *words)


def test_nan_and_invalid_json_are_refused(client, photo_id):
    nan = f'{{"image_id": "{photo_id}", "points": [[NaN, 5, 1]]}}'
    assert_error(
        client.post("/v1/predict", content=nan, headers={"content-type": "application/json"}),
        422,
        "points[0][0]",
        "finite",
    )
    broken = client.post("/v1/predict", content=b'{"image_id": ', headers={"content-type": "application/json"})
    assert_error(broken, 400, "body", "JSON")


def test_low_res_handle_of_another_image_is_refused(client, photo_id):
    other = upload(client, png_bytes(np.full((120, 160, 3), 70, np.uint8)))
    handle = client.post("/v1/predict", json={"image_id": photo_id, "points": [[160, 120, 1]]}).json()["low_res"]
    refused = client.post(
        "/v1/predict", json={"image_id": other.json()["image_id"], "points": [[160, 120, 1]], "mask_input": handle}
    )
    assert_error(refused, 422, "mask_input", "another image")


def test_server_stays_healthy_after_refusals(client, photo_id):
    for _ in range(3):
        upload(client, b"garbage")
        client.post("/v1/predict", json={"image_id": photo_id, "points": [[1e9, 0, 1]]})
    assert client.get("/readyz").status_code == 200
    answer = client.post("/v1/predict", json={"image_id": photo_id, "points": [[160, 120, 1]]})
    assert answer.status_code == 200 and answer.json()["masks"][0]["area"] > 0


def test_cache_is_bounded_in_bytes_and_evicts_the_oldest():
    small = Service.load(ServiceConfig(cache_mb=16))  # room for two or three images of this size
    client = TestClient(create_app(small))
    ids = []
    for i in range(6):
        image = np.full((200, 300, 3), 40 * i, np.uint8)
        image[50:150, 100 + 10 * i : 200] = 250
        ids.append(upload(client, png_bytes(image)).json()["image_id"])
    assert small.images.nbytes <= small.config.cache_bytes
    assert 1 <= len(small.images) < 6 and small.images.evictions > 0
    assert_error(client.post("/v1/predict", json={"image_id": ids[0], "points": [[5, 5, 1]]}), 404, "image_id")
    assert client.post("/v1/predict", json={"image_id": ids[-1], "points": [[150, 100, 1]]}).status_code == 200


def test_concurrent_uploads_of_one_image_run_the_encoder_once(photo):
    svc = Service.load(ServiceConfig())
    engine, calls = svc.predictor.engine, []
    embed = engine.embed

    def counting_embed(images):
        calls.append(1)
        time.sleep(0.2)  # long enough for every request to arrive while the first is encoding
        return embed(images)

    engine.embed = counting_embed
    app = create_app(svc)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            files = lambda: {"file": ("p.png", photo, "image/png")}  # noqa: E731
            good = await asyncio.gather(*[http.post("/v1/images", files=files()) for _ in range(8)])
            bad = await asyncio.gather(*[http.post("/v1/images", files={"file": ("x", b"no")}) for _ in range(4)])
            return good, bad

    answers, refused = asyncio.run(run())
    assert [a.status_code for a in answers] == [200] * 8
    assert len({a.json()["image_id"] for a in answers}) == 1
    assert len(calls) == 1
    assert [a.status_code for a in refused] == [415] * 4  # one failed computation answers every waiter
    assert svc.images._pending == {}


def test_token_is_required_on_every_route_but_health(photo):
    svc = Service.load(ServiceConfig(token="s3cret"))
    svc.warm_up()
    client = TestClient(create_app(svc))
    assert_error(client.get("/v1/model"), 401, "Authorization")
    assert_error(client.get("/v1/model", headers={"Authorization": "Bearer wrong"}), 401, "token")
    assert_error(upload(client, photo), 401, "Authorization")
    assert_error(client.get("/metrics"), 401, "Authorization")
    assert client.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    basic = base64.b64encode(b"labelstudio:s3cret").decode()  # Label Studio's ML backend basic auth
    assert client.get("/v1/model", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    for path in ("/healthz", "/readyz", "/health"):
        assert client.get(path).status_code == 200


def test_cors_is_off_unless_an_origin_is_given(client):
    origin = {"Origin": "https://annotate.example"}
    assert "access-control-allow-origin" not in client.get("/v1/model", headers=origin).headers
    svc = Service.load(ServiceConfig(cors_origins=["https://annotate.example"]))
    allowed = TestClient(create_app(svc)).get("/v1/model", headers=origin)
    assert allowed.headers["access-control-allow-origin"] == "https://annotate.example"


@pytest.mark.slow
def test_real_server_process_serves_and_stops_on_ctrl_c(photo, tmp_path):
    """A real server process and a real client process (tests/real_server_client.py): ready, upload, predict,
    413 from a declared oversized body, Ctrl-C stops it cleanly with exit 0."""
    (tmp_path / "photo.png").write_bytes(photo)
    client = [sys.executable, str(Path(__file__).with_name("real_server_client.py")), str(tmp_path / "photo.png")]
    done = subprocess.run(client, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "nano", "--checkpoint", "weights.pt"], "either --model or --checkpoint"),
        (["--workers", "0"], "workers must be a positive integer"),
        (["--cache-mb", "-5"], "cache_mb must be a positive number"),
        (["--local-files-root", "/no/such/folder"], "local_files_root must be an existing folder"),
        (["--label-studio-url", "ftp://host"], "label_studio_url must start with http"),
    ],
)
def test_serve_command_refuses_bad_options_in_one_line(args, words):
    from typer.testing import CliRunner

    from evitsam.cli import app

    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
