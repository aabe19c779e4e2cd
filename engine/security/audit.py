"""The audit log: append-only, hash-chained, Merkle-checkpointed, signed to an outside sink.

Files under the log directory:
  audit.jsonl            one record per line: seq, time, actor, action, target, details,
                         prev_hash, hash (canonical JSON: sorted keys, no spaces, UTF-8)
  checkpoints.jsonl      signed checkpoints: tree_size, root_hash, head_hash, time, public_key
  anchor.json            after a prune: where the kept records start (seq, prev_hash and the
                         Merkle frontier of the removed prefix), signed
  audit-ed25519.key/.pub the checkpoint signing key (private key file mode 0600)
  audit-names.key        the HMAC key for names nobody vouched for (mode 0600)

Invariants:
- record.hash = SHA-256(canonical record without "hash"); record.prev_hash = hash of the record
  before it (64 zeros for the first record ever, the anchor's prev_hash after a prune). So an
  edit, a deletion or a swap breaks the chain at a place `verify` can name.
- Merkle leaf i = the canonical line of record seq i (RFC 9162 leaf hash). A checkpoint signs the
  root of the tree over all records so far; it is written to the directory *and* to every
  outside sink (a file out of the data directory, syslog, an HTTP receiver). Everything under
  the data directory can be rewritten by whoever can write it, key included: only the outside
  copies and a public key pinned in the YAML tell a consistent rewrite from the real history.
- No record stays uncovered for long: a checkpoint is due once `checkpoint_every` records or
  `checkpoint_interval` seconds have passed since the oldest record no checkpoint covers; the
  engine asks (`checkpoint_if_due`) every second, so the window is bounded while it runs.
- Details are stored masked for the "auditor" role and with secrets redacted: the log is immutable,
  so what it must never hold (card numbers, passwords) is removed before it is written. Text a
  client supplied without proof (`Unverified`: the user field of a failed login, where people
  type passwords) is stored only as a keyed hash. Every string is valid UTF-8 (a lone surrogate
  is escaped, not an error) and at most `max_field_chars` long (longer ones are cut, with a
  marker giving the original length); a record is at most `MAX_DETAILS_BYTES` of details.
- A record that cannot be written is never lost quietly: the error is logged, counted
  (`write_failures_total`) and raised to the caller; a sink that fails is logged and counted.
- Records younger than the minimum retention (180 days by default) are never deleted.
- Several writers (the engine and the CLI, say) may append at once: each append and checkpoint
  holds an exclusive flock on audit.lock and first folds in the records other writers appended
  since this instance last wrote, so seq, prev_hash, the Merkle tree and the checkpoints stay one
  history. Within one process a directory is opened once unless `shared=True`.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import logging.handlers
import math
import os
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator, Mapping, Sequence
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
NAMES_KEY_FILE = "audit-names.key"
GENESIS_HASH = "0" * 64
MIN_RETENTION_SECONDS = 180 * 86400
MAX_FIELD_CHARS = 512
MAX_ITEMS = 64  # entries kept per mapping or list in details
MAX_DEPTH = 6  # nesting kept in details
MAX_DETAILS_BYTES = 16 * 1024
SYSLOG_MARKER = "vaultpbx-audit-checkpoint "
_SIGNING_CONTEXT = b"vaultpbx-audit-v1\n"
_RECORD_FIELDS = ("seq", "time", "actor", "action", "target", "details", "prev_hash", "hash")

_log = logging.getLogger("vaultpbx.audit")


class RetentionError(PermissionError):
    """Refused: the operation would delete records younger than the minimum retention."""


class AuditLogLocked(RuntimeError):
    """This process already has the log open, or another writer held the lock too long."""


class AuditKeyMismatch(ValueError):
    """The signing key is not the one the configuration pins (`security.audit.public_key`)."""


def canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def _signed_bytes(body: Mapping[str, Any]) -> bytes:
    return _SIGNING_CONTEXT + canonical({k: v for k, v in body.items() if k != "signature"})


# -- what goes into a record ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unverified:
    """Text a client supplied that nothing vouches for and that may be a secret: the user field
    of a failed login names no account when someone typed a password into it. The audit log
    stores `unverified:` + HMAC-SHA256 under a key kept out of the log (the same text gives the
    same value, so repeated attempts still correlate); its repr never shows the text, so no
    other observer prints it by accident."""

    text: str

    def __repr__(self) -> str:
        return "Unverified(<hidden>)"

    __str__ = __repr__


def escape_text(text: str) -> str:
    """Valid UTF-8 text for a record: lone surrogates (a JSON "\\udcff" escape, an undecodable
    file name) become the visible escape `\\udcff` instead of failing the write."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def bound_text(text: str, limit: int) -> str:
    """`text` escaped and cut to `limit` characters, with a marker saying it was cut and how
    long it was (so a reader knows it sees a prefix)."""
    text = escape_text(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[truncated: {len(text)} chars]"


def bound_value(value: Any, limit: int, depth: int = 0) -> Any:
    """A JSON value of bounded size: strings cut to `limit`, at most MAX_ITEMS entries per
    mapping or list (a marker entry says how many were left out), MAX_DEPTH levels; anything
    else (bytes, sets, objects) becomes bounded text; non-finite floats become text."""
    kind = type(value)  # exact types first: ABC isinstance checks cost more than the rest
    if kind is str:
        return bound_text(value, limit)
    if value is None or kind is int or kind is bool:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return bound_text(value, limit)
    if isinstance(value, bool | int):
        return value
    if depth >= MAX_DEPTH and isinstance(value, Mapping | list | tuple):
        return bound_text(canonical_text(value), limit)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for n, (key, item) in enumerate(value.items()):
            if n == MAX_ITEMS:
                out["…truncated"] = f"{len(value) - MAX_ITEMS} more entries"
                break
            out[bound_text(str(key), limit)] = bound_value(item, limit, depth + 1)
        return out
    if isinstance(value, list | tuple):
        items = [bound_value(item, limit, depth + 1) for item in list(value)[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"…truncated: {len(value) - MAX_ITEMS} more items")
        return items
    return bound_text(str(value), limit)


def canonical_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


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
    _create_private_file(path, pem)
    return key


def load_or_create_names_key(path: Path) -> bytes:
    """32 random bytes (mode 0600): the HMAC key for `Unverified` text."""
    if path.exists():
        key = path.read_bytes()
        if len(key) < 32:
            raise ValueError(f"{path}: an audit names key must be at least 32 bytes")
        return key
    key = os.urandom(32)
    _create_private_file(path, key)
    return key


def _create_private_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


# -- sinks ------------------------------------------------------------------------------------


class CheckpointSink(Protocol):
    """Where checkpoint lines go besides the log directory. `write` raises when the line did
    not get there (the log counts and logs it); `failures` counts what the sink found out later
    (an asynchronous sink)."""

    name: str
    failures: int

    def write(self, line: str) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """Appends checkpoint lines to a file outside the data directory (another disk, a mount
    only this writer can append to, a file with the append-only attribute). `verify` reads it."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.name = f"file {self.path}"
        self.failures = 0
        # Created at once, so that "missing" always means removed (verify says so), not "no
        # checkpoint yet". A sink that cannot be created is logged now and counted per write.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
        except OSError as exc:
            _log.error("audit checkpoint sink %s cannot be created: %s", self.name, exc)

    def write(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            _write_all(fd, line.encode() + b"\n")
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        pass


class _RaisingSysLogHandler(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        raise  # noqa: PLE0704 -- called from emit's except block: the caller must know


def parse_syslog_address(address: str) -> str | tuple[str, int]:
    """"/dev/log" (a Unix datagram socket path) or "host:port" (UDP)."""
    if address.startswith("/"):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"syslog address {address!r}: expected /path/to/socket or host:port")
    return host, int(port)


class SyslogSink:
    """Sends each checkpoint line to syslog (facility authpriv) as
    `vaultpbx-audit-checkpoint {json}`. To a Unix socket (/dev/log, a collector's socket) a
    failed send raises; over UDP nothing tells a lost datagram, so a syslog sink cannot be read
    back by `verify`: export the collector's lines and pass them as `--checkpoints FILE`."""

    def __init__(self, address: str) -> None:
        self.address = parse_syslog_address(address)
        self.name = f"syslog {address}"
        self.failures = 0
        self._handler: _RaisingSysLogHandler | None = None

    def write(self, line: str) -> None:
        if self._handler is None:  # connected on first use: the collector may start later
            self._handler = _RaisingSysLogHandler(
                address=self.address, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV)
            self._handler.ident = "vaultpbx: "
            self._handler.append_nul = False  # RFC 5424 framing: the line ends the datagram
        record = logging.LogRecord("vaultpbx.audit", logging.INFO, __file__, 0,
                                   SYSLOG_MARKER + "%s", (line,), None)
        try:
            self._handler.emit(record)
        except BaseException:
            self._handler.close()
            self._handler = None  # reconnect next time
            raise

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
            self._handler = None


class HttpSink:
    """POSTs each checkpoint line (application/json) to an HTTP(S) receiver that keeps them and
    serves them back on GET of the same URL (one line each), which is what `verify` reads.

    Sending happens on a thread, in order, so a slow receiver never stalls the engine; a line
    that fails stays queued and is retried (backoff up to 30 s); every failure is logged and
    counted. Lines beyond `max_pending` drop the oldest (counted and logged: a later checkpoint
    covers everything an earlier one did)."""

    def __init__(self, url: str, *, timeout: float = 5.0, max_pending: int = 1000) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"checkpoint receiver {url!r}: expected an http:// or https:// URL")
        self.url = url
        self.timeout = timeout
        self.name = f"http {url}"
        self.failures = 0
        self.delivered = 0
        self.dropped = 0
        self._pending: collections.deque[str] = collections.deque()
        self.max_pending = max_pending
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="audit-http-sink", daemon=True)
        self._thread.start()

    def write(self, line: str) -> None:
        with self._wake:
            if len(self._pending) >= self.max_pending:
                self._pending.popleft()
                self.dropped += 1
                self.failures += 1
                _log.error("audit checkpoint receiver %s: %d lines pending, oldest dropped",
                           self.url, self.max_pending)
            self._pending.append(line)
            self._wake.notify()

    def pending(self) -> int:
        with self._wake:
            return len(self._pending)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued line is delivered (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.1))
            return True

    def _post(self, line: str) -> None:
        request = urllib.request.Request(self.url, data=line.encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            response.read()

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return
                if backoff:
                    self._wake.wait(backoff)
                    if self._closing and backoff:
                        return
                line = self._pending[0]
            try:
                self._post(line)
            except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts are OSError
                self.failures += 1
                backoff = min(max(backoff * 2, 0.5), 30.0)
                _log.error("audit checkpoint receiver %s failed (%s); retrying in %.1f s",
                           self.url, exc, backoff)
                continue
            backoff = 0.0
            with self._wake:
                if self._pending and self._pending[0] is line:
                    self._pending.popleft()
                self.delivered += 1
                self._wake.notify_all()

    def close(self, timeout: float | None = None) -> None:
        if not self.flush(self.timeout if timeout is None else timeout):
            _log.error("audit checkpoint receiver %s: %d checkpoint lines undelivered at close",
                       self.url, self.pending())
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._thread.join(1.0)


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
        sinks: Sequence[CheckpointSink] | None = None,
        key_path: str | os.PathLike[str] | None = None,
        public_key: str | None = None,
        names_key_path: str | os.PathLike[str] | None = None,
        masker: TextMasker = DEFAULT_MASKER,
        mask_role: str = "auditor",
        checkpoint_every: int = 100,
        checkpoint_interval: float = 60.0,
        max_field_chars: int = MAX_FIELD_CHARS,
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
        self.checkpoint_every = max(1, checkpoint_every)
        self.checkpoint_interval = checkpoint_interval
        self.max_field_chars = max_field_chars
        self.min_retention = min_retention
        self.fsync = fsync
        self.lock_timeout = lock_timeout
        self.counters = {"records_total": 0, "checkpoints_total": 0, "write_failures_total": 0}
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
            with self._locked():  # the keys are created once, whoever comes first
                signing_key_path = Path(key_path) if key_path else self.directory / KEY_FILE
                self._key = load_or_create_signing_key(signing_key_path)
                self.public_key = public_key_hex(self._key)
                if public_key is not None and public_key.lower() != self.public_key:
                    raise AuditKeyMismatch(
                        f"{signing_key_path} has public key {self.public_key}, but "
                        f"security.audit.public_key pins {public_key}: refusing to sign "
                        f"checkpoints with a key the verifier will not trust")
                self._names_key = load_or_create_names_key(
                    Path(names_key_path) if names_key_path else self.directory / NAMES_KEY_FILE)
                pub_path = self.directory / PUBLIC_KEY_FILE
                if not pub_path.exists():
                    pub_path.write_text(self.public_key + "\n")
                self._open_records()
                self._restore()
        except BaseException:
            self._release()
            self._close_sinks()
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
            self._head: str = str(anchor["prev_hash"])
        else:
            self._tree = CompactRange()
            self._head = GENESIS_HASH
        self._first_time: float | None = None
        self._uncovered_since: float | None = None
        self._last_checkpoint_size = 0
        self._checkpoints_offset = 0
        self._offset = 0
        self._fold(os.fstat(self._fd).st_size)
        self._read_new_checkpoints()

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
        if self._uncovered_since is None:
            # Conservative: whether a checkpoint covers it is settled when they are read.
            self._uncovered_since = at

    def _read_new_checkpoints(self) -> None:
        try:
            with open(self._checkpoints_path, "rb") as f:
                f.seek(self._checkpoints_offset)
                data = f.read()
        except FileNotFoundError:
            return
        cut = data.rfind(b"\n") + 1
        # The newest checkpoint of ours that covers no more than the log holds; a line in this
        # directory is only a hint (anyone who can write here can add one), so it must carry
        # our signature, or a forged "everything is covered" would stop our checkpoints.
        best: dict[str, Any] | None = None
        for line in data[:cut].splitlines():
            try:
                cp = json.loads(line)
                size = int(cp["tree_size"]) if cp.get("type") == "checkpoint" else -1
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
            if self._last_checkpoint_size < size <= self._tree.size and (
                    best is None or size >= int(best["tree_size"])):
                best = cp
        if best is not None and verify_signature(best, self.public_key):
            self._last_checkpoint_size = int(best["tree_size"])
        if self._last_checkpoint_size >= self._tree.size:
            self._uncovered_since = None
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

    def pseudonym(self, text: str) -> str:
        """The keyed hash an `Unverified` text is stored as (HMAC-SHA256, 128 bits shown)."""
        digest = hmac.new(self._names_key, text.encode("utf-8", "surrogatepass"),
                          hashlib.sha256).hexdigest()
        return f"unverified:{digest[:32]}"

    def _resolve(self, value: Any, depth: int = 0) -> Any:
        """Replace `Unverified` text by its keyed hash (before masking sees it, before any
        truncation: the hash is of the whole text), and make mapping keys strings."""
        kind = type(value)
        if kind is str or kind is int or value is None:
            return value
        if isinstance(value, Unverified):
            return self.pseudonym(value.text)
        if depth > MAX_DEPTH:
            return value
        if isinstance(value, Mapping):
            return {str(k): self._resolve(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._resolve(v, depth + 1) for v in value]
        return value

    def _shape(self, text: str | Unverified, role: str, masker: TextMasker) -> str:
        if isinstance(text, Unverified):
            return self.pseudonym(text.text)
        return bound_text(masker.mask_text(str(text), role), self.max_field_chars)

    def append(
        self,
        *,
        actor: str | Unverified,
        action: str,
        target: str | Unverified = "",
        details: Mapping[str, Any] | None = None,
        now: float,
    ) -> AuditRecord:
        """Write one record (fsync'd when `fsync`). Raises if it could not be written; the
        failure is logged and counted first (`write_failures_total`), never swallowed here."""
        try:
            return self._append(actor=actor, action=action, target=target, details=details,
                                now=now)
        except Exception as exc:
            self.counters["write_failures_total"] += 1
            _log.error("audit record %r by %s could not be written: %s: %s",
                       bound_text(str(action), 64), "unverified actor" if isinstance(
                           actor, Unverified) else bound_text(str(actor), 64),
                       type(exc).__name__, exc)
            raise

    def _append(self, *, actor: str | Unverified, action: str, target: str | Unverified,
                details: Mapping[str, Any] | None, now: float) -> AuditRecord:
        role, masker, limit = self.mask_role, self.masker, self.max_field_chars
        # Shaping runs before the lock is taken: other writers wait only for the write.
        actor_text = self._shape(actor, role, masker)
        target_text = self._shape(target, role, masker)
        shaped = bound_value(mask_value(self._resolve(dict(details or {})), role, masker), limit)
        with self._locked():
            self._sync()
            body: dict[str, Any] = {
                "seq": self._tree.size,
                "time": float(now),
                "actor": actor_text,
                "action": bound_text(str(action), limit),
                "target": target_text,
                "details": shaped,
                "prev_hash": self._head,
            }
            body["hash"] = record_hash(body)
            line = canonical(body)
            if len(line) > MAX_DETAILS_BYTES + 4 * limit + 1024:  # bounded parts, many of them
                size = len(canonical_text(shaped))
                body["details"] = {"…truncated": f"details of {size} bytes",
                                   "preview": bound_text(canonical_text(shaped), limit)}
                del body["hash"]
                body["hash"] = record_hash(body)
                line = canonical(body)
            _write_all(self._fd, line + b"\n")
            if self.fsync:
                os.fsync(self._fd)
            self._offset += len(line) + 1
            self._tree.append(leaf_hash(line))
            self._head = body["hash"]
            self.counters["records_total"] += 1
            if self._first_time is None:
                self._first_time = body["time"]
            if self._uncovered_since is None:
                self._uncovered_since = body["time"]
            self._checkpoint_if_due_locked(now)
        return AuditRecord(**body)

    def _checkpoint_due(self, now: float) -> bool:
        uncovered = self._tree.size - self._last_checkpoint_size
        if uncovered <= 0:
            return False
        if uncovered >= self.checkpoint_every:
            return True
        since = self._uncovered_since
        return since is None or now - since >= self.checkpoint_interval

    def checkpoint_if_due(self, now: float) -> Checkpoint | None:
        """Sign a checkpoint if `checkpoint_every` records or `checkpoint_interval` seconds have
        passed since the oldest record none covers. The engine calls this every second, so a
        running engine's records reach the outside sinks within the interval (plus a second)."""
        with self._locked():
            self._sync()
            return self._checkpoint_if_due_locked(now)

    def _checkpoint_if_due_locked(self, now: float) -> Checkpoint | None:
        if not self._checkpoint_due(now):
            return None
        try:
            return self.checkpoint(now)
        except Exception as exc:
            # The records are written; only their signature is late. Loud, and retried by
            # the next append or tick.
            self.counters["write_failures_total"] += 1
            _log.error("audit checkpoint at tree size %d could not be written: %s: %s",
                       self._tree.size, type(exc).__name__, exc)
            return None

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
            self._uncovered_since = None
            self.counters["checkpoints_total"] += 1
            with contextlib.suppress(OSError):
                self._checkpoints_offset = os.stat(self._checkpoints_path).st_size
        return Checkpoint(**{k: v for k, v in body.items() if k != "type"})

    def _write_checkpoint_line(self, line: str) -> None:
        # Outside first: the copy that counts must not depend on the local disk having room.
        self._write_to_sinks(line)
        FileSink(self._checkpoints_path, fsync=self.fsync).write(line)

    def _write_to_sinks(self, line: str) -> None:
        for sink in self.sinks:
            try:
                sink.write(line)
            except Exception as exc:
                # A sink outage must not stop the engine, but it weakens tamper evidence until
                # the sink is back: logged, counted (and `verify` reports the sink behind).
                sink.failures += 1
                _log.error("audit checkpoint sink %s failed: %s: %s", sink.name,
                           type(exc).__name__, exc)

    def metric_samples(self) -> list[tuple[str, str, float, str]]:
        """(name, "counter"|"gauge", value, help) for /metrics."""
        sink_failures = sum(sink.failures for sink in self.sinks)
        return [
            ("vaultpbx_audit_records_total", "counter", self.counters["records_total"],
             "Audit records written by this process"),
            ("vaultpbx_audit_checkpoints_total", "counter", self.counters["checkpoints_total"],
             "Signed audit checkpoints written by this process"),
            ("vaultpbx_audit_write_failures_total", "counter",
             self.counters["write_failures_total"],
             "Audit records or checkpoints that could not be written"),
            ("vaultpbx_audit_sink_failures_total", "counter", sink_failures,
             "Checkpoint sends an outside sink refused, or lines dropped (each is logged)"),
            ("vaultpbx_audit_uncovered_records", "gauge",
             self._tree.size - self._last_checkpoint_size,
             "Records no signed checkpoint covers yet"),
        ]

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
        self._write_to_sinks(canonical(body).decode())
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
            self._close_sinks()

    def _close_sinks(self) -> None:
        """Close the sinks (an HTTP sink first delivers what is queued, within its timeout)."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                _log.error("audit checkpoint sink %s did not close: %s", sink.name, exc)

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


# -- outside copies of the checkpoints --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OutsideCopy:
    """The checkpoint lines one outside sink holds, as read for `verify`, or why they could
    not be read (`error`: then `verify` fails, since a configured copy that is gone is exactly
    what someone who rewrote the log would arrange)."""

    source: str
    lines: tuple[bytes, ...] = ()
    error: str | None = None


def _split(data: bytes) -> tuple[bytes, ...]:
    return tuple(line for line in data.splitlines() if line.strip())


def read_file_copy(path: str | os.PathLike[str]) -> OutsideCopy:
    """A file sink's copy (or a copy of it taken from its WORM store)."""
    source = f"file {path}"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return OutsideCopy(source=source, error="missing (no such file)")
    except OSError as exc:
        return OutsideCopy(source=source, error=f"unreadable ({exc.strerror or exc})")
    return OutsideCopy(source=source, lines=_split(data))


def read_exported_copy(path: str | os.PathLike[str]) -> OutsideCopy:
    """Lines exported from a syslog store: only those carrying the checkpoint marker count
    (the rest of the collector's traffic is skipped); plain checkpoint lines are taken too."""
    copy = read_file_copy(path)
    if copy.error is not None:
        return OutsideCopy(source=f"exported {path}", error=copy.error)
    marker = SYSLOG_MARKER.encode()
    kept = []
    for line in copy.lines:
        at = line.find(marker)
        if at >= 0:
            kept.append(line[at + len(marker):].strip(b" \t\r\n\x00"))
        elif line.lstrip().startswith(b"{"):
            kept.append(line.strip(b" \t\r\n\x00"))
    return OutsideCopy(source=f"exported {path}", lines=tuple(kept))


def read_http_copy(url: str, *, timeout: float = 10.0) -> OutsideCopy:
    """What an HTTP receiver stored: GET on the URL the checkpoints were POSTed to."""
    source = f"http {url}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        return OutsideCopy(source=source, error=f"unreadable (HTTP {exc.code} {exc.reason})")
    except (OSError, ValueError) as exc:
        return OutsideCopy(source=source, error=f"unreachable ({exc})")
    return OutsideCopy(source=source, lines=_split(data))


# -- verification -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong. `index` is the 0-based line in audit.jsonl (None for a checkpoint)."""

    # altered | missing | reordered | truncated after checkpoint | bad signature |
    # outside copy unreadable | outside copy behind
    reason: str
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
    outside: list[str] = field(default_factory=list)
    """The outside copies read (sources)."""
    key_source: str = ""
    """Where the trusted public key came from: pinned, an outside copy, or the directory."""
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
            outside = (f"; outside copies: {', '.join(self.outside)}" if self.outside
                       else "; no outside copy checked")
            return (f"audit log intact: {self.records} records, "
                    f"{self.checkpoints_checked} signed checkpoints verified{outside}; "
                    f"key: {self.key_source}")
        return f"audit log NOT intact: {self.first_bad}"


def _find_seq_later(lines: list[bytes], start: int, seq: int) -> bool:
    for line in lines[start:]:
        try:
            if json.loads(line).get("seq") == seq:
                return True
        except (ValueError, AttributeError):
            continue
    return False


def _entries(lines: Sequence[bytes]) -> Iterator[Any]:
    for line in lines:
        try:
            yield json.loads(line)
        except ValueError:
            yield None


def verify(
    directory: str | os.PathLike[str],
    sink: str | os.PathLike[str] | None = None,
    *,
    public_key: str | None = None,
    outside: Sequence[OutsideCopy] = (),
    now: float | None = None,
    max_lag: float | None = None,
) -> VerifyReport:
    """Check the chain, the Merkle roots of every signed checkpoint and their signatures.

    Checkpoints come from the directory and from the outside copies (`sink`, a file path, and
    `outside`, already read); only the outside ones mean anything against someone who can
    write the directory. An outside copy that could not be read is a problem, as is a log
    shorter than a checkpoint covers. With `now` and `max_lag`, a record that no checkpoint in
    some outside copy covers and that is older than `max_lag` seconds is a problem too (the
    copy is behind the log: a sink that stopped taking checkpoints, or records added later).

    The trusted public key is, in order: `public_key` (pinned) if given, the key of the first
    checkpoint in the first outside copy, the key file in the directory.
    """
    directory = Path(directory)
    report = VerifyReport()
    problems = report.problems

    copies = list(outside)
    if sink is not None:
        copies.append(read_file_copy(sink))
    readable: list[OutsideCopy] = []
    for copy in copies:
        if copy.error is not None:
            problems.append(Problem(reason="outside copy unreadable", index=None, seq=None,
                                    detail=f"{copy.source}: {copy.error}"))
        else:
            readable.append(copy)
            report.outside.append(copy.source)

    origins: list[tuple[str, list[Any]]] = [(c.source, list(_entries(c.lines)))
                                            for c in readable]
    origins.append((f"directory {CHECKPOINTS_FILE}",
                    list(_entries(_read_lines(directory / CHECKPOINTS_FILE)))))
    trusted = public_key.lower() if public_key else None
    report.key_source = "pinned"
    if trusted is None:
        for _, entries in origins[:-1]:
            for entry in entries:
                if isinstance(entry, dict) and "public_key" in entry:
                    trusted = str(entry["public_key"])
                    report.key_source = "first outside checkpoint"
                    break
            if trusted is not None:
                break
    if trusted is None and (directory / PUBLIC_KEY_FILE).exists():
        trusted = (directory / PUBLIC_KEY_FILE).read_text().strip()
        report.key_source = f"{PUBLIC_KEY_FILE} in the directory (not pinned)"

    checkpoints: dict[int, dict[str, Any]] = {}
    latest: dict[str, int] = {c.source: 0 for c in readable}  # per outside copy
    # Sizes an outside checkpoint signed: with an outside copy, only these say "still good"
    # (a local checkpoint may be the intruder's, signed with the key they found).
    vouched: set[int] = set()
    for origin, entries in origins:
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
            if origin in latest:
                latest[origin] = max(latest[origin], size)
                vouched.add(size)
            seen = checkpoints.get(size)
            if seen is not None and seen["root_hash"] != entry["root_hash"]:
                problems.append(Problem(
                    reason="bad signature", index=None, seq=None,
                    detail=f"two signed checkpoints for tree size {size} disagree ({origin} "
                           f"line {n + 1})"))
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
    # The first record each outside copy does not cover: when was it written?
    wanted = {max(size, first_seq) for size in latest.values()}
    written_at: dict[int, float] = {}

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
        if seq in wanted:
            with contextlib.suppress(TypeError, ValueError):
                written_at[seq] = float(record["time"])
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
            if size in vouched or not readable:
                last_good_size = size
        if chain_broken:
            break

    if not chain_broken and pending:
        size = pending[-1]
        present = tree.size
        problems.append(Problem(
            reason="truncated after checkpoint", index=present - first_seq, seq=present,
            detail=f"a signed checkpoint covers {size} records but only {present} remain"
                   + (f" (the last checkpoint that still matches covers {last_good_size}: "
                      f"records from seq {last_good_size} on were cut or rewritten)"
                      if last_good_size > first_seq else "")))
    if not chain_broken and now is not None and max_lag is not None:
        total = tree.size
        for source, covered in latest.items():
            start = max(covered, first_seq)
            oldest = written_at.get(start)
            if start >= total or oldest is None or now - oldest <= max_lag:
                continue
            problems.append(Problem(
                reason="outside copy behind", index=start - first_seq, seq=start,
                detail=f"{source} covers {covered} records, the log holds {total}: records "
                       f"{start}..{total - 1} are vouched for by no outside checkpoint, the "
                       f"oldest written {now - oldest:.0f} s ago (allowed: {max_lag:g} s)"))
    return report
