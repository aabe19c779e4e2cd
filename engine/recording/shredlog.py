"""The shred log kept apart: every shred and every erasure, outside the data directory.

A backup of keystore.db holds the data keys of recordings shredded after it was taken, and the
subject keys of callers erased after it. `vaultpbx restore` replays this log into the restored
keystore (backup.py), so a restored backup never brings back what was destroyed since.

Invariants:
- One JSON line per destruction, appended with O_APPEND and fsync under an exclusive flock
  (the engine and the CLI append to the same file). Each line carries `seq`, the previous
  line's `hash` (`prev`) and its own `hash` = SHA-256 of the canonical line without `hash`:
  an edited, removed or reordered line breaks the chain and `read` names it.
- Written *before* the destruction it announces (write-ahead): a crash between the two leaves
  an entry whose replay destroys what the live system was about to destroy anyway, never an
  erasure that a restore would undo. An append that fails stops the shred (fail closed).
- Lines hold ids only: recording ids, data-key ids, subject-key ids (random, meaningless
  without the keystore). Never a number, never a subject id, never a key.
- Replay is idempotent: destroying what is already gone changes nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64


class ShredLogError(Exception):
    """The shred log is unreadable or its chain is broken (the message names the line)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ShredEntry:
    seq: int
    time: float
    kind: str  # "recordings" (data keys + files) | "subject_keys" (a caller's keys)
    ids: tuple[str, ...]
    reason: str
    actor: str


def _canonical(body: dict[str, object]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class ShredLog:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @contextmanager
    def _locked(self) -> Iterator[int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def append(self, *, kind: str, ids: Sequence[str], reason: str, actor: str,
               now: float) -> ShredEntry:
        if kind not in ("recordings", "subject_keys"):
            raise ValueError(f"unknown shred log kind {kind!r}")
        with self._locked() as fd:
            last = self._last_line(fd)
            seq = 0 if last is None else last[0] + 1
            body: dict[str, object] = {
                "seq": seq, "prev": GENESIS if last is None else last[1],
                "time": now, "kind": kind, "ids": list(ids), "reason": reason,
                "actor": actor}
            body["hash"] = hashlib.sha256(_canonical(body)).hexdigest()
            os.write(fd, _canonical(body) + b"\n")
            os.fsync(fd)
        return ShredEntry(seq=seq, time=now, kind=kind,
                          ids=tuple(ids), reason=reason, actor=actor)

    def read(self) -> list[ShredEntry]:
        """Every entry, the chain checked; a missing file is an empty log."""
        if not self.path.exists():
            return []
        with self._locked() as fd:
            return [entry for entry, _ in self._read_fd(fd)]

    def last_seq(self) -> int:
        """The newest entry's seq, -1 for an empty log: a backup's snapshot point."""
        entries = self.read()
        return entries[-1].seq if entries else -1

    def _last_line(self, fd: int) -> tuple[int, str] | None:
        """(seq, hash) of the last entry."""
        # Only the tail is read: an append costs the same with a million lines before it
        # (`read` checks the whole chain; an entry is far below the 64 KiB read here).
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        start = max(0, size - 65536)
        os.lseek(fd, start, os.SEEK_SET)
        tail = os.read(fd, size - start)
        line = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            last = json.loads(line)
            return int(last["seq"]), str(last["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ShredLogError(f"shred log {self.path}: last line unreadable ({exc}); "
                                "nothing can be shredded until it is repaired") from None

    def _read_fd(self, fd: int) -> list[tuple[ShredEntry, str]]:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        out: list[tuple[ShredEntry, str]] = []
        prev = GENESIS
        for number, line in enumerate(data.splitlines(), 1):
            where = f"shred log {self.path} line {number}"
            try:
                body = json.loads(line)
                claimed = body.pop("hash")
            except (ValueError, KeyError, AttributeError) as exc:
                raise ShredLogError(f"{where}: not a shred log entry ({exc})") from None
            if hashlib.sha256(_canonical(body)).hexdigest() != claimed:
                raise ShredLogError(f"{where}: altered (its hash does not match)")
            if body.get("prev") != prev or body.get("seq") != number - 1:
                raise ShredLogError(f"{where}: the chain is broken (a line was removed, "
                                    "inserted or moved before it)")
            prev = str(claimed)
            out.append((ShredEntry(seq=int(body["seq"]), time=float(body["time"]),
                                   kind=str(body["kind"]),
                                   ids=tuple(str(i) for i in body["ids"]),
                                   reason=str(body["reason"]), actor=str(body["actor"])),
                        prev))
        return out
