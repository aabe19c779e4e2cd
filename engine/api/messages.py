"""The values an admin-API handler sees and returns, free of any HTTP library: `HttpRequest`
in, `HttpResponse` out. The aiohttp server (server.py) converts at one place, so handlers (the
admin API's, the ACD's) stay plain functions that tests can call and read.

Invariants:
- A request's body is read whole before the handler runs, within the listener's body size
  limit and timeout; `params` holds the percent-decoded `{name}` segments of the route.
- A response carries its body either as bytes or as a `BodyStream` of known length. The server
  pulls a stream's blocks in a worker thread, one at a time and only as fast as the client
  reads them, so a long body never sits in memory and never runs on the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes
    peer: str
    """The TCP peer's address (X-Forwarded-For is not trusted)."""
    params: dict[str, str] = field(default_factory=dict)
    """Values of the `{name}` segments of the route template that matched."""

    def json(self) -> object:
        return json.loads(self.body or b"null")


class BodyStream(Protocol):
    """A response body produced block by block (a recording's WAV). `blocks()` is iterated in a
    worker thread; `close()` is called once, also when the client went away mid-way."""

    length: int

    def blocks(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: BodyStream | None = None
    """When set, the body: exactly `stream.length` bytes (`body` is ignored)."""

    @classmethod
    def of_json(cls, value: object, status: int = 200) -> HttpResponse:
        return cls(status=status, body=json.dumps(value, default=str).encode() + b"\n")
