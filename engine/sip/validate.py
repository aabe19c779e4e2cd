"""Checks a UAS makes on a parsed request before any transaction or dialog logic (RFC 3261 §8.2).

Each check returns None or the error response's (status, reason, extra headers). They run in
the RFC's order: §8.2.1 method, §8.2.2 headers, §8.2.2.3 Require, §8.2.3 content.

Invariant: `check_request` never raises on what the peer sent. Every header and URI it reads is
read inside one guard, and whatever fails to parse becomes that request's answer (400, 416...).
"""

from __future__ import annotations

import re

from .errors import SipParseError
from .headers import SINGLE_HEADERS, parse_name_addr
from .message import Request
from .uri import parse_uri

SUPPORTED_OPTIONS = frozenset({"timer", "path", "outbound"})
KNOWN_METHODS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "UPDATE", "INFO", "PRACK",
     "MESSAGE", "NOTIFY", "SUBSCRIBE", "REFER", "PUBLISH"}
)
ALLOWED_METHODS = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, UPDATE, INFO"
ACCEPTED_BODY_TYPES = frozenset({"application/sdp"})
# LWS is SP and HTAB only: `\s` also matches \x1c-\x1f, which int() refuses, so "7\x1d" passed
# the check and raised ValueError in it (found by fuzzing).
_SCALAR = re.compile(r"[ \t]*([0-9]{1,10})[ \t]*\Z")
MAX_EXPIRES = 2**32 - 1

ErrorAnswer = tuple[int, str, list[tuple[str, str]]]


def check_request(request: Request) -> ErrorAnswer | None:
    """Return the error answer for `request`, or None when it may be processed."""
    headers = request.headers
    for name in ("via", "from", "to", "call-id", "cseq"):
        if name not in headers:
            return 400, f"Missing {name.title()} header", []
    for name in SINGLE_HEADERS:
        lines = headers.get(name)
        if lines is not None and len(lines) > 1:
            return 400, f"Multiple {name.title()} values", []
    try:
        cseq = request.cseq
        request.via  # noqa: B018 - parses and validates the top Via
        # The URIs every later stage reads (registrar, dialplan, dialogs) are read here, once,
        # so that a malformed one is this request's 400 and never an exception in the TU.
        parse_uri(request.from_.uri)
        parse_uri(request.to.uri)
        ruri = request.request_uri
        if "contact" in headers and request.method in ("INVITE", "REGISTER", "SUBSCRIBE"):
            for contact in request.values("contact"):
                if contact != "*":
                    _check_contact(contact)
    except SipParseError as exc:
        return exc.status, exc.reason, [warning_header(str(exc))]
    if cseq.method != request.method:
        return 400, "CSeq method does not match the request", []
    mf = headers.get("max-forwards")
    if mf is not None and not _scalar_at_most(mf[0], 255):
        return 400, "Bad Max-Forwards", []
    expires = headers.get("expires")
    if expires is not None and not _scalar_at_most(expires[0], MAX_EXPIRES):
        return 400, "Bad Expires", []
    if request.method not in KNOWN_METHODS:
        return 501, "Not Implemented", [("allow", ALLOWED_METHODS)]
    if not ruri.is_sip and ruri.scheme != "tel":
        return 416, "Unsupported URI Scheme", []
    if request.method in ("ACK", "CANCEL"):
        return None  # §8.2.2.3: Require is not checked for ACK/CANCEL
    unsupported = [
        tag
        for name in ("require", "proxy-require")
        for tag in request.values(name)
        if tag.lower() not in SUPPORTED_OPTIONS
    ]
    if unsupported:
        return 420, "Bad Extension", [("unsupported", ", ".join(unsupported))]
    if request.body:
        content_type = (request.get("content-type") or "").split(";")[0].strip().lower()
        if request.method in ("INVITE", "UPDATE", "ACK") and content_type not in (
            ACCEPTED_BODY_TYPES
        ):
            return 415, "Unsupported Media Type", [("accept", "application/sdp")]
    accept = request.values("accept")
    if accept and request.method == "INVITE":
        types = {a.split(";")[0].strip().lower() for a in accept}
        if not types & {"application/sdp", "application/*", "*/*"}:
            return 406, "Not Acceptable", [("accept", "application/sdp")]
    return None


def _check_contact(value: str) -> None:
    addr = parse_name_addr(value)
    parse_uri(addr.uri)  # a binding the registrar stores must be one it can route to later
    expires = addr.params.get("expires")
    if expires is not None and not _scalar_at_most(expires, MAX_EXPIRES):
        raise SipParseError(f"Contact expires out of range: {expires[:20]!r}")


def _scalar_at_most(value: str, limit: int) -> bool:
    match = _SCALAR.match(value)
    return match is not None and int(match.group(1)) <= limit


def warning_header(text: str) -> tuple[str, str]:
    """A Warning header (RFC 3261 §20.43, code 399) carrying `text` as a quoted-string."""
    # Cut before escaping, so an escape pair is never split at the end.
    plain = "".join(ch for ch in text if ch >= " ")[:200]
    quoted = plain.replace("\\", "\\\\").replace('"', '\\"')
    return "warning", f'399 vaultpbx "{quoted}"'
