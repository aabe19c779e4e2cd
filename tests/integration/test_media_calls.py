"""Anchored media end to end: a real engine with media workers, SIP from raw sockets, and a
Python RTP/SRTP peer on each side. The caller's leg is SRTP (SDES), the trunk's leg plain RTP;
each side sees only vaultpbx's address and its own keys, and every payload arrives intact."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from vaultpbx.media.rtppeer import RtpPeer, payload_number
from vaultpbx.sdp import parse_sdp
from vaultpbx.sip.message import Request, Response, build_response
from vaultpbx.sip.parser import parse_message

from tests.integration.engine import free_port, start_engine


class RawUa:
    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(5)

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, ("127.0.0.1", port))

    def wait(self, accept) -> Request | Response:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            data, _ = self.sock.recvfrom(65535)
            message = parse_message(data)
            if accept(message):
                return message
        raise AssertionError("nothing matching arrived")

    def close(self) -> None:
        self.sock.close()


def invite(ua: RawUa, engine_port: int, body: bytes) -> bytes:
    return (
        f"INVITE sip:0555@127.0.0.1:{engine_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{ua.port};branch=z9hG4bK-media-1\r\n"
        f"From: <sip:caller@127.0.0.1>;tag=caller1\r\nTo: <sip:0555@127.0.0.1>\r\n"
        f"Call-ID: media-call-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:caller@127.0.0.1:{ua.port}>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize("caller_suite", ["AES_CM_128_HMAC_SHA1_80", "AEAD_AES_256_GCM"])
def test_srtp_caller_to_rtp_trunk_audio_intact(tmp_path: Path, caller_suite: str) -> None:
    import asyncio

    callee = RawUa()
    engine = start_engine(tmp_path, {
        "media": {"anchor": True, "workers": 1, "port_min": 24000 + (free_port() % 2000) * 2,
                  "port_max": 32000},
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "trunks": {"carrier": {"target": f"sip:127.0.0.1:{callee.port}", "srtp": "off"}},
        "dialplan": [{"match": "0(\\d+)", "trunk": "carrier", "number": "\\1"}],
    })
    caller = RawUa()
    alice = RtpPeer(ssrc=0x1111, suite=caller_suite)
    bob = RtpPeer(ssrc=0x2222)
    try:
        offer = alice.sdp()
        caller.send(invite(caller, engine.sip_port, offer), engine.sip_port)
        b_invite = callee.wait(lambda m: isinstance(m, Request) and m.method == "INVITE")
        assert isinstance(b_invite, Request)
        # The callee sees our address, plain RTP (trunk policy off), not the caller's port/key.
        b_offer = parse_sdp(b_invite.body)
        assert b_offer.media[0].proto == "RTP/AVP"
        assert b_offer.media[0].port != alice.port
        assert b"inline:" not in b_invite.body
        answer = bob.answer_to(b_invite.body)
        ok = build_response(b_invite, 200, to_tag="callee1", extra=[
            ("contact", f"<sip:callee@127.0.0.1:{callee.port}>"),
            ("content-type", "application/sdp")], body=answer)
        callee.send(ok.serialize(), engine.sip_port)
        a_ok = caller.wait(lambda m: isinstance(m, Response) and m.status == 200)
        assert isinstance(a_ok, Response)
        a_answer = parse_sdp(a_ok.body)
        assert a_answer.media[0].proto == "RTP/SAVP"
        assert a_answer.media[0].cryptos()[0].suite == caller_suite
        assert a_answer.media[0].port != bob.port
        alice.learn(a_ok.body)
        ack = (
            f"ACK sip:vaultpbx@127.0.0.1:{engine.sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK-media-ack\r\n"
            f"From: <sip:caller@127.0.0.1>;tag=caller1\r\n"
            f"To: <sip:0555@127.0.0.1>;tag={a_ok.to.tag}\r\nCall-ID: media-call-1\r\n"
            f"CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        caller.send(ack, engine.sip_port)

        async def talk() -> tuple[list[bytes], list[bytes]]:
            for n in range(50):
                alice.send(n)
                bob.send(1000 + n)
                await asyncio.sleep(0.005)
            return await bob.receive(50, 5.0), await alice.receive(50, 5.0)

        at_bob, at_alice = asyncio.run(talk())
        assert [payload_number(p[12:]) for p in at_bob] == list(range(50))
        assert [payload_number(p[12:]) for p in at_alice] == list(range(1000, 1050))
        # What reached the trunk side was plain RTP; what reached the caller was SRTP.
        assert all(p[12:22] == b"%010d" % payload_number(p[12:]) for p in bob.raw)
        assert all(b"00000010" not in raw for raw in alice.raw)
        assert alice.failures == 0
        # Hang up: the media session is deleted with the call.
        bye = ack.replace(b"ACK sip", b"BYE sip").replace(b"1 ACK", b"2 BYE").replace(
            b"media-ack", b"media-bye")
        caller.send(bye, engine.sip_port)
        assert caller.wait(lambda m: isinstance(m, Response) and m.cseq.method == "BYE")
        assert callee.wait(lambda m: isinstance(m, Request) and m.method == "BYE")
    finally:
        caller.close()
        callee.close()
        alice.close()
        bob.close()
        assert engine.stop() == 0


def test_srtp_required_without_crypto_gets_488(tmp_path: Path) -> None:
    callee = RawUa()
    engine = start_engine(tmp_path, {
        "media": {"anchor": True, "workers": 1},
        "extensions": {"1001": {"password": "x", "srtp": "required"}},
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "trunks": {"carrier": {"target": f"sip:127.0.0.1:{callee.port}", "srtp": "required"}},
        "dialplan": [{"match": "0(\\d+)", "trunk": "carrier", "number": "\\1"}],
    })
    caller = RawUa()
    plain = RtpPeer(ssrc=0x3333)
    try:
        caller.send(invite(caller, engine.sip_port, plain.sdp()), engine.sip_port)
        b_invite = callee.wait(lambda m: isinstance(m, Request) and m.method == "INVITE")
        # The trunk requires SRTP: we offer RTP/SAVP; the callee answers without crypto.
        assert b"RTP/SAVP" in b_invite.body
        bad = build_response(b_invite, 200, to_tag="c2", extra=[
            ("contact", f"<sip:callee@127.0.0.1:{callee.port}>"),
            ("content-type", "application/sdp")], body=RtpPeer(ssrc=4).sdp())
        callee.send(bad.serialize(), engine.sip_port)
        final = caller.wait(lambda m: isinstance(m, Response) and m.status >= 300)
        assert final.status == 488
        assert callee.wait(lambda m: isinstance(m, Request) and m.method == "BYE")
    finally:
        caller.close()
        callee.close()
        plain.close()
        engine.stop()


def test_default_yaml_call_carries_srtp_on_the_caller_leg(tmp_path: Path) -> None:
    """configs/default.yaml as shipped (only ports and the data directory moved): 1001 calls
    1002 with SDES-SRTP and digest auth; the audio arrives intact at 1002, and the call leaves a
    sealed recording that `vaultpbx recordings export` turns into a WAV holding that audio."""
    import asyncio
    import json
    import subprocess
    import sys
    import time
    import wave

    import numpy as np
    import yaml
    from vaultpbx.codecs.g711 import ulaw_decode
    from vaultpbx.sip.digest import build_authorization

    from tests.integration.engine import ROOT
    from tests.integration.sipclient import UdpClient

    config = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    sip_port, tls_port, admin_port = free_port(), free_port(False), free_port(False)
    config["data_dir"] = str(tmp_path / "var")
    config["sip"]["listen"] = [{"transport": "udp", "host": "127.0.0.1", "port": sip_port},
                               {"transport": "tls", "host": "127.0.0.1", "port": tls_port}]
    config["sip"]["tls"].update(certificate=str(tmp_path / "var/tls/c.pem"),
                                private_key=str(tmp_path / "var/tls/k.pem"))
    config["admin"].update(port=admin_port, tls=False)
    config["media"]["workers"] = 1
    config["media"]["music_on_hold"] = str(ROOT / config["media"]["music_on_hold"])  # cwd moves
    config["drain_timeout"] = 1  # the call is still up when the test stops the engine
    engine = start_engine(tmp_path, config=config)
    passwords = {name: ext["password"] for name, ext in config["extensions"].items()}
    callee_sip = UdpClient(sip_port)
    caller = RawUa()
    alice = RtpPeer(ssrc=0x5151, suite="AES_CM_128_HMAC_SHA1_80")
    bob = RtpPeer(ssrc=0x5252, suite="AES_CM_128_HMAC_SHA1_80")
    try:
        assert callee_sip.register("1002", passwords["1002"]).status == 200
        uri = "sip:1002@vaultpbx.local"
        body = alice.sdp()

        def invite_1002(cseq: int, auth: str = "") -> bytes:
            return (
                f"INVITE {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK-def-{cseq}\r\n"
                f"From: <sip:1001@vaultpbx.local>;tag=a1001\r\nTo: <{uri}>\r\n"
                f"Call-ID: default-yaml-call\r\nCSeq: {cseq} INVITE\r\nMax-Forwards: 70\r\n"
                f"Contact: <sip:1001@127.0.0.1:{caller.port}>\r\n{auth}"
                f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body

        caller.send(invite_1002(1), sip_port)
        challenge = caller.wait(lambda m: isinstance(m, Response) and m.status == 407)
        authorization = build_authorization(challenge.get("proxy-authenticate") or "",
                                            "INVITE", uri, "1001", passwords["1001"], "cn", 1)
        caller.send(invite_1002(2, f"Proxy-Authorization: {authorization}\r\n"), sip_port)
        callee_sip.sock.settimeout(5)
        while True:
            data, _ = callee_sip.sock.recvfrom(65535)
            b_invite = parse_message(data)
            if isinstance(b_invite, Request) and b_invite.method == "INVITE":
                break
        assert b"inline:" in b_invite.body and alice.key.hex() not in b_invite.body.hex()
        ok = build_response(b_invite, 200, to_tag="b1002", extra=[
            ("contact", f"<sip:1002@127.0.0.1:{callee_sip.port}>"),
            ("content-type", "application/sdp")], body=bob.answer_to(b_invite.body))
        callee_sip.sock.sendto(ok.serialize(), ("127.0.0.1", sip_port))
        a_ok = caller.wait(lambda m: isinstance(m, Response) and m.status == 200)
        assert parse_sdp(a_ok.body).media[0].proto == "RTP/SAVP"
        alice.learn(a_ok.body)
        caller.send((
            f"ACK sip:vaultpbx@127.0.0.1:{sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK-def-ack\r\n"
            f"From: <sip:1001@vaultpbx.local>;tag=a1001\r\nTo: <{uri}>;tag={a_ok.to.tag}\r\n"
            f"Call-ID: default-yaml-call\r\nCSeq: 2 ACK\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode(), sip_port)

        deadline = time.monotonic() + 5  # the worker starts recording a few ms after the 200
        while engine.metrics().get("vaultpbx_recordings_started_total", 0) < 1:
            assert time.monotonic() < deadline, "default.yaml records every call"
            time.sleep(0.02)

        async def talk() -> tuple[list[bytes], list[bytes]]:
            sent = []
            for n in range(40):
                sent.append(alice.send(n)[12:])
                await asyncio.sleep(0.005)
            return sent, await bob.receive(40, 5.0)

        said, heard = asyncio.run(talk())
        assert [payload_number(p[12:]) for p in heard] == list(range(40))
        assert bob.failures == 0 and alice.failures == 0
    finally:
        caller.close()
        callee_sip.close()
        alice.close()
        bob.close()
        assert engine.stop() == 0  # drains: the call ends, its recording is sealed and closed
    # The call left a sealed recording; `vaultpbx recordings export` makes a WAV of it.
    cli = [sys.executable, "-m", "vaultpbx.runtime.cli"]
    config_args = ["-c", str(engine.config_path)]
    listing = subprocess.run([*cli, "recordings", "list", "--json", *config_args],
                             capture_output=True, text=True, timeout=60, check=True)
    [row] = json.loads(listing.stdout)
    assert row["state"] == "closed"
    wav_path = tmp_path / "call.wav"
    subprocess.run([*cli, "recordings", "export", row["id"], "-o", str(wav_path), *config_args],
                   capture_output=True, text=True, timeout=60, check=True)
    with wave.open(str(wav_path)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 8000)
        caller_channel = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")[0::2]
    spoken = ulaw_decode(b"".join(said)).astype("<i2").tobytes()
    assert spoken in caller_channel.tobytes()  # all 40 frames, sample for sample, in order
    verify = subprocess.run([*cli, "recordings", "verify", *config_args],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "1 checked, 0 failed" in verify.stdout, verify.stdout


def _establish(engine_port: int, caller: RawUa, callee: RawUa, call_id: str
               ) -> tuple[Response, RtpPeer, RtpPeer]:
    alice, bob = RtpPeer(ssrc=0x7001), RtpPeer(ssrc=0x7002)
    data = invite(caller, engine_port, alice.sdp()).replace(b"media-call-1", call_id.encode())
    data = data.replace(b"z9hG4bK-media-1", f"z9hG4bK-{call_id}".encode())
    caller.send(data, engine_port)
    b_invite = callee.wait(lambda m: isinstance(m, Request) and m.method == "INVITE")
    ok = build_response(b_invite, 200, to_tag=f"t-{call_id}", extra=[
        ("contact", f"<sip:callee@127.0.0.1:{callee.port}>"),
        ("content-type", "application/sdp")], body=bob.answer_to(b_invite.body))
    callee.send(ok.serialize(), engine_port)
    a_ok = caller.wait(lambda m: isinstance(m, Response) and m.status == 200)
    caller.send((
        f"ACK sip:vaultpbx@127.0.0.1:{engine_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK-ack-{call_id}\r\n"
        f"From: <sip:caller@127.0.0.1>;tag=caller1\r\nTo: <sip:0555@127.0.0.1>;tag={a_ok.to.tag}"
        f"\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode(), engine_port)
    return a_ok, alice, bob


def test_sigkill_of_a_media_worker_ends_its_calls_and_the_engine_goes_on(tmp_path: Path) -> None:
    import os
    import signal
    import sqlite3

    callee = RawUa()
    engine = start_engine(tmp_path, {
        "media": {"anchor": True, "workers": 1},
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "trunks": {"carrier": {"target": f"sip:127.0.0.1:{callee.port}", "srtp": "off"}},
        "dialplan": [{"match": "0(\\d+)", "trunk": "carrier", "number": "\\1"}],
    })
    caller = RawUa()
    peers: list[RtpPeer] = []
    try:
        _, alice, bob = _establish(engine.sip_port, caller, callee, "doomed-call")
        peers += [alice, bob]
        assert engine.health()["active_calls"] == 1
        children = Path(f"/proc/{engine.process.pid}/task/{engine.process.pid}/children")
        workers = [int(pid) for pid in children.read_text().split()]
        assert workers, "the engine should have a media worker process"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        # Both legs get a BYE; the call record says why.
        assert caller.wait(lambda m: isinstance(m, Request) and m.method == "BYE")
        assert callee.wait(lambda m: isinstance(m, Request) and m.method == "BYE")
        deadline = time.monotonic() + 10
        while engine.health()["active_calls"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert engine.health()["active_calls"] == 0
        # The worker is restarted (a new process): then the next call is anchored again.
        while time.monotonic() < deadline + 10:
            fresh = [int(pid) for pid in children.read_text().split()]
            if fresh and not set(fresh) & set(workers):
                break
            time.sleep(0.1)
        time.sleep(1.0)  # the new worker answers its first ping
        _, alice2, bob2 = _establish(engine.sip_port, caller, callee, "next-call")
        peers += [alice2, bob2]
        assert engine.health()["active_calls"] == 1
        assert "media.calls_lost" in engine.log()
    finally:
        caller.close()
        callee.close()
        for peer in peers:
            peer.close()
        engine.stop()
    time.sleep(0.5)
    db = sqlite3.connect(engine.data_dir / "cdr.db")
    causes = sorted(row[0] for row in db.execute("SELECT cause FROM calls"))
    assert causes == ["media_lost", "shutdown"]


def test_delayed_offer_is_anchored_offer_in_2xx_answer_in_ack(tmp_path: Path) -> None:
    """An INVITE without SDP (RFC 3261 §13.2.1): the callee offers in its 2xx, the caller gets
    our offer in ours and answers in its ACK; the callee's ACK carries our answer. Both legs
    see only vaultpbx, and audio flows both ways through the relay."""
    import asyncio

    callee = RawUa()
    engine = start_engine(tmp_path, {
        "media": {"anchor": True, "workers": 1, "port_min": 24000 + (free_port() % 2000) * 2,
                  "port_max": 32000},
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "trunks": {"carrier": {"target": f"sip:127.0.0.1:{callee.port}", "srtp": "off"}},
        "dialplan": [{"match": "0(\\d+)", "trunk": "carrier", "number": "\\1"}],
    })
    caller = RawUa()
    alice = RtpPeer(ssrc=0x4444)
    bob = RtpPeer(ssrc=0x5555)
    try:
        request = invite(caller, engine.sip_port, b"").replace(
            b"Content-Type: application/sdp\r\n", b"")
        caller.send(request, engine.sip_port)
        b_invite = callee.wait(lambda m: isinstance(m, Request) and m.method == "INVITE")
        assert isinstance(b_invite, Request) and b_invite.body == b""
        # A 183 with SDP to an offerless INVITE is not relayed with its SDP (and never the
        # callee's address): the caller sees a 183 without a body.
        early = build_response(b_invite, 183, to_tag="callee1", extra=[
            ("contact", f"<sip:callee@127.0.0.1:{callee.port}>"),
            ("content-type", "application/sdp")], body=bob.sdp())
        callee.send(early.serialize(), engine.sip_port)
        a_early = caller.wait(lambda m: isinstance(m, Response) and m.status == 183)
        assert isinstance(a_early, Response) and a_early.body == b""
        ok = build_response(b_invite, 200, to_tag="callee1", extra=[
            ("contact", f"<sip:callee@127.0.0.1:{callee.port}>"),
            ("content-type", "application/sdp")], body=bob.sdp())
        callee.send(ok.serialize(), engine.sip_port)
        a_ok = caller.wait(lambda m: isinstance(m, Response) and m.status == 200)
        assert isinstance(a_ok, Response)
        our_offer = parse_sdp(a_ok.body)
        assert our_offer.media[0].port not in (bob.port, 0)
        assert str(bob.port).encode() not in a_ok.body
        answer = alice.answer_to(a_ok.body)
        ack = (
            f"ACK sip:vaultpbx@127.0.0.1:{engine.sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK-media-ack\r\n"
            f"From: <sip:caller@127.0.0.1>;tag=caller1\r\n"
            f"To: <sip:0555@127.0.0.1>;tag={a_ok.to.tag}\r\nCall-ID: media-call-1\r\n"
            f"CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(answer)}\r\n\r\n"
        ).encode() + answer
        caller.send(ack, engine.sip_port)
        b_ack = callee.wait(lambda m: isinstance(m, Request) and m.method == "ACK")
        assert isinstance(b_ack, Request)
        our_answer = parse_sdp(b_ack.body)
        assert our_answer.media[0].port not in (alice.port, 0)
        assert str(alice.port).encode() not in b_ack.body
        bob.learn(b_ack.body)

        async def talk() -> tuple[list[bytes], list[bytes]]:
            for n in range(50):
                alice.send(n)
                bob.send(1000 + n)
                await asyncio.sleep(0.005)
            return await bob.receive(50, 5.0), await alice.receive(50, 5.0)

        at_bob, at_alice = asyncio.run(talk())
        assert [payload_number(p[12:]) for p in at_bob] == list(range(50))
        assert [payload_number(p[12:]) for p in at_alice] == list(range(1000, 1050))
        bye = ack.split(b"\r\n\r\n")[0].replace(b"ACK sip", b"BYE sip").replace(
            b"1 ACK", b"2 BYE").replace(b"media-ack", b"media-bye").replace(
            b"Content-Type: application/sdp\r\n", b"").replace(
            f"Content-Length: {len(answer)}".encode(), b"Content-Length: 0") + b"\r\n\r\n"
        caller.send(bye, engine.sip_port)
        assert caller.wait(lambda m: isinstance(m, Response) and m.cseq.method == "BYE")
        assert callee.wait(lambda m: isinstance(m, Request) and m.method == "BYE")
    finally:
        caller.close()
        callee.close()
        alice.close()
        bob.close()
        assert engine.stop() == 0
