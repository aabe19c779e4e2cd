"""The admin HTTP server: aiohttp speaks HTTP/1.1 (chunked bodies, keep-alive, pipelining, 400 for
a malformed head, WebSocket upgrades through `Route.upgrade`); `BudgetedListener` owns the
socket; handlers stay plain functions of `HttpRequest` (messages.py). The only module that
converts between the two.

A route is (method, path template, permission, handler). The permission is only carried here:
the admin API's aiohttp middlewares (admin.py) read it from `request[ROUTE]` to authenticate,
authorize and audit; `OPEN` routes (/health, /metrics) pass those middlewares untouched.

Invariants:
- Every answer the server builds is JSON `{"error": ...}` for a 4xx/5xx it or aiohttp raises
  (404, 405, 408, 413), and carries `Cache-Control: no-store`. A head aiohttp cannot parse (bad
  Content-Length, an over-long line, a broken chunk size) gets aiohttp's own 400 and the
  connection closes: counted in `bad_requests_total`, never logged with a traceback (only a
  real bug in a handler is).
- A request body is read whole before the handler runs: at most `max_body` bytes (413) within
  `header_timeout` seconds (408); either way the connection is then closed. Chunked bodies are
  de-chunked by aiohttp: one request, one answer.
- Exact paths win over templates; a `{name}` matches one non-empty segment, percent-decoded.
- A streamed body's blocks are produced in `executor` threads, one at a time, and written with
  back-pressure: memory stays flat and the event loop never runs the producer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import AbstractRoute

from .listener import BudgetedListener, ListenerLimits
from .messages import HttpRequest, HttpResponse

OPEN = "open"  # a route outside sessions and audit: /health, /metrics
MAX_BODY = 1024 * 1024
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                    "Server": "vaultpbx"}
_ERRORS = {404: "not found", 405: "method not allowed", 408: "request body not received in time",
           413: "request body too large"}
_log = logging.getLogger("vaultpbx.api.server")

Handler = Callable[[HttpRequest, Any], "HttpResponse | Awaitable[HttpResponse]"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    method: str
    path: str
    """A path or a template such as `/recordings/{id}/export`."""
    permission: str
    """A permission of the RBAC matrix, or the admin API's ANY_SESSION / PUBLIC, or OPEN."""
    handler: Handler
    """(request, session or None) → response, or an awaitable of one."""
    upgrade: Callable[[web.Request, Any], Awaitable[web.StreamResponse]] | None = None
    """Instead of `handler`: the aiohttp request itself, for a WebSocket upgrade (the console's
    live feed); it still passes every middleware, so it is authenticated like any route."""

    @classmethod
    def open(cls, method: str, path: str, handler: Callable[[HttpRequest], HttpResponse]
             ) -> Route:
        return cls(method=method, path=path, permission=OPEN,
                   handler=lambda request, _session: handler(request))


# Request keys: the Route that matched (absent for 404/405); the admin session, set by the admin
# API's authentication middleware (typed loosely: this module knows no security types).
ROUTE = web.RequestKey("route", Route)
SESSION: web.RequestKey[Any] = web.RequestKey("session")


def route_of(request: web.Request) -> Route | None:
    return request.get(ROUTE)


def head_of(request: web.Request) -> HttpRequest:
    """The request without its body, as handlers see it (for middlewares)."""
    return HttpRequest(method=request.method, path=request.path,
                       query=parse_qs(request.query_string),
                       headers={name.lower(): value for name, value in request.headers.items()},
                       body=b"", peer=request.remote or "", params=dict(request.match_info))


def to_web(response: HttpResponse) -> web.Response:
    """A bytes response as aiohttp's; streams go through AdminHttpServer._send."""
    return web.Response(status=response.status, body=response.body, headers={
        **SECURITY_HEADERS, **response.headers, "Content-Type": response.content_type})


def _aiohttp_path(template: str) -> str:
    # aiohttp's default `{name}` pattern refuses braces; the contract lets a segment hold any
    # character but "/" (a literal "{id}" is a value, never a route key).
    parts = []
    for part in template.split("/"):
        if "{" in part or "}" in part:
            if not (part.startswith("{") and part.endswith("}") and len(part) > 2
                    and part[1:-1].isidentifier()):
                raise ValueError(f"bad path template {template!r}: {{name}} must be a whole "
                                 "segment")
            part = "{" + part[1:-1] + ":[^/]+}"
        parts.append(part)
    return "/".join(parts)


class _ServerLog(logging.Logger):
    """aiohttp's server logger: a request it could not parse is bad input, counted and not
    logged (aiohttp would log it with a traceback, one per attacker's request); anything else
    is a real failure and keeps its traceback."""

    def __init__(self, counters: dict[str, int]) -> None:
        super().__init__("vaultpbx.api.http")
        self.counters = counters

    def _bad_request(self, exc_info: object) -> bool:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            self.counters["bad_requests_total"] += 1
            return True
        return False

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        if not self._bad_request(exc_info):
            _log.error(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._bad_request(kwargs.get("exc_info"))


class AdminHttpServer:
    def __init__(self, routes: Iterable[Route], *, middlewares: Sequence[Middleware] = (),
                 limits: ListenerLimits | None = None, max_body: int = MAX_BODY,
                 executor: Executor | None = None) -> None:
        self.limits = limits or ListenerLimits()
        self.executor = executor
        self.counters: dict[str, int] = {
            "bad_requests_total": 0, "body_timeouts_total": 0, "streams_aborted_total": 0,
            "streams_failed_total": 0, "errors_total": 0}
        unique = {(route.method, route.path): route for route in routes}  # later ones win
        # Exact paths first: aiohttp tries resources in the order they were added.
        ordered = sorted(unique.values(), key=lambda route: "{" in route.path)
        self.app = web.Application(client_max_size=max_body,
                                   middlewares=[self._outer, *middlewares])
        self._routes: dict[AbstractRoute, Route] = {}
        for route in ordered:
            added = self.app.router.add_route(route.method, _aiohttp_path(route.path),
                                              self._adapter(route))
            self._routes[added] = route
        self.runner: web.AppRunner | None = None
        self.listener: BudgetedListener | None = None

    async def start(self, host: str, port: int, context: ssl.SSLContext | None = None
                    ) -> tuple[str, int]:
        limits = self.limits
        self.runner = web.AppRunner(
            self.app, access_log=None, logger=_ServerLog(self.counters),
            shutdown_timeout=3.0,  # SIGTERM's drain is bounded; a download in flight is cut
            # A backstop only: the listener's idle and header clocks close connections first.
            keepalive_timeout=limits.idle_timeout + limits.header_timeout,
            # After answering a request whose body was not read (a 401 before the body, a 408),
            # aiohttp drains the rest so the client can read the answer; a body clock bounds it.
            lingering_time=limits.header_timeout,
            max_line_size=min(8190, limits.max_head_size), max_field_size=8190, max_headers=100)
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        self.listener = BudgetedListener(server, limits, asyncio.get_running_loop())
        return await self.listener.start(host, port, context)

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def metric_counters(self) -> dict[str, int]:
        out = dict(self.counters)
        if self.listener is not None:
            out.update(self.listener.counters)
            out["connections"] = self.listener.open_connections
        return out

    # -- per request ------------------------------------------------------------------------------
    @web.middleware
    async def _outer(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        route = self._routes.get(request.match_info.route)
        if route is not None:
            request[ROUTE] = route
        listener, protocol = self.listener, request.protocol
        if listener is not None:
            listener.request_started(protocol)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            extra = {k: v for k, v in exc.headers.items()
                     if k.lower() not in ("content-type", "content-length")}
            response = to_web(HttpResponse.of_json(
                {"error": _ERRORS.get(exc.status, exc.reason.lower())}, exc.status))
            response.headers.update(extra)
            if exc.status == 413:
                response.force_close()  # the rest of that body is not worth reading
            return response
        except Exception:
            self.counters["errors_total"] += 1
            _log.exception("admin http handler failed: %s %s", request.method, request.path)
            return to_web(HttpResponse.of_json({"error": "internal error"}, 500))
        finally:
            if listener is not None:
                listener.request_finished(protocol)

    def _adapter(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            if route.upgrade is not None:
                return await route.upgrade(request, request.get(SESSION))
            try:
                body = await asyncio.wait_for(request.read(), self.limits.header_timeout)
            except TimeoutError:
                self.counters["body_timeouts_total"] += 1
                late = to_web(HttpResponse.of_json({"error": _ERRORS[408]}, 408))
                late.force_close()
                return late
            result = route.handler(HttpRequest(
                method=request.method, path=request.path, query=parse_qs(request.query_string),
                headers={name.lower(): value for name, value in request.headers.items()},
                body=body, peer=request.remote or "", params=dict(request.match_info),
            ), request.get(SESSION))
            if inspect.isawaitable(result):
                result = await result
            assert isinstance(result, HttpResponse)
            return await self._send(request, result)
        serve.__name__ = getattr(route.handler, "__name__", "route")
        return serve

    async def _send(self, request: web.Request, response: HttpResponse) -> web.StreamResponse:
        stream = response.stream
        if stream is None:
            return to_web(response)
        out = web.StreamResponse(status=response.status, headers={
            **SECURITY_HEADERS, **response.headers, "Content-Type": response.content_type})
        out.content_length = stream.length
        loop = asyncio.get_running_loop()
        blocks = stream.blocks()
        try:
            await out.prepare(request)
            while (block := await loop.run_in_executor(self.executor, _next_block,
                                                         blocks)) is not None:
                await out.write(block)
            await out.write_eof()
        except ConnectionError:
            self.counters["streams_aborted_total"] += 1  # the client went away
        except Exception as exc:
            # Headers are gone: the only honest signal left is a body shorter than announced.
            self.counters["streams_failed_total"] += 1
            _log.warning("admin http stream failed: %s %s: %r", request.method, request.path,
                         exc)
            if request.transport is not None:
                request.transport.abort()
        finally:
            close = getattr(blocks, "close", None)  # a generator: its `finally` closes the file
            if close is not None:
                close()
            stream.close()
        return out


def _next_block(blocks: Iterator[bytes]) -> bytes | None:
    return next(blocks, None)
