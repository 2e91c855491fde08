"""``evitsam serve``: an HTTP service for annotation tools and applications.

A REST API under ``/v1`` (uploads with a content-addressed embedding cache, prompts to masks, segment-everything,
embeddings for clients that run the decoder themselves), a Label Studio ML backend, health and Prometheus metrics.
Needs the ``serve`` extra (``pip install evitsam[serve]``): FastAPI, uvicorn, python-multipart, prometheus-client.
The names below are imported on first use, so ``evitsam serve``'s options load without the extra installed.
"""

from __future__ import annotations

__all__ = ["Service", "ServiceConfig", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Service":
        from .state import Service

        return Service
    if name == "ServiceConfig":
        from .config import ServiceConfig

        return ServiceConfig
    raise AttributeError(f"module 'evitsam.service' has no attribute {name!r}")
