"""Music on hold: an audio file played as RTP to one leg of a media session (worker side).

A queued caller is answered by the media plane alone (controller.py) and hears a configured file
until an agent's media replaces it. Three layers, so the packet logic is testable without sockets:
- `read_music_file` / `MusicSource`: an 8 kHz mono 16-bit WAV, read once and pre-encoded to PCMU
  and PCMA in 20 ms frames (the last frame padded with silence); `MusicLibrary` caches sources per
  worker by path, size and modification time, so a thousand queued callers share one copy and an
  edited file is picked up by the next `play`.
- Prompts (queue greetings and announcements, docs/prompts.md) ride the same stream: `play`
  with prompts plays them once before the music (or alone); `play` with prompts and no file
  while music plays interrupts it, and the music resumes where it was (`Playback.interrupt`).
  A prompt file is read and encoded once per worker like music; a sequence is one tuple of
  those cached frames, built once per command, so the per-packet path is unchanged.
- `Playback` (no I/O, time as an argument): one outgoing stream — its own SSRC, sequence and
  timestamp (random starts, RFC 3550 §5.1), marker on the first packet (the start of a talkspurt,
  RFC 3551 §4.1), the file looping with timestamps running on, frames due every 20 ms from the
  start. When the caller of `next_packet` fell behind by more than `MAX_LATE` (a stalled event
  loop), the frames missed are skipped, not burst: the timestamp jumps as the clock did and the
  sequence does not, which is what a receiver's jitter buffer reads as a gap, not as loss.
- `Players` (asyncio glue, one per worker): every playing leg of the worker, driven by ONE timer
  ticking every 20 ms on a fixed grid while anything plays (no task, no timer per call); each
  playback's frames fall due half-way between ticks, so timer jitter of a few ms never sends two
  frames in one tick and none in the next. Each packet goes out the
  way relayed media does: through the leg's `RtpStreamRewriter` (so when real media replaces the
  music the caller's phone sees one continuous stream: same SSRC, sequence +1, timestamps on),
  then the leg's SRTP sender, then `sendto` to the leg's (latched) peer.

Invariants:
- While a leg plays, media relayed into it from the other leg is dropped (the leg's `send` is
  off), so music and a peer's early media never interleave; `stop` restores it and marks a source
  change on the leg's rewriter.
- A playback ends with `stop`, with its session (`stop_session`, called before the relay deletes
  the session) or by itself when its leg has been closed; nothing of it outlives the session.
"""

from __future__ import annotations

import asyncio
import os
import struct
import wave
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..codecs.g711 import alaw_encode, ulaw_encode
from .relay import RelayError

if TYPE_CHECKING:
    from .relay import Leg, Relay

__all__ = [
    "ENCODINGS",
    "FRAME_SAMPLES",
    "FRAME_SECONDS",
    "MAX_LATE",
    "MusicFileError",
    "MusicLibrary",
    "MusicSource",
    "Playback",
    "Players",
    "read_music_file",
    "static_encoding",
]

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz, the G.711 default packetisation (RFC 3551 §4.5)
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
MAX_LATE = 0.1  # behind by more than this: skip frames rather than burst them
MAX_SECONDS = 600  # a longer file is a mistake (memory per worker), not music on hold
ENCODINGS = ("PCMU", "PCMA")  # what the player can send (no transcoding: G.711 only)
_STATIC_PAYLOAD_TYPES = {0: "PCMU", 8: "PCMA"}  # RFC 3551 §6
_RTP_HEADER = struct.Struct("!BBHII")
_RTP_VERSION_BYTE = 0x80  # V=2, no padding, no extension, no CSRC


class MusicFileError(ValueError):
    """The configured file is missing or not 8 kHz mono 16-bit PCM WAV (the message says which)."""


def static_encoding(payload_type: int) -> str | None:
    return _STATIC_PAYLOAD_TYPES.get(payload_type)


def read_music_file(path: str) -> np.ndarray:
    """The samples of an 8 kHz mono 16-bit PCM WAV file, as int16."""
    try:
        with wave.open(path, "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            count = wav.getnframes()
            if channels != 1 or width != 2 or rate != SAMPLE_RATE:
                raise MusicFileError(
                    f"{path}: must be 8000 Hz mono 16-bit PCM WAV, is {rate} Hz, "
                    f"{channels} channel(s), {8 * width}-bit"
                )
            if count == 0:
                raise MusicFileError(f"{path}: has no audio")
            if count > MAX_SECONDS * SAMPLE_RATE:
                raise MusicFileError(f"{path}: longer than {MAX_SECONDS} s")
            data = wav.readframes(count)
    except FileNotFoundError:
        raise MusicFileError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as error:
        raise MusicFileError(f"{path}: not a PCM WAV file ({error})") from None
    except OSError as error:
        raise MusicFileError(f"{path}: cannot read ({error.strerror})") from None
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


@dataclass(frozen=True, slots=True)
class MusicSource:
    """A file as the 20 ms G.711 payloads the player sends, per encoding."""

    path: str
    frames: dict[str, tuple[bytes, ...]]

    @classmethod
    def from_samples(cls, path: str, samples: np.ndarray) -> MusicSource:
        padding = -len(samples) % FRAME_SAMPLES
        padded = np.concatenate((samples, np.zeros(padding, dtype=np.int16)))
        rows = padded.reshape(-1, FRAME_SAMPLES)
        frames: dict[str, tuple[bytes, ...]] = {}
        for name, encode in (("PCMU", ulaw_encode), ("PCMA", alaw_encode)):
            whole = encode(rows)  # one batched table lookup, then cut into frames
            frames[name] = tuple(
                whole[i : i + FRAME_SAMPLES] for i in range(0, len(whole), FRAME_SAMPLES)
            )
        return cls(path, frames)

    @classmethod
    def load(cls, path: str) -> MusicSource:
        return cls.from_samples(path, read_music_file(path))


class MusicLibrary:
    """Sources by path, loaded on first use (the worker's only file reads, once per file)."""

    def __init__(self) -> None:
        self._sources: dict[str, tuple[tuple[int, int], MusicSource]] = {}
        self.loads = 0

    def get(self, path: str) -> MusicSource:
        try:
            status = os.stat(path)
        except FileNotFoundError:
            raise MusicFileError(f"{path}: no such file") from None
        version = (status.st_mtime_ns, status.st_size)
        cached = self._sources.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        source = MusicSource.load(path)
        self._sources[path] = (version, source)
        self.loads += 1
        return source


class Playback:
    """One outgoing RTP stream of pre-encoded frames; time comes in as `now`.

    `frames` loop (the music; may be empty: nothing after the prompts). `interrupt` puts prompts
    ahead of it: they play once, then the music resumes where it was, in the same stream. While
    there is nothing to send the clock still runs (timestamp and due time move on, no packets),
    and the next frame sent starts a new talkspurt (marker bit)."""

    __slots__ = (
        "frames",
        "prompts",
        "prompt_position",
        "payload_type",
        "ssrc",
        "sequence",
        "timestamp",
        "next_due",
        "position",
        "marker",
        "frames_sent",
        "frames_skipped",
        "prompt_frames_sent",
    )

    def __init__(
        self,
        frames: tuple[bytes, ...],
        *,
        payload_type: int,
        ssrc: int,
        sequence: int,
        timestamp: int,
        now: float,
        prompts: tuple[bytes, ...] = (),
    ) -> None:
        if not frames and not prompts:
            raise ValueError("nothing to play")
        self.frames = frames
        self.prompts = prompts
        self.prompt_position = 0
        self.payload_type = payload_type
        self.ssrc = ssrc
        self.sequence = sequence & 0xFFFF
        self.timestamp = timestamp & 0xFFFFFFFF
        self.next_due = now  # the first frame goes out at once
        self.position = 0  # index of the next frame in `frames`
        self.marker = True
        self.frames_sent = 0
        self.frames_skipped = 0
        self.prompt_frames_sent = 0

    def interrupt(self, prompts: tuple[bytes, ...]) -> None:
        """Play `prompts` next (replacing prompts still playing), then the music again."""
        self.prompts = prompts
        self.prompt_position = 0

    @property
    def idle(self) -> bool:
        return not self.frames and not self.prompts

    def _advance(self, count: int) -> None:
        """Skip `count` frames: unplayed prompts first, then music."""
        if self.prompts:
            left = len(self.prompts) - self.prompt_position
            if count < left:
                self.prompt_position += count
                return
            count -= left
            self.prompts = ()
        if self.frames:
            self.position = (self.position + count) % len(self.frames)

    def next_packet(self, now: float) -> bytes | None:
        """The next RTP packet if one is due at `now`, else None. Call until None."""
        if now < self.next_due:
            return None
        behind = now - self.next_due
        if self.idle:
            # Silence: no packets, but the media clock runs on, so what comes next carries the
            # timestamp of its real time and a marker (RFC 3551 §4.1: a new talkspurt).
            steps = int(behind / FRAME_SECONDS + 1e-6) + 1  # float sums of 0.02 drift a hair
            self.timestamp = (self.timestamp + steps * FRAME_SAMPLES) & 0xFFFFFFFF
            self.next_due += steps * FRAME_SECONDS
            self.marker = True
            return None
        if behind > MAX_LATE:
            skipped = int(behind / FRAME_SECONDS)
            self._advance(skipped)
            self.timestamp = (self.timestamp + skipped * FRAME_SAMPLES) & 0xFFFFFFFF
            self.next_due += skipped * FRAME_SECONDS
            self.frames_skipped += skipped
            if self.idle:
                return self.next_packet(now)
        prompts = self.prompts
        if prompts:
            frame = prompts[self.prompt_position]
            self.prompt_position += 1
            self.prompt_frames_sent += 1
            if self.prompt_position == len(prompts):
                self.prompts = ()
        else:
            frame = self.frames[self.position]
            self.position += 1
            if self.position == len(self.frames):
                self.position = 0
        second = self.payload_type | 0x80 if self.marker else self.payload_type
        self.marker = False
        packet = (
            _RTP_HEADER.pack(_RTP_VERSION_BYTE, second, self.sequence, self.timestamp, self.ssrc)
            + frame
        )
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        self.next_due += FRAME_SECONDS
        self.frames_sent += 1
        return packet


class _Playing:
    __slots__ = ("leg", "playback", "leg_was_sending")

    def __init__(self, leg: Leg, playback: Playback, leg_was_sending: bool) -> None:
        self.leg = leg
        self.playback = playback
        self.leg_was_sending = leg_was_sending


class Players:
    """Every playback of one worker, on one 20 ms timer that runs only while something plays."""

    def __init__(
        self,
        relay: Relay,
        *,
        clock: Callable[[], float],
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.relay = relay
        self.clock = clock  # the relay's clock (time.monotonic), so `now` matches its rewriters
        self.random_bytes = random_bytes
        self.library = MusicLibrary()
        self.playing: dict[tuple[str, int], _Playing] = {}
        self.started = 0
        self.prompts_played = 0
        self.frames_sent = 0  # of playbacks that ended; live ones add their own
        self.frames_skipped = 0
        self.send_failures = 0
        self._timer: asyncio.TimerHandle | None = None
        self._next_tick = 0.0  # on the `clock`: ticks keep a fixed 20 ms grid, no drift

    def play(self, session_id: str, index: int, path: str | None, payload_type: int,
             encoding: str, prompts: tuple[str, ...] = (), *, resume: bool = True) -> None:
        """Start (or restart with another file) music to leg `index` of the session, after
        `prompts` (files played once, in order). Without `path`: when the leg plays already,
        the prompts interrupt its music, which then resumes where it was (same RTP stream);
        otherwise the prompts alone play, then nothing (the leg stays quiet until `stop`).
        `resume` False: the music does not come back after these prompts (a last word)."""
        if encoding not in ENCODINGS:
            raise ValueError(f"cannot play {encoding!r}; the player sends {', '.join(ENCODINGS)}")
        if index not in (0, 1):
            raise ValueError(f"no leg {index}")
        if not 0 <= payload_type <= 127:
            raise ValueError(f"bad payload type {payload_type}")
        session = self.relay.sessions.get(session_id)
        if session is None:
            raise RelayError(f"no session {session_id}")
        leg = session.legs[index]
        # Each file is read and encoded once per worker (the library); a sequence is one tuple
        # of those frames, built once per command: nothing is decoded per packet.
        spoken: tuple[bytes, ...] = ()
        for prompt in prompts:
            spoken += self.library.get(prompt).frames[encoding]
        current = self.playing.get((session_id, index))
        if path is None and current is not None:
            if current.playback.payload_type != payload_type:
                raise ValueError("the prompts' payload type differs from what the leg plays")
            current.playback.interrupt(spoken)
            if not resume:
                current.playback.frames = ()
            self.prompts_played += len(prompts)
            return
        music = self.library.get(path).frames[encoding] if path is not None else ()
        if not music and not spoken:
            raise ValueError("nothing to play: no source and no prompts")
        self.stop(session_id, index)
        start = self.random_bytes(10)
        self.prompts_played += len(prompts)
        playback = Playback(
            music,
            prompts=spoken,
            payload_type=payload_type,
            ssrc=int.from_bytes(start[:4], "big"),
            sequence=int.from_bytes(start[4:6], "big"),
            timestamp=int.from_bytes(start[6:10], "big"),
            now=self.clock(),
        )
        entry = self.playing[(session_id, index)] = _Playing(leg, playback, leg.send)
        leg.send = False  # no relayed media into this leg while the music plays
        self.relay.refresh(leg)
        self.started += 1
        now = self.clock()
        self._send_due(entry, now)  # the first frame at once
        self._arm()
        # Later frames fall due half-way between two ticks, so a tick a few ms early or late
        # still sends exactly one frame: no 0-then-2 pattern (jitter) at the caller's phone.
        tick = self._next_tick
        while tick < now + FRAME_SECONDS / 2:
            tick += FRAME_SECONDS
        playback.next_due = tick - FRAME_SECONDS / 2

    def stop(self, session_id: str, index: int) -> bool:
        entry = self.playing.pop((session_id, index), None)
        if entry is None:
            return False
        self._retire(entry)
        leg = entry.leg
        if leg.transport is not None:
            leg.send = entry.leg_was_sending
            leg.rewriter.source_changed()  # what comes next continues the caller's stream
            self.relay.refresh(leg)
        return True

    def stop_session(self, session_id: str) -> int:
        keys = [key for key in self.playing if key[0] == session_id]
        for key in keys:
            self.stop(*key)
        return len(keys)

    def close(self) -> None:
        for key in list(self.playing):
            self.stop(*key)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def counters(self) -> dict[str, int]:
        live = [entry.playback for entry in self.playing.values()]
        return {
            "players": len(live),
            "players-started": self.started,
            "prompts-played": self.prompts_played,
            "player-frames": self.frames_sent + sum(p.frames_sent for p in live),
            "player-frames-skipped": self.frames_skipped + sum(p.frames_skipped for p in live),
            "player-send-failures": self.send_failures,
            "music-files-loaded": self.library.loads,
        }

    # --- the timer ----------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._timer is None and self.playing:
            now = self.clock()
            # The next point of the grid; after a stall, at once (the playbacks skip ahead).
            self._next_tick = max(self._next_tick + FRAME_SECONDS, now)
            self._timer = asyncio.get_running_loop().call_later(
                self._next_tick - now, self._tick
            )

    def _tick(self) -> None:
        self._timer = None
        now = self.clock()
        ended: list[tuple[str, int]] = []
        for key, entry in self.playing.items():
            if not self._send_due(entry, now):
                ended.append(key)
        for key in ended:
            entry = self.playing.pop(key)
            self._retire(entry)
        self._arm()

    def _send_due(self, entry: _Playing, now: float) -> bool:
        """Send what is due; False when the leg is gone (its session closed under us)."""
        leg = entry.leg
        transport = leg.transport
        if transport is None:
            return False
        playback = entry.playback
        packet = playback.next_packet(now)
        while packet is not None:
            remote = leg.remote
            out = leg.rewriter.rewrite(packet, now)
            srtp = leg.srtp_out
            if out is not None and srtp is not None:
                out = srtp.protect(out)
            if out is None or remote is None:
                self.send_failures += 1
            else:
                transport.sendto(out, remote)
                leg.packets_out += 1
                leg.bytes_out += len(out)
            packet = playback.next_packet(now)
        return True

    def _retire(self, entry: _Playing) -> None:
        self.frames_sent += entry.playback.frames_sent
        self.frames_skipped += entry.playback.frames_skipped
