"""The FastAPI application: REST API, Label Studio backend, health, metrics; middleware for limits and auth."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from .. import __version__
from .errors import error_response, install_error_handlers
from .labelstudio import make_label_studio_router
from .metrics import MetricsMiddleware
from .routes import make_router
from .security import BodyLimit, TokenAuth
from .state import Service
from .uploads import MULTIPART_OVERHEAD
from .webapp import WebAssets, mount_web

DESCRIPTION = """Promptable segmentation with EfficientViT-SAM over HTTP.

Upload an image once (`POST /v1/images`), then ask for masks from clicks and boxes (`POST /v1/predict`) as often
as you like: the embedding is computed once per image and cached. Masks come back as COCO RLE (or PNG).
The same server is a Label Studio ML backend (`/health`, `/setup`, `/predict`, `/webhook`).
"""


def create_app(service: Service) -> FastAPI:
    """The application for a loaded :class:`Service` (``Service.load(config)``)."""
    config = service.config
    app = FastAPI(title="evitsam", version=__version__, description=DESCRIPTION)
    app.state.service = service
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"], summary="The process is up")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The model is loaded and warm")
    async def readyz() -> Response:
        if not service.ready:
            return error_response(503, "model", "the model is still loading")
        return JSONResponse({"status": "ready", "variant": service.model.config.name})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.include_router(make_router(service), tags=["v1"])
    app.include_router(make_label_studio_router(service))
    mount_web(app, service)  # the annotation web app: its API routes here, the page itself outermost (below)

    # outermost last: CORS, then metrics (which count refusals too), then auth, then the body limit
    body_limit = config.max_upload_bytes * 4 // 3 + MULTIPART_OVERHEAD + 1024 * 1024  # base64 images in JSON
    app.add_middleware(BodyLimit, limit=body_limit)
    if config.token:
        app.add_middleware(TokenAuth, token=config.token)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=[
                "X-Embedding-Shape",
                "X-Embedding-Dtype",
                "X-Encoder-Size",
                "X-Prompt-Frame",
                "X-Input-Size",
                "X-Original-Size",
            ],
        )
    app.add_middleware(WebAssets)
    return app
