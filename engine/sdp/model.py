"""SDP session descriptions (RFC 8866): values, parsing and serialising. No I/O.

Invariants:
- Values are frozen; change them with `dataclasses.replace` (or the `with_*` helpers).
- Every attribute is kept, in order, as written (`Attribute`); the typed views (rtpmap, fmtp,
  crypto, rtcp, rtcp-mux, ptime, direction) are read from them on demand. Lines of other types
  than v/o/s/c/m/a (i, u, e, p, b, t, r, z, k and letters we do not know) are kept in `lines`, in
  order, and written back in their RFC 8866 §5 place. So a well-formed description survives
  parse → serialise byte for byte, unknown lines and attributes included.
- The attributes this module gives meaning to are validated at parse time, with the line number
  in the error; the wire form is `bytes` in and `bytes` out, lines ending in CRLF.
- The body is untrusted: `parse_sdp` raises only `SdpParseError`, and the typed views of a parsed
  description raise nothing. A number is only converted once it is known to be a short string
  of ASCII digits ("²".isdigit() is true, int("²") fails; a 5,000-digit port makes int() raise).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from .crypto import CryptoAttribute
from .errors import SdpParseError

__all__ = [
    "Attribute",
    "Connection",
    "Direction",
    "MediaDescription",
    "Origin",
    "RtcpAttribute",
    "RtpMap",
    "SdpLine",
    "SessionDescription",
    "parse_sdp",
]


class Direction(enum.Enum):
    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)

    @classmethod
    def of(cls, sends: bool, receives: bool) -> Direction:
        if sends:
            return cls.SENDRECV if receives else cls.SENDONLY
        return cls.RECVONLY if receives else cls.INACTIVE

    def answer(self) -> Direction:
        """The direction that answers this offered one (RFC 3264 §6.1)."""
        return Direction.of(sends=self.receives, receives=self.sends)


_DIRECTIONS = {d.value: d for d in Direction}


@dataclass(frozen=True, slots=True, kw_only=True)
class SdpLine:
    type: str  # one lowercase letter
    value: str

    def to_str(self) -> str:
        return f"{self.type}={self.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Attribute:
    name: str
    value: str | None = None  # None for property attributes such as a=rtcp-mux

    def to_str(self) -> str:
        return f"a={self.name}" if self.value is None else f"a={self.name}:{self.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    username: str = "-"
    session_id: str
    session_version: str
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str

    def to_str(self) -> str:
        return (
            f"o={self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str  # may carry /ttl and /count for multicast, kept as written

    @classmethod
    def for_address(cls, address: str) -> Connection:
        return cls(addrtype="IP6" if ":" in address else "IP4", address=address)

    @property
    def is_hold_address(self) -> bool:
        """c=IN IP4 0.0.0.0: the RFC 2543 way of putting a call on hold (RFC 3264 §8.4)."""
        return self.address in ("0.0.0.0", "::")

    def to_str(self) -> str:
        return f"c={self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RtpMap:
    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None

    def to_value(self) -> str:
        value = f"{self.payload_type} {self.encoding}/{self.clock_rate}"
        return value if self.channels is None else f"{value}/{self.channels}"

    @classmethod
    def parse(cls, value: str, *, line_number: int | None = None) -> RtpMap:
        pt_text, _, encoding_text = value.partition(" ")
        parts = encoding_text.strip().split("/")
        try:
            if not 2 <= len(parts) <= 3 or not parts[0] or not all(
                is_short_number(part, 10) for part in parts[1:]
            ):
                raise ValueError
            return cls(
                payload_type=_payload_type(pt_text),
                encoding=parts[0],
                clock_rate=int(parts[1]),
                channels=int(parts[2]) if len(parts) == 3 else None,
            )
        except ValueError:
            raise SdpParseError(
                f"a=rtpmap: expected '<pt> <encoding>/<clock rate>[/<channels>]', got {value!r}",
                line_number=line_number,
            ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class RtcpAttribute:
    """a=rtcp:<port> [<nettype> <addrtype> <address>] (RFC 3605)."""

    port: int
    connection: Connection | None = None

    def to_value(self) -> str:
        if self.connection is None:
            return str(self.port)
        c = self.connection
        return f"{self.port} {c.nettype} {c.addrtype} {c.address}"

    @classmethod
    def parse(cls, value: str, *, line_number: int | None = None) -> RtcpAttribute:
        fields = value.split()
        if len(fields) not in (1, 4) or not _is_port(fields[0]):
            raise SdpParseError(
                f"a=rtcp: expected '<port> [IN IP4 <address>]', got {value!r}",
                line_number=line_number,
            )
        connection = None
        if len(fields) == 4:
            connection = Connection(nettype=fields[1], addrtype=fields[2], address=fields[3])
        return cls(port=int(fields[0]), connection=connection)


def is_short_number(text: str, max_digits: int) -> bool:
    """`text` is 1 to `max_digits` ASCII digits, so that int(text) is cheap and cannot fail."""
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def _payload_type(text: str) -> int:
    if not is_short_number(text, 3) or int(text) > 127:
        raise ValueError(text)
    return int(text)


def _is_port(text: str) -> bool:
    return is_short_number(text, 5) and int(text) <= 65535


def _direction_of(attributes: tuple[Attribute, ...]) -> Direction | None:
    found = None
    for attribute in attributes:
        if attribute.value is None and attribute.name in _DIRECTIONS:
            found = _DIRECTIONS[attribute.name]
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaDescription:
    media: str  # audio, video, ...
    port: int  # 0 = rejected or disabled stream
    port_count: int | None = None
    proto: str  # RTP/AVP, RTP/SAVP, ...
    formats: tuple[str, ...]  # payload types for RTP, as written
    connection: Connection | None = None
    lines: tuple[SdpLine, ...] = ()  # i=, b=, k= and unknown lines, in order
    attributes: tuple[Attribute, ...] = ()

    # --- typed views ----------------------------------------------------------------
    def attribute_values(self, name: str) -> tuple[str, ...]:
        return tuple(a.value for a in self.attributes if a.name == name and a.value is not None)

    def has_attribute(self, name: str) -> bool:
        return any(a.name == name for a in self.attributes)

    @property
    def payload_types(self) -> tuple[int, ...]:
        return tuple(int(f) for f in self.formats if is_short_number(f, 3))

    def rtpmaps(self) -> dict[int, RtpMap]:
        maps = (RtpMap.parse(value) for value in self.attribute_values("rtpmap"))
        return {rtpmap.payload_type: rtpmap for rtpmap in maps}

    def fmtp(self, payload_type: int) -> str | None:
        prefix = f"{payload_type} "
        for value in self.attribute_values("fmtp"):
            if value.startswith(prefix):
                return value[len(prefix) :].strip()
        return None

    def cryptos(self) -> tuple[CryptoAttribute, ...]:
        return tuple(CryptoAttribute.parse(value) for value in self.attribute_values("crypto"))

    @property
    def rtcp_mux(self) -> bool:
        return self.has_attribute("rtcp-mux")

    @property
    def rtcp(self) -> RtcpAttribute | None:
        values = self.attribute_values("rtcp")
        return RtcpAttribute.parse(values[0]) if values else None

    @property
    def ptime(self) -> int | None:
        values = self.attribute_values("ptime")
        return int(values[0]) if values else None

    @property
    def direction(self) -> Direction | None:
        """The m= line's own direction attribute, if it has one."""
        return _direction_of(self.attributes)

    def to_lines(self) -> list[str]:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        out = [f"m={self.media} {port} {' '.join((self.proto, *self.formats))}"]
        out += [line.to_str() for line in self.lines if line.type == "i"]
        if self.connection is not None:
            out.append(self.connection.to_str())
        out += [line.to_str() for line in self.lines if line.type != "i"]
        out += [attribute.to_str() for attribute in self.attributes]
        return out


# RFC 8866 §5 order of session-level lines; unknown letters go after k=, before a=.
_SESSION_ORDER_BEFORE_C = "iuep"
_SESSION_ORDER_AFTER_C = "btrzk"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionDescription:
    version: int = 0
    origin: Origin
    session_name: str = "-"
    connection: Connection | None = None
    lines: tuple[SdpLine, ...] = (SdpLine(type="t", value="0 0"),)  # i u e p b t r z k, unknown
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = field(default=())
    # The session-level direction attribute, read once: answering reads it for every m= line,
    # and rescanning every session attribute per m= line made media x attributes work.
    _session_direction: Direction | None = field(default=None, init=False, repr=False,
                                                 compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_session_direction", _direction_of(self.attributes))

    def connection_for(self, index: int) -> Connection | None:
        """The connection data that applies to media `index` (its own c=, else the session's)."""
        return self.media[index].connection or self.connection

    def direction_for(self, index: int) -> Direction:
        """The direction of media `index`: its attribute, else the session's, else sendrecv."""
        return self.media[index].direction or self._session_direction or Direction.SENDRECV

    def with_media(self, index: int, media: MediaDescription) -> SessionDescription:
        streams = list(self.media)
        streams[index] = media
        return replace(self, media=tuple(streams))

    def to_bytes(self) -> bytes:
        out = [f"v={self.version}", self.origin.to_str(), f"s={self.session_name}"]
        out += [line.to_str() for line in self.lines if line.type in _SESSION_ORDER_BEFORE_C]
        if self.connection is not None:
            out.append(self.connection.to_str())
        for letter in _SESSION_ORDER_AFTER_C:
            out += [line.to_str() for line in self.lines if line.type == letter]
        known = _SESSION_ORDER_BEFORE_C + _SESSION_ORDER_AFTER_C
        out += [line.to_str() for line in self.lines if line.type not in known]
        out += [attribute.to_str() for attribute in self.attributes]
        for media in self.media:
            out += media.to_lines()
        return ("\r\n".join(out) + "\r\n").encode("utf-8")


def _parse_connection(value: str, line_number: int) -> Connection:
    fields = value.split()
    if len(fields) != 3:
        raise SdpParseError(
            f"c=: expected '<nettype> <addrtype> <address>', got {value!r}", line_number=line_number
        )
    return Connection(nettype=fields[0], addrtype=fields[1], address=fields[2])


def _parse_origin(value: str, line_number: int) -> Origin:
    fields = value.split()
    if len(fields) != 6:
        raise SdpParseError(
            "o=: expected '<username> <sess-id> <sess-version> <nettype> <addrtype> <address>', "
            f"got {value!r}",
            line_number=line_number,
        )
    return Origin(
        username=fields[0],
        session_id=fields[1],
        session_version=fields[2],
        nettype=fields[3],
        addrtype=fields[4],
        address=fields[5],
    )


def _parse_media_line(value: str, line_number: int) -> MediaDescription:
    fields = value.split()
    if len(fields) < 4:
        raise SdpParseError(
            f"m=: expected '<media> <port> <proto> <fmt> ...', got {value!r}",
            line_number=line_number,
        )
    port_text, _, count_text = fields[1].partition("/")
    if not _is_port(port_text) or (count_text and not is_short_number(count_text, 5)):
        raise SdpParseError(f"m=: bad port {fields[1]!r}", line_number=line_number)
    return MediaDescription(
        media=fields[0],
        port=int(port_text),
        port_count=int(count_text) if count_text else None,
        proto=fields[2],
        formats=tuple(fields[3:]),
    )


def _parse_attribute(value: str, line_number: int) -> Attribute:
    name, colon, attribute_value = value.partition(":")
    if not name or " " in name:
        raise SdpParseError(f"a=: bad attribute name in {value!r}", line_number=line_number)
    attribute = Attribute(name=name, value=attribute_value if colon else None)
    # Validate what we give meaning to, here, where the line number is known.
    if colon:
        if name == "rtpmap":
            RtpMap.parse(attribute_value, line_number=line_number)
        elif name == "crypto":
            CryptoAttribute.parse(attribute_value, line_number=line_number)
        elif name == "rtcp":
            RtcpAttribute.parse(attribute_value, line_number=line_number)
        elif name == "ptime" and not is_short_number(attribute_value.strip(), 9):
            raise SdpParseError(f"a=ptime: not a number: {value!r}", line_number=line_number)
    return attribute


def parse_sdp(data: bytes) -> SessionDescription:
    """Parse an SDP body; raises SdpParseError (answer 400) with the offending line number."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SdpParseError(f"not UTF-8 text (byte {error.start})") from None
    raw_lines = text.split("\n")
    if raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    if not raw_lines:
        raise SdpParseError("empty body")

    version: int | None = None
    origin: Origin | None = None
    session_name: str | None = None
    session_connection: Connection | None = None
    session_lines: list[SdpLine] = []
    session_attributes: list[Attribute] = []
    media: list[MediaDescription] = []
    media_lines: list[SdpLine] = []
    media_attributes: list[Attribute] = []

    def close_media() -> None:
        if media:
            media[-1] = replace(
                media[-1], lines=tuple(media_lines), attributes=tuple(media_attributes)
            )
        media_lines.clear()
        media_attributes.clear()

    for line_number, raw in enumerate(raw_lines, start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise SdpParseError(f"expected '<type>=<value>', got {line!r}", line_number=line_number)
        kind, value = line[0], line[2:]
        if line_number == 1:
            if kind != "v" or value != "0":
                raise SdpParseError("the first line must be v=0", line_number=1)
            version = 0
        elif kind == "v":
            raise SdpParseError("a second v= line", line_number=line_number)
        elif kind == "m":
            close_media()
            media.append(_parse_media_line(value, line_number))
        elif kind == "a":
            attribute = _parse_attribute(value, line_number)
            (media_attributes if media else session_attributes).append(attribute)
        elif kind == "c":
            connection = _parse_connection(value, line_number)
            if not media:
                session_connection = connection
            elif media[-1].connection is None:
                media[-1] = replace(media[-1], connection=connection)
            else:
                raise SdpParseError(
                    "more than one c= line in a media description", line_number=line_number
                )
        elif media:
            media_lines.append(SdpLine(type=kind, value=value))
        elif kind == "o":
            if origin is not None:
                raise SdpParseError("a second o= line", line_number=line_number)
            origin = _parse_origin(value, line_number)
        elif kind == "s":
            session_name = value
        else:
            session_lines.append(SdpLine(type=kind, value=value))
    close_media()

    if origin is None:
        raise SdpParseError("no o= line")
    if session_name is None:
        raise SdpParseError("no s= line")
    for index, description in enumerate(media):
        if description.connection is None and session_connection is None and description.port:
            raise SdpParseError(f"media {index} ({description.media}) has no c= line")
    assert version is not None
    return SessionDescription(
        version=version,
        origin=origin,
        session_name=session_name,
        connection=session_connection,
        lines=tuple(session_lines),
        attributes=tuple(session_attributes),
        media=tuple(media),
    )
