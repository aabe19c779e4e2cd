"""The keystore and recording index (SQLite, WAL): one wrapped data key per recording.

Invariants:
- A data key is 32 fresh random bytes, generated here, returned once to the writer, and stored
  only wrapped by a KEK (`KekProvider`). The row remembers which KEK (`kek_id`) wrapped it. Which
  KEK is current is this database's to say (`keyring.KekRegistry`), read in the transaction that
  stores the row, so every process follows a rotation at its next recording.
- Shredding nulls the wrapped key, then checkpoints the WAL with `secure_delete` on, so the old
  bytes are overwritten in the database file and gone from the WAL. Without the data key no copy
  of the audio file can be read. Every shred leaves a row in `shred_log` (no personal data) and a
  hook notification.
- The caller number is personal data: it lives here sealed under its subject's key (the subject
  keyring, subjects.py), beside the subject id that finds it for an erasure; never in clear in
  this file or a recording file. It is shown only through a role's mask policy (and plug-in
  maskers), and is erased when the recording is shredded. Recording rows themselves stay, as
  the tombstone the audit trail points at.
- Schema version (PRAGMA user_version) 1. A version-0 file (vaultpbx 0.1, whose caller_number
  column held the number in clear or masked) is migrated when opened: clear numbers are sealed,
  masked ones (they name nobody for certain) are dropped; a newer version is refused.
- Rows move recording -> closed | incomplete -> shredded; nothing moves back.
- Durability: with `sync_commits` (the default, and what the CLI uses) every commit is on disk
  when it returns. The engine opens the store with `sync_commits=False` and calls
  `checkpoint()` once a second: a commit per call with an fsync each stalled the event loop
  at a few hundred calls/s. A SIGKILL still loses nothing (WAL); a power cut loses at most the
  index changes of the last second, as it loses the audio not yet fsynced. A shred is made
  durable at once either way (shredding checkpoints the WAL).
- With an `outside_log` (the shred log kept apart, shredlog.py), every shred is appended there
  first; a shred whose entry cannot be written does not happen (a restore replays that log).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..hooks.maskers import TextMasker, mask_party
from ..hooks.phones import DEFAULT_COUNTRY
from ..hooks.registry import HookPoint, HookRegistry
from .container import DATA_KEY_SIZE
from .errors import KeyShreddedError, RecordingError, RecordingKeyError, UnknownRecordingError
from .kek import KekProvider
from .keyring import KekRegistry, RewrapReport
from .shredlog import ShredLog
from .subjects import SubjectKeyring

DEFAULT_RETENTION_DAYS = 180
DAY = 86400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    recording_id    TEXT PRIMARY KEY,           -- 32 hex digits, as in the file header
    path            TEXT NOT NULL,
    key_id          TEXT NOT NULL,              -- data-key id, as in the file header
    kek_id          TEXT,                       -- KEK that wrapped it; NULL once shredded
    wrapped_key     BLOB,                       -- RFC 3394 wrapped data key; NULL once shredded
    created_at      REAL NOT NULL,
    closed_at       REAL,
    state           TEXT NOT NULL DEFAULT 'recording'
                    CHECK (state IN ('recording', 'closed', 'incomplete', 'shredded')),
    retention_class TEXT NOT NULL,
    expires_at      REAL NOT NULL,
    legal_hold      INTEGER NOT NULL DEFAULT 0,
    caller_subject  TEXT,                       -- subject id (subjects.py); NULL once shredded
    caller_sealed   BLOB                        -- the number, sealed under the subject's key
);
CREATE INDEX IF NOT EXISTS recordings_expiry ON recordings (state, expires_at);

CREATE TABLE IF NOT EXISTS legal_holds (
    recording_id    TEXT PRIMARY KEY REFERENCES recordings (recording_id),
    requested_by    TEXT NOT NULL,
    requested_at    REAL NOT NULL,
    reason          TEXT NOT NULL,
    approved_by     TEXT,
    approved_at     REAL
);

CREATE TABLE IF NOT EXISTS shred_log (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    recording_id    TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    reason          TEXT NOT NULL,              -- expired | erasure | manual
    actor           TEXT NOT NULL,
    shredded_at     REAL NOT NULL,
    file_deleted    INTEGER NOT NULL
);
"""


SCHEMA_VERSION = 1
CALLER_CONTEXT = "recordings.caller"  # what a sealed caller number is bound to


class KeystoreSchemaError(RecordingError):
    """keystore.db was written by a newer vaultpbx: refused rather than misread."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionPolicy:
    """Days to keep a recording, by retention class (the queue or trunk that carried the call)."""

    days_by_class: Mapping[str, int] = field(default_factory=dict)
    default_days: int = DEFAULT_RETENTION_DAYS

    def days(self, retention_class: str) -> int:
        return self.days_by_class.get(retention_class, self.default_days)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingRow:
    recording_id: str
    path: str
    key_id: str
    kek_id: str | None
    created_at: float
    closed_at: float | None
    state: str
    retention_class: str
    expires_at: float
    caller_number: str | None  # opened from its sealed form; None when none or erased
    legal_hold: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRecording:
    recording_id: bytes
    key_id: bytes
    data_key: bytes
    path: Path
    expires_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingEvent:
    """What the audit sinks receive at RECORDING_* hook points. Carries no personal data."""

    action: str  # started | stopped | list | export | verify | shred | hold_request | hold ...
    recording_id: str
    actor: str
    allowed: bool = True
    at: float = 0.0
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ShredRecord:
    seq: int
    recording_id: str
    key_id: str
    reason: str
    actor: str
    shredded_at: float
    file_deleted: bool


SEALED_CALLER = "[sealed]"  # a caller whose number could not be opened (no KEK at hand)

_COLUMNS = (
    "recording_id, path, key_id, kek_id, created_at, closed_at, state, retention_class, "
    "expires_at, caller_subject, caller_sealed, legal_hold"
)


def _row(values: tuple[object, ...], subjects: SubjectKeyring) -> RecordingRow:
    rid, path, key_id, kek_id, created, closed, state, rclass, expires, subject, sealed, hold = (
        values)
    try:
        caller = subjects.open(None if subject is None else str(subject),
                               None if sealed is None else bytes(sealed),  # type: ignore[arg-type]
                               context=CALLER_CONTEXT)
    except RecordingKeyError:
        # The KEK is not at hand (`recordings list` opens none): the index is still listed,
        # the caller shown as sealed, never guessed.
        caller = SEALED_CALLER
    return RecordingRow(
        recording_id=str(rid),
        path=str(path),
        key_id=str(key_id),
        kek_id=None if kek_id is None else str(kek_id),
        created_at=float(created),  # type: ignore[arg-type]
        closed_at=None if closed is None else float(closed),  # type: ignore[arg-type]
        state=str(state),
        retention_class=str(rclass),
        expires_at=float(expires),  # type: ignore[arg-type]
        caller_number=caller,
        legal_hold=bool(hold),
    )


class Keystore:
    def __init__(
        self,
        path: str | os.PathLike[str],
        kek: KekProvider,
        *,
        retention: RetentionPolicy | None = None,
        hooks: HookRegistry | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
        sync_commits: bool = True,
        country: str = DEFAULT_COUNTRY,
        outside_log: ShredLog | None = None,
    ) -> None:
        self.path = Path(path)
        self.outside_log = outside_log
        self.sync_commits = sync_commits
        self._unsynced = 0  # commits since the last checkpoint, without sync_commits
        self.kek = kek
        self.retention = retention or RetentionPolicy()
        self.hooks = hooks or HookRegistry()
        self._random = random_bytes
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        # One connection, usable from any thread (the admin API reads from worker threads, its
        # test harness serves from another thread than the one that opened it); transactions
        # are serialised by `_lock`, so two threads never interleave inside one.
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                   check_same_thread=False)
        self._lock = threading.RLock()
        if new:
            os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL syncs the WAL at each checkpoint instead of each commit.
        self._db.execute(f"PRAGMA synchronous={'FULL' if sync_commits else 'NORMAL'}")
        self._db.execute("PRAGMA secure_delete=ON")  # freed pages are zeroed: shredded keys too
        self._db.execute("PRAGMA foreign_keys=ON")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            self._db.close()
            raise KeystoreSchemaError(
                f"{self.path}: schema version {version} is newer than this vaultpbx's "
                f"({SCHEMA_VERSION}); upgrade vaultpbx to open it")
        self._db.executescript(SCHEMA)
        self.keys = KekRegistry(self._db, kek, transaction=self._transaction, clock=clock)
        self.subjects = SubjectKeyring(self._db, self.keys, self._transaction, country=country,
                                       random_bytes=random_bytes, clock=clock)
        if version < SCHEMA_VERSION:
            self._migrate_caller_numbers()
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS recordings_subject ON recordings (caller_subject)")

    def _migrate_caller_numbers(self) -> None:
        """Version 0 -> 1: seal the clear caller numbers of 0.1, drop its masked ones."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(recordings)")}
        sealed_rows: list[tuple[str | None, bytes | None, str]] = []
        if "caller_number" in columns:
            # Sealing may add subject keys (their own transactions): done before the rewrite.
            for rid, number in self._db.execute(
                    "SELECT recording_id, caller_number FROM recordings "
                    "WHERE caller_number IS NOT NULL").fetchall():
                if "*" in str(number) or not str(number).strip():
                    continue  # masked at write time by 0.1: it identifies nobody for sure
                subject, sealed = self.subjects.seal(str(number), context=CALLER_CONTEXT)
                sealed_rows.append((subject, sealed, str(rid)))
        with self._transaction() as db:
            if "caller_number" in columns:
                if "caller_subject" not in columns:
                    db.execute("ALTER TABLE recordings ADD COLUMN caller_subject TEXT")
                    db.execute("ALTER TABLE recordings ADD COLUMN caller_sealed BLOB")
                db.executemany("UPDATE recordings SET caller_subject = ?, caller_sealed = ? "
                               "WHERE recording_id = ?", sealed_rows)
                db.execute("DROP INDEX IF EXISTS recordings_caller")
                db.execute("UPDATE recordings SET caller_number = NULL")
                db.execute("ALTER TABLE recordings DROP COLUMN caller_number")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._scrub()  # the clear numbers' old pages: zeroed (secure_delete) and out of the WAL

    def check_kek(self) -> None:
        """Refuse (KekMissingError, saying what to restore) unless the KEK provider holds the
        current KEK and every KEK a data key needs; on a first start, make the first KEK."""
        self.keys.ensure()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Keystore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._unsynced += 1

    def checkpoint(self) -> None:
        """Make every commit so far durable (the WAL is synced before a checkpoint copies it).
        A no-op when nothing was committed since the last one."""
        if self._unsynced:
            self._unsynced = 0
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- life of a recording ----------------------------------------------------------------------

    def create_recording(
        self,
        directory: str | os.PathLike[str],
        *,
        retention_class: str = "default",
        caller_number: str | None = None,
        created_at: float | None = None,
    ) -> NewRecording:
        """`caller_number` in clear as the caller sent it: it is sealed here, never stored."""
        """Make a data key and index a new recording at `<directory>/<id>.vrec` (not created)."""
        created = self._clock() if created_at is None else created_at
        recording_id = self._random(16)
        key_id = self._random(16)
        data_key = self._random(DATA_KEY_SIZE)
        if not self.keys.ready:
            self.keys.ensure()
        path = Path(directory) / f"{recording_id.hex()}.vrec"
        expires = created + self.retention.days(retention_class) * DAY
        subject, sealed = (self.subjects.seal(caller_number, context=CALLER_CONTEXT)
                           if caller_number else (None, None))
        with self._transaction() as db:
            kek_id, wrapped = self.keys.wrap_current(db, data_key)
            db.execute(
                "INSERT INTO recordings (recording_id, path, key_id, kek_id, wrapped_key, "
                "created_at, retention_class, expires_at, caller_subject, caller_sealed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (recording_id.hex(), str(path), key_id.hex(), kek_id, wrapped, created,
                 retention_class, expires, subject, sealed),
            )
        return NewRecording(recording_id=recording_id, key_id=key_id, data_key=data_key,
                            path=path, expires_at=expires)

    def mark_closed(self, recording_id: str, closed_at: float | None = None) -> None:
        at = self._clock() if closed_at is None else closed_at
        with self._transaction() as db:
            db.execute(
                "UPDATE recordings SET state = 'closed', closed_at = ? "
                "WHERE recording_id = ? AND state IN ('recording', 'incomplete')",
                (at, recording_id),
            )

    def mark_closed_many(self, closed: Iterable[tuple[str, float]]) -> None:
        """`mark_closed` for each (recording id, closed at), in one transaction."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE recordings SET state = 'closed', closed_at = ? "
                "WHERE recording_id = ? AND state IN ('recording', 'incomplete')",
                [(at, recording_id) for recording_id, at in closed],
            )

    def mark_incomplete(self, recording_id: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE recordings SET state = 'incomplete' "
                "WHERE recording_id = ? AND state = 'recording'",
                (recording_id,),
            )

    # -- reading ----------------------------------------------------------------------------------

    def get(self, recording_id: str) -> RecordingRow:
        cur = self._db.execute(
            f"SELECT {_COLUMNS} FROM recordings WHERE recording_id = ?", (recording_id,)
        )
        values = cur.fetchone()
        if values is None:
            raise UnknownRecordingError(recording_id)
        return _row(values, self.subjects)

    def find_by_path(self, path: str | os.PathLike[str]) -> RecordingRow | None:
        cur = self._db.execute(f"SELECT {_COLUMNS} FROM recordings WHERE path = ?", (str(path),))
        values = cur.fetchone()
        return None if values is None else _row(values, self.subjects)

    def rows(self, *, states: tuple[str, ...] | None = None) -> list[RecordingRow]:
        if states:
            marks = ", ".join("?" * len(states))
            cur = self._db.execute(
                f"SELECT {_COLUMNS} FROM recordings WHERE state IN ({marks}) ORDER BY created_at",
                states,
            )
        else:
            cur = self._db.execute(f"SELECT {_COLUMNS} FROM recordings ORDER BY created_at")
        return [_row(v, self.subjects) for v in cur.fetchall()]

    def data_key(self, recording_id: str) -> bytes:
        cur = self._db.execute(
            "SELECT kek_id, wrapped_key, state FROM recordings WHERE recording_id = ?",
            (recording_id,),
        )
        values = cur.fetchone()
        if values is None:
            raise UnknownRecordingError(recording_id)
        kek_id, wrapped, state = values
        if wrapped is None or state == "shredded":
            raise KeyShreddedError(recording_id)
        return self.keys.unwrap(kek_id, wrapped)

    def masked_caller(self, row: RecordingRow, role: str = "system",
                      masker: TextMasker | None = None) -> str:
        """The caller as `role` may see it: the role's policy of `masker` (the configured one;
        default policies if None) for a phone number, then the plug-in maskers."""
        if not row.caller_number:
            return ""
        if row.caller_number == SEALED_CALLER:
            return SEALED_CALLER
        masker = masker or TextMasker(country=self.subjects.country)
        shown = mask_party(masker.mask_text(row.caller_number, role), masker.policy_for(role))
        return self.hooks.mask("phone", shown, role)

    # -- keys -------------------------------------------------------------------------------------

    def current_kek_id(self) -> str | None:
        return self.keys.current()

    def rotate_kek(self) -> tuple[str | None, str]:
        """A new current KEK for every process that wraps through this keystore: (previous,
        new). Data keys stay under the old one until `rewrap`."""
        return self.keys.rotate()

    def rewrap(self, *, batch: int = 500) -> RewrapReport:
        """Re-wrap every live data key not yet under the current KEK. Audio files are untouched.
        Each batch unwraps under the old KEK and wraps under the current one."""
        report = self.keys.rewrap(batch=batch)
        # The keyed hash's key and the callers' keys are wrapped under the KEK too.
        report.caller_keys = self.subjects.rewrap()
        self._scrub()
        return report

    def retire_kek(self, kek_id: str) -> None:
        """Destroy an old KEK; KekInUseError while a data key or a running engine needs it."""
        self.keys.retire(kek_id)

    def kek_ids_in_use(self) -> set[str]:
        return set(self.keys.in_use())

    # -- shredding --------------------------------------------------------------------------------

    def shred(
        self, recording_id: str, *, reason: str, actor: str, now: float | None = None
    ) -> ShredRecord:
        """Destroy the data key, erase the caller number, delete the file, log and notify."""
        at = self._clock() if now is None else now
        if self.outside_log is not None:  # write-ahead (shredlog.py)
            self.outside_log.append(kind="recordings", ids=[recording_id], reason=reason,
                                    actor=actor, now=at)
        with self._transaction() as db:
            values = db.execute(
                "SELECT path, key_id FROM recordings WHERE recording_id = ?", (recording_id,)
            ).fetchone()
            if values is None:
                raise UnknownRecordingError(recording_id)
            path, key_id = values
            db.execute(
                "UPDATE recordings SET wrapped_key = NULL, kek_id = NULL, caller_subject = NULL, "
                "caller_sealed = NULL, state = 'shredded', legal_hold = 0 "
                "WHERE recording_id = ?",
                (recording_id,),
            )
            db.execute("DELETE FROM legal_holds WHERE recording_id = ?", (recording_id,))
            file_deleted = True
            try:
                os.unlink(path)
            except FileNotFoundError:
                file_deleted = False
            cur = db.execute(
                "INSERT INTO shred_log (recording_id, key_id, reason, actor, shredded_at, "
                "file_deleted) VALUES (?, ?, ?, ?, ?, ?)",
                (recording_id, key_id, reason, actor, at, int(file_deleted)),
            )
            seq = int(cur.lastrowid or 0)
        self._scrub()
        record = ShredRecord(seq=seq, recording_id=recording_id, key_id=key_id, reason=reason,
                             actor=actor, shredded_at=at, file_deleted=file_deleted)
        self.hooks.notify(
            HookPoint.RECORDING_ACCESSED,
            RecordingEvent(action="shred", recording_id=recording_id, actor=actor, at=at,
                           detail=reason),
        )
        return record

    def scrub(self) -> None:
        """`_scrub` for the erasure, which destroys subject keys through the keyring."""
        self._scrub()

    def _scrub(self) -> None:
        """Push overwritten pages from the WAL into the (secure_delete) main file and empty it."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def shred_log(self) -> list[ShredRecord]:
        cur = self._db.execute(
            "SELECT seq, recording_id, key_id, reason, actor, shredded_at, file_deleted "
            "FROM shred_log ORDER BY seq"
        )
        return [
            ShredRecord(seq=s, recording_id=r, key_id=k, reason=why, actor=a, shredded_at=t,
                        file_deleted=bool(d))
            for s, r, k, why, a, t, d in cur.fetchall()
        ]

    # -- legal holds (the two-person rule lives in retention.py) ----------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._transaction() as db:
            yield db
