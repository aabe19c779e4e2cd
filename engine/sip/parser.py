"""Bytes → SIP messages: the datagram parser and the stream framer (RFC 3261 §7, §18.3).

Invariants:
- `parse_message` either returns a complete message or raises `SipParseError` carrying the
  status to answer with; it never returns a half-read message.
- On datagrams, Content-Length may be absent (the body is the rest) and may be smaller than
  what arrived (extra octets are dropped, RFC 4475 §3.1.1.8); larger is an error (§3.1.2.2).
- On streams, Content-Length is mandatory (RFC 3261 §18.3); the framer closes the connection on
  a frame it cannot delimit, and answers RFC 5626 CRLF keep-alive pings.
- Scalar fields are range-checked before use (RFC 4475 §3.1.2.4/§3.1.2.5): no overlarge CSeq,
  Max-Forwards, Expires, status code or Content-Length reaches the rest of the engine, and no
  digit string is handed to `int()` before its length is known to be small (a 5,000-digit
  Content-Length must be a 413, not Python's ValueError for long integer strings).
- Cost is linear in the input: every expression here starts with a literal or is anchored, and
  the framer never rescans bytes it has already searched for the end of a header block.
"""

from __future__ import annotations

import re

from .errors import SipFramingError, SipParseError
from .headers import COMPACT_FORMS
from .message import SIP_VERSION, Request, Response, SipMessage

_HEADER_NAME = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_METHOD = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_STATUS = re.compile(r"[1-6][0-9][0-9]\Z")
_DIGITS = re.compile(r"\s*([0-9]+)\s*\Z")
_FOLD = re.compile(r"\r?\n[ \t]+")

MAX_CONTENT_LENGTH = 2**24  # nothing legitimate in SIP is near 16 MiB
_MAX_LENGTH_DIGITS = len(str(MAX_CONTENT_LENGTH))  # more significant digits is too large


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end], data[end + 4:]
    end = data.find(b"\n\n")
    if end >= 0:
        return data[:end], data[end + 2:]
    # A datagram whose blank line was lost (RFC 4475 errata for baddn): take it as all head.
    return data.rstrip(b"\r\n"), b""


def parse_message(data: bytes, *, datagram: bool = True) -> SipMessage:
    """Parse one message. For streams the framer has already cut `data` to one frame."""
    # Leading CRLFs between messages are allowed and ignored (RFC 3261 §7.5).
    if data[:2] == b"\r\n":
        data = data.lstrip(b"\r\n")
    head_bytes, rest = _split_head(data)
    head = head_bytes.decode("utf-8", "surrogateescape")
    if "\n " in head or "\n\t" in head:
        head = _FOLD.sub(" ", head)  # header folding: LWS continuation (RFC 3261 §7.3.1)
    lines = head.split("\r\n") if "\r\n" in head else head.split("\n")
    start = lines[0]
    message = _parse_start_line(start)
    headers = message.headers
    names = _NAME_CACHE
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            if not line.strip():
                continue
            raise SipParseError(f"header line without a colon: {line[:60]!r}")
        lower = names.get(name)
        if lower is None:
            lower = _canonical_header_name(name)
        value = value.strip(" \t")
        existing = headers.get(lower)
        if existing is None:
            headers[lower] = [value]
        else:
            existing.append(value)

    length_lines = headers.get("content-length")
    if length_lines is None:
        if not datagram:
            raise SipFramingError("missing Content-Length on a stream")
        message.body = rest
        return message
    length = _content_length(length_lines)
    if length > len(rest):
        raise SipParseError(
            f"Content-Length {length} larger than the {len(rest)} octets received"
        )
    message.body = rest[:length] if length < len(rest) else rest
    return message


# Raw header name as received → canonical lower-case name. Bounded, because names come from
# the network; a miss costs one regular expression match.
_NAME_CACHE: dict[str, str] = {}


def _canonical_header_name(raw: str) -> str:
    name = raw.rstrip(" \t")
    if _HEADER_NAME.match(name) is None:
        raise SipParseError(f"bad header name: {name[:60]!r}")
    lower = name.lower()
    if len(lower) == 1:
        lower = COMPACT_FORMS.get(lower, lower)
    if len(_NAME_CACHE) < 4096:
        _NAME_CACHE[raw] = lower
    return lower


def _content_length(lines: list[str]) -> int:
    values = set()
    for line in lines:
        match = _DIGITS.match(line)
        if match is None:
            raise SipParseError(f"bad Content-Length: {line[:40]!r}")
        digits = match.group(1).lstrip("0") or "0"
        if len(digits) > _MAX_LENGTH_DIGITS:
            raise SipParseError(f"Content-Length too large: {line[:40]!r}", 413,
                                "Request Entity Too Large")
        values.add(int(digits))
    if len(values) != 1:
        raise SipParseError("conflicting Content-Length values")
    length = values.pop()
    if length > MAX_CONTENT_LENGTH:
        raise SipParseError(f"Content-Length too large: {length}", 413, "Request Entity Too Large")
    return length


def _parse_start_line(line: str) -> SipMessage:
    if line.startswith("SIP/"):
        version, _, rest = line.partition(" ")
        status_text, _, reason = rest.partition(" ")
        if version.upper() != SIP_VERSION:
            raise SipParseError(f"unsupported version in status line: {version[:20]!r}")
        if _STATUS.match(status_text) is None:
            raise SipParseError(f"bad status code: {status_text[:20]!r}")
        return Response(int(status_text), reason)
    parts = line.split(" ")
    if len(parts) != 3:
        raise SipParseError(f"malformed request line: {line[:80]!r}")
    method, uri, version = parts
    if _METHOD.match(method) is None:
        raise SipParseError(f"bad method: {method[:40]!r}")
    if version.upper() != SIP_VERSION:
        if version.upper().startswith("SIP/"):
            raise SipParseError(f"unsupported version {version!r}", 505, "Version Not Supported")
        raise SipParseError(f"malformed request line: {line[:80]!r}")
    if not uri or uri[0] == "<" or "\t" in uri:
        raise SipParseError(f"malformed Request-URI: {uri[:80]!r}")
    return Request(method, uri)


class KeepAlivePing:
    """A CRLF double (RFC 5626 §3.5.1): the receiver answers with a single CRLF."""

    __slots__ = ()


KEEPALIVE_PING = KeepAlivePing()
KEEPALIVE_PONG = b"\r\n"

_CL_STREAM = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


class StreamFramer:
    """Cuts a TCP/TLS byte stream into SIP frames by Content-Length.

    `feed` returns complete frames (bytes) and keep-alive pings. When the stream cannot be
    framed any more, the frames before the bad one are still returned, `error` is set and
    `error_head` holds the start of the bad frame (at most `max_message_size` bytes) so that
    the caller can still answer it with `error.status` before closing; the connection must
    then be closed (the next `feed` raises `error`).

    Each byte is searched for the end of the header block once and each header block is read
    for its Content-Length once, however the stream is cut into segments: a peer trickling a
    64 KiB message one byte per segment costs linear work, not quadratic."""

    __slots__ = ("_buffer", "_scanned", "_total", "max_message_size", "error", "error_head")

    def __init__(self, max_message_size: int = 65535) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # no "\r\n\r\n" starts before this offset of the buffer
        self._total = 0  # length of the frame at the front once its head is read, else 0
        self.max_message_size = max_message_size
        self.error: SipFramingError | None = None
        self.error_head = b""

    @property
    def pending_bytes(self) -> int:
        """Bytes of a message (or ping) begun but not complete: the transport times these out."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | KeepAlivePing]:
        if self.error is not None:
            raise self.error
        out: list[bytes | KeepAlivePing] = []
        try:
            self._frame(data, out)
        except SipFramingError as exc:
            self.error = exc
            self.error_head = bytes(self._buffer[: self.max_message_size])
            self._buffer.clear()
            if not out:
                raise
        return out

    def _frame(self, data: bytes, out: list[bytes | KeepAlivePing]) -> None:
        buffer = self._buffer
        buffer += data
        while buffer:
            total = self._total
            if total:
                if len(buffer) < total:
                    break
                out.append(bytes(buffer[:total]))
                del buffer[:total]
                self._total = self._scanned = 0
                continue
            if buffer[:2] == b"\r\n":
                if buffer[:4] == b"\r\n\r\n":
                    del buffer[:4]
                    out.append(KEEPALIVE_PING)
                    continue
                if len(buffer) < 4 and b"\r\n\r\n".startswith(buffer):
                    break  # maybe the start of a ping: wait for more
                del buffer[:2]  # a lone CRLF before a message (RFC 3261 §7.5)
                continue
            end = buffer.find(b"\r\n\r\n", self._scanned)
            if end < 0:
                if len(buffer) > self.max_message_size:
                    raise SipFramingError("header block larger than the maximum message size",
                                          513, "Message Too Large")
                self._scanned = max(0, len(buffer) - 3)
                break
            head = bytes(buffer[: end + 2])
            lengths = _CL_STREAM.findall(head)
            if not lengths:
                raise SipFramingError("missing Content-Length on a stream")
            try:
                length = _content_length([v.decode("latin-1") for v in lengths])
            except SipParseError as exc:
                raise SipFramingError(str(exc), exc.status, exc.reason) from exc
            total = end + 4 + length
            if total > self.max_message_size:
                raise SipFramingError("message larger than the maximum message size",
                                      513, "Message Too Large")
            self._total = total

    @property
    def pending(self) -> int:
        return len(self._buffer)
