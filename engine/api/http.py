"""A small HTTP/1.1 server for the admin API (asyncio streams; one request per connection
turn, keep-alive honoured). Handlers are plain functions of a `HttpRequest` returning a
`HttpResponse`; routing is a dict of (method, path) → handler. A path may be a template such
as `/recordings/{id}/export` (see router.py); the matched values arrive in `request.params`.

Invariants: request heads over 16 KiB or bodies over 1 MiB are refused (413/431); a handler
that raises answers 500 and is counted, never closes the server.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, urlsplit

from .router import TemplateRouter, is_template

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    peer: str
    params: dict[str, str] = field(default_factory=dict)
    """Values of the `{name}` segments of the route template that matched."""

    def json(self) -> object:
        return json.loads(self.body or b"null")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, value: object, status: int = 200) -> HttpResponse:
        return cls(status=status, body=json.dumps(value, default=str).encode() + b"\n")


Handler = Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Payload Too Large", 423: "Locked",
            429: "Too Many Requests", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


class HttpServer:
    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self.routes = routes
        self.templates: TemplateRouter[Handler] = TemplateRouter(routes.items())
        self.server: asyncio.base_events.Server | None = None
        self.errors = 0
        self.requests = 0

    async def start(self, host: str, port: int, context: ssl.SSLContext | None = None
                    ) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, host, port, ssl=context)
        return self.server.sockets[0].getsockname()[:2]  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_host = peer[0] if peer else "?"
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    await self._write(writer, HttpResponse(status=431), False)
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if len(head) > MAX_HEAD:
                    await self._write(writer, HttpResponse(status=431), False)
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    await self._write(writer, HttpResponse(status=400), False)
                    return
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length > MAX_BODY or length < 0:
                    await self._write(writer, HttpResponse(status=413), False)
                    return
                body = await reader.readexactly(length) if length else b""
                parts = urlsplit(target)
                request = HttpRequest(method=method.upper(), path=parts.path,
                                      query=parse_qs(parts.query), headers=headers, body=body,
                                      peer=peer_host)
                response = await self._dispatch(request)
                keep = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
                await self._write(writer, response, keep)
                if not keep:
                    return
        finally:
            writer.close()

    async def _dispatch(self, request: HttpRequest) -> HttpResponse:
        self.requests += 1
        # A literal "{id}" in a request path is a segment value, never a route key.
        handler = None if is_template(request.path) else self.routes.get(
            (request.method, request.path))
        if handler is None and self.templates:
            handler, params, known = self.templates.match(request.method, request.path)
            if handler is not None:
                request = replace(request, params=params)
            elif known:
                return HttpResponse.of_json({"error": "method not allowed"}, 405)
        if handler is None:
            if any(path == request.path for _, path in self.routes if not is_template(path)):
                return HttpResponse.of_json({"error": "method not allowed"}, 405)
            return HttpResponse.of_json({"error": "not found"}, 404)
        try:
            result = handler(request)
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                result = await result
            assert isinstance(result, HttpResponse)
            return result
        except Exception:
            self.errors += 1
            return HttpResponse.of_json({"error": "internal error"}, 500)

    async def _write(self, writer: asyncio.StreamWriter, response: HttpResponse,
                     keep: bool) -> None:
        reason = _REASONS.get(response.status, "Unknown")
        head = [f"HTTP/1.1 {response.status} {reason}",
                f"Content-Type: {response.content_type}",
                f"Content-Length: {len(response.body)}",
                f"Connection: {'keep-alive' if keep else 'close'}"]
        head.extend(f"{k}: {v}" for k, v in response.headers.items())
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        await writer.drain()
