"""Music on hold on a real engine: media anchored in a worker process, SIP from raw sockets, a
Python RTP/SRTP phone on each side, agents registered with digest auth and (for the routed
queues) logged in through the admin API.

A caller into a queue gets 183 with our SDP and hears the configured file's G.711 encoding (byte
for byte, over SRTP when it offered SRTP); agent ringing does not reach it; when an agent
answers, the 200 carries the identical SDP, the music stops and the agent's audio arrives intact
in the same RTP stream. A caller that hangs up while listening stops its music.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from vaultpbx.media.player import MusicSource
from vaultpbx.media.rtp import parse_rtp_header
from vaultpbx.media.rtppeer import RtpPeer, payload_number
from vaultpbx.sdp import parse_sdp
from vaultpbx.sip.message import Request, Response, build_response
from vaultpbx.sip.parser import parse_message

from tests.integration.engine import RunningEngine, free_port
from tests.integration.sipclient import UdpClient
from tests.integration.test_sipp_calls import start_pbx
from tests.integration.test_sipp_queue import SUPERVISOR, api, wait_for

pytestmark = pytest.mark.integration

PASSWORDS = {"2001": "pw-2001-secret", "2002": "pw-2002-secret"}
SUITE = "AES_CM_128_HMAC_SHA1_80"
_ids = itertools.count(1)


def write_music(path: Path, step: int) -> Path:
    samples = ((np.arange(8000) * step) % 20000 - 10000).astype("<i2")  # 1 s, varied frames
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(samples.tobytes())
    return path


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moh")
    return {"default": write_music(root / "default.wav", 37),
            "empty": write_music(root / "empty.wav", 91)}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory,
           music: dict[str, Path]) -> Iterator[RunningEngine]:
    # Below the ranges of the other media tests (24000+); a neighbour's bench may hold many.
    low = 21000 + (free_port() % 500) * 2
    overrides = {
        "media": {"anchor": True, "workers": 1, "port_min": low, "port_max": low + 1999,
                  "music_on_hold": str(music["default"])},
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "sip": {"digest_algorithms": ["MD5"]},
        "security": {"floodguard": {"trusted": ["127.0.0.1/32"]}, "users": [SUPERVISOR]},
        "extensions": {ext: {"password": pw} for ext, pw in PASSWORDS.items()},
        "queues": {"hunt": {"members": ["2001", "2002"], "ring_timeout": 10}},
        "dialplan": [{"match": "709", "queue": "hunt"}, {"match": "700", "queue": "support"},
                     {"match": "701", "queue": "empty"}, {"match": "702", "queue": "brief"}],
        "routing": {
            "skills": ["english", "french"],
            "agents": {"2002": {"skills": {"english": 3}}},
            "queues": {"support": {"skills": {"english": 1}, "ring_timeout": 10},
                       # nobody speaks French: callers wait here until they give up
                       "empty": {"skills": {"french": 1},
                                 "music_on_hold": str(music["empty"])},
                       "brief": {"skills": {"french": 1}, "max_wait": 1}},
        },
    }
    started: list[RunningEngine] = []
    try:
        yield start_pbx(started, tmp_path_factory.mktemp("engine"), overrides)
    finally:
        for each in started:
            each.stop(timeout=10)


class SipSocket:
    """One UDP SIP endpoint on 127.0.0.1 that keeps every message it receives."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if sock is None:
            self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[Request | Response] = []

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, ("127.0.0.1", port))

    def wait(self, accept: Callable[[Request | Response], bool],
             timeout: float = 5.0) -> Request | Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                break
            message = parse_message(data)
            assert isinstance(message, Request | Response)
            self.seen.append(message)
            if accept(message):
                return message
        seen = [_name(m) + " " + getattr(m, "reason", "") for m in self.seen]
        raise AssertionError(f"nothing matching arrived; seen {seen}")


def _name(message: Request | Response) -> str:
    return message.method if isinstance(message, Request) else str(message.status)


def is_status(status: int) -> Callable[[Request | Response], bool]:
    return lambda m: isinstance(m, Response) and m.status == status


def is_method(method: str) -> Callable[[Request | Response], bool]:
    return lambda m: isinstance(m, Request) and m.method == method


class Caller:
    """A caller's SIP dialog from raw messages (trusted source: no digest needed)."""

    def __init__(self, engine: RunningEngine, number: str, sdp: bytes) -> None:
        self.engine = engine
        self.sip = SipSocket()
        self.number = number
        self.call_id = f"moh-{next(_ids)}-{self.sip.port}"
        self.branch = f"z9hG4bK-{self.call_id}"
        self.sip.send(self.request("INVITE", 1, self.branch, sdp), engine.sip_port)

    def request(self, method: str, cseq: int, branch: str, body: bytes = b"",
                to_tag: str | None = None) -> bytes:
        to = f"<sip:{self.number}@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
        uri = f"sip:{self.number}@127.0.0.1:{self.engine.sip_port}"
        return (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip.port};branch={branch}\r\n"
            f"From: <sip:caller@127.0.0.1>;tag=caller-{self.call_id}\r\nTo: {to}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Max-Forwards: 70\r\nContact: <sip:caller@127.0.0.1:{self.sip.port}>\r\n"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def ack(self, ok: Response) -> None:
        self.sip.send(self.request("ACK", 1, f"z9hG4bK-ack-{self.call_id}", to_tag=ok.to.tag),
                      self.engine.sip_port)

    def bye(self, ok: Response) -> None:
        self.sip.send(self.request("BYE", 2, f"z9hG4bK-bye-{self.call_id}", to_tag=ok.to.tag),
                      self.engine.sip_port)
        self.sip.wait(lambda m: isinstance(m, Response) and m.cseq.method == "BYE")

    def cancel(self) -> None:
        self.sip.send(self.request("CANCEL", 1, self.branch), self.engine.sip_port)
        final = self.sip.wait(is_status(487))
        assert isinstance(final, Response)
        self.sip.send(self.request("ACK", 1, self.branch, to_tag=final.to.tag),
                      self.engine.sip_port)


class AgentPhone:
    """A registered agent phone: answers the INVITEs the engine sends it."""

    def __init__(self, engine: RunningEngine, extension: str) -> None:
        self.engine = engine
        self.extension = extension
        self.client = UdpClient(engine.sip_port)
        assert self.client.register(extension, PASSWORDS[extension]).status == 200
        self.sip = SipSocket(self.client.sock)

    def reply(self, invite: Request, status: int, body: bytes = b"") -> None:
        extra = [("contact", f"<sip:agent@127.0.0.1:{self.sip.port}>")]
        if body:
            extra.append(("content-type", "application/sdp"))
        response = build_response(invite, status, to_tag="agent-tag", extra=extra, body=body)
        self.sip.send(response.serialize(), self.engine.sip_port)

    def close(self) -> None:
        self.client.register(self.extension, PASSWORDS[self.extension], expires=0)
        self.client.close()


def music_payloads(path: Path, encoding: str = "PCMU") -> tuple[bytes, ...]:
    return MusicSource.load(str(path)).frames[encoding]


def header(packet: bytes) -> tuple[int, int]:
    parsed = parse_rtp_header(packet)
    assert parsed is not None
    return parsed.sequence, parsed.ssrc


def receive(peer: RtpPeer, count: int) -> list[bytes]:
    return asyncio.run(peer.receive(count, 3.0))


def answer_and_talk(engine: RunningEngine, caller: Caller, alice: RtpPeer, agent: AgentPhone,
                    invite: Request, early: Response, heard: list[bytes]) -> None:
    """The agent answers: same SDP for the caller, music gone, the agent's audio intact."""
    bob = RtpPeer(ssrc=0xB0B)
    try:
        offered = parse_sdp(invite.body).media[0]
        assert offered.formats == ("0", "101")  # narrowed to the codec the caller was answered
        agent.reply(invite, 200, bob.answer_to(invite.body))
        ok = caller.sip.wait(is_status(200))
        assert isinstance(ok, Response)
        caller.ack(ok)
        assert ok.body == early.body  # RFC 6337: the early answer is the answer
        assert ok.to.tag == early.to.tag
        assert not [m for m in caller.sip.seen if isinstance(m, Response) and m.status == 180]
        heard += alice.drain()  # all music: it stopped before the 200 left
        last_sequence, ssrc = header(heard[-1])
        for n in range(20):
            bob.send(n)
        speech = receive(alice, 20)
        assert [payload_number(p[12:]) for p in speech] == list(range(20))
        assert [header(p) for p in speech] == [((last_sequence + 1 + n) & 0xFFFF, ssrc)
                                               for n in range(20)]
        assert alice.failures == 0
        caller.bye(ok)
        agent.sip.wait(is_method("BYE"))
    finally:
        bob.close()


def test_hunt_queue_srtp_caller_hears_the_file_through_ringing_and_a_busy_agent(
        engine: RunningEngine, music: dict[str, Path]) -> None:
    busy, agent = AgentPhone(engine, "2001"), AgentPhone(engine, "2002")
    alice = RtpPeer(ssrc=0xA11CE, suite=SUITE)
    try:
        before = engine.metrics()
        caller = Caller(engine, "709", alice.sdp())
        early = caller.sip.wait(is_status(183))
        assert isinstance(early, Response)
        answer = parse_sdp(early.body).media[0]
        assert answer.proto == "RTP/SAVP" and answer.formats == ("0", "101")
        alice.learn(early.body)
        heard = receive(alice, 25)
        assert len(heard) >= 25 and alice.failures == 0
        expected = music_payloads(music["default"])
        assert [p[12:] for p in heard[:25]] == list(expected[:25])
        assert all(p[12:] not in raw for p, raw in zip(heard, alice.raw, strict=False))  # SRTP
        # The first member rings (180), then is busy (486): the caller hears none of it and
        # the music goes on without a break in its stream.
        first = busy.sip.wait(is_method("INVITE"))
        assert isinstance(first, Request)
        busy.reply(first, 180)
        heard += receive(alice, 5)
        busy.reply(first, 486)
        invite = agent.sip.wait(is_method("INVITE"))
        assert isinstance(invite, Request)
        agent.reply(invite, 180)
        heard += receive(alice, 10)
        heard += alice.drain()
        count = len(heard)
        assert [p[12:] for p in heard] == [expected[n % len(expected)] for n in range(count)]
        first_sequence = header(heard[0])[0]
        assert [header(p)[0] for p in heard] == [(first_sequence + n) & 0xFFFF
                                                 for n in range(count)]
        answer_and_talk(engine, caller, alice, agent, invite, early, heard)
        after = engine.metrics()
        assert after["vaultpbx_moh_started_total"] == before["vaultpbx_moh_started_total"] + 1
    finally:
        alice.close()
        busy.close()
        agent.close()


def test_acd_caller_waits_with_music_until_an_agent_logs_in_and_answers(
        engine: RunningEngine, music: dict[str, Path]) -> None:
    agent = AgentPhone(engine, "2002")
    alice = RtpPeer(ssrc=0xA2)
    try:
        caller = Caller(engine, "700", alice.sdp(payload_types=(0, 8, 101)))
        early = caller.sip.wait(is_status(183))
        assert isinstance(early, Response)
        assert parse_sdp(early.body).media[0].formats == ("0", "101")
        alice.learn(early.body)
        heard = receive(alice, 10)
        assert [p[12:] for p in heard[:10]] == list(music_payloads(music["default"])[:10])
        # Nobody was available; now an agent logs in and is offered the waiting call.
        status, body = api(engine, "POST", "/agents/login", {"agent": "2002"})
        assert status == 200 and body["state"] == "reserved", body  # offered the call at once
        invite = agent.sip.wait(is_method("INVITE"))
        assert isinstance(invite, Request)
        answer_and_talk(engine, caller, alice, agent, invite, early, heard)
        status, body = api(engine, "POST", "/agents/logout", {"agent": "2002"})
        assert status == 200, body
    finally:
        alice.close()
        agent.close()


def test_caller_hanging_up_while_listening_stops_the_music(
        engine: RunningEngine, music: dict[str, Path]) -> None:
    alice = RtpPeer(ssrc=0xA3)
    try:
        calls = engine.health()["active_calls"]
        caller = Caller(engine, "701", alice.sdp(payload_types=(8, 101)))
        early = caller.sip.wait(is_status(183))
        assert isinstance(early, Response)
        assert parse_sdp(early.body).media[0].formats == ("8", "101")
        alice.learn(early.body)
        heard = receive(alice, 5)
        # This queue has its own file, played as A-law because the caller offered only PCMA.
        assert [p[12:] for p in heard[:5]] == list(music_payloads(music["empty"], "PCMA")[:5])
        caller.cancel()
        wait_for(lambda: engine.health()["active_calls"] == calls, 5, "the call to end")
        time.sleep(0.1)  # the worker's delete is on its way
        alice.drain()
        assert asyncio.run(alice.quiet(0.2)) == []
    finally:
        alice.close()


def test_when_the_queue_gives_up_the_caller_gets_480_and_the_music_stops(
        engine: RunningEngine) -> None:
    alice = RtpPeer(ssrc=0xA5)
    try:
        caller = Caller(engine, "702", alice.sdp())
        early = caller.sip.wait(is_status(183))
        assert isinstance(early, Response)
        alice.learn(early.body)
        assert len(receive(alice, 5)) >= 5
        final = caller.sip.wait(is_status(480), timeout=5)  # max_wait 1 s, nowhere to overflow
        assert isinstance(final, Response) and final.to.tag == early.to.tag
        caller.sip.send(caller.request("ACK", 1, caller.branch, to_tag=final.to.tag),
                        engine.sip_port)
        time.sleep(0.1)  # the worker's delete is on its way
        alice.drain()
        assert asyncio.run(alice.quiet(0.2)) == []
    finally:
        alice.close()


def test_a_caller_that_only_sends_hears_ringing_instead(engine: RunningEngine) -> None:
    alice = RtpPeer(ssrc=0xA4)
    try:
        before = engine.metrics()["vaultpbx_moh_unavailable_total"]
        caller = Caller(engine, "701", alice.sdp(direction="sendonly"))
        ringing = caller.sip.wait(is_status(180))
        assert isinstance(ringing, Response) and not ringing.body
        assert engine.metrics()["vaultpbx_moh_unavailable_total"] == before + 1
        assert asyncio.run(alice.quiet(0.1)) == []
        caller.cancel()
    finally:
        alice.close()


def test_a_delayed_offer_caller_hears_ringing_then_gets_the_agents_offer(
        engine: RunningEngine) -> None:
    """An INVITE without SDP has no offer to answer in a 183: the caller hears the agent's
    ringing, and the agent's 2xx offer reaches it through the media plane (our offer, our
    address), with the caller's answer in its ACK; then audio flows both ways."""
    agent = AgentPhone(engine, "2001")
    other = AgentPhone(engine, "2002")
    alice, bob = RtpPeer(ssrc=0xDE1), RtpPeer(ssrc=0xDE2)
    try:
        before = engine.metrics()
        caller = Caller(engine, "709", b"")
        invite = agent.sip.wait(is_method("INVITE"))
        assert isinstance(invite, Request) and not invite.body
        agent.reply(invite, 180)
        ringing = caller.sip.wait(is_status(180))  # the agent's ringing, no music instead
        assert isinstance(ringing, Response) and not ringing.body
        agent.reply(invite, 200, bob.sdp())
        ok = caller.sip.wait(is_status(200))
        assert isinstance(ok, Response)
        offer = parse_sdp(ok.body)
        assert offer.media[0].port != bob.port  # anchored: the worker's port, not the agent's
        alice.learn(ok.body)
        answer = alice.answer_to(ok.body)
        caller.sip.send(caller.request("ACK", 1, f"z9hG4bK-ack-{caller.call_id}", answer,
                                       to_tag=ok.to.tag), engine.sip_port)
        ack = agent.sip.wait(is_method("ACK"))
        assert isinstance(ack, Request) and ack.body
        bob.learn(ack.body)
        for n in range(10):
            alice.send(n)
            bob.send(100 + n)
        assert [payload_number(p[12:]) for p in receive(bob, 10)] == list(range(10))
        assert [payload_number(p[12:]) for p in receive(alice, 10)] == list(range(100, 110))
        after = engine.metrics()
        assert after["vaultpbx_moh_started_total"] == before["vaultpbx_moh_started_total"]
        caller.bye(ok)
        agent.sip.wait(is_method("BYE"))
    finally:
        alice.close()
        bob.close()
        agent.close()
        other.close()
