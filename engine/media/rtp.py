"""RTP header parsing, RTP/RTCP demultiplexing and stream rewriting (RFC 3550, RFC 5761). No I/O.

Invariants:
- `parse_rtp_header` reads the fixed header with one `struct.unpack_from` and validates, without
  copying the packet: version 2; the CSRC list, the header extension (RFC 3550 §5.3.1) and the
  padding count (§5.1) all fit inside the packet. It returns None for anything else; callers
  count and drop (bad media is never raised through the packet loop).
- `is_rtcp` is RFC 5761 §4: on a multiplexed port, an octet-1 value of 192..223 (RTCP packet types
  SR/RR/SDES/BYE/APP/RTPFB/PSFB/XR...) is RTCP; it is what RTP payload types 64..95 with the marker
  bit set would look like, which is why those payload types are not used with rtcp-mux.
- `RtpStreamRewriter` keeps one outgoing stream continuous (one SSRC, sequence numbers and
  timestamps without jumps) while the source behind it changes, e.g. when a re-INVITE moves the
  other leg to a new endpoint. Offsets are modulo 2^16 (sequence) and 2^32 (timestamp). When there
  is nothing to change the packet object is returned as is; otherwise one copy is made.
- The rewriter is on the relay's per-packet path, so the common case is kept short: a header whose
  first octet is 0x80 (version 2, no padding, no extension, no CSRC) is valid as soon as it has 12
  octets and is read with one `unpack_from`; anything else goes through `parse_rtp_header`. While
  the offsets are zero and the SSRC is kept (from the first source until the first change), the
  rewriter only remembers the newest sequence/timestamp/time, which is all a later source change
  needs to continue the stream.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "RTP_HEADER_SIZE",
    "RtpHeader",
    "RtpStreamRewriter",
    "StreamTranslation",
    "is_rtcp",
    "parse_rtp_header",
]

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
_FIXED_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
_SEQ_TS_SSRC = struct.Struct("!HII")
_EXTENSION_HEADER = struct.Struct("!HH")  # profile-defined, length in 32-bit words
_PLAIN_HEADER_FIRST_OCTET = 0x80  # V=2, P=0, X=0, CC=0: nothing beyond the fixed 12 octets
_RTCP_FIRST = 192  # octet 1 range of RTCP packet types, RFC 5761 §4
_RTCP_LAST = 223


class StreamTranslation(NamedTuple):
    """A source's SSRC, sequence and timestamp as they leave the relay (offsets modulo 2^16 and
    2^32): out = source + offset."""

    source_ssrc: int
    sent_ssrc: int
    seq_offset: int
    ts_offset: int


class RtpHeader(NamedTuple):
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload_offset: int  # header length: 12 + CSRCs + extension
    payload_end: int  # packet length minus padding


def is_rtcp(packet: bytes) -> bool:
    """RTCP on an rtcp-mux port (RFC 5761 §4)."""
    return len(packet) >= 2 and _RTCP_FIRST <= packet[1] <= _RTCP_LAST


def parse_rtp_header(packet: bytes) -> RtpHeader | None:
    """The header of an RTP packet, or None if it is not a well-formed RTP version 2 packet."""
    length = len(packet)
    if length < RTP_HEADER_SIZE:
        return None
    first, second, sequence, timestamp, ssrc = _FIXED_HEADER.unpack_from(packet)
    if first >> 6 != RTP_VERSION:
        return None
    offset = RTP_HEADER_SIZE + 4 * (first & 0x0F)
    if first & 0x10:  # X: one extension header follows the CSRCs
        if offset + 4 > length:
            return None
        offset += 4 + 4 * _EXTENSION_HEADER.unpack_from(packet, offset)[1]
    if offset > length:
        return None
    end = length
    if first & 0x20:  # P: the last octet counts the padding octets, itself included
        padding = packet[-1]
        if padding == 0 or offset + padding > length:
            return None
        end -= padding
    return RtpHeader(bool(second & 0x80), second & 0x7F, sequence, timestamp, ssrc, offset, end)


class RtpStreamRewriter:
    """One outgoing RTP stream kept continuous across changes of the source feeding it.

    `ssrc` fixes the SSRC we send; None keeps the first source's SSRC (set it only here: the
    pass-through decision is taken when a source starts). A change of incoming SSRC
    starts a new source automatically; `source_changed()` forces it (the media controller calls
    it on a re-INVITE, when the same SSRC may restart its sequence). The first packet of a new
    source continues the sequence at last+1 and the timestamp at last + the time elapsed since
    the last packet (at least one sample).
    """

    __slots__ = (
        "ssrc",
        "clock_rate",
        "malformed",
        "_source_ssrc",
        "_seq_offset",
        "_ts_offset",
        "_last_seq",
        "_last_ts",
        "_last_now",
        "_started",
        "_pass_through",
    )

    def __init__(self, *, ssrc: int | None = None, clock_rate: int = 8000) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.malformed = 0  # packets dropped because their RTP header is malformed
        self._source_ssrc: int | None = None
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_seq = 0
        self._last_ts = 0
        self._last_now = 0.0
        self._started = False
        self._pass_through = False  # offsets zero and SSRC kept: packets leave unchanged

    def source_changed(self) -> None:
        self._source_ssrc = None

    def translation(self) -> StreamTranslation | None:
        """How the current source's numbering maps onto the stream we send, for RTCP about it
        (rtcp.py); None while packets pass through unchanged or before the first packet."""
        source = self._source_ssrc
        if source is None or self._pass_through or self.ssrc is None:
            return None
        return StreamTranslation(source, self.ssrc, self._seq_offset, self._ts_offset)

    def rewrite(self, packet: bytes, now: float) -> bytes | None:
        """The packet as it should leave, or None (counted in `malformed`) if it is not RTP."""
        if (
            len(packet) < RTP_HEADER_SIZE or packet[0] != _PLAIN_HEADER_FIRST_OCTET
        ) and parse_rtp_header(packet) is None:
            self.malformed += 1
            return None
        sequence, timestamp, ssrc = _SEQ_TS_SSRC.unpack_from(packet, 2)
        if ssrc != self._source_ssrc:
            self._start_source(sequence, timestamp, ssrc, now)
        if self._pass_through:
            if (sequence - self._last_seq) & 0xFFFF < 0x8000:
                self._last_seq = sequence
                self._last_ts = timestamp
                self._last_now = now
            return packet
        out_seq = (sequence + self._seq_offset) & 0xFFFF
        out_ts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        # Remember the newest packet sent; a late (reordered) one must not move us backwards.
        if (out_seq - self._last_seq) & 0xFFFF < 0x8000:
            self._last_seq = out_seq
            self._last_ts = out_ts
            self._last_now = now
        out_ssrc = self.ssrc
        if out_seq == sequence and out_ts == timestamp and out_ssrc == ssrc:
            return packet
        rewritten = bytearray(packet)
        _SEQ_TS_SSRC.pack_into(rewritten, 2, out_seq, out_ts, out_ssrc)
        return bytes(rewritten)

    def _start_source(self, sequence: int, timestamp: int, ssrc: int, now: float) -> None:
        self._source_ssrc = ssrc
        if self.ssrc is None:
            self.ssrc = ssrc
        if not self._started:
            self._started = True
            self._seq_offset = self._ts_offset = 0
            # The first packet is the newest so far, whatever its number: without this, a
            # stream starting at sequence >= 32768 was never remembered (it looked older than
            # the initial 0) and the next source restarted the sequence near 0.
            self._last_seq, self._last_ts, self._last_now = sequence, timestamp, now
        else:
            gap = max(1, round((now - self._last_now) * self.clock_rate))
            self._seq_offset = (self._last_seq + 1 - sequence) & 0xFFFF
            self._ts_offset = (self._last_ts + gap - timestamp) & 0xFFFFFFFF
        self._pass_through = self._seq_offset == 0 and self._ts_offset == 0 and self.ssrc == ssrc
