"""What the admin API may do with recordings, and the adapter over the sealed-recording store.

Invariants:
- The API never opens a keystore itself: it goes through `RecordingAccess` (list, exists,
  export, verify), so tests and other stores plug in the same way.
- `KeystoreRecordings.export` streams: the keystore is read on the caller's thread (its SQLite
  handle belongs to the event loop), then every chunk is authenticated in a worker thread
  before the answer starts, and the WAV is decrypted again block by block as the client reads
  it (recording.stream). Memory stays flat whatever the call's length, and no plaintext audio
  is ever written anywhere, not even to a RAM file system.
- `verify` decrypts every chunk too: it runs in a worker thread, never on the event loop.
- The listing carries no key material and no file paths; the caller's number is returned raw
  and masked by the API for the asking role.
- Access decisions and the RECORDING_ACCESSED audit record are the API's (it knows the role and
  the approval); the recording layer is told to allow, and its own notification goes to a
  registry with no observers so one export leaves one record, not two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Protocol, cast

from ..hooks.registry import HookRegistry
from ..recording.errors import RecordingError, UnknownRecordingError
from ..recording.export import check_access, verify_recording
from ..recording.keystore import Keystore
from ..recording.keystore import RecordingRow as KeyRow
from ..recording.stream import WavStream
from ..recording.waveform import compute_waveform
from .messages import BodyStream


class RecordingAccess(Protocol):
    def list_recordings(self) -> list[dict[str, object]]:
        """One dict per recording: recording_id, created_at, closed_at, state,
        retention_class, expires_at, legal_hold, caller (raw; the API masks it)."""

    def exists(self, recording_id: str) -> bool: ...

    async def export(self, recording_id: str, *, actor: str) -> BodyStream:
        """The recording as a 16-bit stereo WAV of known length, ready to stream; raises
        RecordingError (before any byte is sent) when it cannot be exported."""

    async def verify(self, recording_id: str, *, actor: str) -> Mapping[str, object]:
        """{"recording_id", "state", "passed", "problems": [str, ...]}."""


class BytesStream:
    """A body already in memory, as a BodyStream (small answers, test stores)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def blocks(self) -> Iterator[bytes]:
        yield self.data

    def close(self) -> None:
        pass


_QUIET = HookRegistry()  # see the module invariants: the API writes the access record


def _allow(actor: str, action: str, recording_id: str) -> bool:
    return True


class _Fetched:
    """One recording's row and data key read from the keystore up front, standing in for it
    where a worker thread needs them (verify_recording asks for nothing else)."""

    def __init__(self, store: Keystore, recording_id: str) -> None:
        self.hooks = _QUIET
        self._row = store.get(recording_id)
        self._key: bytes | RecordingError
        try:
            self._key = store.data_key(recording_id)
        except RecordingError as exc:  # shredded, or a KEK that is gone: verify reports it
            self._key = exc

    def get(self, recording_id: str) -> KeyRow:
        return self._row

    def data_key(self, recording_id: str) -> bytes:
        if isinstance(self._key, RecordingError):
            raise self._key
        return self._key


class KeystoreRecordings:
    def __init__(self, store: Keystore) -> None:
        self.store = store

    def list_recordings(self) -> list[dict[str, object]]:
        return [
            {"recording_id": row.recording_id, "created_at": row.created_at,
             "closed_at": row.closed_at, "state": row.state,
             "retention_class": row.retention_class, "expires_at": row.expires_at,
             "legal_hold": row.legal_hold, "caller": row.caller_number or ""}
            for row in self.store.rows()
        ]

    def exists(self, recording_id: str) -> bool:
        try:
            self.store.get(recording_id)
        except UnknownRecordingError:
            return False
        return True

    async def export(self, recording_id: str, *, actor: str) -> BodyStream:
        check_access(self.store, actor=actor, action="export", recording_id=recording_id,
                     hooks=_QUIET, authorize=_allow)
        row = self.store.get(recording_id)
        stream = WavStream(row.path, self.store.data_key(recording_id), recording_id,
                           allow_incomplete=row.state in ("recording", "incomplete"))
        try:
            await asyncio.to_thread(stream.measure)  # every tag checked before the first byte
        except BaseException:
            stream.close()
            raise
        return stream

    async def verify(self, recording_id: str, *, actor: str) -> Mapping[str, object]:
        known = _Fetched(self.store, recording_id)  # the keystore is read here, on the loop
        check = await asyncio.to_thread(
            verify_recording, cast(Keystore, known), recording_id, actor=actor, hooks=_QUIET,
            authorize=_allow)
        return {"recording_id": recording_id, "state": check.state, "passed": check.passed,
                "problems": [str(problem) for problem in check.report.problems]}

    async def waveform(self, recording_id: str, *, columns: int) -> Mapping[str, object]:
        """The console's picture (recording.waveform): the envelope and PCI-paused spans,
        computed in a worker thread; raises RecordingError when the file cannot be read."""
        row = self.store.get(recording_id)  # the keystore is read here, on the loop
        key = self.store.data_key(recording_id)
        picture = await asyncio.to_thread(
            compute_waveform, row.path, key, recording_id,
            allow_incomplete=row.state in ("recording", "incomplete"), columns=columns)
        return {"recording_id": recording_id, **picture.to_json()}
