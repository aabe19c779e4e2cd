"""RTCP translation (rtcp.py): after a source change, reports name what each side really saw."""

from __future__ import annotations

import struct

from vaultpbx.media.rtcp import translate_rtcp
from vaultpbx.media.rtp import RtpStreamRewriter, StreamTranslation


def rtp(seq: int, ts: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, ts, ssrc) + bytes(160)


def report_block(ssrc: int, highest: int) -> bytes:
    return struct.pack("!IIIIII", ssrc, 0x01000002, highest, 7, 0x12345678, 9)


def sender_report(ssrc: int, rtp_ts: int, *blocks: bytes) -> bytes:
    body = struct.pack("!IIIIII", ssrc, 0xE1E2E3E4, 0x55555555, rtp_ts, 10, 1600) + b"".join(blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 200, len(body) // 4) + body


def receiver_report(ssrc: int, *blocks: bytes) -> bytes:
    body = struct.pack("!I", ssrc) + b"".join(blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 201, len(body) // 4) + body


def sdes(ssrc: int, cname: bytes) -> bytes:
    chunk = struct.pack("!I", ssrc) + bytes([1, len(cname)]) + cname + b"\x00"
    chunk += bytes(-len(chunk) % 4)
    return struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk


def bye(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x81, 203, 1, ssrc)


def nack(sender: int, media: int) -> bytes:
    return struct.pack("!BBHIIHH", 0x81, 205, 3, sender, media, 100, 0)


def handed_over() -> RtpStreamRewriter:
    """Music (SSRC 0x111) played to a caller, then the agent (0x222) takes over the stream."""
    stream = RtpStreamRewriter()
    for n in range(3):
        stream.rewrite(rtp(1000 + n, 8000 + 160 * n, 0x111), now=n * 0.02)
    stream.source_changed()
    stream.rewrite(rtp(50, 400, 0x222), now=0.08)
    return stream


def test_nothing_to_translate_returns_the_packet_itself() -> None:
    stream = RtpStreamRewriter()
    stream.rewrite(rtp(1, 160, 0xAB), now=0.0)
    assert stream.translation() is None  # passing through unchanged
    packet = sender_report(0xAB, 160)
    assert translate_rtcp(packet, None, None) is packet


def test_the_agents_reports_reach_the_caller_under_the_ssrc_and_numbering_it_hears() -> None:
    to_caller = handed_over()
    sent = to_caller.translation()
    assert sent is not None
    assert sent.source_ssrc == 0x222 and sent.sent_ssrc == 0x111
    # The agent's packets continue the music's numbering (1003, 1004, ...) and timeline.
    out = to_caller.rewrite(rtp(51, 560, 0x222), now=0.1)
    _, out_ts = struct.unpack_from("!HI", out, 2)
    compound = sender_report(0x222, 560) + sdes(0x222, b"agent@pbx") + bye(0x222)
    translated = translate_rtcp(compound, sent, None)
    assert len(translated) == len(compound)
    ssrc, _, _, rtp_ts = struct.unpack_from("!IIII", translated, 4)
    assert (ssrc, rtp_ts) == (0x111, out_ts)  # the SR's timestamp matches the RTP it sent
    sdes_at = len(sender_report(0, 0))
    assert struct.unpack_from("!I", translated, sdes_at + 4)[0] == 0x111
    assert translated[sdes_at + 10:sdes_at + 19] == b"agent@pbx"  # items untouched
    assert struct.unpack_from("!I", translated, len(compound) - 4)[0] == 0x111


def test_the_callers_reports_about_the_music_stream_go_back_to_the_agents_ssrc() -> None:
    to_caller = handed_over()
    received = to_caller.translation()
    assert received is not None
    # The caller received sequence 1003 (the agent's 50) and reports it under 0x111.
    out = to_caller.rewrite(rtp(50, 400, 0x222), now=0.09)
    out_seq = struct.unpack_from("!H", out, 2)[0]
    report = receiver_report(0xCA11, report_block(0x111, (1 << 16) | out_seq))
    translated = translate_rtcp(report + nack(0xCA11, 0x111), None, received)
    block_ssrc, _, highest = struct.unpack_from("!III", translated, 8)
    assert block_ssrc == 0x222
    assert highest == (1 << 16) | 50  # the agent's own numbering, cycles kept
    assert struct.unpack_from("!I", translated, 4)[0] == 0xCA11  # the caller's own SSRC stays
    assert struct.unpack_from("!II", translated, len(report) + 4) == (0xCA11, 0x222)


def test_an_unrelated_ssrc_and_a_broken_compound_are_left_alone() -> None:
    sent = StreamTranslation(source_ssrc=0x222, sent_ssrc=0x111, seq_offset=5, ts_offset=800)
    other = receiver_report(0x999, report_block(0x777, 42))
    assert translate_rtcp(other, sent, sent) == other
    broken = sender_report(0x222, 0)[:-4]  # its length field now runs past the end
    assert translate_rtcp(broken, sent, None) == broken
    tail_broken = sender_report(0x222, 0) + b"\x80\xc8\xff\xff"
    translated = translate_rtcp(tail_broken, sent, None)
    assert struct.unpack_from("!I", translated, 4)[0] == 0x111  # the good part is translated
    assert translated.endswith(b"\x80\xc8\xff\xff")
