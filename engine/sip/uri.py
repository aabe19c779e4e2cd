"""SIP and SIPS URIs (RFC 3261 §19.1), with IPv6 references (RFC 5118).

Invariants:
- Parsing never unescapes recursively; user parts keep their %HH escapes as received, so a
  stored binding is byte-for-byte what the UA sent (RFC 4475 §3.1.1.3, §3.1.1.4).
- `host` of an IPv6 reference keeps its brackets: "[2001:db8::1]". A port is only read after
  the closing bracket (RFC 5118 §4.10: "[2001:db8::10:5070]" has no port).
- Other schemes (tel:, http:, urn:...) parse into `scheme` + `opaque`; callers decide (416).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SipParseError

_SIP_URI = re.compile(
    r"(?P<scheme>sips?):"
    r"(?:(?P<user>[^@:;?]*)(?::(?P<password>[^@;?]*))?@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<params>(?:;[^?]*)?)"
    r"(?:\?(?P<headers>.*))?\Z",
    re.IGNORECASE | re.DOTALL,
)
_USER_INFO = re.compile(r"(?P<userinfo>.*)@(?P<rest>[^@]*)\Z", re.DOTALL)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_IPV6 = re.compile(r"\[(?P<addr>[0-9A-Fa-f:.]+)\]\Z")


@dataclass(frozen=True, slots=True)
class SipUri:
    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str | None = None
    opaque: str | None = field(default=None)

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    def param(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.params:
            if key == name:
                return value if value is not None else ""
        return None

    def has_param(self, name: str) -> bool:
        name = name.lower()
        return any(key == name for key, _ in self.params)

    @property
    def host_without_brackets(self) -> str:
        if self.host.startswith("["):
            return self.host[1:-1]
        return self.host

    def __str__(self) -> str:
        if not self.is_sip:
            return f"{self.scheme}:{self.opaque or ''}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        for key, value in self.params:
            out.append(f";{key}" if value is None else f";{key}={value}")
        if self.headers is not None:
            out.append("?" + self.headers)
        return "".join(out)


_CACHE: dict[str, SipUri] = {}


def parse_uri(text: str) -> SipUri:
    """Parse a URI. Non-SIP schemes are accepted as opaque; malformed SIP URIs raise 400.

    Results are shared (SipUri is frozen) through a bounded cache: the same From, Contact and
    Request-URI come back on every message of a dialog and from every call of an extension."""
    cached = _CACHE.get(text)
    if cached is not None:
        return cached
    uri = _parse_uri(text)
    if len(_CACHE) >= 8192:
        _CACHE.clear()
    _CACHE[text] = uri
    return uri


def _parse_uri(text: str) -> SipUri:
    text = text.strip()
    scheme_match = _SCHEME.match(text)
    if scheme_match is None:
        raise SipParseError(f"URI without a scheme: {text[:80]!r}")
    scheme = scheme_match.group(0)[:-1].lower()
    if scheme not in ("sip", "sips"):
        return SipUri(scheme=scheme, opaque=text[scheme_match.end():])
    if any(ch in text for ch in " \t\r\n<>"):
        raise SipParseError(f"whitespace or angle bracket inside a SIP URI: {text[:80]!r}")
    # The user part may hold ';' and '?' (RFC 4475 §3.1.1.9: "user;par=u@example.net"), so the
    # last '@' splits userinfo from hostport.
    rest = text[scheme_match.end():]
    user: str | None = None
    password: str | None = None
    at = _USER_INFO.match(rest)
    if at is not None:
        userinfo = at.group("userinfo")
        rest = at.group("rest")
        if ":" in userinfo:
            user, password = userinfo.split(":", 1)
        else:
            user = userinfo
    match = _SIP_URI.match(f"{scheme}:{rest}")
    if match is None:
        raise SipParseError(f"malformed SIP URI: {text[:80]!r}")
    host = match.group("host")
    if host.startswith("[") and _IPV6.match(host) is None:
        raise SipParseError(f"malformed IPv6 reference: {host!r}")
    # A bracketed reference is not checked further: RFC 5118 §4.4 asks elements to accept the
    # three-colon form the RFC 3261 ABNF allowed ("[2001:db8:::192.0.2.1]").
    port_text = match.group("port")
    port = int(port_text) if port_text else None
    if port is not None and port > 65535:
        raise SipParseError(f"port out of range in URI: {text[:80]!r}")
    return SipUri(
        scheme=scheme,
        user=user,
        password=password,
        host=host.lower(),
        port=port,
        params=parse_uri_params(match.group("params")),
        headers=match.group("headers"),
    )


def parse_uri_params(text: str) -> tuple[tuple[str, str | None], ...]:
    if not text:
        return ()
    out: list[tuple[str, str | None]] = []
    for piece in text.split(";"):
        if not piece:
            continue
        if "=" in piece:
            key, value = piece.split("=", 1)
            out.append((key.lower(), value))
        else:
            out.append((piece.lower(), None))
    return tuple(out)
