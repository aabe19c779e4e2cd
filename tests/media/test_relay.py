"""The relay in-process on real 127.0.0.1 sockets (no worker process), the port pool and the
control-protocol framing: what the end-to-end tests cannot reach easily (the recorder tap,
strict latching, RTCP on a separate port, timeouts on a hand-moved clock)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import uvloop
from vaultpbx.media.config import MediaConfig
from vaultpbx.media.ports import PortPool, PortPoolExhausted, PortRange
from vaultpbx.media.protocol import MAX_FRAME, FrameDecoder, ProtocolError, encode_frame
from vaultpbx.media.relay import KEY_FALLBACK_SECONDS, MediaSession, Relay
from vaultpbx.media.rtppeer import RtpPeer, numbered_payload, payload_number
from vaultpbx.media.srtp import SrtpSession

SUITE = "AES_CM_128_HMAC_SHA1_80"

pytestmark = pytest.mark.integration


def run_relay(scenario: Callable[[Relay], Awaitable[None]], **settings: object) -> None:
    async def main() -> None:
        relay = Relay(address="127.0.0.1", pool=PortPool(PortRange(26000, 26099)), **settings)  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(scenario(relay), 10)
        finally:
            relay.close()

    uvloop.run(main())


async def wire(relay: Relay, a: RtpPeer, b: RtpPeer, **leg_a: object) -> tuple[int, int]:
    port_a, port_b = await relay.open_session("s1", "call-1")
    await relay.update_leg("s1", 0, remote=("127.0.0.1", a.port), **leg_a)  # type: ignore[arg-type]
    await relay.update_leg("s1", 1, remote=("127.0.0.1", b.port))
    a.target, b.target = ("127.0.0.1", port_a), ("127.0.0.1", port_b)
    return port_a, port_b


def test_recording_buffer_gets_every_relayed_packet_in_the_clear() -> None:
    buffers: list[list[bytes | float]] = [[], []]

    async def scenario(relay: Relay) -> None:
        a = RtpPeer(ssrc=0xA, suite="AES_CM_128_HMAC_SHA1_80")
        b = RtpPeer(ssrc=0xB)
        await wire(relay, a, b, srtp_in=("AES_CM_128_HMAC_SHA1_80", a.key))
        for leg, buffer in zip(relay.sessions["s1"].legs, buffers, strict=True):
            leg.recording = buffer
        for number in range(5):
            a.send(number)
            b.send(100 + number)
        assert len(await b.receive(5)) == 5
        assert len(await a.receive(5)) == 5

    run_relay(scenario)
    for buffer, first in zip(buffers, (0, 100), strict=True):
        packets, times = buffer[0::2], buffer[1::2]
        assert [payload_number(p[12:]) for p in packets] == list(range(first, first + 5))
        assert all(p[12:] == numbered_payload(payload_number(p[12:])) for p in packets)
        assert all(isinstance(t, float) for t in times) and times == sorted(times)


def test_refused_srtp_is_counted_and_the_old_key_still_works_after_a_rekey() -> None:
    async def scenario(relay: Relay) -> None:
        a, b = RtpPeer(ssrc=0xA, suite=SUITE), RtpPeer(ssrc=0xB)
        await wire(relay, a, b, srtp_in=(SUITE, a.key))
        leg = relay.sessions["s1"].legs[0]
        a.send(1)
        assert [payload_number(p[12:]) for p in await b.receive(1)] == [1]
        old_sender = a.tx
        assert old_sender is not None
        a.rekey()  # re-INVITE with a new key; a packet under the old one is still in flight
        await relay.update_leg("s1", 0, remote=("127.0.0.1", a.port), srtp_in=(SUITE, a.key))
        in_flight = old_sender.protect(a.packet(2))
        assert in_flight is not None
        a.send_raw(in_flight)  # the current key refuses it, the fallback key relays it
        assert a.tx is not None
        replayed = a.tx.protect(a.packet(3))
        assert replayed is not None
        a.send_raw(replayed)
        a.send_raw(replayed)
        forged = SrtpSession.sender(SUITE, os.urandom(30)).protect(a.packet(4))
        assert forged is not None
        a.send_raw(forged)
        a.send(5)
        assert [payload_number(p[12:]) for p in await b.receive(4)] == [2, 3, 5]
        assert (leg.srtp_auth_failures, leg.srtp_replays, leg.malformed) == (1, 1, 0)
        # Once the fallback has expired, the old key is refused like any other.
        relay.check_timeouts(leg.keys_changed_at + KEY_FALLBACK_SECONDS + 1)
        stale = old_sender.protect(a.packet(6))
        assert stale is not None
        a.send_raw(stale)
        a.send(7)
        assert [payload_number(p[12:]) for p in await b.receive(1)] == [7]
        assert leg.srtp_auth_failures == 2 and leg.packets_in == 8

    run_relay(scenario)


def test_a_packet_the_sending_key_refuses_is_counted_and_not_sent() -> None:
    async def scenario(relay: Relay) -> None:
        a, b = RtpPeer(ssrc=0xA), RtpPeer(ssrc=0xB, suite=SUITE)
        await wire(relay, a, b)
        relay_key = os.urandom(30)
        await relay.update_leg("s1", 1, remote=("127.0.0.1", b.port), srtp_out=(SUITE, relay_key))
        b.rx = SrtpSession.receiver(SUITE, relay_key)
        too_long = a.packet(0) + bytes(1400)  # fits a datagram, not libsrtp's buffer + tag
        a.send_raw(too_long)
        a.send(1)
        assert [payload_number(p[12:]) for p in await b.receive(1)] == [1]
        assert await b.quiet(0.05) == [] and b.failures == 0
        callee = relay.sessions["s1"].legs[1]
        assert (callee.send_failures, callee.packets_out) == (1, 1)
        assert callee.srtp_out is not None and callee.srtp_out.malformed == 1

    run_relay(scenario)


def test_strict_latching_drops_other_sources() -> None:
    async def scenario(relay: Relay) -> None:
        a, b = RtpPeer(ssrc=0xA), RtpPeer(ssrc=0xB)
        await wire(relay, a, b)
        a.send(1)
        assert len(await b.receive(1)) == 1
        intruder = RtpPeer(ssrc=0xE)
        intruder.target = a.target
        intruder.send(666)
        await asyncio.sleep(0.05)
        intruder.send(667)
        assert await b.quiet(0.1) == []
        leg = relay.sessions["s1"].legs[0]
        assert leg.unexpected_source == 2 and leg.remote == ("127.0.0.1", a.port)

    run_relay(scenario, latch="off", relatch_idle=0.0)


def test_rtcp_on_port_plus_one_when_the_peer_does_not_multiplex() -> None:
    async def scenario(relay: Relay) -> None:
        a, b = RtpPeer(ssrc=0xA), RtpPeer(ssrc=0xB)
        a_rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a_rtcp.bind(("127.0.0.1", 0))
        a_rtcp.setblocking(False)

        async def rtcp_from_relay() -> tuple[bytes, tuple[str, int]]:
            for _ in range(500):  # the relay runs on this loop: poll, never block it
                try:
                    return a_rtcp.recvfrom(100)
                except BlockingIOError:
                    await asyncio.sleep(0.002)
            raise AssertionError("no RTCP arrived")

        port_a, _ = await wire(
            relay, a, b, rtcp_mux=False, rtcp_remote=("127.0.0.1", a_rtcp.getsockname()[1])
        )
        assert port_a % 2 == 0
        receiver_report = struct.pack("!BBHI", 0x80, 201, 1, 0xB)
        b.send_raw(receiver_report)  # B multiplexes: its RTCP arrives on its RTP port
        assert await rtcp_from_relay() == (receiver_report, ("127.0.0.1", port_a + 1))
        sender_report = struct.pack("!BBHI", 0x80, 200, 1, 0xA) + bytes(20)
        a_rtcp.sendto(sender_report, ("127.0.0.1", port_a + 1))
        assert await b.receive(1) == [sender_report]
        a_rtcp.close()

    run_relay(scenario)


def test_rtcp_names_the_stream_each_side_saw_after_a_source_change() -> None:
    """B's endpoint switches to a new SSRC (as an agent taking over from music on hold does):
    A keeps hearing one stream, SSRC 0xB, so B's sender report must reach A as 0xB, and A's
    report about 0xB must reach B as a report about its own 0xC, in B's sequence numbering."""

    async def scenario(relay: Relay) -> None:
        a, b = RtpPeer(ssrc=0xA), RtpPeer(ssrc=0xB)
        await wire(relay, a, b)
        for number in range(3):
            b.send(number)
        assert len(await a.receive(3)) == 3
        b.ssrc, b.sequence = 0xC, 40_000  # a new source, numbered its own way
        b.send(3)
        (heard,) = await a.receive(1)
        heard_seq, heard_ts, heard_ssrc = struct.unpack_from("!HII", heard, 2)
        assert heard_ssrc == 0xB and heard_seq != 40_001  # one continuous stream at A
        body = struct.pack("!IIIIII", 0xC, 1, 2, b.timestamp, 4, 640)
        b.send_raw(struct.pack("!BBH", 0x80, 200, len(body) // 4) + body)
        (report,) = await a.receive(1)
        assert struct.unpack_from("!BII", report, 1)[0] == 200
        assert struct.unpack_from("!I", report, 4)[0] == 0xB
        assert struct.unpack_from("!I", report, 16)[0] == heard_ts  # same timeline as the RTP
        block = struct.pack("!IIIIII", 0xB, 0, (1 << 16) | heard_seq, 3, 0, 0)
        a.send_raw(struct.pack("!BBHI", 0x81, 201, 7, 0xA) + block)
        (back,) = await b.receive(1)
        block_ssrc, _, highest = struct.unpack_from("!III", back, 8)
        assert block_ssrc == 0xC and highest == (1 << 16) | 40_001

    run_relay(scenario)


def test_timeout_reported_once_on_a_hand_moved_clock() -> None:
    reported: list[tuple[str, float]] = []

    async def scenario(relay: Relay) -> None:
        a, b = RtpPeer(ssrc=0xA), RtpPeer(ssrc=0xB)
        await wire(relay, a, b)
        session = relay.sessions["s1"]
        start = session.created
        relay.check_timeouts(start + 5)
        relay.check_timeouts(start + 11)
        relay.check_timeouts(start + 12)
        assert [sid for sid, _ in reported] == ["s1"]
        for leg in session.legs:  # on hold both ways: the long timeout applies
            leg.send = False
        relay.refresh(session.legs[0])
        session.timed_out = False
        relay.check_timeouts(start + 100)
        assert len(reported) == 1

    def on_timeout(session: MediaSession, idle: float) -> None:
        reported.append((session.session_id, idle))

    run_relay(scenario, timeout=10.0, hold_timeout=1000.0, on_timeout=on_timeout)


def test_ports_are_even_disjoint_per_worker_and_below_ephemeral() -> None:
    whole = PortRange(20000, 32767)
    slices = [whole.slice(i, 3) for i in range(3)]
    seen: set[int] = set()
    for part in slices:
        ports = set(part.even_ports())
        assert all(p % 2 == 0 and p + 1 <= part.high < 32768 for p in ports)
        assert not ports & seen and not {p + 1 for p in ports} & seen
        seen |= ports | {p + 1 for p in ports}
    pool = PortPool(PortRange(30000, 30005))
    assert [pool.allocate() for _ in range(3)] == [30000, 30002, 30004]
    with pytest.raises(PortPoolExhausted):
        pool.allocate()
    pool.release(30002)
    assert pool.allocate() == 30002
    with pytest.raises(ValueError, match="ephemeral"):
        PortRange(30000, 40000)


def test_media_config_names_the_yaml_path() -> None:
    assert MediaConfig.from_dict({"workers": 2, "port-min": 21000}).port_range.low == 21000
    with pytest.raises(ValueError, match=r"media\.workers: must be an integer"):
        MediaConfig.from_dict({"workers": "two"})
    with pytest.raises(ValueError, match=r"media\.colour: unknown key"):
        MediaConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="ephemeral"):
        MediaConfig.from_dict({"port_max": 40000})


def test_workers_spread_over_media_addresses_without_sharing_a_port() -> None:
    config = MediaConfig.from_dict(
        {"workers": 5, "addresses": ["127.0.0.2", "127.0.0.3"], "port_min": 20000,
         "port_max": 20999}
    )
    bindings = config.worker_bindings()
    assert [address for address, _ in bindings] == [
        "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1", "127.0.0.2"
    ]
    # Workers 0 and 3 share 127.0.0.1: two disjoint halves of the range; worker 2 has it all.
    assert (bindings[0][1].low, bindings[0][1].high) == (20000, 20499)
    assert (bindings[3][1].low, bindings[3][1].high) == (20500, 20999)
    assert (bindings[2][1].low, bindings[2][1].high) == (20000, 20999)
    used = [(a, p) for a, r in bindings for p in r.even_ports()]
    assert len(used) == len(set(used))
    # Capacity grows with addresses: 3 addresses x 500 pairs.
    assert len(used) == 1500
    with pytest.raises(ValueError, match=r"media: addresses: each address may appear once"):
        MediaConfig.from_dict({"addresses": ["127.0.0.1"]})
    with pytest.raises(ValueError, match=r"media: workers: 3 media addresses need at least 3"):
        MediaConfig.from_dict({"workers": 2, "addresses": ["127.0.0.2", "127.0.0.3"]})
    with pytest.raises(ValueError, match=r"advertised_address works with one local address"):
        MediaConfig.from_dict({"addresses": ["127.0.0.2"], "advertised_address": "127.0.0.9"})
    with pytest.raises(ValueError, match=r"media\.addresses: must be a list"):
        MediaConfig.from_dict({"addresses": "127.0.0.2"})
    assert MediaConfig.from_dict({"addresses": ["127.0.0.2", "127.0.0.3"]}).worker_count >= 3


def test_frames_split_anywhere_and_oversize_is_refused() -> None:
    data = encode_frame({"id": 1, "command": "ping"}) + encode_frame({"event": "timeout"})
    decoder = FrameDecoder()
    got = []
    for offset in range(len(data)):
        got += decoder.feed(data[offset : offset + 1])
    assert got == [{"id": 1, "command": "ping"}, {"event": "timeout"}]
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameDecoder().feed(struct.pack("!I", MAX_FRAME + 1))
    with pytest.raises(ProtocolError, match="not a JSON object"):
        FrameDecoder().feed(struct.pack("!I", 2) + b"[]")
