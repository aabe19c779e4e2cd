"""What the admin API may do with recordings, and the adapter over the sealed-recording store.

Invariants:
- The API never opens a keystore itself: it goes through `RecordingAccess` (list, exists,
  export, verify), so tests and other stores plug in the same way.
- `KeystoreRecordings.export` decrypts into a 0600 file with a random name in `scratch_dir`
  (default /dev/shm, a RAM file system, so no plaintext audio touches the disk) and removes it
  before returning, also on error. (A memfd would be tidier, but export_wav removes its output
  by path on failure, which a /proc/self/fd path refuses.)
- The listing carries no key material and no file paths; the caller's number is returned raw
  and masked by the API for the asking role.
- Access decisions and the RECORDING_ACCESSED audit record are the API's (it knows the role and
  the approval); the recording layer is told to allow, and its own notification goes to a
  registry with no observers so one export leaves one record, not two.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from ..hooks.registry import HookRegistry
from ..recording.errors import UnknownRecordingError
from ..recording.export import export_wav, verify_recording
from ..recording.keystore import Keystore


class RecordingAccess(Protocol):
    def list_recordings(self) -> list[dict[str, object]]:
        """One dict per recording: recording_id, created_at, closed_at, state,
        retention_class, expires_at, legal_hold, caller (raw; the API masks it)."""

    def exists(self, recording_id: str) -> bool: ...

    def export(self, recording_id: str, *, actor: str) -> bytes:
        """The recording as a 16-bit stereo WAV; raises RecordingError when it cannot."""

    def verify(self, recording_id: str, *, actor: str) -> Mapping[str, object]:
        """{"recording_id", "state", "passed", "problems": [str, ...]}."""


DEFAULT_SCRATCH = "/dev/shm"
_QUIET = HookRegistry()  # see the module invariants: the API writes the access record


def _allow(actor: str, action: str, recording_id: str) -> bool:
    return True


class KeystoreRecordings:
    def __init__(self, store: Keystore, *, scratch_dir: str | os.PathLike[str] | None = None
                 ) -> None:
        self.store = store
        if scratch_dir is None:
            if not os.access(DEFAULT_SCRATCH, os.W_OK):
                raise ValueError(f"{DEFAULT_SCRATCH} is not writable: give a scratch_dir on a "
                                 "RAM file system (plaintext audio must not reach the disk)")
            scratch_dir = DEFAULT_SCRATCH
        self.scratch_dir = Path(scratch_dir)

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

    def export(self, recording_id: str, *, actor: str) -> bytes:
        self.scratch_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.scratch_dir / f"vaultpbx-export-{secrets.token_hex(16)}.wav"
        try:
            export_wav(self.store, recording_id, path, actor=actor, hooks=_QUIET,
                       authorize=_allow)
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    def verify(self, recording_id: str, *, actor: str) -> Mapping[str, object]:
        check = verify_recording(self.store, recording_id, actor=actor, hooks=_QUIET,
                                 authorize=_allow)
        return {"recording_id": recording_id, "state": check.state, "passed": check.passed,
                "problems": [str(problem) for problem in check.report.problems]}
