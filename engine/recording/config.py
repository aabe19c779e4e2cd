"""Typed `recording:` section of the YAML config (validated once at load time).

Where things live is fixed by the data directory, so that the `vaultpbx recordings` and `keys`
commands find what the engine wrote with nothing but `-c CONFIG`: sealed files in
`<data_dir>/recordings/`, the index and wrapped data keys in `<data_dir>/keystore.db`, the local
key-encryption key in `<data_dir>/kek.key` (cli.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..runtime.typedyaml import LineMap, build

__all__ = ["RecordingConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingConfig:
    enabled: bool = False
    """Record every anchored call once it is answered (unanchored calls are counted, not
    recorded: the audio never passes through vaultpbx)."""
    retention_days: int = 180
    """Days a recording is kept unless its queue says otherwise (`queues.<name>.retention_days`)."""
    chunk_seconds: float = 1.0
    """Audio is sealed and handed to the kernel at least this often; a SIGKILL of the media
    worker loses at most this much (a SIGKILL of the signalling process loses nothing)."""
    fsync_every: int = 5
    """Chunks between fsyncs (power loss loses at most chunk_seconds * fsync_every)."""
    expire_every: float = 60.0
    """Seconds between the engine's retention runs, which shred recordings past their expiry
    (`vaultpbx recordings expire` runs one at once)."""

    def __post_init__(self) -> None:
        if self.retention_days < 1:
            raise ValueError("retention_days must be at least 1")
        if not 0.05 <= self.chunk_seconds <= 1.0:
            raise ValueError("chunk_seconds must be from 0.05 to 1.0")
        if self.fsync_every < 1:
            raise ValueError("fsync_every must be at least 1")
        if not 0.5 <= self.expire_every <= 86400:
            raise ValueError("expire_every must be from 0.5 to 86400 seconds")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, *, path: str = "recording") -> RecordingConfig:
        """Checked by the same typed builder as the rest of the YAML: a bad field raises
        ValueError naming its dotted path (`recording.<key>: ...`)."""
        config: RecordingConfig = build(cls, raw or {}, LineMap(), path)
        return config
