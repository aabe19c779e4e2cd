"""SIP requests and responses (RFC 3261 §7) as plain objects.

Invariants:
- `headers` maps the lower-case full header name to the list of raw values in arrival order;
  one entry per header line (a comma list on one line stays one entry until `values()` splits it).
- Structured views (top Via, CSeq, From, To) are parsed once, on first use, and cached.
- `serialize()` always writes Content-Length from the body actually carried.
- Bytes on the wire are bytes; header text is str decoded as UTF-8 with surrogateescape so that
  any byte sequence survives a parse/serialize round trip.
"""

from __future__ import annotations

from .errors import SipParseError
from .headers import (
    CSeq,
    NameAddr,
    Via,
    display_name,
    parse_cseq,
    parse_name_addr,
    parse_via,
    split_list,
)
from .uri import SipUri, parse_uri

SIP_VERSION = "SIP/2.0"


class SipMessage:
    __slots__ = ("headers", "body", "_via", "_cseq", "_from", "_to")

    def __init__(self, headers: dict[str, list[str]] | None = None, body: bytes = b"") -> None:
        self.headers: dict[str, list[str]] = headers if headers is not None else {}
        self.body = body
        self._via: Via | None = None
        self._cseq: CSeq | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None

    # -- raw access -----------------------------------------------------------------------
    def get(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        return self.headers.get(name, [])

    def values(self, name: str) -> list[str]:
        """All comma-separated values of a list header, in order, across header lines."""
        lines = self.headers.get(name)
        if not lines:
            return []
        if len(lines) == 1:
            return split_list(lines[0])
        out: list[str] = []
        for line in lines:
            out.extend(split_list(line))
        return out

    def set(self, name: str, value: str) -> None:
        self.headers[name] = [value]
        self._invalidate(name)

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        values = self.headers.setdefault(name, [])
        if first:
            values.insert(0, value)
        else:
            values.append(value)
        self._invalidate(name)

    def remove(self, name: str) -> None:
        self.headers.pop(name, None)
        self._invalidate(name)

    def _invalidate(self, name: str) -> None:
        if name == "via":
            self._via = None
        elif name == "cseq":
            self._cseq = None
        elif name == "from":
            self._from = None
        elif name == "to":
            self._to = None

    # -- structured views ------------------------------------------------------------------
    @property
    def via(self) -> Via:
        """The top-most Via (RFC 3261 §8.2.6.2, §17.2.3)."""
        via = self._via
        if via is None:
            lines = self.headers.get("via")
            if not lines:
                raise SipParseError("missing Via")
            first = lines[0]
            if "," in first:
                pieces = split_list(first)
                if not pieces:  # "Via: ," holds no value at all
                    raise SipParseError(f"empty Via: {first[:80]!r}")
                first = pieces[0]
            via = self._via = parse_via(first)
        return via

    @property
    def cseq(self) -> CSeq:
        cseq = self._cseq
        if cseq is None:
            value = self.get("cseq")
            if value is None:
                raise SipParseError("missing CSeq")
            cseq = self._cseq = parse_cseq(value)
        return cseq

    @property
    def from_(self) -> NameAddr:
        addr = self._from
        if addr is None:
            value = self.get("from")
            if value is None:
                raise SipParseError("missing From")
            addr = self._from = parse_name_addr(value)
        return addr

    @property
    def to(self) -> NameAddr:
        addr = self._to
        if addr is None:
            value = self.get("to")
            if value is None:
                raise SipParseError("missing To")
            addr = self._to = parse_name_addr(value)
        return addr

    @property
    def call_id(self) -> str:
        value = self.get("call-id")
        if value is None:
            raise SipParseError("missing Call-ID")
        return value

    def contacts(self) -> list[NameAddr]:
        return [parse_name_addr(v) for v in self.values("contact")]

    # -- wire form ---------------------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        parts = [self.start_line()]
        for name, lines in self.headers.items():
            if name == "content-length":
                continue
            shown = display_name(name)
            if len(lines) == 1:
                parts.append(f"{shown}: {lines[0]}")
            else:
                parts.extend(f"{shown}: {line}" for line in lines)
        parts.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        head = "\r\n".join(parts).encode("utf-8", "surrogateescape")
        return head + self.body if self.body else head


class Request(SipMessage):
    __slots__ = ("method", "uri", "_ruri")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: dict[str, list[str]] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri
        self._ruri: SipUri | None = None

    @property
    def request_uri(self) -> SipUri:
        ruri = self._ruri
        if ruri is None:
            ruri = self._ruri = parse_uri(self.uri)
        return ruri

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(SipMessage):
    __slots__ = ("status", "reason")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: dict[str, list[str]] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


REASON_PHRASES: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 301: "Moved Permanently",
    302: "Moved Temporarily", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


def reason_phrase(status: int) -> str:
    return REASON_PHRASES.get(status, "Unknown")


def build_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """A response to `request` per RFC 3261 §8.2.6.2: Via, From, Call-ID, CSeq copied; To copied
    with `to_tag` added when it has none."""
    headers: dict[str, list[str]] = {}
    src = request.headers
    for name in ("via", "from"):
        if name in src:
            headers[name] = list(src[name])
    to_lines = src.get("to")
    if to_lines:
        headers["to"] = [to_lines[0]]
        if to_tag is not None:
            try:
                if request.to.tag is None:
                    headers["to"] = [request.to.with_tag(to_tag)]
            except SipParseError:
                pass  # an unreadable To is echoed as received (answering a 400 about it)
    for name in ("call-id", "cseq"):
        if name in src:
            headers[name] = [src[name][0]]
    if extra:
        for name, value in extra:
            headers.setdefault(name, []).append(value)
    return Response(status, reason or reason_phrase(status), headers, body)
