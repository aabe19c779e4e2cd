"""Queue announcements on a real engine: media anchored in a worker process, SIP from raw sockets,
a Python RTP phone as the caller decoding what it hears.

What a caller into a queue hears, compared sample for sample (the path is G.711: the worker sends
the prompt files' PCMU encoding, so the caller's payloads equal the files' encoding exactly):
the entry greeting (the operator's recording when `sounds:` has one), then music; after the
configured period, the composed position/wait announcement interrupts the music, which resumes
where it was. A queue that refuses callers when empty says "no one is available" and ends the
call with 480, at once rather than after max_wait; a queue whose last agent signs out does the
same to the callers waiting in it. check-config rejects a bad recording in `sounds:`.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from vaultpbx.codecs.g711 import ulaw_decode
from vaultpbx.media.player import FRAME_SECONDS, MusicSource
from vaultpbx.media.prompts import BUILTIN_PROMPTS
from vaultpbx.media.rtppeer import RtpPeer
from vaultpbx.routing.announce import compose_periodic
from vaultpbx.routing.config import AnnounceConfig
from vaultpbx.sip.message import Response

from tests.integration.engine import RunningEngine, base_config, free_port
from tests.integration.test_moh import Caller, is_status, write_music
from tests.integration.test_operations import run_cli
from tests.integration.test_sipp_calls import start_pbx
from tests.integration.test_sipp_queue import SUPERVISOR, api

pytestmark = pytest.mark.integration

PERIOD = 1.0  # seconds of music between two announcements in the test queue


def write_tone(path: Path, seconds: float, step: int, rate: int = 8000) -> Path:
    count = int(seconds * rate)
    samples = ((np.arange(count) * step) % 16000 - 8000).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("announce")
    sounds = root / "sounds"
    sounds.mkdir()
    return {"music": write_music(root / "music.wav", 37), "sounds": sounds,
            "welcome": write_tone(sounds / "queue-welcome.wav", 0.73, 29)}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory,
           files: dict[str, Path]) -> Iterator[RunningEngine]:
    low = 17000 + (free_port() % 500) * 2  # below the other media tests' ranges
    french = {"french": 1}  # nobody speaks French: callers wait
    overrides = {
        "media": {"anchor": True, "workers": 1, "port_min": low, "port_max": low + 1999,
                  "music_on_hold": str(files["music"])},
        "sounds": str(files["sounds"]),
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "security": {"floodguard": {"trusted": ["127.0.0.1/32"]}, "users": [SUPERVISOR]},
        "extensions": {"2002": {"password": "pw-2002-secret"}},
        "dialplan": [{"match": "711", "queue": "greeted"}, {"match": "712", "queue": "periodic"},
                     {"match": "713", "queue": "closed"}, {"match": "714", "queue": "leaving"}],
        "routing": {
            "skills": ["english", "french"],
            "agents": {"2002": {"skills": {"english": 3}}},
            "queues": {
                "greeted": {"skills": french, "announce": {"greeting": True}},
                "periodic": {"skills": french, "announce": {
                    "greeting": "queue-all-busy", "position": True, "estimated_wait": True,
                    "period": PERIOD}},
                "closed": {"skills": french, "max_wait": 60, "announce": {"join_empty": False}},
                "leaving": {"skills": {"english": 1}, "max_wait": 60,
                            "announce": {"leave_when_empty": True}},
            },
        },
    }
    started: list[RunningEngine] = []
    try:
        yield start_pbx(started, tmp_path_factory.mktemp("engine"), overrides)
    finally:
        for each in started:
            each.stop(timeout=10)


def pcmu(path: Path | str) -> list[bytes]:
    return list(MusicSource.load(str(path)).frames["PCMU"])


def builtin(*names: str) -> list[bytes]:
    return [frame for name in names for frame in pcmu(BUILTIN_PROMPTS / f"{name}.wav")]


def receive(peer: RtpPeer, count: int, timeout: float = 15.0) -> list[bytes]:
    got = asyncio.run(peer.receive(count, timeout))
    assert len(got) >= count, f"{len(got)} of {count} packets arrived"
    return [p[12:] for p in got]


def loud(frames: list[bytes]) -> float:
    """RMS of the decoded audio: speech, not silence."""
    samples = np.concatenate([ulaw_decode(f).astype(np.float64) for f in frames])
    return float(np.sqrt(np.mean(samples ** 2)))


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def call(engine: RunningEngine, number: str, peer: RtpPeer) -> tuple[Caller, Response]:
    caller = Caller(engine, number, peer.sdp())
    early = caller.sip.wait(is_status(183))
    assert isinstance(early, Response)
    peer.learn(early.body)
    return caller, early


def test_greeting_then_music_then_the_announcement_every_period(
        engine: RunningEngine, files: dict[str, Path]) -> None:
    alice = RtpPeer(ssrc=0xA1)
    try:
        before = engine.metrics()
        caller, _ = call(engine, "712", alice)
        greeting = builtin("queue-all-busy")
        # The caller was alone in a queue that has answered nothing: position 1, no estimate.
        announcement = builtin(*compose_periodic(
            AnnounceConfig(position=True, estimated_wait=True), position=1, estimate=None))
        assert len(announcement) * FRAME_SECONDS > 4  # "you are caller number one", ...
        music = pcmu(files["music"])
        expected_gap = round(PERIOD / FRAME_SECONDS)
        heard = receive(alice, len(greeting) + expected_gap + 30 + len(announcement) + 20)
        # The entry greeting first, whole, and it is speech: as long as its file.
        assert heard[:len(greeting)] == greeting
        file_seconds = wav_seconds(BUILTIN_PROMPTS / "queue-all-busy.wav")
        assert abs(len(greeting) * FRAME_SECONDS - file_seconds) <= FRAME_SECONDS
        assert loud(greeting) > 500
        # Then the music from its start, until the announcement interrupts it.
        after = heard[len(greeting):]
        gap = next(n for n, frame in enumerate(after) if frame != music[n % len(music)])
        assert after[gap:gap + len(announcement)] == announcement
        # One period of music (timer and round trips add a little, never less).
        assert expected_gap - 2 <= gap <= expected_gap + 25, gap
        # The music resumes where it was.
        resumed = after[gap + len(announcement):]
        assert resumed[:10] == [music[(gap + n) % len(music)] for n in range(10)]
        assert loud(announcement) > 500 and loud(music[:50]) > 500
        assert engine.metrics()["vaultpbx_acd_announcements_total"] >= (
            before["vaultpbx_acd_announcements_total"] + 1)
        caller.cancel()
    finally:
        alice.close()


def test_the_operators_recording_replaces_the_built_in_greeting(
        engine: RunningEngine, files: dict[str, Path]) -> None:
    alice = RtpPeer(ssrc=0xA2)
    try:
        caller, _ = call(engine, "711", alice)
        ours = pcmu(files["welcome"])
        assert ours != builtin("queue-welcome")[:len(ours)]
        music = pcmu(files["music"])
        heard = receive(alice, len(ours) + 10)
        assert heard[:len(ours)] == ours  # the file in `sounds:`, not sounds/prompts/
        assert heard[len(ours):len(ours) + 10] == music[:10]
        caller.cancel()
    finally:
        alice.close()


def test_an_empty_queue_that_refuses_says_so_then_480_at_once(
        engine: RunningEngine, files: dict[str, Path]) -> None:
    alice = RtpPeer(ssrc=0xA3)
    try:
        before = engine.metrics()["vaultpbx_acd_refused_empty_total"]
        caller, early = call(engine, "713", alice)
        prompt = builtin("queue-no-one-available")
        heard = receive(alice, 1)
        started = time.monotonic()
        heard += receive(alice, len(prompt) - len(heard))
        final = caller.sip.wait(is_status(480), timeout=5)  # not after max_wait (60 s)
        ended = time.monotonic()
        assert isinstance(final, Response) and final.to.tag == early.to.tag
        caller.sip.send(caller.request("ACK", 1, caller.branch, to_tag=final.to.tag),
                        engine.sip_port)
        assert heard[:len(prompt)] == prompt and loud(prompt) > 500
        # The 480 came once the prompt had been played, not before.
        assert ended - started >= len(prompt) * FRAME_SECONDS - 0.3
        time.sleep(0.1)  # the worker's delete is on its way
        rest = [p[12:] for p in alice.drain()]
        music = set(pcmu(files["music"]))
        assert not [frame for frame in heard[len(prompt):] + rest if frame in music]
        assert asyncio.run(alice.quiet(0.2)) == []
        assert engine.metrics()["vaultpbx_acd_refused_empty_total"] == before + 1
    finally:
        alice.close()


def test_callers_leave_when_the_last_agent_signs_out(
        engine: RunningEngine, files: dict[str, Path]) -> None:
    alice = RtpPeer(ssrc=0xA4)
    try:
        status, body = api(engine, "POST", "/agents/login", {"agent": "2002"})
        assert status == 200, body
        status, body = api(engine, "POST", "/agents/pause", {"agent": "2002", "reason": "lunch"})
        assert status == 200, body  # signed in but on a break: the queue is not empty
        caller, early = call(engine, "714", alice)
        music = pcmu(files["music"])
        heard = receive(alice, 20)
        assert heard[:20] == music[:20]  # no greeting configured: the music at once
        status, body = api(engine, "POST", "/agents/logout", {"agent": "2002"})
        assert status == 200, body
        prompt = builtin("queue-no-one-available")
        for _ in range(250):  # 5 s of audio at most
            if prompt[0] in heard[20:]:
                break
            heard += receive(alice, 1)
        start = heard.index(prompt[0], 20)
        assert heard[20:start] == [music[n % len(music)] for n in range(20, start)]
        heard += receive(alice, start + len(prompt) - len(heard))
        assert heard[start:start + len(prompt)] == prompt
        final = caller.sip.wait(is_status(480), timeout=5)  # promptly, not after max_wait
        assert isinstance(final, Response) and final.to.tag == early.to.tag
        caller.sip.send(caller.request("ACK", 1, caller.branch, to_tag=final.to.tag),
                        engine.sip_port)
        time.sleep(0.1)  # the worker's delete is on its way
        after = heard[start + len(prompt):] + [p[12:] for p in alice.drain()]
        assert after == []  # the last word: no music after it
        assert engine.metrics()["vaultpbx_acd_left_empty_total"] >= 1
    finally:
        alice.close()


def test_check_config_rejects_a_bad_recording_and_an_unknown_prompt(tmp_path: Path) -> None:
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    bad = write_tone(sounds / "queue-thank-you.wav", 0.5, 7, rate=16000)
    config = base_config(tmp_path / "var", 5060, 5061, 0)
    config["sounds"] = str(sounds)
    path = tmp_path / "vaultpbx.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_cli("check-config", "-c", str(path))
    assert result.returncode == 2, result.stderr
    line = path.read_text().splitlines().index(f"sounds: {sounds}") + 1
    assert f"line {line}: sounds:" in result.stderr and str(bad) in result.stderr
    assert "16000 Hz" in result.stderr
    # A good recording passes; a queue naming a prompt that exists nowhere does not.
    write_tone(bad, 0.5, 7)
    assert run_cli("check-config", "-c", str(path)).returncode == 0
    config["routing"] = {"skills": ["english"], "queues": {
        "support": {"announce": {"greeting": "our-welcome"}}}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_cli("check-config", "-c", str(path))
    assert result.returncode == 2
    assert "routing.queues.support.announce.greeting" in result.stderr
    assert "no prompt 'our-welcome'" in result.stderr
    write_tone(sounds / "our-welcome.wav", 0.5, 9)
    assert run_cli("check-config", "-c", str(path)).returncode == 0
