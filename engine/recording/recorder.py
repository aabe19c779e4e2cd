"""Glue between the keystore and writers: start a recording, recover what a crash left behind.

Invariants:
- A recording is indexed (row state 'recording', wrapped data key stored) before its file exists,
  so every file on disk has a key, and a crash can never leave audio nobody can shred.
- `recover_unfinished` is run at start-up, before any writer of this node opens: a file without a
  final chunk then belongs to a dead writer, and its row becomes 'incomplete'. A file that does end
  with its final chunk but whose row never saw the close is marked 'closed'; a file that is
  missing or has no whole header (a power cut before its first fsync) makes the row
  'incomplete', never 'closed'.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hooks.registry import HookPoint
from .container import Codec, RecordingMetadata
from .errors import RecordingFormatError
from .keystore import Keystore, RecordingEvent
from .reader import StructureScan, scan_structure
from .writer import RecordingWriter

FILE_SUFFIX = ".vrec"
WRITER_LOCK = ".writers.lock"


def take_writer_lock(directory: str | os.PathLike[str]) -> int | None:
    """Hold the recording directory as its writer (the engine, for its whole life), or None if
    another process holds it. Recovery needs it: run while an engine records, it would take the
    live recordings (no final chunk yet) for dead ones. The kernel drops the lock when its
    holder dies, SIGKILL included, so a crashed engine never blocks recovery."""
    Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(Path(directory) / WRITER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def release_writer_lock(fd: int) -> None:
    os.close(fd)  # closing the only descriptor releases the flock


def start_recording(
    store: Keystore,
    directory: str | os.PathLike[str],
    *,
    codec: Codec,
    now: float,
    wall_time: float,
    sample_rate: int = 8000,
    metadata: RecordingMetadata | None = None,
    retention_class: str = "default",
    actor: str = "system:media",
    **writer_options: Any,
) -> RecordingWriter:
    """Create the key, the index row and the file; return the writer for the media plane."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    meta = metadata or RecordingMetadata()
    new = store.create_recording(
        directory,
        retention_class=retention_class,
        caller_number=meta.caller or None,
        created_at=wall_time,
    )
    rid = new.recording_id.hex()

    def on_close(writer: RecordingWriter) -> None:
        store.mark_closed(rid, writer.wall_time_now)
        store.hooks.notify(
            HookPoint.RECORDING_STOPPED,
            RecordingEvent(action="stopped", recording_id=rid, actor=actor,
                           at=writer.wall_time_now, detail=f"{writer.stats.chunks} chunks"),
        )

    writer = RecordingWriter(
        new.path,
        recording_id=new.recording_id,
        key_id=new.key_id,
        data_key=new.data_key,
        codec=codec,
        sample_rate=sample_rate,
        now=now,
        wall_time=wall_time,
        metadata=meta,
        on_close=on_close,
        **writer_options,
    )
    store.hooks.notify(
        HookPoint.RECORDING_STARTED,
        RecordingEvent(action="started", recording_id=rid, actor=actor, at=wall_time),
    )
    return writer


def scan_unfinished(directory: str | os.PathLike[str]) -> list[StructureScan]:
    """Recording files in `directory` whose last complete chunk is not final (no key needed)."""
    found: list[StructureScan] = []
    for path in sorted(Path(directory).glob(f"*{FILE_SUFFIX}")):
        try:
            scan = scan_structure(path)
        except (RecordingFormatError, OSError):
            continue  # unreadable header: `verify` reports it; nothing to recover here
        if not scan.finished:
            found.append(scan)
    return found


@dataclass(slots=True, kw_only=True)
class RecoveryReport:
    incomplete: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)


def recover_unfinished(store: Keystore, directory: str | os.PathLike[str]) -> RecoveryReport:
    """Reconcile rows left in state 'recording' with what their files say. Call it holding the
    writer lock (the engine at start-up), or through `recover_if_idle`."""
    report = RecoveryReport()
    for row in store.rows(states=("recording",)):
        if _ends_with_final_chunk(row.path):
            store.mark_closed(row.recording_id, os.stat(row.path).st_mtime)
            report.closed.append(row.recording_id)
        else:  # no final chunk, no file, or not even a whole header (a power cut)
            store.mark_incomplete(row.recording_id)
            report.incomplete.append(row.recording_id)
    return report


def _ends_with_final_chunk(path: str | os.PathLike[str]) -> bool:
    try:
        return scan_structure(path).finished
    except (RecordingFormatError, OSError):
        return False


def recover_if_idle(store: Keystore, directory: str | os.PathLike[str]) -> RecoveryReport | None:
    """`recover_unfinished` unless an engine is writing to `directory` (then None: its
    recordings in state 'recording' are live, not dead)."""
    fd = take_writer_lock(directory)
    if fd is None:
        return None
    try:
        return recover_unfinished(store, directory)
    finally:
        release_writer_lock(fd)
