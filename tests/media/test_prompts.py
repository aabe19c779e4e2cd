"""Prompts in the media worker and the signalling side's prompt library: `Playback` with prompts
ahead of the music on a hand-moved clock (the music resumes where it was, one stream, a quiet
leg keeps its clock), `Players` playing a prompt sequence on a real in-process relay, and
`PromptLibrary` (operator overrides, checked files, lengths as played)."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import uvloop
from vaultpbx.media.player import FRAME_SAMPLES, FRAME_SECONDS, MusicSource, Playback, Players
from vaultpbx.media.ports import PortPool, PortRange
from vaultpbx.media.prompts import BUILTIN_PROMPTS, PromptError, PromptLibrary
from vaultpbx.media.relay import Relay
from vaultpbx.media.rtp import parse_rtp_header
from vaultpbx.media.rtppeer import RtpPeer

from scripts.make_prompts import PROMPTS

MUSIC = tuple(bytes([n]) * FRAME_SAMPLES for n in range(5))
SPOKEN = tuple(bytes([200 + n]) * FRAME_SAMPLES for n in range(3))


def write_wav(path: Path, samples: np.ndarray, *, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path


def tone(count: int, step: int) -> np.ndarray:
    return ((np.arange(count) * step) % 16000 - 8000).astype(np.int16)


def header(packet: bytes) -> tuple[bool, int, int]:
    parsed = parse_rtp_header(packet)
    assert parsed is not None
    return parsed.marker, parsed.sequence, parsed.timestamp


def step(playback: Playback, now: float) -> bytes | None:
    packet = playback.next_packet(now)
    assert playback.next_packet(now) is None  # one frame per 20 ms
    return packet


def test_prompts_interrupt_the_music_which_resumes_where_it_was() -> None:
    playback = Playback(MUSIC, payload_type=0, ssrc=5, sequence=100, timestamp=0, now=0.0,
                        prompts=SPOKEN[:1])  # a greeting first
    sent = [step(playback, (n + 0.5) * FRAME_SECONDS) for n in range(4)]
    assert [p[12:] for p in sent if p] == [SPOKEN[0], MUSIC[0], MUSIC[1], MUSIC[2]]
    playback.interrupt(SPOKEN)
    sent += [step(playback, (n + 0.5) * FRAME_SECONDS) for n in range(4, 10)]
    payloads = [p[12:] for p in sent if p]
    assert payloads == [SPOKEN[0], MUSIC[0], MUSIC[1], MUSIC[2], *SPOKEN, MUSIC[3], MUSIC[4],
                        MUSIC[0]]
    headers = [header(p) for p in sent if p]
    assert [h[1] for h in headers] == list(range(100, 110))  # one stream throughout
    assert [h[2] for h in headers] == [n * FRAME_SAMPLES for n in range(10)]
    assert [h[0] for h in headers] == [True] + [False] * 9
    assert playback.prompt_frames_sent == 4


def test_prompts_alone_then_the_leg_is_quiet_and_its_clock_runs_on() -> None:
    playback = Playback((), payload_type=8, ssrc=5, sequence=7, timestamp=1000, now=0.0,
                        prompts=SPOKEN)
    sent = [step(playback, (n + 0.5) * FRAME_SECONDS) for n in range(3)]
    assert [p[12:] for p in sent if p] == list(SPOKEN)
    assert [step(playback, (n + 0.5) * FRAME_SECONDS) for n in range(3, 20)] == [None] * 17
    playback.interrupt(SPOKEN[:1])  # more words after a silence: a new talkspurt
    packet = step(playback, 20.5 * FRAME_SECONDS)
    assert packet is not None
    marker, sequence, timestamp = header(packet)
    assert marker and sequence == 10 and timestamp == 1000 + 20 * FRAME_SAMPLES


def test_a_stall_skips_through_the_prompts_into_the_music() -> None:
    playback = Playback(MUSIC, payload_type=0, ssrc=5, sequence=0, timestamp=0, now=0.0,
                        prompts=SPOKEN)
    assert step(playback, 0.0) is not None
    packet = playback.next_packet(5 * FRAME_SECONDS + 0.2)  # 14 frames late: > MAX_LATE
    assert packet is not None
    # 14 frames skipped: the 2 unplayed prompt frames, then 12 of music (12 % 5 = 2).
    assert packet[12:] == MUSIC[2]
    assert playback.frames_skipped == 14 and not playback.prompts


def test_playback_refuses_nothing_to_play() -> None:
    with pytest.raises(ValueError):
        Playback((), payload_type=0, ssrc=1, sequence=0, timestamp=0, now=0.0)


def test_players_play_a_sequence_once_each_file_encoded_once(tmp_path: Path) -> None:
    music = str(write_wav(tmp_path / "music.wav", tone(10 * FRAME_SAMPLES, 37)))
    one = str(write_wav(tmp_path / "one.wav", tone(2 * FRAME_SAMPLES + 30, 91)))
    two = str(write_wav(tmp_path / "two.wav", tone(3 * FRAME_SAMPLES, 53)))
    frames = {p: MusicSource.load(p).frames["PCMU"] for p in (music, one, two)}

    async def main() -> None:
        relay = Relay(address="127.0.0.1", pool=PortPool(PortRange(23600, 23799)))
        players = Players(relay, clock=time.monotonic)
        caller = RtpPeer(ssrc=0xA)
        try:
            await relay.open_session("s1", "call-1")
            await relay.update_leg("s1", 0, remote=("127.0.0.1", caller.port))
            players.play("s1", 0, music, 0, "PCMU", (one,))
            first = await caller.receive(3 + 4, 3.0)
            assert [p[12:] for p in first] == [*frames[one], *frames[music][:4]]
            players.play("s1", 0, None, 0, "PCMU", (two, one, two))
            heard = first + await caller.receive(30, 3.0)
            payloads = [p[12:] for p in heard]
            start = payloads.index(frames[two][0], 7)
            assert payloads[start:start + 9] == [*frames[two], *frames[one], *frames[two]]
            resumed = payloads[start + 9:start + 12]
            music_at = payloads[7:start].__len__() + 4  # music frames played before the break
            assert resumed == [frames[music][(music_at + n) % 10] for n in range(3)]
            sequences = [header(p)[1] for p in heard]
            assert sequences == [(sequences[0] + n) & 0xFFFF for n in range(len(heard))]
            counters = players.counters()
            assert counters["music-files-loaded"] == 3  # `one` twice, read once
            assert counters["prompts-played"] == 4 and counters["players-started"] == 1
            with pytest.raises(ValueError):
                players.play("s1", 0, None, 8, "PCMA", (one,))  # not the stream's codec
        finally:
            caller.close()
            players.close()
            relay.close()

    uvloop.run(asyncio.wait_for(main(), 10))


def test_every_generated_prompt_is_shipped_and_playable() -> None:
    library = PromptLibrary.load()
    assert set(PROMPTS) <= set(library.paths)
    for name in PROMPTS:
        source = MusicSource.load(library.paths[name])  # 8 kHz mono 16-bit, not empty
        assert len(source.frames["PCMU"]) * FRAME_SECONDS == pytest.approx(library.seconds[name])
        assert library.seconds[name] > 0.2
    assert library.overridden == frozenset()


def test_an_operator_recording_replaces_the_built_in_prompt(tmp_path: Path) -> None:
    write_wav(tmp_path / "queue-welcome.wav", tone(8000 + 10, 11))
    write_wav(tmp_path / "our-jingle.wav", tone(4000, 13))
    (tmp_path / "notes.txt").write_text("not a prompt")
    library = PromptLibrary.load(tmp_path)
    assert library.paths["queue-welcome"] == str((tmp_path / "queue-welcome.wav").resolve())
    assert library.paths["queue-thank-you"] == str(BUILTIN_PROMPTS / "queue-thank-you.wav")
    assert library.paths["our-jingle"].endswith("our-jingle.wav")
    assert library.overridden == {"queue-welcome", "our-jingle"}
    assert library.seconds["queue-welcome"] == pytest.approx(1.02)  # padded to whole frames
    assert library.files(["queue-welcome", "digit-3"])[1].endswith("digit-3.wav")
    with pytest.raises(PromptError, match="no prompt 'nothing-here'"):
        library.files(["nothing-here"])


@pytest.mark.parametrize("rate", [16000, 44100])
def test_a_bad_recording_in_sounds_is_refused_naming_the_file(tmp_path: Path,
                                                              rate: int) -> None:
    bad = write_wav(tmp_path / "queue-thank-you.wav", tone(1600, 7), rate=rate)
    with pytest.raises(PromptError) as caught:
        PromptLibrary.load(tmp_path)
    assert str(bad) in str(caught.value) and f"is {rate} Hz" in str(caught.value)


def test_a_truncated_or_missing_sounds_directory_is_refused(tmp_path: Path) -> None:
    good = write_wav(tmp_path / "x.wav", tone(1600, 7)).read_bytes()
    (tmp_path / "queue-thank-you.wav").write_bytes(good[:30])
    with pytest.raises(PromptError, match="queue-thank-you.wav"):
        PromptLibrary.load(tmp_path)
    with pytest.raises(PromptError, match="not a directory"):
        PromptLibrary.load(tmp_path / "missing")


# --- through the controller and a real media worker process ----------------------------------


@pytest.mark.integration
def test_controller_interrupts_only_music_that_plays(tmp_path: Path) -> None:
    from vaultpbx.media.controller import MediaController

    from tests.media.test_worker import PLAIN, Events, run

    music = str(write_wav(tmp_path / "music.wav", tone(8000, 37)))
    greeting = str(write_wav(tmp_path / "greeting.wav", tone(4 * FRAME_SAMPLES, 91)))
    words = str(write_wav(tmp_path / "words.wav", tone(6 * FRAME_SAMPLES, 53)))
    frames = {p: MusicSource.load(p).frames["PCMU"] for p in (music, greeting, words)}

    async def scenario(controller: MediaController, events: Events) -> None:
        caller, agent = RtpPeer(ssrc=0xA), RtpPeer(ssrc=0xB)
        await controller.offer("p1", "caller", caller.sdp(), policy=PLAIN, other_policy=PLAIN)
        assert not await controller.interrupt("p1", (words,))  # nothing plays yet
        local = await controller.answer_locally("p1")
        caller.learn(local.answer)
        await controller.play("p1", music, (greeting,))
        heard = [p[12:] for p in await caller.receive(4 + 5, 3.0)]
        assert heard[:9] == [*frames[greeting], *frames[music][:5]]
        assert await controller.interrupt("p1", (words,))
        heard += [p[12:] for p in await caller.receive(20, 3.0)]
        start = heard.index(frames[words][0], 9)
        assert heard[start:start + 6] == list(frames[words])
        assert heard[start + 6] == frames[music][start - 4]  # the music where it was
        # The agent answers: the music stops, and an announcement that comes late is dropped.
        await controller.answer("p1", "callee", agent.answer_to(local.offer))
        assert not await controller.interrupt("p1", (words,))
        caller.drain()
        agent.send(1)
        [speech] = await caller.receive(1, 2.0)
        assert speech[12:] not in frames[words]
        assert await caller.quiet(0.2) == []
        stats = (await controller.stats())["workers"][0]
        assert stats["prompts-played"] == 2 and stats["players"] == 0
        caller.close()
        agent.close()
        await controller.delete("p1")

    run(scenario)


def test_the_committed_prompts_are_what_the_script_makes_with_this_espeak_ng(
        tmp_path: Path) -> None:
    """scripts/make_prompts.py reproduces sounds/prompts/ byte for byte (espeak-ng is installed
    by scripts/setup.sh; another espeak-ng version may speak differently: this test says so)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "make_prompts.py"
    result = subprocess.run([sys.executable, str(script), "--check", "--out", str(BUILTIN_PROMPTS)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # And it notices a changed file.
    (tmp_path / "digit-7.wav").write_bytes((BUILTIN_PROMPTS / "digit-8.wav").read_bytes())
    result = subprocess.run([sys.executable, str(script), "--check", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "digit-7" in result.stderr
