"""Header names and the structured header values the SIP core reads (RFC 3261 §20, §25.1).

Invariants:
- Header names are keyed by their lower-case full form; compact forms (RFC 3261 §7.3.3 and the
  IANA registry) are expanded at parse time, so `m:` and `Contact:` land in the same list.
- Splitting a comma list never splits inside a quoted string or an <...> URI.
- Parsers here are tolerant of LWS wherever RFC 3261 allows it ("SIP / 2.0 / UDP", "tag = x")
  and raise `SipParseError` (400) on what cannot be read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import SipParseError

COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

_DISPLAY_NAMES: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rseq": "RSeq",
    "rack": "RAck",
    "p-asserted-identity": "P-Asserted-Identity",
    "p-preferred-identity": "P-Preferred-Identity",
}

# Headers whose value is a comma-separated list that may be split and joined (RFC 3261 §7.3.1).
# Authentication headers are deliberately absent: their commas separate parameters.
LIST_HEADERS = frozenset(
    {
        "via", "route", "record-route", "contact", "allow", "supported", "require",
        "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
        "allow-events", "path", "service-route",
    }
)

# Headers that may appear at most once (RFC 3261 §7.3.1, Table 2 and 3).
SINGLE_HEADERS = frozenset(
    {"call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type", "expires"}
)

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)


def canonical_name(name: str) -> str:
    """Lower-case full form of a header name, compact forms expanded."""
    lower = name.lower()
    return COMPACT_FORMS.get(lower, lower) if len(lower) == 1 else lower


def display_name(lower: str) -> str:
    known = _DISPLAY_NAMES.get(lower)
    if known is not None:
        return known
    shown = "-".join(part[:1].upper() + part[1:] for part in lower.split("-"))
    if len(_DISPLAY_NAMES) < 4096:  # bounded: header names come from the network
        _DISPLAY_NAMES[lower] = shown
    return shown


def split_list(value: str) -> list[str]:
    """Split a comma list, honouring quoted strings (with escapes) and <...> URIs."""
    if "," not in value:
        stripped = value.strip()
        return [stripped] if stripped else []
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    start = 0
    for index, ch in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            piece = value[start:index].strip()
            if piece:
                out.append(piece)
            start = index + 1
    piece = value[start:].strip()
    if piece:
        out.append(piece)
    return out


def parse_params(text: str) -> dict[str, str]:
    """Parse `;a=b;c` header parameters with LWS around ';' and '='. Values keep their case."""
    params: dict[str, str] = {}
    pieces = text.split(";")
    if pieces[0].strip():
        raise SipParseError(f"header parameters must start with ';': {text[:80]!r}")
    for piece in pieces[1:]:
        piece = piece.strip()
        if not piece:
            raise SipParseError(f"empty header parameter in {text[:80]!r}")
        if "=" in piece:
            key, value = piece.split("=", 1)
            key = key.strip().lower()
            value = value.strip()
            if not key or not value:
                raise SipParseError(f"empty header parameter in {text[:80]!r}")
        else:
            key, value = piece.lower(), ""
        if _TOKEN.match(key) is None:
            raise SipParseError(f"bad header parameter name {key[:40]!r}")
        params[key] = value
    return params


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI text, header parameters."""

    display: str | None
    uri: str
    params: dict[str, str]
    bracketed: bool = True

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> str:
        """Serialize with `tag` set (used when a UAS adds its To tag)."""
        params = dict(self.params)
        params["tag"] = tag
        return format_name_addr(self.display, self.uri, params)

    def __str__(self) -> str:
        return format_name_addr(self.display, self.uri, self.params)


def format_name_addr(display: str | None, uri: str, params: dict[str, str]) -> str:
    head = f"{display} <{uri}>" if display else f"<{uri}>"
    if not params:
        return head
    return head + "".join(f";{k}={v}" if v else f";{k}" for k, v in params.items())


_QUOTED_DISPLAY = re.compile(r'\s*("(?:[^"\\]|\\.)*")\s*<', re.DOTALL)


def parse_name_addr(value: str) -> NameAddr:
    """Parse name-addr / addr-spec with header parameters (RFC 3261 §20.10, §20.20, §20.39)."""
    value = value.strip()
    if not value:
        raise SipParseError("empty name-addr")
    if value[0] == '"':
        match = _QUOTED_DISPLAY.match(value)
        if match is None:
            raise SipParseError(f"unterminated quoted display name: {value[:80]!r}")
        display: str | None = match.group(1)
        rest = value[match.end():]
        close = rest.find(">")
        if close < 0:
            raise SipParseError(f"missing '>' in {value[:80]!r}")
        uri = rest[:close]
        params_text = rest[close + 1:]
    else:
        lt = value.find("<")
        if lt >= 0:
            display_text = value[:lt].strip()
            if display_text:
                for word in display_text.split():
                    if not all(ch in TOKEN_CHARS for ch in word):
                        raise SipParseError(f"display name is not a token list: {display_text!r}")
            display = display_text or None
            close = value.find(">", lt)
            if close < 0:
                raise SipParseError(f"missing '>' in {value[:80]!r}")
            uri = value[lt + 1:close]
            params_text = value[close + 1:]
        else:
            # addr-spec: everything after the first ';' is header parameters (§20.10).
            semi = value.find(";")
            uri = value if semi < 0 else value[:semi]
            params_text = "" if semi < 0 else value[semi:]
            uri = uri.strip()
            if any(ch in uri for ch in " \t") or "," in uri or "?" in uri:
                raise SipParseError(f"addr-spec with spaces, comma or '?': {value[:80]!r}")
            return NameAddr(None, uri, parse_params(params_text), bracketed=False)
    uri = uri.strip()
    if " " in uri or "\t" in uri:
        raise SipParseError(f"spaces inside a URI: {uri[:80]!r}")
    params_text = params_text.strip()
    if params_text and params_text[0] != ";":
        raise SipParseError(f"junk after URI: {params_text[:80]!r}")
    return NameAddr(display, uri, parse_params(params_text))


_VIA = re.compile(
    r"\s*SIP\s*/\s*(?P<version>[^\s/]+)\s*/\s*(?P<transport>[A-Za-z0-9.!%*_+`'~\-]+)\s+"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(?:\s*:\s*(?P<port>[0-9]{1,5}))?"
    r"\s*(?P<params>;.*)?\Z",
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str]
    raw: str

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def parse_via(value: str) -> Via:
    match = _VIA.match(value)
    if match is None:
        raise SipParseError(f"malformed Via: {value[:80]!r}")
    if match.group("version") != "2.0":
        raise SipParseError(f"Via with unsupported SIP version: {value[:80]!r}")
    port_text = match.group("port")
    port = int(port_text) if port_text else None
    if port is not None and port > 65535:
        raise SipParseError(f"Via port out of range: {value[:80]!r}")
    params = parse_params(match.group("params") or "")
    return Via(match.group("transport").upper(), match.group("host").lower(), port, params, value)


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str


_CSEQ = re.compile(r"\s*([0-9]{1,10})\s+([A-Za-z0-9.!%*_+`'~\-]+)\s*\Z")
MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5: "MUST be expressible as a 32-bit unsigned integer
# ... less than 2**31".


def parse_cseq(value: str) -> CSeq:
    match = _CSEQ.match(value)
    if match is None:
        raise SipParseError(f"malformed CSeq: {value[:80]!r}")
    number = int(match.group(1))
    if number > MAX_CSEQ:
        raise SipParseError(f"CSeq number out of range: {number}")
    return CSeq(number, match.group(2))
