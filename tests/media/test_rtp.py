from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vaultpbx.media.rtp import RtpHeader, RtpStreamRewriter, is_rtcp, parse_rtp_header


def rtp(
    seq: int = 1,
    ts: int = 160,
    ssrc: int = 0x11223344,
    *,
    pt: int = 0,
    marker: bool = False,
    payload: bytes = b"\xff" * 160,
    csrcs: tuple[int, ...] = (),
    extension: bytes | None = None,
    padding: int = 0,
) -> bytes:
    first = 0x80 | len(csrcs) | (0x10 if extension is not None else 0) | (0x20 if padding else 0)
    header = struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    header += b"".join(struct.pack("!I", c) for c in csrcs)
    if extension is not None:
        header += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    pad = (bytes(padding - 1) + bytes([padding])) if padding else b""
    return header + payload + pad


def test_plain_header():
    header = parse_rtp_header(rtp(seq=0xFFFF, ts=0xFFFFFFFF, pt=8, marker=True))
    assert header == RtpHeader(True, 8, 0xFFFF, 0xFFFFFFFF, 0x11223344, 12, 172)


def test_csrc_extension_and_padding_bound_the_payload():
    packet = rtp(payload=b"abcd", csrcs=(1, 2), extension=bytes(8), padding=3)
    header = parse_rtp_header(packet)
    assert header is not None
    assert header.payload_offset == 12 + 8 + 4 + 8
    assert packet[header.payload_offset : header.payload_end] == b"abcd"


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (b"", "empty"),
        (rtp()[:11], "shorter than the fixed header"),
        (b"\x40" + rtp()[1:], "version 1"),
        (rtp(payload=b"", csrcs=(1, 2))[:19], "CSRC list cut short"),
        (rtp(payload=b"", extension=b"")[:14], "extension header cut short"),
        (rtp(payload=b"", extension=bytes(8))[:20], "extension body cut short"),
        (rtp(payload=b"", padding=1)[:-1] + b"\x05", "padding longer than the payload"),
        (rtp(payload=b"ab", padding=1)[:-1] + b"\x00", "padding count zero"),
    ],
)
def test_malformed_packets_are_none(packet, why):
    assert parse_rtp_header(packet) is None, why


@given(st.binary(max_size=64))
def test_never_raises_and_stays_in_bounds(data):
    header = parse_rtp_header(data)
    if header is not None:
        assert 12 <= header.payload_offset <= header.payload_end <= len(data)


def test_rtcp_mux_demultiplexing_rfc5761():
    for packet_type in (200, 201, 202, 203, 204, 205, 206, 207):
        assert is_rtcp(bytes([0x81, packet_type, 0, 1]) + bytes(4))
    assert not is_rtcp(rtp(pt=0, marker=True))
    assert not is_rtcp(rtp(pt=101))
    assert not is_rtcp(rtp(pt=96, marker=True))  # 0xE0 = 224, just past the RTCP range
    assert is_rtcp(rtp(pt=64, marker=True))  # why PT 64..95 are not used with rtcp-mux
    assert not is_rtcp(b"\x80")


def fields(packet: bytes) -> tuple[int, int, int]:
    header = parse_rtp_header(packet)
    assert header is not None
    return header.sequence, header.timestamp, header.ssrc


def test_single_source_passes_through_without_copy():
    rewriter = RtpStreamRewriter()
    packet = rtp(seq=5, ts=800)
    assert rewriter.rewrite(packet, now=0.0) is packet


def test_new_source_continues_sequence_timestamp_and_ssrc():
    rewriter = RtpStreamRewriter()
    for i in range(3):
        rewriter.rewrite(rtp(seq=(65534 + i) & 0xFFFF, ts=1000 + 160 * i), now=0.02 * i)
    # Re-INVITE: the other leg now comes from a new endpoint with its own numbering.
    out = rewriter.rewrite(rtp(seq=777, ts=5_000_000, ssrc=0xABCDEF01), now=0.10)
    assert out is not None
    # seq 65534, 65535, 0 were sent: continue at 1; 60 ms since the last packet = 480 samples.
    assert fields(out) == (1, 1000 + 320 + 480, 0x11223344)
    assert out[12:] == rtp()[12:]
    nxt = rewriter.rewrite(rtp(seq=778, ts=5_000_160, ssrc=0xABCDEF01), now=0.12)
    assert nxt is not None and fields(nxt) == (2, 1000 + 320 + 480 + 160, 0x11223344)


def test_forced_source_change_with_same_ssrc_and_fixed_output_ssrc():
    rewriter = RtpStreamRewriter(ssrc=0x0BADF00D)
    first = rewriter.rewrite(rtp(seq=100, ts=0), now=0.0)
    assert first is not None and fields(first) == (100, 0, 0x0BADF00D)
    rewriter.source_changed()
    restarted = rewriter.rewrite(rtp(seq=1, ts=0), now=0.0)
    assert restarted is not None and fields(restarted) == (101, 1, 0x0BADF00D)


def test_reordered_packet_does_not_move_the_stream_backwards():
    rewriter = RtpStreamRewriter()
    rewriter.rewrite(rtp(seq=10, ts=1600), now=0.0)
    rewriter.rewrite(rtp(seq=9, ts=1440), now=0.01)  # late
    out = rewriter.rewrite(rtp(seq=1, ts=0, ssrc=2), now=0.01)
    assert out is not None and fields(out)[:2] == (11, 1600 + 80)


def test_a_first_source_numbered_above_32767_is_continued_too():
    rewriter = RtpStreamRewriter()
    rewriter.rewrite(rtp(seq=40000, ts=9000), now=0.0)  # random starts land here half the time
    out = rewriter.rewrite(rtp(seq=5, ts=0, ssrc=2), now=0.02)
    assert out is not None and fields(out)[:2] == (40001, 9000 + 160)


def test_malformed_are_counted_and_dropped():
    rewriter = RtpStreamRewriter()
    assert rewriter.rewrite(b"\x00" * 20, now=0.0) is None
    assert rewriter.rewrite(b"\x80", now=0.0) is None
    assert rewriter.malformed == 2


@given(st.binary(max_size=64))
def test_rewriter_accepts_exactly_what_the_header_parser_accepts(data):
    # The rewriter's shortcut for a plain 0x80 header must not let through anything the full
    # parser refuses, nor refuse anything it accepts.
    rewriter = RtpStreamRewriter()
    out = rewriter.rewrite(data, now=0.0)
    assert (out is None) == (parse_rtp_header(data) is None)
    assert rewriter.malformed == (1 if out is None else 0)


def test_pass_through_until_a_source_change_then_rewritten_copies():
    rewriter = RtpStreamRewriter()
    sent = [rtp(seq=100 + i, ts=160 * i) for i in range(3)]
    assert all(rewriter.rewrite(p, now=0.02 * i) is p for i, p in enumerate(sent))
    late = rtp(seq=99, ts=0)  # reordered while passing through: must not move us backwards
    assert rewriter.rewrite(late, now=0.05) is late
    rewriter.source_changed()  # re-INVITE: same SSRC restarts its numbering
    restarted = rtp(seq=1, ts=0)
    out = rewriter.rewrite(restarted, now=0.06)
    assert out is not None and out is not restarted
    # 102 was the newest sent, 20 ms before at ts 320: continue at 103, 320 + 160 samples.
    assert fields(out) == (103, 320 + 160, 0x11223344)
    nxt = rewriter.rewrite(rtp(seq=2, ts=160), now=0.08)
    assert nxt is not None and fields(nxt) == (104, 320 + 160 + 160, 0x11223344)


def test_headers_with_csrcs_or_extension_take_the_full_parse_and_still_pass():
    rewriter = RtpStreamRewriter()
    with_csrcs = rtp(seq=7, csrcs=(1, 2))
    with_extension = rtp(seq=8, extension=b"\x10\xaa\x00\x00")
    assert rewriter.rewrite(with_csrcs, now=0.0) is with_csrcs
    assert rewriter.rewrite(with_extension, now=0.02) is with_extension
    truncated_extension = rtp(seq=9, extension=b"\x10\xaa\x00\x00", payload=b"")[:-2]
    assert rewriter.rewrite(truncated_extension, now=0.04) is None
    assert rewriter.malformed == 1
