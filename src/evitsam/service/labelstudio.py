"""A Label Studio ML backend: Label Studio's HTTP protocol for interactive segmentation.

Label Studio posts ``/predict`` with the task and, while an annotator clicks, a ``context`` of ``keypointlabels``
(positive or negative) and ``rectanglelabels`` results in percent of the image; the answer is one
``brushlabels`` result in Label Studio's brush RLE. Images come from the task's data, and only from: a URL on the
configured Label Studio host (fetched with its token), a ``data:`` URI, or a file under the configured
local-files root. Nothing else is fetched or opened.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ElementTree
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from .. import __version__
from .brush import mask_to_brush_rle
from .errors import ApiError
from .prompts import PredictRequest, check_prompts, run_prompts
from .routes import decode_base64_image
from .state import Service
from .uploads import read_body

MAX_LABEL_CONFIG = 256 * 1024
URL_MEMORY = 1024  # task image URL -> image id, so repeated clicks on one task do not fetch it again


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect could lead to another host: never follow
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def parse_label_config(config: str, field: str) -> tuple[str, str, str]:
    """(BrushLabels name, the Image tag's name, the task data key of the image) from a labeling config."""
    if len(config) > MAX_LABEL_CONFIG or re.search(r"<!(DOCTYPE|ENTITY)", config, re.IGNORECASE):
        raise ApiError(422, field, "expected a Label Studio labeling config (XML without DOCTYPE/ENTITY, < 256 KB)")
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError as error:
        raise ApiError(422, field, f"the labeling config is not valid XML: {error}") from None
    brush = next((tag for tag in root.iter() if tag.tag.lower() == "brushlabels"), None)
    if brush is None or not brush.get("name") or not brush.get("toName"):
        raise ApiError(422, field, "the labeling config needs a <BrushLabels name=... toName=...> tag for the masks")
    to_name = brush.get("toName")
    image = next((t for t in root.iter() if t.tag.lower() == "image" and t.get("name") == to_name), None)
    if image is None or not (image.get("value") or "").startswith("$"):
        raise ApiError(422, field, f'the labeling config needs an <Image name={to_name!r} value="$..."> tag')
    return brush.get("name"), to_name, image.get("value")[1:]


class LabelStudio:
    """The backend's state: labeling configs by project, and where task images were found before."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.configs: dict[str, str] = {}
        self.urls: OrderedDict[str, str] = OrderedDict()
        self._access: tuple[str, float] | None = None  # (Bearer access token, expiry) for JWT API tokens
        self._setup_token: str | None = None

    @property
    def model_version(self) -> str:
        return f"evitsam-{self.service.model.config.name}-{__version__}"

    # ------------------------------------------------------------------------------------- images
    def _auth_header(self) -> dict[str, str]:
        token = self.service.config.label_studio_token or self._setup_token
        if not token:
            return {}
        if token.count(".") != 2:  # a legacy API token
            return {"Authorization": f"Token {token}"}
        # a personal access token (a JWT refresh token): exchanged for a short-lived access token
        if self._access is None or self._access[1] < time.time():
            url = f"{self.service.config.label_studio_url}/api/token/refresh/"
            body = json.dumps({"refresh": token}).encode()
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
            with _opener.open(request, timeout=self.service.config.fetch_timeout_s) as response:
                access = json.loads(response.read(65536))["access"]
            self._access = (access, time.time() + 240)
        return {"Authorization": f"Bearer {self._access[0]}"}

    def _fetch(self, url: str, field: str) -> bytes:
        limit = self.service.config.max_upload_bytes
        request = urllib.request.Request(url, headers=self._auth_header())
        try:
            with _opener.open(request, timeout=self.service.config.fetch_timeout_s) as response:
                data = response.read(limit + 1)
        except urllib.error.HTTPError as error:
            raise ApiError(502, field, f"Label Studio answered HTTP {error.code} for the image {url}") from None
        except (urllib.error.URLError, OSError) as error:
            raise ApiError(502, field, f"could not fetch the image {url}: {error}") from None
        if len(data) > limit:
            raise ApiError(413, field, f"the image is larger than the server's limit of {limit / 2**20:g} MB")
        return data

    def _local_file(self, relative: str, field: str) -> bytes:
        root = self.service.config.local_files_root
        if root is None:
            raise ApiError(422, field, "task images are local files, but the server has no --local-files-root")
        parts = Path(relative).parts
        if not relative or Path(relative).is_absolute() or ".." in parts:
            raise ApiError(422, field, "local file paths must be relative to the local-files root, without '..'")
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ApiError(404, field, f"no file {relative!r} under the local-files root")
        if path.stat().st_size > self.service.config.max_upload_bytes:
            raise ApiError(413, field, "the image file is larger than the server's --max-upload-mb")
        return path.read_bytes()

    def image_bytes(self, reference: Any, field: str) -> bytes:
        """The bytes of a task's image reference, from the only places the backend reads."""
        if not isinstance(reference, str) or not reference:
            raise ApiError(422, field, "expected the image as a URL, a data: URI or a local-files path")
        if reference.startswith("data:"):
            return decode_base64_image(reference, field, self.service.config.max_upload_bytes)
        base = self.service.config.label_studio_url
        parsed = urllib.parse.urlsplit(reference)
        if parsed.path.startswith("/data/local-files") and (not parsed.netloc or _same_origin(reference, base)):
            relative = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
            return self._local_file(relative, field)
        if not parsed.scheme and reference.startswith("/") and not reference.startswith("//"):
            if base is None:
                raise ApiError(422, field, "relative image URL, but the server has no --label-studio-url")
            return self._fetch(base + reference, field)
        if parsed.scheme in ("http", "https") and base is not None and _same_origin(reference, base):
            return self._fetch(reference, field)
        raise ApiError(
            422,
            field,
            "images are read only from the Label Studio host (--label-studio-url), data: URIs "
            "or the local-files root; this reference is none of them",
        )

    async def image_for(self, reference: str, field: str):
        image_id = self.urls.get(reference)
        entry = self.service.images.get(image_id) if image_id else None
        if entry is None:
            data = await self.service.run(self.image_bytes, reference, field)
            entry, _ = await self.service.add_image(data, field)
            if not reference.startswith("data:"):
                self.urls[reference] = entry.image_id
                while len(self.urls) > URL_MEMORY:
                    self.urls.popitem(last=False)
        return entry


def _same_origin(url: str, base: str | None) -> bool:
    if base is None:
        return False
    a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(base)
    return (a.scheme, a.hostname, a.port or _default_port(a.scheme)) == (
        b.scheme,
        b.hostname,
        b.port or _default_port(b.scheme),
    )


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _number(value: Any, field: str, low: float = 0.0, high: float = 100.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
        raise ApiError(422, field, f"expected a number in [{low:g}, {high:g}] (percent of the image), got {value!r}")
    return float(value)


def context_prompts(context: Any, width: int, height: int) -> tuple[list, list, str | None]:
    """Keypoints (x, y, label) and the last rectangle in image pixels, and the label the annotator chose."""
    if not isinstance(context, dict) or not isinstance(context.get("result"), list):
        raise ApiError(422, "params.context.result", "expected a list of keypointlabels/rectanglelabels results")
    points, boxes, label = [], [], None
    for i, item in enumerate(context["result"]):
        where = f"params.context.result[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise ApiError(422, where, "expected a result object with a 'value'")
        kind, value = item.get("type"), item["value"]
        if kind not in ("keypointlabels", "rectanglelabels"):
            continue  # other tools in the same labeling config do not prompt the model
        for size_field, actual in (("original_width", width), ("original_height", height)):
            given = item.get(size_field)
            if given is not None and given != actual:
                raise ApiError(422, f"{where}.{size_field}", f"the task's image is {width}x{height}, got {given!r}")
        x = _number(value.get("x"), f"{where}.value.x") * width / 100
        y = _number(value.get("y"), f"{where}.value.y") * height / 100
        labels = value.get(kind)
        if isinstance(labels, list) and labels and isinstance(labels[0], str):
            label = labels[0]
        if kind == "keypointlabels":
            points.append((x, y, 0 if item.get("is_positive") is False else 1))
        else:
            w = _number(value.get("width"), f"{where}.value.width") * width / 100
            h = _number(value.get("height"), f"{where}.value.height") * height / 100
            if w <= 0 or h <= 0:
                raise ApiError(422, f"{where}.value", "a rectangle needs a positive width and height")
            boxes = [(x, y, min(x + w, width), min(y + h, height))]  # the latest rectangle is the object
    if not points and not boxes:
        raise ApiError(422, "params.context.result", "no keypointlabels or rectanglelabels result to prompt with")
    return points, boxes, label


def make_label_studio_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["Label Studio ML backend"])
    backend = LabelStudio(service)
    limit = service.config.max_upload_bytes * 4 // 3 + 1024 * 1024

    async def json_body(request: Request) -> dict:
        try:
            body = json.loads(await read_body(request, limit))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ApiError(400, "body", f"the body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise ApiError(422, "body", "expected a JSON object")
        return body

    @router.get("/health")
    async def health() -> dict:
        return {"status": "UP", "model_class": "evitsam", "model_version": backend.model_version}

    @router.post("/setup")
    async def setup(request: Request) -> dict:
        body = await json_body(request)
        schema, project = body.get("schema"), body.get("project")
        if schema is not None:
            if not isinstance(schema, str):
                raise ApiError(422, "schema", "expected the project's labeling config (XML text)")
            parse_label_config(schema, "schema")
            backend.configs[str(project)] = schema
        hostname, token = body.get("hostname"), body.get("access_token")
        if isinstance(token, str) and token and isinstance(hostname, str):
            if _same_origin(hostname, service.config.label_studio_url):
                backend._setup_token = token  # only ever sent back to the configured host
        return {"model_version": backend.model_version}

    @router.get("/versions")
    async def versions() -> dict:
        return {"versions": [backend.model_version]}

    @router.post("/webhook")
    async def webhook(request: Request) -> dict:
        body = await json_body(request)
        action = body.get("action")
        if not isinstance(action, str):
            raise ApiError(422, "action", "expected the webhook's action name")
        return {"status": "ignored", "action": action}  # this backend does not train

    @router.post("/predict")
    async def predict(request: Request) -> dict:
        body = await json_body(request)
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks or not isinstance(tasks[0], dict):
            raise ApiError(422, "tasks", "expected a non-empty list of tasks")
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        context = params.get("context", body.get("context"))
        if not context or not (isinstance(context, dict) and context.get("result")):
            return {"results": [], "model_version": backend.model_version}  # pre-annotation: nothing to click
        config = body.get("label_config") or backend.configs.get(str(body.get("project")))
        if not isinstance(config, str):
            raise ApiError(422, "label_config", "no labeling config: send label_config or call /setup first")
        from_name, to_name, data_key = parse_label_config(config, "label_config")
        task = tasks[0]
        data = task.get("data")
        if not isinstance(data, dict) or data_key not in data:
            raise ApiError(422, f"tasks[0].data.{data_key}", "the task has no image under this key")
        entry = await backend.image_for(data[data_key], f"tasks[0].data.{data_key}")
        points, boxes, label = context_prompts(context, entry.width, entry.height)
        prompt = PredictRequest(points=points, boxes=boxes)
        check_prompts(prompt, entry, service.config.max_prompts)
        masks, scores, _ = await service.run(run_prompts, entry, prompt, None)
        rle = await service.run(mask_to_brush_rle, masks[0])
        score = float(scores[0])
        result = {
            "id": uuid.uuid4().hex[:10],
            "from_name": from_name,
            "to_name": to_name,
            "original_width": entry.width,
            "original_height": entry.height,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": rle, "brushlabels": [label] if label else []},
            "score": score,
            "type": "brushlabels",
            "readonly": False,
        }
        prediction = {"result": [result], "score": score, "model_version": backend.model_version}
        return {"results": [prediction], "model_version": backend.model_version}

    return router
