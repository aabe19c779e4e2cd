"""Music on hold, worker side: the WAV reader and G.711 pre-encoding, `Playback` on a hand-moved
clock (frame timing, timestamps, marker, looping, skipping after a stall), and `Players` on a
real in-process relay with 127.0.0.1 sockets (SRTP to the caller, one continuous stream when the
other leg's media takes over, cleanup with the session)."""

from __future__ import annotations

import asyncio
import os
import time
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import uvloop
from vaultpbx.codecs.g711 import alaw_encode, ulaw_encode
from vaultpbx.media.player import (
    FRAME_SAMPLES,
    FRAME_SECONDS,
    MusicFileError,
    MusicLibrary,
    MusicSource,
    Playback,
    Players,
    read_music_file,
)
from vaultpbx.media.ports import PortPool, PortRange
from vaultpbx.media.relay import Relay
from vaultpbx.media.rtp import parse_rtp_header
from vaultpbx.media.rtppeer import RtpPeer, payload_number
from vaultpbx.media.srtp import SRTP_SUITES, SrtpSession

SUITE = "AES_CM_128_HMAC_SHA1_80"


def write_wav(path: Path, samples: np.ndarray, *, rate: int = 8000, channels: int = 1,
              width: int = 2) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes() if width == 2 else bytes(len(samples)))
    return path


def ramp(count: int) -> np.ndarray:
    """Samples that differ frame to frame, so a frame's position in the file is visible."""
    return ((np.arange(count) * 37) % 20000 - 10000).astype(np.int16)


# --- the file --------------------------------------------------------------------------------


def test_source_is_the_files_g711_encoding_in_20ms_frames_padded_with_silence(
        tmp_path: Path) -> None:
    samples = ramp(3 * FRAME_SAMPLES + 50)
    source = MusicSource.load(str(write_wav(tmp_path / "m.wav", samples)))
    padded = np.concatenate((samples, np.zeros(FRAME_SAMPLES - 50, dtype=np.int16)))
    assert len(source.frames["PCMU"]) == len(source.frames["PCMA"]) == 4
    assert all(len(frame) == FRAME_SAMPLES for frame in source.frames["PCMU"])
    assert b"".join(source.frames["PCMU"]) == ulaw_encode(padded)
    assert b"".join(source.frames["PCMA"]) == alaw_encode(padded)
    assert source.frames["PCMU"][-1][-1:] == b"\xff"  # µ-law silence


@pytest.mark.parametrize(("settings", "complaint"), [
    ({"rate": 16000}, "is 16000 Hz, 1 channel(s), 16-bit"),
    ({"channels": 2}, "is 8000 Hz, 2 channel(s), 16-bit"),
    ({"width": 1}, "is 8000 Hz, 1 channel(s), 8-bit"),
])
def test_files_in_other_formats_are_refused_saying_why(tmp_path: Path, settings: dict,
                                                        complaint: str) -> None:
    path = write_wav(tmp_path / "bad.wav", ramp(800), **settings)
    with pytest.raises(MusicFileError, match="must be 8000 Hz mono 16-bit PCM WAV") as error:
        read_music_file(str(path))
    assert complaint in str(error.value)


def test_missing_empty_and_non_wav_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MusicFileError, match="no such file"):
        read_music_file(str(tmp_path / "absent.wav"))
    with pytest.raises(MusicFileError, match="has no audio"):
        read_music_file(str(write_wav(tmp_path / "empty.wav", ramp(0))))
    text = tmp_path / "notes.wav"
    text.write_bytes(b"this is not a RIFF file at all")
    with pytest.raises(MusicFileError, match="not a PCM WAV file"):
        read_music_file(str(text))


def test_library_loads_a_file_once_and_again_when_it_changes(tmp_path: Path) -> None:
    path = str(write_wav(tmp_path / "m.wav", ramp(800)))
    library = MusicLibrary()
    first = library.get(path)
    assert library.get(path) is first and library.loads == 1
    write_wav(tmp_path / "m.wav", ramp(1600))
    second = library.get(path)
    assert second is not first and len(second.frames["PCMU"]) == 10 and library.loads == 2


# --- the stream ------------------------------------------------------------------------------

FRAMES = tuple(bytes([n]) * FRAME_SAMPLES for n in range(3))


def header(packet: bytes) -> tuple[bool, int, int, int, int]:
    parsed = parse_rtp_header(packet)
    assert parsed is not None
    return parsed.marker, parsed.payload_type, parsed.sequence, parsed.timestamp, parsed.ssrc


def all_due(playback: Playback, now: float) -> list[bytes]:
    out = []
    packet = playback.next_packet(now)
    while packet is not None:
        out.append(packet)
        packet = playback.next_packet(now)
    return out


def test_one_frame_every_20ms_with_running_sequence_timestamp_and_one_marker() -> None:
    playback = Playback(FRAMES, payload_type=8, ssrc=0xCAFE, sequence=0xFFFE,
                        timestamp=0xFFFFFF00, now=100.0)
    sent = all_due(playback, 100.0)
    assert len(sent) == 1
    assert all_due(playback, 100.0 + FRAME_SECONDS - 0.001) == []
    sent += all_due(playback, 100.0 + FRAME_SECONDS)
    sent += all_due(playback, 100.0 + 3.5 * FRAME_SECONDS)  # a late tick sends both due frames
    assert len(sent) == 4
    headers = [header(p) for p in sent]
    assert [h[0] for h in headers] == [True, False, False, False]  # start of a talkspurt only
    assert {h[1] for h in headers} == {8} and {h[4] for h in headers} == {0xCAFE}
    assert [h[2] for h in headers] == [0xFFFE, 0xFFFF, 0, 1]  # wraps modulo 2^16
    assert [h[3] for h in headers] == [0xFFFFFF00, 0xFFFFFFA0, 0x40, 0xE0]  # +160, mod 2^32
    # The file loops: frame 0 follows the last frame, timestamps run on.
    assert [p[12:] for p in sent] == [FRAMES[0], FRAMES[1], FRAMES[2], FRAMES[0]]
    assert playback.frames_sent == 4 and playback.frames_skipped == 0


def test_after_a_stall_missed_frames_are_skipped_not_burst() -> None:
    playback = Playback(FRAMES, payload_type=0, ssrc=1, sequence=10, timestamp=0, now=0.0)
    assert len(all_due(playback, 0.0)) == 1
    sent = all_due(playback, 1.0)  # the loop stalled for a second: 50 frames were due
    assert len(sent) == 1
    _, _, sequence, timestamp, _ = header(sent[0])
    assert sequence == 11  # no packets were lost...
    assert timestamp == 50 * FRAME_SAMPLES  # ...but time went on, as the receiver's clock did
    assert sent[0][12:] == FRAMES[50 % 3]  # and the music too
    assert playback.frames_skipped == 49
    assert all_due(playback, 1.0 + FRAME_SECONDS) != []  # back on the 20 ms grid


# --- the worker's players on a real relay -----------------------------------------------------


def run_players(scenario: Callable[[Relay, Players], Awaitable[None]]) -> None:
    async def main() -> None:
        relay = Relay(address="127.0.0.1", pool=PortPool(PortRange(23400, 23599)))
        players = Players(relay, clock=time.monotonic)  # the relay's clock
        try:
            await asyncio.wait_for(scenario(relay, players), 10)
        finally:
            players.close()
            relay.close()

    uvloop.run(main())


def test_music_reaches_the_caller_over_srtp_then_the_other_leg_continues_the_stream(
        tmp_path: Path) -> None:
    path = str(write_wav(tmp_path / "m.wav", ramp(10 * FRAME_SAMPLES)))
    expected = MusicSource.load(path).frames["PCMU"]

    async def scenario(relay: Relay, players: Players) -> None:
        caller = RtpPeer(ssrc=0xA, suite=SUITE)
        agent = RtpPeer(ssrc=0xB)
        ours = os.urandom(SRTP_SUITES[SUITE].key_material_length)  # what we'd answer with
        caller.rx = SrtpSession.receiver(SUITE, ours)
        port_a, port_b = await relay.open_session("s1", "call-1")
        await relay.update_leg("s1", 0, remote=("127.0.0.1", caller.port),
                               srtp_in=(SUITE, caller.key), srtp_out=(SUITE, ours))
        caller.target, agent.target = ("127.0.0.1", port_a), ("127.0.0.1", port_b)
        players.play("s1", 0, path, 0, "PCMU")
        music = await caller.receive(12, 3.0)
        assert len(music) == 12 and caller.failures == 0
        assert all(raw[12:] != p[12:] for raw, p in zip(caller.raw, music, strict=False))
        assert [p[12:] for p in music] == [expected[n % 10] for n in range(12)]
        sequences = [header(p)[2] for p in music]
        assert sequences == [(sequences[0] + n) & 0xFFFF for n in range(12)]
        ssrc = header(music[0])[4]
        # The agent's leg comes up while music plays: nothing relayed reaches the caller.
        await relay.update_leg("s1", 1, remote=("127.0.0.1", agent.port))
        agent.send(7)
        await asyncio.sleep(0.05)
        assert relay.sessions["s1"].legs[1].dropped_hold == 1
        assert players.stop("s1", 0)
        last = header((music + caller.drain())[-1])[2]  # loopback keeps the order
        for n in range(3):
            agent.send(100 + n)
        speech = await caller.receive(3, 2.0)
        assert [payload_number(p[12:]) for p in speech] == [100, 101, 102]
        # One stream for the caller's phone: same SSRC, sequence right after the music's.
        assert {header(p)[4] for p in speech} == {ssrc}
        assert [header(p)[2] for p in speech] == [(last + 1 + n) & 0xFFFF for n in range(3)]
        assert await caller.quiet(0.1) == []  # the music really stopped
        assert players.counters()["players"] == 0

    run_players(scenario)


def test_deleting_the_session_frees_its_players(tmp_path: Path) -> None:
    path = str(write_wav(tmp_path / "m.wav", ramp(800)))

    async def scenario(relay: Relay, players: Players) -> None:
        peers = [RtpPeer(ssrc=n) for n in range(2)]
        for n, peer in enumerate(peers):
            await relay.open_session(f"s{n}", f"call-{n}")
            await relay.update_leg(f"s{n}", 0, remote=("127.0.0.1", peer.port))
            players.play(f"s{n}", 0, path, 8, "PCMA")
        assert len(await peers[0].receive(3)) >= 3 and len(await peers[1].receive(3)) >= 3
        assert players.counters()["players"] == 2
        assert players.stop_session("s0") == 1
        relay.delete_session("s0")
        assert players.counters()["players"] == 1
        peers[0].drain()
        assert await peers[0].quiet(0.1) == []
        assert len(await peers[1].receive(3)) >= 3  # the other call's music goes on
        relay.delete_session("s1")  # closed under the player: it ends itself on the next tick
        await asyncio.sleep(0.05)
        counters = players.counters()
        assert counters["players"] == 0 and counters["players-started"] == 2
        assert counters["music-files-loaded"] == 1  # both calls shared one load

    run_players(scenario)


def test_play_refuses_what_it_cannot_send(tmp_path: Path) -> None:
    path = str(write_wav(tmp_path / "m.wav", ramp(800)))

    async def scenario(relay: Relay, players: Players) -> None:
        await relay.open_session("s1", "call-1")
        with pytest.raises(ValueError, match="cannot play 'G729'"):
            players.play("s1", 0, path, 18, "G729")
        with pytest.raises(MusicFileError, match="no such file"):
            players.play("s1", 0, str(tmp_path / "absent.wav"), 0, "PCMU")
        assert players.counters()["players"] == 0

    run_players(scenario)
