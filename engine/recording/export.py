"""Export to stereo WAV and verification, both behind an access check and an audit notification.

Invariants:
- Every call checks `authorize(actor, action, recording_id)` first and notifies
  HookPoint.RECORDING_ACCESSED with the outcome, allowed or not, before touching a key.
- Export streams: memory is bounded by one chunk plus `max_skew` seconds of audio per channel,
  whatever the length of the call. Channels are aligned on the recording timeline; gaps (lost
  packets, PCI pause) become digital silence.
- Export writes nothing unless every chunk it reads authenticates; on any integrity error the
  partial WAV is removed and the error propagates.
"""

from __future__ import annotations

import os
import time
import wave
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..hooks.registry import HookPoint, HookRegistry
from .container import Codec, Event
from .errors import AccessDeniedError, RecordingError
from .g711 import decode_alaw, decode_ulaw
from .keystore import Keystore, RecordingEvent
from .reader import FileVerifyReport, Problem, RecordingReader, verify_file

Authorize = Callable[[str, str, str], bool]
Progress = Callable[[int, int], None]  # (bytes of the sealed file read, file size)


def allow_all(actor: str, action: str, recording_id: str) -> bool:
    return True


def check_access(
    store: Keystore,
    *,
    actor: str,
    action: str,
    recording_id: str,
    hooks: HookRegistry | None = None,
    authorize: Authorize = allow_all,
) -> None:
    allowed = bool(authorize(actor, action, recording_id))
    (hooks or store.hooks).notify(
        HookPoint.RECORDING_ACCESSED,
        RecordingEvent(action=action, recording_id=recording_id, actor=actor, allowed=allowed,
                       at=time.time()),
    )
    if not allowed:
        raise AccessDeniedError(actor, action, recording_id)


def _decoder(codec: Codec) -> Callable[[bytes], np.ndarray]:
    if codec is Codec.PCMU:
        return decode_ulaw
    if codec is Codec.PCMA:
        return decode_alaw
    return lambda payload: np.frombuffer(payload, dtype=">i2").astype("<i2")


class _StereoAssembler:
    """Interleaves two independently timed channels into WAV frames, in order, in bounded memory.

    Output advances to the point both channels have reached, or to `max_skew` behind the leading
    channel when the other is silent (one-way audio, pause): memory stays bounded either way. A
    segment that arrives for time already written is cut to what is still ahead (the writer never
    produces one; this keeps a corrupt-but-authentic file from growing memory)."""

    BLOCK = 1 << 16  # frames per write when emitting long silences

    def __init__(self, out: wave.Wave_write, max_skew: int) -> None:
        self._out = out
        self._max_skew = max_skew
        self.written = 0
        self._pending: tuple[deque[tuple[int, np.ndarray]], ...] = (deque(), deque())
        self._ends = [0, 0]

    def add(self, channel: int, start: int, pcm: np.ndarray) -> None:
        if start < self.written:
            pcm = pcm[self.written - start :]
            start = self.written
        if len(pcm) == 0:
            return
        self._pending[channel].append((start, pcm))
        self._ends[channel] = max(self._ends[channel], start + len(pcm))

    def flush_ready(self) -> None:
        lead = max(self._ends)
        self._emit(max(min(self._ends), lead - self._max_skew))

    def finish(self) -> None:
        self._emit(max(self._ends))

    def _emit(self, upto: int) -> None:
        while self.written < upto:
            end = min(upto, self.written + self.BLOCK)
            frames = np.zeros((end - self.written, 2), dtype="<i2")
            for channel, pending in enumerate(self._pending):
                while pending:
                    start, pcm = pending[0]
                    if start >= end:
                        break
                    lo = max(start, self.written)
                    hi = min(start + len(pcm), end)
                    if hi > lo:
                        frames[lo - self.written : hi - self.written, channel] = (
                            pcm[lo - start : hi - start]
                        )
                    if start + len(pcm) <= end:
                        pending.popleft()
                    else:
                        break
            self._out.writeframesraw(frames.tobytes())
            self.written = end


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportResult:
    recording_id: str
    path: str
    sample_rate: int
    frames: int
    chunks: int
    complete: bool  # False: an unfinished recording, exported up to its last sealed chunk
    events: list[Event] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def export_wav(
    store: Keystore,
    recording_id: str,
    out_path: str | os.PathLike[str],
    *,
    actor: str,
    hooks: HookRegistry | None = None,
    authorize: Authorize = allow_all,
    progress: Progress | None = None,
    max_skew: float = 10.0,
) -> ExportResult:
    """Decrypt recording `recording_id` into a 16-bit stereo WAV at `out_path` (created 0600)."""
    check_access(store, actor=actor, action="export", recording_id=recording_id, hooks=hooks,
                 authorize=authorize)
    row = store.get(recording_id)
    data_key = store.data_key(recording_id)
    allow_incomplete = row.state in ("recording", "incomplete")
    out = Path(out_path)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
    events: list[Event] = []
    chunks = 0
    try:
        with (
            RecordingReader(row.path, data_key, expected_id=bytes.fromhex(recording_id)) as reader,
            os.fdopen(fd, "wb") as raw,
            wave.open(raw, "wb") as wav,
        ):
            rate = reader.header.sample_rate
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            decode = _decoder(reader.header.codec)
            assembler = _StereoAssembler(wav, round(max_skew * rate))
            complete = False
            for chunk in reader.iter_chunks(allow_incomplete=allow_incomplete):
                chunks += 1
                events.extend(chunk.payload.events)
                for channel, segments in enumerate(chunk.payload.channels):
                    for segment in segments:
                        assembler.add(channel, segment.sample, decode(segment.payload))
                assembler.flush_ready()
                complete = chunk.final
                if progress is not None:
                    progress(chunk.end_offset, reader.file_size)
            assembler.finish()
            frames = assembler.written
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return ExportResult(recording_id=recording_id, path=str(out), sample_rate=rate,
                        frames=frames, chunks=chunks, complete=complete, events=events)


# -- verify ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingCheck:
    recording_id: str
    state: str  # the index state at verify time
    passed: bool
    report: FileVerifyReport


@dataclass(slots=True, kw_only=True)
class VerifyReport:
    checks: list[RecordingCheck] = field(default_factory=list)
    skipped_shredded: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.denied and all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[RecordingCheck]:
        return [check for check in self.checks if not check.passed]


def verify_recording(
    store: Keystore,
    recording_id: str,
    *,
    actor: str,
    hooks: HookRegistry | None = None,
    authorize: Authorize = allow_all,
) -> RecordingCheck:
    """Check every tag of one recording.

    A recording the index marks unfinished ('recording' or 'incomplete') passes without a final
    chunk and with a cut last frame, as long as every complete chunk authenticates.
    """
    check_access(store, actor=actor, action="verify", recording_id=recording_id, hooks=hooks,
                 authorize=authorize)
    row = store.get(recording_id)
    try:
        data_key = store.data_key(recording_id)
    except RecordingError as exc:  # shredded, or a KEK that is gone
        report = FileVerifyReport(path=row.path, recording_id=recording_id)
        report.problems.append(Problem(where="key", position=None, kind=type(exc).__name__,
                                       message=str(exc)))
        return RecordingCheck(recording_id=recording_id, state=row.state, passed=False,
                              report=report)
    report = verify_file(row.path, data_key, expected_id=bytes.fromhex(recording_id))
    passed = report.ok
    if not passed and row.state in ("recording", "incomplete"):
        benign = {"MissingFinalChunkError", "TruncatedChunkError", "FrameLengthError"}
        passed = report.chunks_bad == 0 and all(p.kind in benign for p in report.problems)
    return RecordingCheck(recording_id=recording_id, state=row.state, passed=passed,
                          report=report)


def verify_all(
    store: Keystore,
    *,
    actor: str,
    hooks: HookRegistry | None = None,
    authorize: Authorize = allow_all,
) -> VerifyReport:
    """Verify every recording in the index that still has a key."""
    result = VerifyReport()
    for row in store.rows():
        if row.state == "shredded":
            result.skipped_shredded.append(row.recording_id)
            continue
        try:
            result.checks.append(verify_recording(store, row.recording_id, actor=actor,
                                                  hooks=hooks, authorize=authorize))
        except AccessDeniedError:
            result.denied.append(row.recording_id)
    return result
