"""The annotation web app's server side: the page and its assets, the browser decoder, folder mode.

- ``GET /`` and ``GET /web/...``: the page (plain ES modules, onnxruntime-web vendored: no CDN, works offline),
  served by an outer layer so it loads without a token (it holds no data; the API it calls still needs one).
  Every response carries COOP/COEP, so the page is cross-origin isolated and onnxruntime-web may use threads.
- ``GET /v1/web/config``, ``GET /v1/web/decoder.onnx``: what the page needs to decode masks itself.
- Folder mode (``evitsam serve --images DIR``): the folder's images, their accepted objects saved in SQLite
  (:class:`~evitsam.service.store.AnnotationStore`) as they are accepted, COCO export of the whole folder.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path, PurePosixPath

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from ..io import read_image
from .errors import ApiError
from .state import Service
from .store import AnnotationStore, coco_document
from .web_graph import WEB_GRAPHS, web_decoder

WEB_DIR = Path(__file__).parent / "web"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"})
ISOLATION = [(b"cross-origin-opener-policy", b"same-origin"), (b"cross-origin-embedder-policy", b"require-corp")]
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


def default_db(images: Path) -> Path:
    """The database beside the folder: ``photos/`` -> ``photos.evitsam.sqlite``."""
    return images.parent / f"{images.name}.evitsam.sqlite"


def folder_images(root: Path) -> list[str]:
    """Image files under ``root`` (recursively, hidden ones skipped), as sorted relative POSIX paths."""
    names = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if (
            path.suffix.lower() in IMAGE_SUFFIXES
            and path.is_file()
            and not any(p.startswith(".") for p in relative.parts)
        ):
            names.append(relative.as_posix())
    return sorted(names)


class ObjectRequest(BaseModel):
    """One accepted object: its label and its mask as COCO compressed RLE at the image's size."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    label: str = Field(min_length=1, max_length=200)
    segmentation: dict = Field(description='{"size": [height, width], "counts": "<COCO RLE string>"}')
    score: float | None = None


class WebAssets:
    """Outer ASGI layer: serves the page and its static files, adds COOP/COEP headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] in ("GET", "HEAD") and (path == "/" or path.startswith("/web/")):
            response = static_response("index.html" if path == "/" else path[len("/web/") :])
            response.headers.update({k.decode(): v.decode() for k, v in ISOLATION})
            await response(scope, receive, send)
            return

        async def isolated(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + ISOLATION
            await send(message)

        await self.app(scope, receive, isolated)


def static_response(relative: str) -> Response:
    """A file of the web folder; ``.wasm`` files are stored gzipped and sent with ``Content-Encoding: gzip``."""
    parts = PurePosixPath(relative).parts
    if not parts or any(p in ("..", "") or p.startswith(".") for p in parts):
        return JSONResponse({"error": {"status": 404, "field": "path", "message": "no such file"}}, 404)
    path = WEB_DIR.joinpath(*parts)
    headers = {"Cache-Control": "no-cache"}
    if path.suffix == ".wasm" and not path.is_file() and path.with_name(path.name + ".gz").is_file():
        headers["Content-Encoding"] = "gzip"
        return FileResponse(path.with_name(path.name + ".gz"), media_type="application/wasm", headers=headers)
    if not path.is_file():
        return JSONResponse({"error": {"status": 404, "field": "path", "message": f"no file {relative!r}"}}, 404)
    media = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers=headers)


def mount_web(app: FastAPI, service: Service) -> None:
    """Add the web app's routes (and, with ``config.images``, folder mode) to the service's application."""
    config = service.config
    store = AnnotationStore(config.db or default_db(config.images)) if config.images is not None else None
    app.state.annotations = store
    router = APIRouter(prefix="/v1")

    @router.get("/web/config", tags=["web"], summary="What the web app needs: model, decoder, folder mode")
    async def web_config() -> dict:
        model = service.model
        return {
            "model": service.info(),
            "low_res_size": model.low_res_size,
            "mask_threshold": float(model.mask_threshold),
            # the browser's graphs: the image side (once per image), then each prompt (refine: with a mask prompt;
            # rest: the rest of a click's low-res grid)
            "graphs": {name: f"/v1/web/{name}.onnx" for name in WEB_GRAPHS},
            "folder": None if store is None else {"name": config.images.name, "db": str(store.path)},
        }

    @router.get("/web/{name}.onnx", tags=["web"], summary="The decoder graphs the page runs (low-res masks, scores)")
    async def decoder(name: str) -> FileResponse:
        if name not in WEB_GRAPHS:
            raise ApiError(404, "name", f"no graph {name!r}: expected one of {', '.join(WEB_GRAPHS)}")
        paths = await service.run(web_decoder, service.model)
        return FileResponse(paths[name], media_type="application/octet-stream", headers={"Cache-Control": "no-cache"})

    if store is not None:
        add_folder_routes(router, service, store, config.images)
    app.include_router(router)


def add_folder_routes(router: APIRouter, service: Service, store: AnnotationStore, root: Path) -> None:
    def name_of(index: int) -> str:
        names = folder_images(root)
        if not 0 <= index < len(names):
            raise ApiError(404, "index", f"no image {index} in the folder (it holds {len(names)} images)")
        return names[index]

    @router.get("/folder", tags=["folder"], summary="The folder's images and how many objects each has")
    async def folder() -> dict:
        names = folder_images(root)
        counts = store.counts()
        images = [{"index": i, "name": n, "objects": counts.get(n, 0)} for i, n in enumerate(names)]
        return {"name": root.name, "db": str(store.path), "images": images}

    @router.get("/folder/images/{index}/file", tags=["folder"], summary="The image file, as stored")
    async def image_file(index: int) -> FileResponse:
        return FileResponse(root / name_of(index), headers={"Cache-Control": "no-cache"})

    @router.post("/folder/images/{index}/embed", tags=["folder"], summary="Embed a folder image (as POST /v1/images)")
    async def embed(index: int) -> dict:
        data = (root / name_of(index)).read_bytes()
        entry, cached = await service.add_image(data)
        return {"image_id": entry.image_id, "width": entry.width, "height": entry.height, "cached": cached}

    @router.get("/folder/images/{index}/objects", tags=["folder"], summary="The image's saved objects")
    async def objects(index: int) -> dict:
        name = name_of(index)
        return {"image": name, "objects": await service.run(store.objects, name)}

    @router.post("/folder/images/{index}/objects", tags=["folder"], summary="Save an accepted object")
    async def add_object(index: int, body: ObjectRequest) -> dict:
        name = name_of(index)
        size, counts = body.segmentation.get("size"), body.segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            raise ApiError(422, "segmentation.size", "expected [height, width]")
        if not isinstance(counts, str):
            raise ApiError(422, "segmentation.counts", "expected a COCO compressed RLE string")
        try:
            return await service.run(store.add, name, body.label, tuple(size), counts, body.score)
        except ValueError as error:
            raise ApiError(422, "segmentation", str(error)) from None

    @router.delete("/folder/objects/{object_id}", tags=["folder"], summary="Delete a saved object")
    async def delete_object(object_id: int) -> dict:
        if not await service.run(store.delete, object_id):
            raise ApiError(404, "object_id", f"no object {object_id}")
        return {"deleted": object_id}

    @router.get("/folder/coco", tags=["folder"], summary="COCO instances JSON (RLE) of the whole folder")
    async def coco() -> JSONResponse:
        def build() -> dict:
            objects = store.objects()
            sizes = {o["image"]: o["segmentation"]["size"] for o in objects}
            images = []
            for name in folder_images(root):
                height, width = sizes.get(name) or image_size(root / name)
                images.append({"file_name": name, "width": width, "height": height})
            return coco_document(images, objects)

        document = await service.run(build)
        headers = {"Content-Disposition": f'attachment; filename="{root.name}.coco.json"'}
        return JSONResponse(document, headers=headers)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) as displayed: from the header, EXIF rotations swap the sides; unusual files are read."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
            return height, width
    except Exception:
        return read_image(path).shape[:2]
