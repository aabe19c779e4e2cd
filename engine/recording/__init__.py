"""Sealed call recordings: container format, streaming writer, keystore, retention, export.

See docs/recording-format.md for the file format. The media plane uses `start_recording` (or
`RecordingWriter` directly) and calls `append` per frame and `maybe_seal` from its timer.
"""

from __future__ import annotations

from .container import Codec, Direction, EventKind, RecordingMetadata
from .export import export_wav, verify_all, verify_recording
from .kek import KekProvider, LocalFileKek, Pkcs11Kek
from .keystore import Keystore, RetentionPolicy
from .recorder import recover_unfinished, scan_unfinished, start_recording
from .retention import RetentionManager
from .writer import RecordingWriter

__all__ = [
    "Codec",
    "Direction",
    "EventKind",
    "KekProvider",
    "Keystore",
    "LocalFileKek",
    "Pkcs11Kek",
    "RecordingMetadata",
    "RecordingWriter",
    "RetentionManager",
    "RetentionPolicy",
    "export_wav",
    "recover_unfinished",
    "scan_unfinished",
    "start_recording",
    "verify_all",
    "verify_recording",
]
