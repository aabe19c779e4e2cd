"""RTCP as the other endpoint must see it once the relay rewrote an RTP stream. No I/O.

The relay keeps each outgoing RTP stream continuous across source changes (rtp.py): after music
on hold hands over to an agent, or a re-INVITE moves a leg, the caller keeps receiving the first
source's SSRC with shifted sequence numbers and timestamps. RTCP must say the same thing, or the
receiver files the reports under an SSRC it never saw (RFC 3550 §7.2, a translator; RFC 7667
§3.2.1.3). For RTCP arriving from endpoint X on its way to X's peer:

- X's own SSRC (SR/RR sender, SDES chunks, BYE list, feedback sender) becomes the SSRC the peer
  receives X's stream under, and an SR's RTP timestamp moves by that stream's offset;
- report blocks and feedback about the stream X receives name the SSRC X saw; they are given
  back the source's SSRC, and the block's extended highest sequence number the source's
  numbering.

Invariants:
- With both streams passing through unchanged (the common case) the packet object is returned
  as it is; otherwise one copy is made.
- A compound that does not parse (bad version, a length past the end) is left as it is from the
  first bad packet on: the relay forwards what it cannot read, as it did before.
"""

from __future__ import annotations

import struct

from .rtp import StreamTranslation

__all__ = ["translate_rtcp"]

SR, RR, SDES, BYE, RTPFB, PSFB = 200, 201, 202, 203, 205, 206
_HEADER = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
_REPORT_BLOCK_SIZE = 24


def translate_rtcp(packet: bytes, sent: StreamTranslation | None,
                   received: StreamTranslation | None) -> bytes:
    """`sent`: the translation of the stream the sending endpoint sends (as its peer gets it);
    `received`: of the stream the sending endpoint receives from us."""
    if sent is None and received is None:
        return packet
    out = bytearray(packet)
    offset = 0
    while offset + 8 <= len(out):
        first, kind, words = _HEADER.unpack_from(out, offset)
        end = offset + 4 * (words + 1)
        if first >> 6 != 2 or end > len(out):
            break
        count = first & 0x1F
        if kind in (SR, RR):
            mine = _own(out, offset + 4, sent)
            blocks = offset + 8
            if kind == SR:
                blocks = offset + 28
                if mine and end >= blocks:
                    assert sent is not None
                    timestamp = _U32.unpack_from(out, offset + 16)[0]
                    _U32.pack_into(out, offset + 16, (timestamp + sent.ts_offset) & 0xFFFFFFFF)
            for index in range(count):
                block = blocks + index * _REPORT_BLOCK_SIZE
                if block + _REPORT_BLOCK_SIZE > end:
                    break
                if _reported(out, block, received):
                    assert received is not None
                    highest = _U32.unpack_from(out, block + 8)[0]
                    low = (highest - received.seq_offset) & 0xFFFF
                    _U32.pack_into(out, block + 8, (highest & 0xFFFF0000) | low)
        elif kind == SDES:
            _sdes(out, offset + 4, end, count, sent)
        elif kind == BYE:
            for index in range(count):
                if offset + 8 + 4 * index <= end:
                    _own(out, offset + 4 + 4 * index, sent)
        elif kind in (RTPFB, PSFB) and end >= offset + 12:
            _own(out, offset + 4, sent)
            _reported(out, offset + 8, received)
        offset = end
    return bytes(out)


def _ssrc(out: bytearray, at: int) -> int:
    ssrc: int = _U32.unpack_from(out, at)[0]
    return ssrc


def _own(out: bytearray, at: int, sent: StreamTranslation | None) -> bool:
    if sent is not None and _ssrc(out, at) == sent.source_ssrc:
        _U32.pack_into(out, at, sent.sent_ssrc)
        return True
    return False


def _reported(out: bytearray, at: int, received: StreamTranslation | None) -> bool:
    if received is not None and _ssrc(out, at) == received.sent_ssrc:
        _U32.pack_into(out, at, received.source_ssrc)
        return True
    return False


def _sdes(out: bytearray, at: int, end: int, count: int,
          sent: StreamTranslation | None) -> None:
    """Each chunk: an SSRC, items (type, length, text), a zero type, padding to 32 bits."""
    for _ in range(count):
        if at + 4 > end:
            return
        _own(out, at, sent)
        at += 4
        while at < end and out[at] != 0:
            if at + 1 >= end:
                return
            at += 2 + out[at + 1]
        at = (at + 4) & ~3  # past the zero octet, to the next 32-bit boundary
