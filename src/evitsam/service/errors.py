"""One JSON shape for every refused request: ``{"error": {"status", "field", "message"}}``.

The field names what was wrong (``file``, ``points[2]``, ``image_id``), the message what was expected, so a
client can be fixed from the answer alone. Errors never leave the server in another state than before.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("evitsam.service")


class ApiError(Exception):
    """A refused request: HTTP ``status``, the request ``field`` at fault and what was expected."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


def error_response(status: int, field: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "field": field, "message": message}}, status, headers=headers)


def field_path(loc: tuple | list) -> str:
    """FastAPI's ``("body", "points", 2, 0)`` -> ``points[2][0]``."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.field, error.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": ("body",), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return error_response(400, "body", f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
        message = first["msg"]
        if first.get("type") == "extra_forbidden":
            message = "unknown field (check its spelling against the API at /docs)"
        elif first.get("type") == "missing":
            message = "this field is required"
        return error_response(422, field_path(first["loc"]), message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        field = {404: "path", 405: "path", 413: "body"}.get(error.status_code, "request")
        message = str(error.detail) if error.detail else "request refused"
        return error_response(error.status_code, field, message, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "server", f"internal error ({type(error).__name__}); the server stays up")
