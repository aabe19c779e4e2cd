"""Call records in SQLite (WAL) under the data directory, written in batches.

The B2BUA appends finished `CallRecord`s to a list; `flush` writes them with one executemany
per second, so the per-call cost is a list append on the signalling path.

Invariants (the parties' numbers are personal data):
- A caller or callee number is stored sealed under its data subject's key (the keystore's
  subject keyring, vaultpbx.recording.subjects) with the subject id beside it; the `caller` and
  `callee` columns hold only internal extensions (up to 6 digits), which name no outside person.
  Only `_party_columns` writes the number columns and only `_open_parties` reads them.
- `recent` returns numbers in clear to the code that masks them by role (the admin API); an
  erased subject's number reads as "" (its key is gone, its columns blanked).
- Schema version (PRAGMA user_version) 1. A version-0 file (vaultpbx 0.1: numbers in clear or
  masked in `caller`/`callee`) is migrated when opened; a newer version is refused.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from ..b2bua.call import CallRecord
from ..recording.erasure import StoreErasure

if TYPE_CHECKING:
    from ..recording.subjects import SubjectKeyring

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    caller TEXT NOT NULL,
    callee TEXT NOT NULL,
    route_kind TEXT NOT NULL,
    route_name TEXT NOT NULL,
    started REAL NOT NULL,
    answered REAL,
    ended REAL NOT NULL,
    cause TEXT NOT NULL,
    status INTEGER NOT NULL,
    legs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_started ON calls(started);
"""

SCHEMA_VERSION = 1
# Added by version 1; `_ensure_party_columns` adds them to old and new files alike.
PARTY_COLUMNS = (("caller_subject", "TEXT"), ("caller_sealed", "BLOB"),
                 ("callee_subject", "TEXT"), ("callee_sealed", "BLOB"))
_PARTIES = ("caller", "callee")
MAX_EXTENSION_DIGITS = 6


class CdrSchemaError(RuntimeError):
    """cdr.db was written by a newer vaultpbx: refused rather than misread."""


def _is_extension(value: str) -> bool:
    return value.isdigit() and len(value) <= MAX_EXTENSION_DIGITS or not value


def _party_columns(record: CallRecord, subjects: SubjectKeyring
                   ) -> tuple[str, str, str | None, bytes | None, str | None, bytes | None]:
    """(caller, callee, caller_subject, caller_sealed, callee_subject, callee_sealed) to store."""
    out: list[object] = []
    sealed: list[object] = []
    for party in _PARTIES:
        value = getattr(record, party)
        if _is_extension(value):
            out.append(value)
            sealed += [None, None]
        else:
            out.append("")
            sealed += subjects.seal(value, context=f"cdr.{party}")
    return (str(out[0]), str(out[1]), *sealed)  # type: ignore[return-value]


def _open_parties(row: dict[str, object], subjects: SubjectKeyring) -> dict[str, object]:
    """A stored row as the API sees it: caller/callee in clear ("" once erased)."""
    for party in _PARTIES:
        subject = row.pop(f"{party}_subject", None)
        sealed = row.pop(f"{party}_sealed", None)
        if subject is not None:
            row[party] = subjects.open(str(subject), sealed,  # type: ignore[arg-type]
                                       context=f"cdr.{party}") or ""
    return row


class CdrStore:
    """Also the call records' `PersonalDataStore` for erasure (vaultpbx.recording.erasure)."""

    name = "cdr"

    def __init__(self, path: Path, subjects: SubjectKeyring) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.subjects = subjects
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA secure_delete=ON")  # blanked numbers leave no old page behind
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            self.db.close()
            raise CdrSchemaError(f"{path}: schema version {version} is newer than this "
                                 f"vaultpbx's ({SCHEMA_VERSION}); upgrade vaultpbx to open it")
        self.db.executescript(SCHEMA)
        self._ensure_party_columns(migrate=version < SCHEMA_VERSION)
        self.written = 0

    def _ensure_party_columns(self, *, migrate: bool) -> None:
        have = {r[1] for r in self.db.execute("PRAGMA table_info(calls)")}
        old_rows = self.db.execute(
            "SELECT call_id, caller, callee FROM calls").fetchall() if migrate else []
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for name, kind in PARTY_COLUMNS:
                if name not in have:
                    self.db.execute(f"ALTER TABLE calls ADD COLUMN {name} {kind}")
            self.db.execute("CREATE INDEX IF NOT EXISTS calls_caller_subject "
                            "ON calls(caller_subject)")
            self.db.execute("CREATE INDEX IF NOT EXISTS calls_callee_subject "
                            "ON calls(callee_subject)")
            for call_id, caller, callee in old_rows:
                # 0.1 stored numbers in clear, or masked (which names nobody for certain: "").
                parties = [("" if "*" in str(v) else str(v)) for v in (caller, callee)]
                record = CallRecord(call_id=call_id, caller=parties[0], callee=parties[1],
                                    route_kind="", route_name="", started=0.0, answered=None,
                                    ended=0.0, cause="", status=0, legs="")
                self.db.execute(
                    "UPDATE calls SET caller = ?, callee = ?, caller_subject = ?, "
                    "caller_sealed = ?, callee_subject = ?, callee_sealed = ? WHERE call_id = ?",
                    (*_party_columns(record, self.subjects), call_id))
            if migrate:
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if old_rows:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def write(self, records: list[CallRecord]) -> None:
        if not records:
            return
        rows = [
            (r.call_id, *_party_columns(r, self.subjects), r.route_kind, r.route_name,
             r.started, r.answered, r.ended, r.cause, r.status, r.legs)
            for r in records
        ]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO calls (call_id, caller, callee, caller_subject, "
                "caller_sealed, callee_subject, callee_sealed, route_kind, route_name, started, "
                "answered, ended, cause, status, legs) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
        self.written += len(rows)

    def recent(self, limit: int = 100) -> list[dict[str, object]]:
        cursor = self.db.execute(
            "SELECT call_id, caller, callee, route_kind, route_name, started, answered, ended,"
            " cause, status, legs, caller_subject, caller_sealed, callee_subject, callee_sealed"
            " FROM calls ORDER BY started DESC LIMIT ?", (limit,)
        )
        names = [d[0] for d in cursor.description]
        return [_open_parties(dict(zip(names, row, strict=True)), self.subjects)
                for row in cursor.fetchall()]

    # -- erasure ----------------------------------------------------------------------------------

    def count_subject(self, subject: str) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM calls WHERE caller_subject = ? OR callee_subject = ?",
            (subject, subject)).fetchone()
        return int(row[0])

    def erase_subject(self, subject: str, *, actor: str, now: float) -> StoreErasure:
        """Blank the subject's number columns; the rest of the record (times, cause, route)
        stays for statistics and names nobody once the key is destroyed."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            erased = self.count_subject(subject)
            for party in _PARTIES:
                self.db.execute(
                    f"UPDATE calls SET {party} = '', {party}_subject = NULL, "
                    f"{party}_sealed = NULL WHERE {party}_subject = ?", (subject,))
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return StoreErasure(store=self.name, erased=erased)

    def close(self) -> None:
        self.db.close()
