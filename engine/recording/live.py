"""The recordings of one media worker: the relay's buffers in, sealed chunks out.

A media worker keeps one `RecordingWriter` per recorded session. Each leg of a recorded session
has a list (`Leg.recording`) that the relay appends every RTP packet it forwards from that leg's
peer to (plain, after SRTP unprotect and the continuity rewrite), with its arrival time; this
module drains those lists into the writer, channel = the leg the packet came from (leg 0 is the
caller's, so channel 0 is what the caller said, as the container defines).

Invariants:
- The relay's part is two list appends per packet: no call, no lookup, never an exception.
  Draining runs from the worker's timer every `interval` and before anything that changes
  how later packets are kept (PCI pause on/off, stop), so every packet is written in the mode
  it arrived in. A write error (disk full) ends that recording (reported through `on_event`,
  state "failed", and its legs stop buffering), never the relay.
- Only payload types negotiated for the recorded codec are stored. RFC 4733 telephone-events,
  comfort noise and anything else are counted in `skipped` and never written: a DTMF event
  packet is not audio, so a keypad digit sent that way never reaches the disk in any mode.
- Every call is sealed at least once per `chunk_seconds`, quiet or not: the worker calls
  `sweep(now)` on a grid every `interval` (SWEEP_SECONDS, or half the shortest chunk), and a
  chunk is due early enough that seals are `seal_period` apart (0.8 s for 1 s chunks), so
  neither the sweep's granularity nor a late sweep stretches what lives only in memory (what a
  SIGKILL of the worker loses) past `chunk_seconds`. Each seal is stamped with the time it
  happened.
- A new file's directory entry is fsynced by the next sweep, together with every other file
  created since (one fsync per sweep, not per file); its header by its first periodic fsync.
- `close_all_unfinished` (the signalling process is gone) seals what is buffered as ordinary
  chunks and leaves every file without its final chunk: nothing is lost, and recovery at the
  next start marks them incomplete.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .container import Codec, RecordingMetadata
from .writer import DirectorySync, RecordingWriter

__all__ = ["SWEEP_SECONDS", "LiveRecordings", "seal_period"]

#: How often the worker drains the legs' buffers and seals what is due. Longer means fewer,
#: larger batches (cheaper per packet); a chunk is due one interval early, so the audio that
#: only lives in memory never spans more than chunk_seconds. Shorter chunks shorten it.
#: With 1 s chunks a chunk is sealed every 0.8 s at 0.2 s and at 0.4 s alike (due 0.8 s resp.
#: 0.6 s after the last seal, checked every interval), so 0.4 s halves the drains at the same
#: seal cadence: the recorder's timer fell from 122 to 94 µs per call-second (recording.md).
#: `seal_period` states that cadence; the worker runs the sweeps on a fixed grid so that a late
#: timer does not push them apart, which leaves chunk_seconds - seal_period (0.2 s) for one
#: sweep to be late before audio older than chunk_seconds could be lost to a SIGKILL.
SWEEP_SECONDS = 0.4


def seal_period(chunk_seconds: float, interval: float) -> float:
    """The longest time between two seals of a call with audio, for sweeps every `interval`
    that seal when a chunk is due within the next interval: the k-th sweep after a seal seals
    once k * interval + interval >= chunk_seconds. A SIGKILL of the worker loses at most this
    much (plus how late that one sweep ran)."""
    return max(1, math.ceil(chunk_seconds / interval - 1 - 1e-9)) * interval

EventSink = Callable[[dict[str, Any]], None]


class _Live:
    __slots__ = ("session_id", "call_id", "writer", "payload_types", "buffers", "detach")

    def __init__(self, session_id: str, call_id: str, writer: RecordingWriter,
                 payload_types: frozenset[int]) -> None:
        self.session_id = session_id
        self.call_id = call_id
        self.writer = writer
        self.payload_types = payload_types
        # Per leg (channel), what the relay appended since the last drain: packet, arrival, ...
        self.buffers: tuple[list[bytes | float], list[bytes | float]] = ([], [])
        self.detach: Callable[[], None] | None = None  # stops the relay appending to them

    def end(self) -> None:
        if self.detach is not None:
            self.detach()
            self.detach = None
        for buffer in self.buffers:
            buffer.clear()

    def drain(self) -> None:
        """Hand the buffered packets to the writer, oldest first (never raises but OSError)."""
        for channel, buffer in enumerate(self.buffers):
            if buffer:
                try:
                    self.writer.append_rtp_packets(channel, buffer, self.payload_types)
                finally:
                    buffer.clear()  # in place: the relay's leg holds this very list


class LiveRecordings:
    """All recordings of one worker, by media session id."""

    def __init__(self, *, on_event: EventSink | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.sessions: dict[str, _Live] = {}
        self.on_event = on_event
        self.wall_clock = wall_clock
        self.started = 0
        self.failed = 0
        self.directory_syncs_failed = 0
        self.cpu = 0.0  # CPU seconds the worker spent in `sweep` (draining, sealing, writing)
        self.interval = SWEEP_SECONDS  # seconds between sweeps: at most half the shortest chunk
        # New files' directory entries are fsynced once per sweep, not once per file.
        self.directory_sync = DirectorySync()

    # -- control (one call each, from the worker's command loop) ----------------------------

    def start(self, session_id: str, call_id: str, command: dict[str, Any], now: float, *,
              detach: Callable[[], None] | None = None
              ) -> tuple[list[bytes | float], list[bytes | float]]:
        """Open the writer for a `record` command (protocol.py documents its fields). Returns
        the two buffers (caller's leg, callee's leg) the relay's legs append packets to;
        `detach` is called when the recording ends, to stop that."""
        if session_id in self.sessions:
            raise ValueError(f"session {session_id} is recorded already")
        metadata = command.get("metadata") or {}
        chunk_seconds = float(command.get("chunk-seconds", 1.0))
        self.interval = min(self.interval, chunk_seconds / 2)
        writer = RecordingWriter(
            Path(str(command["path"])),
            recording_id=bytes.fromhex(str(command["recording-id"])),
            key_id=bytes.fromhex(str(command["key-id"])),
            data_key=base64.b64decode(str(command["data-key"])),
            codec=Codec[str(command["codec"])],
            sample_rate=int(command.get("rate", 8000)),
            now=now,
            wall_time=self.wall_clock(),
            metadata=RecordingMetadata(
                caller=str(metadata.get("caller", "")), callee=str(metadata.get("callee", "")),
                call_id=str(metadata.get("call_id", "")), queue=str(metadata.get("queue", "")),
                extra={str(k): str(v) for k, v in (metadata.get("extra") or {}).items()},
            ),
            chunk_seconds=chunk_seconds,
            fsync_every=int(command.get("fsync-every", 5)),
            directory_sync=self.directory_sync,
        )
        types = frozenset(int(pt) for pt in command["payload-types"])
        live = _Live(session_id, call_id, writer, types)
        live.detach = detach
        self.sessions[session_id] = live
        self.started += 1
        return live.buffers

    def set_sensitive(self, session_id: str, on: bool, now: float) -> bool:
        """PCI pause on or off; False if the session is not recorded."""
        live = self.sessions.get(session_id)
        if live is None:
            return False
        if not self._drain(live):  # what arrived before the switch keeps its mode
            return True
        if on:
            live.writer.sensitive_start(now)
        else:
            live.writer.sensitive_end(now)
        return True

    def stop(self, session_id: str, now: float) -> dict[str, Any] | None:
        """The call ended: seal the final chunk. Returns the summary also sent as an event."""
        live = self.sessions.pop(session_id, None)
        if live is None:
            return None
        try:
            live.drain()
            live.writer.close(now)
        except OSError as error:
            return self._failed(live, error)
        live.end()
        return self._report(live, "closed")

    def close_all_unfinished(self) -> None:
        for live in list(self.sessions.values()):
            try:
                live.drain()
                live.writer.close_unfinished()
            except OSError:
                pass  # the file keeps what reached it; recovery finds it incomplete
            live.end()
        self.sessions.clear()
        self._sync_directories()

    # -- per packet ---------------------------------------------------------------------------

    def tap(self, session_id: str, leg: int, packet: bytes, now: float) -> None:
        """One relayed RTP packet from `leg`'s peer, for a caller without the relay's buffers
        (the relay itself appends to the buffers `start` returned)."""
        live = self.sessions.get(session_id)
        if live is not None:
            buffer = live.buffers[leg]
            buffer.append(packet)
            buffer.append(now)

    def sweep(self, now: float) -> None:
        """From the worker's timer: drain every buffer, seal what is due."""
        interval = self.interval
        for live in list(self.sessions.values()):
            if self._drain(live):
                try:
                    # Due half a step before the sweep that `seal_period` names: sweeps run
                    # on a grid but each may be late, and a threshold on a grid point would
                    # let one late sweep and one on time skip a seal.
                    chunk = live.writer.chunk_seconds
                    early = chunk - seal_period(chunk, interval) + interval / 2
                    live.writer.maybe_seal(now, early=early)
                except OSError as error:
                    self.sessions.pop(live.session_id, None)
                    self._failed(live, error)
        self._sync_directories()

    def _sync_directories(self) -> None:
        try:
            self.directory_sync.flush()
        except OSError:
            self.directory_syncs_failed += 1  # the files are written; only power-cut safety waits

    def _drain(self, live: _Live) -> bool:
        """False if a write error (disk full) ended the recording; the relay goes on."""
        try:
            live.drain()
        except OSError as error:
            self.sessions.pop(live.session_id, None)
            self._failed(live, error)
            return False
        return True

    # -- reports ------------------------------------------------------------------------------

    def _failed(self, live: _Live, error: OSError) -> dict[str, Any]:
        self.failed += 1
        live.end()
        try:
            live.writer.abort()
        except OSError:
            pass
        return self._report(live, "failed", reason=f"{type(error).__name__}: {error.strerror}")

    def _report(self, live: _Live, state: str, **extra: Any) -> dict[str, Any]:
        writer = live.writer
        stats = writer.stats
        report: dict[str, Any] = {
            "event": "recording",
            "session": live.session_id,
            "call-id": live.call_id,
            "recording-id": writer.recording_id.hex(),
            "state": state,
            "seconds": round(writer.duration, 3),
            "wall-end": writer.wall_time_now,
            "chunks": stats.chunks,
            "bytes": stats.bytes_written,
            "frames": stats.frames,
            "frames-sensitive": stats.frames_dropped_sensitive,
            "frames-late": stats.frames_late,
            "skipped": stats.frames_skipped,
            "malformed": stats.frames_malformed,
            **extra,
        }
        if self.on_event is not None:
            self.on_event(report)
        return report

    def totals(self) -> dict[str, int | float]:
        return {"recordings": len(self.sessions), "recordings-started": self.started,
                "recordings-failed": self.failed, "recordings-cpu": round(self.cpu, 6),
                "recordings-directory-syncs-failed": self.directory_syncs_failed}
