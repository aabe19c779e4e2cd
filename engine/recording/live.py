"""The recordings of one media worker: the relay's tap in, sealed chunks out.

A media worker keeps one `RecordingWriter` per recorded session. The relay calls `tap` for every
RTP packet it forwards (plain, after SRTP unprotect and the continuity rewrite); this module
picks the payload out of it and hands it to the writer, channel = the leg the packet came from
(leg 0 is the caller's, so channel 0 is what the caller said, as the container defines).

Invariants:
- `tap` never raises and never blocks: one dict lookup for a session that is not recorded; for a
  recorded one, a header walk, one slice and the writer's append. A write error (disk full)
  ends that recording (reported through `on_event`, state "failed"), never the relay.
- Only payload types negotiated for the recorded codec are stored. RFC 4733 telephone-events,
  comfort noise and anything else are counted in `skipped` and never written: a DTMF event
  packet is not audio, so a keypad digit sent that way never reaches the disk in any mode.
- A quiet call is still sealed about once a second: the worker calls `sweep(now)` every
  `SWEEP_SECONDS`, and a chunk is due `SWEEP_SECONDS` early so that the sweep's granularity
  never stretches the interval past `chunk_seconds`.
- `close_all_unfinished` (the signalling process is gone) seals what is buffered as ordinary
  chunks and leaves every file without its final chunk: nothing is lost, and recovery at the
  next start marks them incomplete.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .container import Codec, RecordingMetadata
from .writer import RecordingWriter

__all__ = ["SWEEP_SECONDS", "LiveRecordings"]

SWEEP_SECONDS = 0.1
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

EventSink = Callable[[dict[str, Any]], None]


class _Live:
    __slots__ = ("session_id", "call_id", "writer", "payload_types", "skipped", "malformed")

    def __init__(self, session_id: str, call_id: str, writer: RecordingWriter,
                 payload_types: frozenset[int]) -> None:
        self.session_id = session_id
        self.call_id = call_id
        self.writer = writer
        self.payload_types = payload_types
        self.skipped = 0  # packets of other payload types (telephone-event, CN...)
        self.malformed = 0


class LiveRecordings:
    """All recordings of one worker, by media session id."""

    def __init__(self, *, on_event: EventSink | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.sessions: dict[str, _Live] = {}
        self.on_event = on_event
        self.wall_clock = wall_clock
        self.started = 0
        self.failed = 0

    # -- control (one call each, from the worker's command loop) ----------------------------

    def start(self, session_id: str, call_id: str, command: dict[str, Any], now: float) -> None:
        """Open the writer for a `record` command (protocol.py documents its fields)."""
        if session_id in self.sessions:
            raise ValueError(f"session {session_id} is recorded already")
        metadata = command.get("metadata") or {}
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
            chunk_seconds=float(command.get("chunk-seconds", 1.0)),
            fsync_every=int(command.get("fsync-every", 5)),
        )
        types = frozenset(int(pt) for pt in command["payload-types"])
        self.sessions[session_id] = _Live(session_id, call_id, writer, types)
        self.started += 1

    def set_sensitive(self, session_id: str, on: bool, now: float) -> bool:
        """PCI pause on or off; False if the session is not recorded."""
        live = self.sessions.get(session_id)
        if live is None:
            return False
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
            live.writer.close(now)
        except OSError as error:
            return self._failed(live, error)
        return self._report(live, "closed")

    def close_all_unfinished(self) -> None:
        for live in list(self.sessions.values()):
            try:
                live.writer.close_unfinished()
            except OSError:
                pass  # the file keeps what reached it; recovery finds it incomplete
        self.sessions.clear()

    # -- per packet ---------------------------------------------------------------------------

    def tap(self, session_id: str, leg: int, packet: bytes, now: float) -> None:
        live = self.sessions.get(session_id)
        if live is None:
            return
        if packet[1] & 0x7F not in live.payload_types:
            live.skipped += 1
            return
        first = packet[0]
        if first == 0x80:  # version 2, no padding, extension or CSRC: nearly every packet
            payload = packet[12:]
        else:
            offset = 12 + (first & 0x0F) * 4
            end = len(packet)
            if first & 0x10:  # header extension, RFC 3550 §5.3.1
                if end < offset + 4:
                    live.malformed += 1
                    return
                offset += 4 + _U16.unpack_from(packet, offset + 2)[0] * 4
            if first & 0x20:  # padding: the last octet counts it
                end -= packet[-1]
            if offset >= end:
                live.malformed += 1
                return
            payload = packet[offset:end]
        try:
            live.writer.append_rtp(leg, payload, _U32.unpack_from(packet, 4)[0], now)
        except OSError as error:
            self.sessions.pop(session_id, None)
            self._failed(live, error)

    def sweep(self, now: float) -> None:
        due = now + SWEEP_SECONDS
        for live in list(self.sessions.values()):
            try:
                live.writer.maybe_seal(due)
            except OSError as error:
                self.sessions.pop(live.session_id, None)
                self._failed(live, error)

    # -- reports ------------------------------------------------------------------------------

    def _failed(self, live: _Live, error: OSError) -> dict[str, Any]:
        self.failed += 1
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
            "skipped": live.skipped,
            "malformed": live.malformed + stats.frames_malformed,
            **extra,
        }
        if self.on_event is not None:
            self.on_event(report)
        return report

    def totals(self) -> dict[str, int]:
        return {"recordings": len(self.sessions), "recordings-started": self.started,
                "recordings-failed": self.failed}
