"""The audit log: append-only, hash-chained, Merkle-checkpointed, signed to an outside sink.

Files under the log directory:
  audit.jsonl            one record per line: seq, time, actor, action, target, details,
                         prev_hash, hash (canonical JSON: sorted keys, no spaces, UTF-8)
  checkpoints.jsonl      signed checkpoints: tree_size, root_hash, head_hash, time, public_key
  anchor.json            after a prune: where the kept records start (seq, prev_hash and the
                         Merkle frontier of the removed prefix), signed
  audit-ed25519.key/.pub the checkpoint signing key (private key file mode 0600)

Invariants:
- record.hash = SHA-256(canonical record without "hash"); record.prev_hash = hash of the record
  before it (64 zeros for the first record ever, the anchor's prev_hash after a prune). So an
  edit, a deletion or a swap breaks the chain at a place `verify` can name.
- Merkle leaf i = the canonical line of record seq i (RFC 9162 leaf hash). A checkpoint signs the
  root of the tree over all records so far; it is written to the directory *and* to an outside
  sink (a file elsewhere, syslog). A tail rewritten consistently (chain recomputed) or truncated
  after a checkpoint no longer matches the signed root.
- Details are stored masked for the "auditor" role and with secrets redacted: the log is immutable,
  so what it must never hold (card numbers, passwords) is removed before it is written.
- Records younger than the minimum retention (180 days by default) are never deleted.
- Several writers (the engine and the CLI, say) may append at once: each append and checkpoint
  holds an exclusive flock on audit.lock and first folds in the records other writers appended
  since this instance last wrote, so seq, prev_hash, the Merkle tree and the checkpoints stay one
  history. Within one process a directory is opened once unless `shared=True`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import logging.handlers
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ..hooks.maskers import DEFAULT_MASKER, TextMasker, mask_value
from .merkle import CompactRange, leaf_hash

RECORDS_FILE = "audit.jsonl"
CHECKPOINTS_FILE = "checkpoints.jsonl"
ANCHOR_FILE = "anchor.json"
LOCK_FILE = "audit.lock"
KEY_FILE = "audit-ed25519.key"
PUBLIC_KEY_FILE = "audit-ed25519.pub"
GENESIS_HASH = "0" * 64
MIN_RETENTION_SECONDS = 180 * 86400
_SIGNING_CONTEXT = b"vaultpbx-audit-v1\n"
_RECORD_FIELDS = ("seq", "time", "actor", "action", "target", "details", "prev_hash", "hash")

_log = logging.getLogger("vaultpbx.audit")


class RetentionError(PermissionError):
    """Refused: the operation would delete records younger than the minimum retention."""


class AuditLogLocked(RuntimeError):
    """This process already has the log open, or another writer held the lock too long."""


def canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def _signed_bytes(body: Mapping[str, Any]) -> bytes:
    return _SIGNING_CONTEXT + canonical({k: v for k, v in body.items() if k != "signature"})


# -- keys -------------------------------------------------------------------------------------


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 checkpoint key; created with mode 0600 (never readable by others)."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


# -- sinks ------------------------------------------------------------------------------------


class CheckpointSink(Protocol):
    def write(self, line: str) -> None: ...


class FileSink:
    """Appends checkpoint lines to a file outside the log directory (another disk, a mount)."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync

    def write(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode() + b"\n")
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)


class SyslogSink:
    """Sends checkpoint lines to syslog (a remote collector keeps them out of reach)."""

    def __init__(self, handler: logging.handlers.SysLogHandler) -> None:
        self.logger = logging.getLogger("vaultpbx.audit.checkpoints")
        self.logger.propagate = False
        self.logger.addHandler(handler)
        self.logger.setLevel(logging.INFO)

    def write(self, line: str) -> None:
        self.logger.info("vaultpbx-audit-checkpoint %s", line)


# -- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    seq: int
    time: float
    actor: str
    action: str
    target: str
    details: Mapping[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RECORD_FIELDS}


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    tree_size: int
    root_hash: str
    head_hash: str
    time: float
    public_key: str
    signature: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": "checkpoint",
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "head_hash": self.head_hash,
            "time": self.time,
            "public_key": self.public_key,
            "signature": self.signature,
        }


# -- the writer -------------------------------------------------------------------------------

# Directories this process has open, so a second AuditLog on the same directory in the same
# process (two observers: every record twice) is refused unless asked for (`shared=True`).
_OPEN_HERE: dict[str, weakref.WeakSet[AuditLog]] = {}
_OPEN_HERE_GUARD = threading.Lock()


class AuditLog:
    """Append-only audit log; any number of processes may write it at once.

    `now` (seconds since the epoch) is always passed in. Every append and checkpoint runs under
    an exclusive `flock` on `audit.lock` and first folds in whatever other writers appended since
    this instance last looked (one `stat` per append; the file is read only when it grew), so
    sequence numbers, the hash chain, the Merkle tree and the checkpoints stay one history.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        sinks: list[CheckpointSink] | None = None,
        key_path: str | os.PathLike[str] | None = None,
        masker: TextMasker = DEFAULT_MASKER,
        mask_role: str = "auditor",
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 300.0,
        min_retention: float = MIN_RETENTION_SECONDS,
        fsync: bool = True,
        shared: bool = False,
        lock_timeout: float = 10.0,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.sinks = list(sinks or [])
        self.masker = masker
        self.mask_role = mask_role
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.min_retention = min_retention
        self.fsync = fsync
        self.lock_timeout = lock_timeout
        self._path = self.directory / RECORDS_FILE
        self._checkpoints_path = self.directory / CHECKPOINTS_FILE
        self._fd = -1
        self._lock_fd = -1
        self._lock_depth = 0
        self._mutex = threading.RLock()
        self._here = os.path.realpath(self.directory)
        with _OPEN_HERE_GUARD:
            open_here = _OPEN_HERE.setdefault(self._here, weakref.WeakSet())
            if open_here and not shared:
                raise AuditLogLocked(
                    f"{self._path} is already open in this process (pass shared=True to open "
                    f"it twice on purpose)")
            open_here.add(self)
        try:
            self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o640)
            with self._locked():  # the key is created once, whoever comes first
                self._key = load_or_create_signing_key(
                    Path(key_path) if key_path else self.directory / KEY_FILE
                )
                self.public_key = public_key_hex(self._key)
                pub_path = self.directory / PUBLIC_KEY_FILE
                if not pub_path.exists():
                    pub_path.write_text(self.public_key + "\n")
                self._open_records()
                self._restore()
        except BaseException:
            self._release()
            raise

    # -- locking and catching up with other writers -------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the cross-process write lock (re-entrant within this instance)."""
        with self._mutex:
            if self._lock_depth == 0:
                self._acquire()
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _acquire(self) -> None:
        if self._lock_fd < 0:
            raise ValueError("audit log is closed")
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.0005
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise AuditLogLocked(
                        f"{self.directory / LOCK_FILE}: another writer held the lock for more "
                        f"than {self.lock_timeout:g} s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.02)

    def _open_records(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        self._ino = os.fstat(self._fd).st_ino

    def _restore(self) -> None:
        """Rebuild the state from the files (at open, and after another writer's prune)."""
        anchor = read_anchor(self.directory)
        if anchor is not None:
            self._tree = CompactRange(anchor["first_seq"], _unhex_list(anchor["frontier"]))
            self._head = anchor["prev_hash"]
        else:
            self._tree = CompactRange()
            self._head = GENESIS_HASH
        self._first_time: float | None = None
        self._last_checkpoint_size = 0
        self._last_checkpoint_time: float | None = None
        self._checkpoints_offset = 0
        self._read_new_checkpoints()
        self._offset = 0
        self._fold(os.fstat(self._fd).st_size)

    def _sync(self) -> None:
        """Under the lock: take in what other writers appended (or rebuild after a prune)."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            st = None
        if st is None or st.st_ino != self._ino:
            self._open_records()  # replaced by another writer's prune (or removed)
            self._restore()
        elif st.st_size > self._offset:
            self._fold(st.st_size)
            self._read_new_checkpoints()
        elif st.st_size < self._offset:
            # Cut underneath every writer: tampering. Keep the chain this writer knows, so the
            # records appended from here on show the gap to `verify` instead of papering it over.
            _log.error("audit log %s shrank from %d to %d bytes under the writer",
                       self._path, self._offset, st.st_size)
            self._offset = st.st_size

    def _fold(self, end: int) -> None:
        data = _pread_all(self._fd, self._offset, end - self._offset)
        if not data:
            return
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            # A torn last line can only be left by a writer that died mid-write (we hold the
            # lock): end it, so that it stays one bad line `verify` names and appends go on.
            _log.error("audit log %s: unterminated last record at byte %d (a writer died?)",
                       self._path, self._offset + cut)
            os.write(self._fd, b"\n")
            data += b"\n"
        start = 0
        while start < len(data):
            stop = data.index(b"\n", start)
            self._absorb(data[start:stop])
            start = stop + 1
        self._offset += len(data)

    def _absorb(self, line: bytes) -> None:
        self._tree.append(leaf_hash(line))
        try:
            record = json.loads(line)
            seq, head, at = record["seq"], record["hash"], float(record["time"])
        except (ValueError, TypeError, KeyError):
            _log.error("audit log %s: record %d is not well-formed", self._path,
                       self._tree.size - 1)
            return
        if seq != self._tree.size - 1 or record.get("prev_hash") != self._head:
            _log.error("audit log %s: record %d does not continue the chain (seq %r)",
                       self._path, self._tree.size - 1, seq)
        self._head = head
        if self._first_time is None:
            self._first_time = at

    def _read_new_checkpoints(self) -> None:
        try:
            with open(self._checkpoints_path, "rb") as f:
                f.seek(self._checkpoints_offset)
                data = f.read()
        except FileNotFoundError:
            return
        cut = data.rfind(b"\n") + 1
        for line in data[:cut].splitlines():
            try:
                cp = json.loads(line)
            except ValueError:
                continue
            if isinstance(cp, dict) and cp.get("type") == "checkpoint":
                self._last_checkpoint_size = int(cp.get("tree_size", 0))
                self._last_checkpoint_time = float(cp.get("time", 0.0))
        self._checkpoints_offset += cut

    def refresh(self) -> None:
        """Catch up with other writers now (`size`, `head_hash` and `root_hash` are otherwise
        as of this instance's last append or checkpoint)."""
        with self._locked():
            self._sync()

    @property
    def size(self) -> int:
        """Records ever appended (the Merkle tree size), including pruned ones."""
        return self._tree.size

    @property
    def head_hash(self) -> str:
        return self._head

    def root_hash(self) -> str:
        return self._tree.root().hex()

    def append(
        self,
        *,
        actor: str,
        action: str,
        target: str = "",
        details: Mapping[str, Any] | None = None,
        now: float,
    ) -> AuditRecord:
        role, masker = self.mask_role, self.masker
        # Masking runs before the lock is taken: other writers wait only for the write.
        actor_text = masker.mask_text(str(actor), role)
        target_text = masker.mask_text(str(target), role)
        masked_details = mask_value(dict(details or {}), role, masker)
        with self._locked():
            self._sync()
            body: dict[str, Any] = {
                "seq": self._tree.size,
                "time": float(now),
                "actor": actor_text,
                "action": str(action),
                "target": target_text,
                "details": masked_details,
                "prev_hash": self._head,
            }
            body["hash"] = record_hash(body)
            line = canonical(body)
            _write_all(self._fd, line + b"\n")
            if self.fsync:
                os.fsync(self._fd)
            self._offset += len(line) + 1
            self._tree.append(leaf_hash(line))
            self._head = body["hash"]
            if self._first_time is None:
                self._first_time = body["time"]
            if self._checkpoint_due(now):
                self.checkpoint(now)
        return AuditRecord(**body)

    def _checkpoint_due(self, now: float) -> bool:
        if self._tree.size - self._last_checkpoint_size >= self.checkpoint_every:
            return True
        if self._last_checkpoint_time is None:
            self._last_checkpoint_time = now  # first record: start the interval clock
            return False
        return now - self._last_checkpoint_time >= self.checkpoint_interval

    def checkpoint(self, now: float) -> Checkpoint:
        """Sign the current tree head and write it to the directory and every sink."""
        with self._locked():
            self._sync()
            body: dict[str, Any] = {
                "type": "checkpoint",
                "tree_size": self._tree.size,
                "root_hash": self._tree.root().hex(),
                "head_hash": self._head,
                "time": float(now),
                "public_key": self.public_key,
            }
            body["signature"] = self._key.sign(_signed_bytes(body)).hex()
            line = canonical(body).decode()
            self._write_checkpoint_line(line)
            self._last_checkpoint_size = self._tree.size
            self._last_checkpoint_time = now
            with contextlib.suppress(OSError):
                self._checkpoints_offset = os.stat(self._checkpoints_path).st_size
        return Checkpoint(**{k: v for k, v in body.items() if k != "type"})

    def _write_checkpoint_line(self, line: str) -> None:
        FileSink(self._checkpoints_path, fsync=self.fsync).write(line)
        for sink in self.sinks:
            try:
                sink.write(line)
            except Exception:
                # The local copy exists; a sink outage must not stop the engine. It is logged
                # loudly because it weakens tamper evidence until the sink is back.
                _log.exception("audit checkpoint sink %r failed", sink)

    def prune(self, before: float, now: float) -> int:
        """Delete records older than `before`; refuse if that reaches into the retention window.

        The removed prefix leaves a signed anchor (its Merkle frontier and last hash) so the kept
        records still verify, and the prune itself is recorded. Other writers notice the new
        file (its inode changed) and rebuild their state from it before their next append.
        """
        if before > now - self.min_retention:
            raise RetentionError(
                f"records younger than {self.min_retention / 86400:g} days cannot be deleted "
                f"(asked to delete before {before}, oldest deletable is {now - self.min_retention})"
            )
        with self._locked():
            self._sync()
            return self._prune_locked(before, now)

    def _prune_locked(self, before: float, now: float) -> int:
        lines = _read_lines(self._path)
        cut = 0
        for line in lines:
            if json.loads(line)["time"] >= before:
                break
            cut += 1
        if cut == 0:
            return 0
        self.checkpoint(now)  # the full tree is signed before anything leaves it
        anchor = read_anchor(self.directory)
        if anchor is not None:
            tree = CompactRange(anchor["first_seq"], _unhex_list(anchor["frontier"]))
        else:
            tree = CompactRange()
        for line in lines[:cut]:
            tree.append(leaf_hash(line))
        last = json.loads(lines[cut - 1])
        body: dict[str, Any] = {
            "type": "anchor",
            "first_seq": tree.size,
            "prev_hash": last["hash"],
            "last_pruned_time": last["time"],
            "frontier": [n.hex() for n in tree.nodes],
            "time": float(now),
            "public_key": self.public_key,
        }
        body["signature"] = self._key.sign(_signed_bytes(body)).hex()
        _atomic_write(self.directory / ANCHOR_FILE, canonical(body) + b"\n")
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.write(canonical(body).decode())
        # Replace the records file with the kept suffix (the lock is on audit.lock, not on it).
        tmp = self._path.with_suffix(".tmp")
        _atomic_write(tmp, b"".join(line + b"\n" for line in lines[cut:]), rename_to=self._path)
        self._open_records()
        self._offset = os.fstat(self._fd).st_size
        self.append(
            actor="system",
            action="audit.prune",
            target=RECORDS_FILE,
            details={"records_removed": cut, "before": before, "first_seq": tree.size},
            now=now,
        )
        return cut

    def close(self, now: float | None = None) -> None:
        """Close; with `now`, first sign a checkpoint over whatever no checkpoint covers yet."""
        if self._fd < 0:
            return
        try:
            if now is not None:
                with self._locked():
                    self._sync()
                    if self._tree.size != self._last_checkpoint_size:
                        self.checkpoint(now)
        finally:
            self._release()

    def _release(self) -> None:
        with self._mutex:
            for name in ("_fd", "_lock_fd"):
                fd = getattr(self, name)
                if fd >= 0:
                    os.close(fd)
                    setattr(self, name, -1)
        with _OPEN_HERE_GUARD:
            open_here = _OPEN_HERE.get(self._here)
            if open_here is not None:
                open_here.discard(self)
                if not open_here:
                    del _OPEN_HERE[self._here]

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- reading helpers --------------------------------------------------------------------------


def _pread_all(fd: int, offset: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_lines(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _read_jsonl(path: Path) -> Iterator[Any]:
    for line in _read_lines(path):
        try:
            yield json.loads(line)
        except ValueError:
            yield None


def read_anchor(directory: Path) -> dict[str, Any] | None:
    path = directory / ANCHOR_FILE
    if not path.exists():
        return None
    anchor: dict[str, Any] = json.loads(path.read_bytes())
    return anchor


def _unhex_list(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def _atomic_write(path: Path, data: bytes, *, rename_to: Path | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if rename_to is not None:
        os.replace(path, rename_to)


def verify_signature(body: Mapping[str, Any], public_key: str) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key))
        key.verify(bytes.fromhex(str(body.get("signature", ""))), _signed_bytes(body))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# -- verification -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong. `index` is the 0-based line in audit.jsonl (None for a checkpoint)."""

    reason: str  # altered | missing | reordered | truncated after checkpoint | bad signature
    index: int | None
    seq: int | None
    detail: str

    def __str__(self) -> str:
        where = f"record {self.index} (seq {self.seq})" if self.index is not None else "log"
        return f"{where}: {self.reason}: {self.detail}"


@dataclass(slots=True, kw_only=True)
class VerifyReport:
    records: int = 0
    checkpoints_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad(self) -> Problem | None:
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.index is None, p.index or 0))

    def summary(self) -> str:
        if self.ok:
            return (f"audit log intact: {self.records} records, "
                    f"{self.checkpoints_checked} signed checkpoints verified")
        return f"audit log NOT intact: {self.first_bad}"


def _find_seq_later(lines: list[bytes], start: int, seq: int) -> bool:
    for line in lines[start:]:
        try:
            if json.loads(line).get("seq") == seq:
                return True
        except (ValueError, AttributeError):
            continue
    return False


def verify(
    directory: str | os.PathLike[str],
    sink: str | os.PathLike[str] | None = None,
    *,
    public_key: str | None = None,
) -> VerifyReport:
    """Check the chain, the Merkle roots of every signed checkpoint and their signatures.

    The trusted public key is, in order: `public_key` if given, the key of the first checkpoint
    in the outside `sink`, the key file in the directory. Checkpoints come from both the
    directory and the sink; the sink's copy is what an intruder on this host cannot rewrite.
    """
    directory = Path(directory)
    report = VerifyReport()
    problems = report.problems

    sink_entries = list(_read_jsonl(Path(sink))) if sink is not None else []
    dir_entries = list(_read_jsonl(directory / CHECKPOINTS_FILE))
    trusted = public_key
    if trusted is None:
        for entry in sink_entries:
            if isinstance(entry, dict) and "public_key" in entry:
                trusted = str(entry["public_key"])
                break
    if trusted is None and (directory / PUBLIC_KEY_FILE).exists():
        trusted = (directory / PUBLIC_KEY_FILE).read_text().strip()

    checkpoints: dict[int, dict[str, Any]] = {}
    for origin, entries in (("sink", sink_entries), ("directory", dir_entries)):
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict) or entry.get("type") not in ("checkpoint", "anchor"):
                problems.append(Problem(reason="bad signature", index=None, seq=None,
                                        detail=f"{origin} line {n + 1} is not a checkpoint"))
                continue
            if entry["type"] == "anchor":
                continue
            if trusted is None or not verify_signature(entry, trusted):
                problems.append(Problem(
                    reason="bad signature", index=None, seq=None,
                    detail=f"{origin} checkpoint line {n + 1} (tree size "
                           f"{entry.get('tree_size')}) has a bad signature or an untrusted key"))
                continue
            size = int(entry["tree_size"])
            seen = checkpoints.get(size)
            if seen is not None and seen["root_hash"] != entry["root_hash"]:
                problems.append(Problem(
                    reason="bad signature", index=None, seq=None,
                    detail=f"two signed checkpoints for tree size {size} disagree"))
            checkpoints.setdefault(size, entry)

    anchor = read_anchor(directory) if (directory / ANCHOR_FILE).exists() else None
    if anchor is not None:
        if trusted is None or not verify_signature(anchor, trusted):
            problems.append(Problem(reason="bad signature", index=None, seq=None,
                                    detail=f"{ANCHOR_FILE} has a bad signature"))
            return report
        tree = CompactRange(int(anchor["first_seq"]), _unhex_list(anchor["frontier"]))
        head = str(anchor["prev_hash"])
    else:
        tree = CompactRange()
        head = GENESIS_HASH
    first_seq = tree.size

    pending = sorted(size for size in checkpoints if size > first_seq)
    if first_seq in checkpoints and checkpoints[first_seq]["root_hash"] != tree.root().hex():
        problems.append(Problem(reason="altered", index=0, seq=first_seq,
                                detail="the pruned prefix does not match its checkpoint"))
    last_good_size = first_seq

    lines = _read_lines(directory / RECORDS_FILE)
    report.records = len(lines)
    chain_broken = False
    for index, line in enumerate(lines):
        expected = first_seq + index
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or set(record) != set(_RECORD_FIELDS):
                raise ValueError("fields")
            seq = record["seq"]
        except ValueError:
            problems.append(Problem(reason="altered", index=index, seq=expected,
                                    detail="not a well-formed record"))
            chain_broken = True
            break
        if record_hash(record) != record["hash"]:
            problems.append(Problem(reason="altered", index=index, seq=seq,
                                    detail="content does not match its hash"))
            chain_broken = True
            break
        if seq != expected:
            if not isinstance(seq, int) or seq < expected or _find_seq_later(
                    lines, index + 1, expected):
                reason = "reordered"
                detail = f"found seq {seq} where seq {expected} belongs"
            else:
                reason = "missing"
                detail = f"seq {expected} is gone (next present is {seq})"
            problems.append(Problem(reason=reason, index=index, seq=expected, detail=detail))
            chain_broken = True
            break
        if record["prev_hash"] != head:
            at = max(index - 1, 0)
            problems.append(Problem(
                reason="altered", index=at, seq=first_seq + at,
                detail="rewritten: its hash no longer matches the next record's prev_hash"
                if index else "prev_hash does not continue from the start of the log"))
            chain_broken = True
            break
        head = record["hash"]
        tree.append(leaf_hash(line))
        while pending and pending[0] == tree.size:
            size = pending.pop(0)
            cp = checkpoints[size]
            report.checkpoints_checked += 1
            if cp["root_hash"] != tree.root().hex() or cp["head_hash"] != head:
                problems.append(Problem(
                    reason="altered", index=last_good_size - first_seq, seq=last_good_size,
                    detail=f"records {last_good_size}..{size - 1} were rewritten: the signed "
                           f"root of the checkpoint at tree size {size} no longer matches"))
                chain_broken = True
                break
            last_good_size = size
        if chain_broken:
            break

    if not chain_broken and pending:
        size = pending[-1]
        present = tree.size
        problems.append(Problem(
            reason="truncated after checkpoint", index=present - first_seq, seq=present,
            detail=f"a signed checkpoint covers {size} records but only {present} remain"))
    return report
