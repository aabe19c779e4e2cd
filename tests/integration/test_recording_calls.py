"""Live calls are recorded, sealed as they stream: a real engine with a media worker, SIP from raw
sockets, RTP phones (rtppeer) on both sides, and the `vaultpbx recordings` CLI as a real process.

- round trip: G.711 sent through the call comes out of `recordings export` bit-exact;
- no plaintext: the known audio bytes appear nowhere under the data directory;
- `recordings verify` (no argument) passes, then fails after one flipped bit;
- crash: SIGKILL of the engine mid-call, restart: the recording is listed incomplete and exports
  up to the kill;
- PCI pause through the admin API: DTMF (in-band tones and RFC 4733 events) sent while it is on
  is not in the recording, a tone after it is, and the pause's start and end are in the file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path
from typing import Any

import numpy as np
from vaultpbx.codecs.dtmf import COLUMN_FREQUENCIES, KEYPAD, ROW_FREQUENCIES, DtmfDetector
from vaultpbx.codecs.g711 import ulaw_decode, ulaw_encode
from vaultpbx.media.rtppeer import RtpPeer
from vaultpbx.sip.message import Request, Response

from tests.integration.engine import RunningEngine, start_engine
from tests.integration.test_media_calls import RawUa
from tests.integration.test_media_calls import _establish as _establish_call

FRAME = 160


def _free_rtp_ports(size: int = 64) -> tuple[int, int]:
    """An even-aligned range of RTP ports nobody holds right now (other engines and benches on
    this machine hold thousands of ports in 20000-32767; a worker tries only 16 per call)."""
    rng = np.random.default_rng()
    for _ in range(200):
        low = int(rng.integers(20000, 32767 - size)) & ~1
        taken = False
        for port in range(low, low + size):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                taken = True
            finally:
                probe.close()
            if taken:
                break
        if not taken:
            return low, low + size - 1
    raise RuntimeError("no free RTP port range")


def _overrides(callee: RawUa, **extra: object) -> dict:
    port_min, port_max = _free_rtp_ports()
    cfg = {
        "media": {"anchor": True, "workers": 1, "port_min": port_min, "port_max": port_max},
        "recording": {"enabled": True},
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "trunks": {"carrier": {"target": f"sip:127.0.0.1:{callee.port}", "srtp": "off"}},
        "dialplan": [{"match": "0(\\d+)", "trunk": "carrier", "number": "\\1"}],
    }
    cfg.update(extra)
    return cfg


def _establish(port: int, caller: RawUa, callee: RawUa, call_id: str
               ) -> tuple[Response, RtpPeer, RtpPeer]:
    ok, alice, bob = _establish_call(port, caller, callee, call_id)
    alice.learn(ok.body)  # where the caller's phone sends: the engine's port for its leg
    return ok, alice, bob


def _wait_recording(engine: RunningEngine, started: int = 1) -> None:
    """The worker confirmed the `record` command (it follows the 200 OK by a few ms; audio
    sent before that is not in the recording)."""
    deadline = time.monotonic() + 5
    while engine.metrics().get("vaultpbx_recordings_started_total", 0) < started:
        assert time.monotonic() < deadline, "the call was never recorded"
        time.sleep(0.02)


def _send(peer: RtpPeer, payload: bytes, payload_type: int = 0) -> None:
    header = peer.packet(0, payload_type=payload_type)[:12]
    plain = header + payload
    peer.send_raw(peer.tx.protect(plain) if peer.tx is not None else plain)


async def _play(peers_and_audio: list[tuple[RtpPeer, bytes]], pace: float = 0.01) -> None:
    frames = max(len(audio) for _, audio in peers_and_audio) // FRAME
    for n in range(frames):
        for peer, audio in peers_and_audio:
            _send(peer, audio[n * FRAME:(n + 1) * FRAME])
        await asyncio.sleep(pace)


def _cli(engine: RunningEngine, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultpbx.runtime.cli", *args, "-c", str(engine.config_path)],
        capture_output=True, text=True, timeout=60, cwd=engine.config_path.parent)


def _listing(engine: RunningEngine) -> list[dict]:
    done = _cli(engine, "recordings", "list", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _wait_state(engine: RunningEngine, state: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rows = _listing(engine)
        if rows and rows[0]["state"] == state:
            return rows[0]
        assert time.monotonic() < deadline, f"recording never became {state}: {rows}"
        time.sleep(0.2)


def _channels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    return frames[:, 0].copy(), frames[:, 1].copy()


def _contains(channel: np.ndarray, expected: np.ndarray) -> bool:
    return channel.tobytes().find(expected.astype("<i2").tobytes()) >= 0


def _hang_up(caller: RawUa, engine_port: int, to_tag: str, call_id: str) -> None:
    caller.send((
        f"BYE sip:vaultpbx@127.0.0.1:{engine_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK-bye-{call_id}\r\n"
        f"From: <sip:caller@127.0.0.1>;tag=caller1\r\nTo: <sip:0555@127.0.0.1>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode(), engine_port)
    caller.wait(lambda m: isinstance(m, Response) and m.cseq.method == "BYE")


def test_round_trip_bit_exact_no_plaintext_and_verify(tmp_path: Path) -> None:
    callee = RawUa()
    engine = start_engine(tmp_path, _overrides(callee))
    caller = RawUa()
    rng = np.random.default_rng(4)
    said = rng.integers(0, 256, 120 * FRAME, dtype=np.uint8).tobytes()  # 2.4 s each way
    heard = rng.integers(0, 256, 120 * FRAME, dtype=np.uint8).tobytes()
    alice = bob = None
    try:
        ok, alice, bob = _establish(engine.sip_port, caller, callee, "rec-round-trip")
        _wait_recording(engine)
        asyncio.run(_play([(alice, said), (bob, heard)]))
        _hang_up(caller, engine.sip_port, ok.to.tag or "", "rec-round-trip")
        callee.wait(lambda m: isinstance(m, Request) and m.method == "BYE")
        row = _wait_state(engine, "closed")
        wav_path = tmp_path / "export.wav"
        done = _cli(engine, "recordings", "export", row["id"], "-o", str(wav_path))
        assert done.returncode == 0, done.stderr
        left, right = _channels(wav_path)
        # What the caller said is channel 0, the callee channel 1, sample for sample.
        assert _contains(left, ulaw_decode(said))
        assert _contains(right, ulaw_decode(heard))
        assert not _contains(left, ulaw_decode(heard[:FRAME * 4]))
        metrics = engine.metrics()
        assert metrics["vaultpbx_recordings_closed_total"] == 1
    finally:
        _close(caller, callee, alice, bob)
        assert engine.stop() == 0
    # No plaintext: neither the G.711 bytes nor their linear form is anywhere under var/.
    probes = [said[i:i + 24] for i in range(0, len(said), 1000)]
    probes += [heard[i:i + 24] for i in range(0, len(heard), 1000)]
    probes.append(ulaw_decode(said[800:812]).astype("<i2").tobytes())
    scanned = 0
    for path in engine.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            scanned += 1
            assert not any(probe in data for probe in probes), f"plaintext audio in {path}"
    assert scanned >= 3  # keystore, kek, the recording at least
    [sealed] = list((engine.data_dir / "recordings").glob("*.vrec"))
    assert oct(sealed.stat().st_mode & 0o777) == "0o600"
    # `recordings verify` with no argument checks every recording; one flipped bit fails it.
    done = _cli(engine, "recordings", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 checked, 0 failed" in done.stdout
    data = bytearray(sealed.read_bytes())
    data[len(data) // 2] ^= 0x04
    sealed.write_bytes(bytes(data))
    done = _cli(engine, "recordings", "verify")
    assert done.returncode == 1
    assert "FAILED" in done.stdout and "authentication failed" in done.stdout


def test_sigkill_mid_call_leaves_an_incomplete_recording_readable_to_the_kill(
        tmp_path: Path) -> None:
    callee = RawUa()
    engine = start_engine(tmp_path, _overrides(callee))
    caller = RawUa()
    rng = np.random.default_rng(9)
    said = rng.integers(0, 256, 150 * FRAME, dtype=np.uint8).tobytes()  # 3 s
    alice = bob = None
    restarted: RunningEngine | None = None
    try:
        _, alice, bob = _establish(engine.sip_port, caller, callee, "rec-crash")
        _wait_recording(engine)
        asyncio.run(_play([(alice, said)], pace=0.02))
        time.sleep(0.1)
        children = Path(f"/proc/{engine.process.pid}/task/{engine.process.pid}/children")
        workers = [int(pid) for pid in children.read_text().split()]
        engine.process.send_signal(signal.SIGKILL)
        engine.process.wait(5)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, "media worker outlived its engine"
            time.sleep(0.05)
        restarted = start_engine(tmp_path, config=engine.config)
        [row] = _listing(restarted)
        assert row["state"] == "incomplete"
        assert restarted.metrics()["vaultpbx_recordings_active"] == 0
        wav_path = tmp_path / "crash.wav"
        done = _cli(restarted, "recordings", "export", row["id"], "-o", str(wav_path))
        assert done.returncode == 0, done.stderr
        assert "unfinished recording" in done.stdout
        left, _ = _channels(wav_path)
        # Everything up to one second before the kill is there, bit-exact (the worker sealed
        # its buffer when the engine's control channel closed, so in fact all of it is).
        assert _contains(left, ulaw_decode(said[: 100 * FRAME]))
        done = _cli(restarted, "recordings", "verify")
        assert done.returncode == 0, done.stdout
        assert "(no final chunk)" in done.stdout
    finally:
        _close(caller, callee, alice, bob)
        engine.kill()
        if restarted is not None:
            restarted.stop()


def _close(*parts: Any) -> None:
    """Close the SIP sockets and RTP peers a test opened (a peer not yet made is None)."""
    for part in parts:
        if part is not None:
            part.close()


def _tone(digit: str, seconds: float) -> bytes:
    row = next(i for i, keys in enumerate(KEYPAD) if digit in keys)
    column = KEYPAD[row].index(digit)
    t = np.arange(int(seconds * 8000)) / 8000
    samples = 6000 * (np.sin(2 * np.pi * ROW_FREQUENCIES[row] * t)
                      + np.sin(2 * np.pi * COLUMN_FREQUENCIES[column] * t))
    return ulaw_encode(samples.astype(np.int16))


def _digits(channel: np.ndarray) -> list[str]:
    return DtmfDetector().feed(channel.astype(np.int16))


def _admin(engine: RunningEngine, method: str, path: str, body: dict | None = None,
           token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{engine.admin_port}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_pci_pause_through_the_admin_api_keeps_dtmf_out_of_the_recording(
        tmp_path: Path) -> None:
    import pyotp
    from argon2 import PasswordHasher
    from vaultpbx.recording.cli import open_store
    from vaultpbx.recording.container import EventKind
    from vaultpbx.recording.export import export_wav

    secret = pyotp.random_base32()
    users = [{"name": "agent7", "role": "agent", "totp_secret": secret,
              "password_hash": PasswordHasher(time_cost=1, memory_cost=8192).hash("pw-agent7")},
             {"name": "qa1", "role": "qa", "totp_secret": secret,
              "password_hash": PasswordHasher(time_cost=1, memory_cost=8192).hash("pw-qa1")}]
    callee = RawUa()
    engine = start_engine(tmp_path, _overrides(callee, security={
        "floodguard": {"trusted": ["127.0.0.1/32"]}, "users": users}))
    caller = RawUa()
    alice = bob = None
    try:
        status, login = _admin(engine, "POST", "/login", {
            "user": "agent7", "password": "pw-agent7", "otp": pyotp.TOTP(secret).now()})
        assert status == 200, login
        token = login["token"]
        ok, alice, bob = _establish(engine.sip_port, caller, callee, "rec-pci")
        _wait_recording(engine)
        speech = _tone("1", 0.6)  # before the pause: a digit the detector must find
        asyncio.run(_play([(alice, speech)], pace=0.02))
        # QA may not switch it (calls.handle), nor anyone without a session.
        _, qa = _admin(engine, "POST", "/login", {
            "user": "qa1", "password": "pw-qa1", "otp": pyotp.TOTP(secret).now()})
        assert _admin(engine, "POST", "/calls/rec-pci/sensitive", {"on": True},
                      qa["token"])[0] == 403
        assert _admin(engine, "POST", "/calls/rec-pci/sensitive", {"on": True})[0] == 401
        assert _admin(engine, "POST", "/calls/nope/sensitive", {"on": True}, token)[0] == 404
        status, body = _admin(engine, "POST", "/calls/rec-pci/sensitive", {"on": True}, token)
        assert (status, body["sensitive"]) == (200, True)
        time.sleep(0.1)
        asyncio.run(_play([(alice, _tone("5", 0.6))], pace=0.02))  # the card digits, in band...
        for n in range(10):  # ...and as RFC 4733 events (digit 9)
            _send(alice, struct.pack("!BBH", 9, 0x0A, 160 * (n + 1)), payload_type=101)
        time.sleep(0.1)
        status, body = _admin(engine, "POST", "/calls/rec-pci/sensitive", {"on": False}, token)
        assert (status, body["sensitive"]) == (200, False)
        time.sleep(0.1)
        asyncio.run(_play([(alice, _tone("7", 0.6))], pace=0.02))
        _hang_up(caller, engine.sip_port, ok.to.tag or "", "rec-pci")
        row = _wait_state(engine, "closed")
    finally:
        _close(caller, callee, alice, bob)
        engine.stop()
    with open_store(engine.data_dir) as store:
        result = export_wav(store, row["id"], tmp_path / "pci.wav", actor="test")
    left, _ = _channels(tmp_path / "pci.wav")
    assert _digits(left) == ["1", "7"]  # "5" was typed during the pause: not on disk
    kinds = [event.kind for event in result.events]
    assert kinds == [EventKind.SENSITIVE_START, EventKind.SENSITIVE_END]
    start, end = (event.sample for event in result.events)
    assert 0.3 * 8000 < end - start < 3 * 8000
    assert not left[start:end].any()  # the pause is digital silence
    audit = (engine.data_dir / "audit" / "audit.jsonl").read_text()
    assert "recording.sensitive_on" in audit and "recording.sensitive_off" in audit
    assert '"agent7"' in audit
    os.sync()
