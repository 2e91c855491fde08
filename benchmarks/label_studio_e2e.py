"""End to end against a real Label Studio: its ML backend connection, an interactive prediction, a stored mask.

Starts Label Studio (from its own environment, ``--ls-python``) and ``evitsam serve`` on loopback ports, creates a
project with BrushLabels + KeyPointLabels + RectangleLabels through Label Studio's API, uploads a photo as a task,
connects the server as the project's interactive ML backend, asks Label Studio for an interactive prediction from
a positive click, stores the returned brush mask as an annotation, reads it back from Label Studio, decodes it
with Label Studio's own brush decoder and checks it equals ``SamPredictor``'s mask for the same click.

    python benchmarks/label_studio_e2e.py --image photo.jpg --ls-python /path/to/ls-venv/bin/python

Label Studio's legacy API tokens are off by default; ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true`` turns them on for
the organization created at first start, and ``USE_DEFAULT_BANNED_SUBNETS=false`` (with
``SSRF_PROTECTION_ENABLED=false``) lets it reach a backend on loopback.
Not part of the test suite: Label Studio takes half a minute to start.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="mask" toName="image"><Label value="Object" background="#FF0000"/></BrushLabels>
  <KeyPointLabels name="click" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Object" smart="true"/></RectangleLabels>
</View>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method: str, url: str, token: str | None = None, body=None, files=None, timeout: float = 60.0):
    headers = {"Authorization": f"Token {token}"} if token else {}
    data = None
    if files is not None:
        boundary = secrets.token_hex(8)
        name, content = files
        data = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{method} {url} -> HTTP {error.code}: {error.read()[:2000]!r}") from None
    return json.loads(text) if text else None


def wait_for(url: str, seconds: float, process: subprocess.Popen, log: Path, start: float) -> float:
    """Seconds from ``start`` (the process's launch) until ``url`` answers."""
    while time.perf_counter() - start < seconds:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited early (code {process.returncode}); log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return time.perf_counter() - start
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {seconds:.0f} s; log:\n{log.read_text()[-3000:]}")


def label_studio_decoder(ls_python: str):
    """Label Studio's own ``decode_rle`` (label_studio_sdk.converter.brush), loaded from its environment's file."""
    path = subprocess.run(
        [
            ls_python,
            "-c",
            "import importlib.util as u; print(u.find_spec('label_studio_sdk').submodule_search_locations[0])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    spec = importlib.util.spec_from_file_location("ls_brush", Path(path) / "converter" / "brush.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.decode_rle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, required=True, help="a photo to annotate")
    parser.add_argument("--ls-python", default="label-studio-venv/bin/python", help="python of Label Studio's venv")
    parser.add_argument("--click", type=float, nargs=2, default=(0.3, 0.5), help="click, as fractions of the image")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for each server to start")
    parser.add_argument(
        "--ls-data", type=Path, help="Label Studio data folder kept between runs (its first start migrates a database)"
    )
    args = parser.parse_args()

    from evitsam import SamPredictor, load_model
    from evitsam.io import read_image

    image = read_image(args.image)
    height, width = image.shape[:2]
    ls_port, ev_port = free_port(), free_port()
    ls_url, ev_url = f"http://127.0.0.1:{ls_port}", f"http://127.0.0.1:{ev_port}"
    work = Path(tempfile.mkdtemp(prefix="ls-e2e-"))
    data_dir = args.ls_data or work / "ls"
    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir / "e2e-token"  # the user and its token are created at the first start only
    if not token_file.exists():
        token_file.write_text(secrets.token_hex(20))
    token = token_file.read_text().strip()
    env = dict(
        os.environ,
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        SSRF_PROTECTION_ENABLED="false",
        USE_DEFAULT_BANNED_SUBNETS="false",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
    )
    ls_bin = str(Path(args.ls_python).parent / "label-studio")
    ls_log, ev_log = work / "label-studio.log", work / "evitsam.log"
    processes = []
    report = {}
    try:
        ls_cmd = [
            ls_bin,
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(ls_port),
            "--username",
            "e2e@example.com",
            "--password",
            secrets.token_hex(8),
            "--user-token",
            token,
        ]
        launched = time.perf_counter()
        processes.append(subprocess.Popen(ls_cmd, env=env, stdout=ls_log.open("w"), stderr=subprocess.STDOUT))
        ev_cmd = [
            sys.executable,
            "-m",
            "evitsam",
            "serve",
            "--port",
            str(ev_port),
            "--label-studio-url",
            ls_url,
            "--label-studio-token",
            token,
        ]
        processes.append(subprocess.Popen(ev_cmd, stdout=ev_log.open("w"), stderr=subprocess.STDOUT))
        report["evitsam_start_s"] = round(wait_for(f"{ev_url}/readyz", args.timeout, processes[1], ev_log, launched), 1)
        report["label_studio_start_s"] = round(
            wait_for(f"{ls_url}/health", args.timeout, processes[0], ls_log, launched), 1
        )

        project = call("POST", f"{ls_url}/api/projects", token, {"title": "evitsam e2e", "label_config": LABEL_CONFIG})
        call(
            "POST",
            f"{ls_url}/api/projects/{project['id']}/import",
            token,
            files=(args.image.name, args.image.read_bytes()),
        )
        task = call("GET", f"{ls_url}/api/projects/{project['id']}/tasks", token)[0]
        backend = call(
            "POST",
            f"{ls_url}/api/ml",
            token,
            {"url": ev_url, "project": project["id"], "title": "evitsam", "is_interactive": True},
        )
        x, y = args.click
        context = {
            "result": [
                {
                    "original_width": width,
                    "original_height": height,
                    "image_rotation": 0,
                    "value": {"x": x * 100, "y": y * 100, "width": 0.5, "keypointlabels": ["Object"]},
                    "is_positive": True,
                    "id": "click1",
                    "from_name": "click",
                    "to_name": "image",
                    "type": "keypointlabels",
                    "origin": "manual",
                }
            ]
        }
        start = time.perf_counter()
        answer = call(
            "POST",
            f"{ls_url}/api/ml/{backend['id']}/interactive-annotating",
            token,
            {"task": task["id"], "context": context},
        )
        report["interactive_prediction_s"] = round(time.perf_counter() - start, 3)
        if "data" not in answer:
            raise RuntimeError(f"Label Studio reported no prediction: {answer}")
        result = answer["data"]["result"]
        stored = call("POST", f"{ls_url}/api/tasks/{task['id']}/annotations", token, {"result": result})
        stored = call("GET", f"{ls_url}/api/annotations/{stored['id']}", token)
        brush = next(r for r in stored["result"] if r["type"] == "brushlabels")
        decoded = label_studio_decoder(args.ls_python)(brush["value"]["rle"])
        ls_mask = decoded.reshape(brush["original_height"], brush["original_width"], 4)[:, :, 3] > 0

        predictor = SamPredictor(load_model())
        predictor.set_image(image)
        masks, _, _ = predictor.predict(np.array([[x * width, y * height]]), np.array([1]), multimask_output=False)
        ours = masks[0]
        report.update(
            image=f"{args.image.name} {width}x{height}",
            label_studio_version=call("GET", f"{ls_url}/api/version", token).get("release"),
            task_image=task["data"]["image"],
            brush_labels=brush["value"]["brushlabels"],
            mask_pixels=int(ls_mask.sum()),
            identical_to_sam_predictor=bool(ls_mask.shape == ours.shape and (ls_mask == ours).all()),
        )
        print(json.dumps(report, indent=2))
        return 0 if report["identical_to_sam_predictor"] and report["mask_pixels"] > 0 else 1
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
