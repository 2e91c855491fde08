"""Bearer-token authentication (constant-time) and the request body limit, as ASGI middleware."""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/health"})


def _presented(headers: dict[bytes, bytes]) -> str | None:
    """The token a client presented: ``Authorization: Bearer <token>``, or HTTP Basic with the token as
    password (what Label Studio's ML backend connection can send)."""
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


class TokenAuth:
    """Refuses (401) every request but health checks without the server's token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        presented = _presented(dict(scope["headers"]))
        if presented is None or not hmac.compare_digest(presented.encode("utf-8"), self.token):
            field = "Authorization" if presented is None else "token"
            message = (
                "this server needs a token: send 'Authorization: Bearer <token>'"
                if presented is None
                else "the token does not match the server's"
            )
            response = error_response(401, field, message, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses (413) bodies above ``limit`` bytes while they stream in, whatever route reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = BodyTooLarge(self.limit)
        await error_response(413, "body", error.detail, headers=error.headers)(scope, receive, send)


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive``: an HTTPException, so FastAPI's body parsing passes it on as a 413."""

    def __init__(self, limit: int) -> None:
        message = f"the request body is larger than the server's limit of {limit / 2**20:g} MB (--max-upload-mb)"
        super().__init__(413, message, headers={"Connection": "close"})
