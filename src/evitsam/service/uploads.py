"""Reading request bodies into memory with a size limit enforced while they stream in.

Starlette's form parser spools file parts above 1 MB to temporary files; the service writes nothing a client
sends to disk, so multipart bodies are parsed here, chunk by chunk, with ``python-multipart``'s streaming
parser, and refused (413) as soon as they pass the limit, before the rest has arrived.
"""

from __future__ import annotations

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import ApiError

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small text fields beside the file


async def read_body(request: Request, limit: int, field: str = "body") -> bytes:
    """The whole body, or 413 naming ``field`` once more than ``limit`` bytes have arrived."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(field, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(field, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(field: str, limit: int) -> ApiError:
    return ApiError(413, field, f"larger than the server's limit of {limit / 2**20:g} MB (--max-upload-mb)")


class _Parts:
    """Collects the parts of a multipart body: name -> bytes (files and fields alike)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: dict[str, bytes] = {}
        self.filenames: dict[str, str] = {}
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._data: list[bytes] = []
        self._size = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._add("_header_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("_header_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _add(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _begin(self) -> None:
        self._headers, self._data, self._size = {}, [], 0

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._size > self.limit:
            raise too_large(self._name() or "file", self.limit)
        self._data.append(bytes(data[start:end]))

    def _name(self) -> str:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        return options.get(b"name", b"").decode("utf-8", "replace")

    def _part_end(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name:
            self.parts[name] = b"".join(self._data)
            if b"filename" in options:
                self.filenames[name] = options[b"filename"].decode("utf-8", "replace")


async def read_multipart(request: Request, limit: int) -> dict[str, bytes]:
    """The parts of a ``multipart/form-data`` body by field name; each part at most ``limit`` bytes."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(415, "file", "expected a multipart/form-data upload with the image in the field 'file'")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise too_large("file", limit)
    collector = _Parts(limit)
    parser = MultipartParser(boundary, collector.callbacks(), max_size=limit + MULTIPART_OVERHEAD)
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit + MULTIPART_OVERHEAD:
            raise too_large("file", limit)
        try:
            parser.write(chunk)
        except ApiError:
            raise
        except Exception as error:  # python-multipart's MultipartParseError and friends
            raise ApiError(400, "file", f"malformed multipart body: {error}") from None
    parser.finalize()
    return collector.parts
