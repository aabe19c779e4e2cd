"""End to end through real media worker processes on 127.0.0.1, driven by the controller.

A Python RTP/SRTP peer plays each phone: the caller's SDP goes through `offer`, the callee
answers what we offered it, and numbered payloads must arrive intact and in order (with the
sequence numbers the callee sees continuous, across re-INVITEs too).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from vaultpbx.media.config import MediaConfig
from vaultpbx.media.controller import MediaController, MediaUnavailable
from vaultpbx.media.rtp import parse_rtp_header
from vaultpbx.media.rtppeer import RtpPeer, numbered_payload, payload_number
from vaultpbx.media.srtp import SrtpSession
from vaultpbx.sdp import MediaPolicy, SdpNegotiationError, parse_sdp

pytestmark = pytest.mark.integration

SRTP = MediaPolicy(srtp="required")
PLAIN = MediaPolicy(srtp="off")
PORTS = {"port_min": 24000, "port_max": 25999}  # clear of the engine's default 20000 range


class Events:
    def __init__(self) -> None:
        self.lost: list[tuple[tuple[str, ...], str]] = []
        self.timeouts: list[str] = []


def run(scenario: Callable[[MediaController, Events], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        events = Events()
        config = MediaConfig(**{"workers": 1, "relatch_idle": 0.1, **PORTS, **settings})
        controller = MediaController(
            config,
            on_calls_lost=lambda ids, why: events.lost.append((ids, why)),
            on_media_timeout=events.timeouts.append,
        )
        await controller.start()
        try:
            await asyncio.wait_for(scenario(controller, events), 30)
        finally:
            await controller.close()

    uvloop.run(main())


async def connect(
    controller: MediaController,
    call_id: str,
    caller: RtpPeer,
    callee: RtpPeer,
    policy: MediaPolicy,
    other_policy: MediaPolicy,
) -> tuple[bytes, bytes]:
    offer = await controller.offer(
        call_id, "caller", caller.sdp(), policy=policy, other_policy=other_policy
    )
    answer = await controller.answer(call_id, "callee", callee.answer_to(offer))
    caller.learn(answer)
    return offer, answer


class Stream:
    """What one peer receives, checked across the whole call."""

    def __init__(self, sender: RtpPeer, receiver: RtpPeer) -> None:
        self.sender = sender
        self.receiver = receiver
        self.last_sequence: int | None = None
        self.ssrc: int | None = None
        self.next_number = 0

    async def flows(self, count: int = 50) -> None:
        numbers = list(range(self.next_number, self.next_number + count))
        self.next_number += count
        for number in numbers:
            self.sender.send(number)
            if number % 10 == 9:
                await asyncio.sleep(0.001)
        got = await self.receiver.receive(count)
        assert [payload_number(p[12:]) for p in got] == numbers
        for number, packet in zip(numbers, got, strict=True):
            header = parse_rtp_header(packet)
            assert header is not None
            assert packet[header.payload_offset :] == numbered_payload(number)
            if self.last_sequence is not None:
                assert header.sequence == (self.last_sequence + 1) & 0xFFFF
                assert header.ssrc == self.ssrc
            self.last_sequence, self.ssrc = header.sequence, header.ssrc

    async def blocked(self, count: int = 10) -> None:
        for number in range(count):
            self.sender.send(10_000 + number)
        assert await self.receiver.quiet(0.2) == []


def test_rtp_both_ways_in_order_with_telephone_events() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        a, b = RtpPeer(ssrc=0xA), RtpPeer(ssrc=0xB)
        offer, answer = await connect(controller, "rtp", a, b, PLAIN, PLAIN)
        assert b"RTP/AVP" in offer and b"a=crypto" not in offer
        assert b"telephone-event/8000" in offer and b"telephone-event/8000" in answer
        await Stream(a, b).flows(200)
        await Stream(b, a).flows(200)
        a.send(7, payload_type=101, marker=True)  # RFC 4733 event: passes through as is
        (event,) = await b.receive(1)
        header = parse_rtp_header(event)
        assert header is not None and header.payload_type == 101 and header.marker
        stats = await controller.delete("rtp")
        assert stats is not None
        caller, callee = stats["legs"]
        assert caller["packets_in"] == 201 and callee["packets_out"] == 201
        assert callee["packets_in"] == 200 and caller["packets_out"] == 200

    run(scenario)


def test_srtp_to_srtp_is_encrypted_on_both_wires() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        a = RtpPeer(ssrc=0xA, suite="AES_CM_128_HMAC_SHA1_80")
        b = RtpPeer(ssrc=0xB, suite="AES_CM_128_HMAC_SHA1_80")
        offer, answer = await connect(controller, "srtp", a, b, SRTP, SRTP)
        assert b"RTP/SAVP" in offer and b"a=crypto:1 AEAD_AES_256_GCM" in offer
        assert b"a=crypto:1 AES_CM_128_HMAC_SHA1_80" in answer
        assert b.suite == "AEAD_AES_256_GCM"  # the callee took our preferred suite
        await Stream(a, b).flows()
        await Stream(b, a).flows()
        for peer in (a, b):
            assert peer.failures == 0
            assert all(numbered_payload(0)[:10] not in raw for raw in peer.raw)

    run(scenario)


def test_srtp_caller_bridged_to_plain_rtp_callee() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        a = RtpPeer(ssrc=0xA, suite="AEAD_AES_128_GCM")
        b = RtpPeer(ssrc=0xB)
        offer, answer = await connect(controller, "bridge", a, b, SRTP, PLAIN)
        assert b"RTP/AVP" in offer and b"a=crypto" not in offer
        assert b"RTP/SAVP" in answer and b"AEAD_AES_128_GCM" in answer
        await Stream(a, b).flows()
        await Stream(b, a).flows()
        assert all(raw[12:] == numbered_payload(payload_number(raw[12:])) for raw in b.raw)
        assert all(b"%010d" % 1 not in raw for raw in a.raw)  # ciphertext toward the caller
        assert a.failures == 0

    run(scenario)


def test_srtp_required_without_crypto_is_488_and_leaves_nothing() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        a = RtpPeer(ssrc=0xA)
        with pytest.raises(SdpNegotiationError) as caught:
            await controller.offer("no-crypto", "caller", a.sdp(), policy=SRTP, other_policy=SRTP)
        assert caught.value.status_code == 488
        stats = await controller.stats()
        assert stats["calls"] == 0 and stats["workers"][0]["sessions"] == 0

    run(scenario)


def test_hold_and_resume_keep_the_stream_continuous() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        a = RtpPeer(ssrc=0xA, suite="AES_CM_128_HMAC_SHA1_80")
        b = RtpPeer(ssrc=0xB)
        await connect(controller, "hold", a, b, SRTP, PLAIN)
        to_b, to_a = Stream(a, b), Stream(b, a)
        await to_b.flows()
        await to_a.flows()
        # The caller puts the callee on hold (RFC 3264 §8.4): a=sendonly passes through.
        offer = await controller.offer("hold", "caller", a.sdp(direction="sendonly"))
        assert b"a=sendonly" in offer
        answer = await controller.answer("hold", "callee", b.answer_to(offer, direction="recvonly"))
        assert b"a=recvonly" in answer
        a.learn(answer)
        await to_b.flows(20)  # music on hold still reaches the callee
        await to_a.blocked()
        stats = await controller.query("hold")
        assert stats["legs"][1]["dropped_hold"] == 10
        offer = await controller.offer("hold", "caller", a.sdp())
        assert b"a=sendrecv" in offer
        a.learn(await controller.answer("hold", "callee", b.answer_to(offer)))
        await to_b.flows()
        await to_a.flows()

    run(scenario)


def test_reinvite_with_new_keys_and_new_source_keeps_flowing() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        a = RtpPeer(ssrc=0xA, suite="AES_CM_128_HMAC_SHA1_80")
        b = RtpPeer(ssrc=0xB, suite="AES_CM_128_HMAC_SHA1_80")
        _, first_answer = await connect(controller, "rekey", a, b, SRTP, SRTP)
        to_b, to_a = Stream(a, b), Stream(b, a)
        await to_b.flows()
        await to_a.flows()
        # A transfer-like re-INVITE: new key, new SSRC, sequence restarted, new port.
        a.rekey()
        a.rebind()
        a.ssrc, a.sequence = 0xA2, 5
        offer = await controller.offer("rekey", "caller", a.sdp())
        answer = await controller.answer("rekey", "callee", b.answer_to(offer))
        assert parse_sdp(answer).media[0].cryptos()[0].key_material != (
            parse_sdp(first_answer).media[0].cryptos()[0].key_material
        )
        a.learn(answer)
        await to_b.flows()  # same SSRC and consecutive sequence numbers at the callee
        await to_a.flows()
        assert a.failures == 0 and b.failures == 0

    run(scenario)


def test_latching_follows_a_peer_that_moves_to_another_port() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        a, b = RtpPeer(ssrc=0xA), RtpPeer(ssrc=0xB)
        # Comedia: the caller's SDP names a port it never sends from (a NAT in between).
        decoy = RtpPeer(ssrc=0xD)
        real_port = a.port
        a.port = decoy.port
        offer = await controller.offer("latch", "caller", a.sdp(), policy=PLAIN, other_policy=PLAIN)
        a.port = real_port
        a.learn(await controller.answer("latch", "callee", b.answer_to(offer)))
        to_b, to_a = Stream(a, b), Stream(b, a)
        await to_b.flows(10)  # latches on the first packet
        await to_a.flows(10)  # and symmetric RTP sends back where it came from
        assert decoy.drain() == []
        await asyncio.sleep(0.15)  # longer than relatch_idle
        a.rebind()
        await to_b.flows(10)
        await to_a.flows(10)
        stats = await controller.query("latch")
        assert stats["legs"][0]["unexpected_source"] == 0

    run(scenario)


def test_malformed_and_forged_packets_are_counted_and_dropped() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        a = RtpPeer(ssrc=0xA, suite="AES_CM_128_HMAC_SHA1_80")
        b = RtpPeer(ssrc=0xB)
        await connect(controller, "bad", a, b, SRTP, PLAIN)
        to_b = Stream(a, b)
        await to_b.flows(5)
        forger = SrtpSession.sender("AES_CM_128_HMAC_SHA1_80", os.urandom(30))
        forged = forger.protect(a.packet(99))  # right shape, wrong key: authentication fails
        assert forged is not None
        a.sequence -= 1  # the forged packet never counts: the next genuine one takes its number
        a.timestamp -= 160
        a.send_raw(forged)
        a.send_raw(b"\x80\x00\x01")  # too short to be RTP
        a.send_raw(b"\x00" * 40)  # not RTP: libsrtp refuses it as unauthentic
        b.send_raw(b"\x40" * 40)  # plain leg: version 1 is not RTP
        assert await b.quiet(0.2) == []
        assert await a.quiet(0.0) == []
        await to_b.flows(5)
        stats = await controller.query("bad")
        caller, callee = stats["legs"]
        assert caller["srtp_auth_failures"] == 2
        assert caller["malformed"] == 1
        assert callee["malformed"] == 1
        assert caller["packets_out"] == 0  # nothing of it reached the caller either
        totals = (await controller.stats())["totals"]
        assert totals["srtp_auth_failures"] == 2 and totals["malformed"] == 2

    run(scenario)


def test_no_media_timeout_is_reported() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        a, b = RtpPeer(ssrc=0xA), RtpPeer(ssrc=0xB)
        await connect(controller, "silent", a, b, PLAIN, PLAIN)
        c, d = RtpPeer(ssrc=0xC), RtpPeer(ssrc=0xD)
        await connect(controller, "talking", c, d, PLAIN, PLAIN)
        stream = Stream(c, d)
        deadline = time.monotonic() + 3.0
        while not events.timeouts and time.monotonic() < deadline:
            await stream.flows(5)
            await asyncio.sleep(0.05)
        assert events.timeouts == ["silent"]

    run(scenario, timeout=0.8)


def test_killed_worker_reports_its_calls_and_is_restarted() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        peers = {name: (RtpPeer(ssrc=1), RtpPeer(ssrc=2)) for name in ("c1", "c2", "c3")}
        for name, (a, b) in peers.items():
            await connect(controller, name, a, b, PLAIN, PLAIN)
        by_worker = {w.index: sorted(w.calls) for w in controller.workers}
        assert by_worker == {0: ["c1", "c3"], 1: ["c2"]}  # spread over the workers
        victim = controller.workers[0]
        old_pid = victim.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (not events.lost or victim.restarts == 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert events.lost == [(("c1", "c3"), "media worker 0 exited")]
        assert victim.alive and victim.pid != old_pid
        assert sorted(controller.calls) == ["c2"]
        with pytest.raises(SdpNegotiationError):
            await controller.answer("c1", "callee", b"")
        await Stream(*peers["c2"]).flows(10)  # the other worker's call is untouched
        for name in ("c4", "c5"):  # and new calls work, on both workers
            a, b = RtpPeer(ssrc=4), RtpPeer(ssrc=5)
            await connect(controller, name, a, b, SRTP.__class__(srtp="off"), PLAIN)
            await Stream(a, b).flows(10)
            await Stream(b, a).flows(10)
        assert {controller.calls[n].worker.index for n in ("c4", "c5")} == {0}
        stats = await controller.stats()
        assert stats["worker_restarts"] == 1 and stats["calls_lost"] == 2
        assert stats["workers_alive"] == 2

    run(scenario, workers=2)


def test_a_call_during_the_only_workers_restart_waits_for_it() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        (worker,) = controller.workers
        old_pid = worker.pid
        assert old_pid is not None
        first = (RtpPeer(ssrc=4), RtpPeer(ssrc=5))
        await connect(controller, "before", *first, PLAIN, PLAIN)
        a, b = RtpPeer(ssrc=6), RtpPeer(ssrc=7)
        attempts: list[asyncio.Future[tuple[bytes, bytes]]] = []

        def lost(call_ids: tuple[str, ...], why: str) -> None:
            # Called the moment the worker is found dead, before its restart: a new call now.
            assert not worker.alive and worker.restarts == 0
            attempts.append(asyncio.ensure_future(
                connect(controller, "during-restart", a, b, PLAIN, PLAIN)))

        controller.on_calls_lost = lost
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not attempts and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await attempts[0]  # no 503: it waited for the restart
        assert worker.restarts == 1 and worker.pid != old_pid
        await Stream(a, b).flows(10)
        await Stream(b, a).flows(10)

    run(scenario)


def test_unavailable_when_no_worker_runs() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        controller._closing = True  # no restart: simulate a host with no worker left
        for worker in controller.workers:
            await worker.stop()
        with pytest.raises(MediaUnavailable) as caught:
            await controller.offer("x", "caller", RtpPeer(ssrc=1).sdp(), policy=PLAIN)
        assert caught.value.status_code == 503

    run(scenario)


def test_calls_spread_over_workers_on_two_media_addresses() -> None:
    """Two workers, two loopback addresses: each call's SDP names its worker's address and
    media flows through it (capacity grows by one port range per address)."""

    async def scenario(controller: MediaController, events: Events) -> None:
        peers = [(RtpPeer(ssrc=0x10 + i), RtpPeer(ssrc=0x20 + i)) for i in range(4)]
        seen: set[bytes] = set()
        for index, (a, b) in enumerate(peers):
            offer, answer = await connect(controller, f"spread-{index}", a, b, PLAIN, PLAIN)
            (address,) = {line for line in offer.split(b"\r\n") if line.startswith(b"c=")}
            assert address == next(
                line for line in answer.split(b"\r\n") if line.startswith(b"c=")
            )
            seen.add(address)
            await Stream(a, b).flows(20)
            await Stream(b, a).flows(20)
        assert seen == {b"c=IN IP4 127.0.0.1", b"c=IN IP4 127.0.0.2"}
        stats = await controller.stats()
        assert [w["sessions"] for w in stats["workers"]] == [2, 2]
        for index in range(4):
            assert await controller.delete(f"spread-{index}") is not None
        for a, b in peers:
            a.close()
            b.close()

    run(scenario, workers=2, addresses=("127.0.0.2",))
