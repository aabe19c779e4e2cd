"""Typed `recording:` section of the YAML config (validated once at load time).

Where things live is fixed by the data directory, so that the `vaultpbx recordings` and `keys`
commands find what the engine wrote with nothing but `-c CONFIG`: sealed files in
`<data_dir>/recordings/`, the index and wrapped data keys in `<data_dir>/keystore.db`. The
key-encryption key is what `recording.kek` says: a local file (`var/kek.key` by default, which
`check-config` warns about: a copy of the data directory would carry the key that opens it) or
a PKCS#11 token (docs/keys.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..runtime.typedyaml import LineMap, build

__all__ = ["KekConfig", "Pkcs11KekConfig", "RecordingConfig", "data_path", "kek_warnings"]


def data_path(configured: str, data_dir: str | os.PathLike[str]) -> Path:
    """A configured path; `var/...` means under `data_dir` (as everywhere in the YAML)."""
    path = Path(configured).expanduser()
    if not path.is_absolute() and path.parts[:1] == ("var",):
        return Path(data_dir).joinpath(*path.parts[1:])
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class Pkcs11KekConfig:
    module: str
    """The PKCS#11 library of the HSM (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)."""
    token: str
    """Label of the token holding the KEKs."""
    label: str = "vaultpbx-kek"
    """KEKs are token objects labelled `<label>-0001`, `<label>-0002`, ..."""
    pin_file: str | None = None
    """File holding the user PIN (mode 0600, outside the data directory)."""
    pin_env: str | None = None
    """Environment variable holding the user PIN (instead of pin_file)."""

    def validate(self) -> None:
        if bool(self.pin_file) == bool(self.pin_env):
            raise ValueError("give exactly one of pin_file and pin_env")
        if not self.module or not self.token or not self.label:
            raise ValueError("module, token and label must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class KekConfig:
    provider: Literal["file", "pkcs11"] = "file"
    """Where the key-encryption keys live: a local file, or a PKCS#11 token (HSM)."""
    file: str = "var/kek.key"
    """The local key file (provider: file). Keep it outside `data_dir` in production: a copy
    of the data directory (a backup, a stolen disk) must not carry the key that opens it."""
    pkcs11: Pkcs11KekConfig | None = None
    """The token (provider: pkcs11)."""

    def validate(self) -> None:
        if self.provider == "pkcs11" and self.pkcs11 is None:
            raise ValueError("provider pkcs11 needs a pkcs11: section (module, token, pin)")

    def file_path(self, data_dir: str | os.PathLike[str]) -> Path:
        return data_path(self.file, data_dir)


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
    kek: KekConfig = field(default_factory=KekConfig)
    """The key-encryption key that wraps every recording's data key (docs/keys.md)."""
    expire_every: float = 60.0
    """Seconds between the engine's retention runs, which shred recordings past their expiry
    (`vaultpbx recordings expire` runs one at once)."""

    shred_log: str | None = "audit-outside/shred-log.jsonl"
    """The shred log kept apart: every shred and erasure is appended here first, and
    `vaultpbx restore` replays it so a restored backup never brings back what was destroyed
    after it was taken (docs/backup-and-restore.md). Keep it outside data_dir, beside the
    audit log's outside copy; `var/...` means under data_dir (warned about). null: none."""

    def shred_log_path(self, data_dir: str | os.PathLike[str]) -> Path | None:
        return None if self.shred_log is None else data_path(self.shred_log, data_dir)

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


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def kek_warnings(config: RecordingConfig, data_dir: str | os.PathLike[str]) -> list[str]:
    """What `check-config` and the engine say when a key sits with the data it protects."""
    kek = config.kek
    out: list[str] = []
    if kek.provider == "file":
        path = kek.file_path(data_dir)
        if _inside(path, Path(data_dir)):
            out.append(f"recording.kek.file: {path} is inside data_dir {data_dir}: any copy of "
                       "the data directory (a backup, a stolen disk) carries the key that "
                       "decrypts every recording; keep the KEK elsewhere or on a PKCS#11 token "
                       "(docs/keys.md)")
    elif kek.pkcs11 is not None and kek.pkcs11.pin_file:
        pin = data_path(kek.pkcs11.pin_file, data_dir)
        if _inside(pin, Path(data_dir)):
            out.append(f"recording.kek.pkcs11.pin_file: {pin} is inside data_dir {data_dir}: "
                       "keep the PIN apart from the data (docs/keys.md)")
    shred_log = config.shred_log_path(data_dir)
    if shred_log is None:
        out.append("recording.shred_log: none: a restored backup would bring back recordings "
                   "and callers destroyed after it was taken (docs/backup-and-restore.md)")
    elif _inside(shred_log, Path(data_dir)):
        out.append(f"recording.shred_log: {shred_log} is inside data_dir {data_dir}: it is "
                   "lost with the data it must correct after a restore; keep it apart")
    return out
