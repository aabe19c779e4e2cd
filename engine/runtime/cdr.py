"""Call records and queue events in SQLite (WAL) under the data directory, written in batches.

The B2BUA appends finished `CallRecord`s to a list and the ACD its `QueueEvent`s to another;
`write` stores both with one transaction per second, so the per-call cost on the signalling
path is a list append. Columns and their meanings: docs/cdr.md.

Invariants:
- The core's times are its monotonic clock; `write` turns them into UTC with the offset
  between the wall clock and that clock *at the moment of writing*. Durations (wait, talk,
  hold) are differences of monotonic times, so an NTP step can never make one negative or
  wrong; and the absolute times follow the wall clock as it is now, so a step that corrected
  the clock corrects the times of every record written after it (an offset taken once at
  start would keep a wrong clock's error until the next restart).
- `started`, `answered`, `ended` (and `queue_entered`) of rows with `clock = 'utc'` are Unix
  seconds, UTC. Rows from before schema version 2 keep their monotonic values and say
  `clock = 'monotonic'`: no one knows their wall-clock time, so date-range reads skip them.
- New columns come after the original ones; the caller/callee number columns keep their names
  and are written and read only by the statements here that name them.
- The schema version is `PRAGMA user_version`; `MIGRATIONS` brings any older file up to
  `SCHEMA_VERSION` in one transaction each, so a crash mid-migration leaves the old version.
  A file from a newer vaultpbx is refused (CdrSchemaError), never misread.
- The parties' numbers are personal data. A caller or callee number is stored sealed under its
  data subject's key (the keystore's subject keyring, vaultpbx.recording.subjects) with the
  subject id beside it; the `caller` and `callee` columns hold only internal extensions (up to
  6 digits), which name no outside person. Only `_party_columns` writes the number columns and
  only `_open_parties` reads them. Reads return numbers in clear to the code that masks them
  by role (admin API, CSV export); an erased subject's number reads as "" (its key is gone,
  its columns blanked).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..b2bua.acd import QueueEvent
from ..b2bua.call import CallRecord
from ..recording.erasure import StoreErasure

if TYPE_CHECKING:
    from ..recording.subjects import SubjectKeyring

SCHEMA_VERSION = 3

# Version 1: the table as it was before reporting (issue 17). Kept as is for old files.
SCHEMA_V1 = """
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
SCHEMA = SCHEMA_V1  # its name before versions

# Version 2: reporting columns, appended after the original ones (docs/cdr.md).
CALLS_V2_COLUMNS: tuple[tuple[str, str], ...] = (
    ("clock", "TEXT NOT NULL DEFAULT 'monotonic'"),
    ("timezone", "TEXT NOT NULL DEFAULT 'UTC'"),
    ("queue", "TEXT NOT NULL DEFAULT ''"),
    ("queue_entered", "REAL"),
    ("wait_seconds", "REAL"),
    ("agent", "TEXT NOT NULL DEFAULT ''"),
    ("talk_seconds", "REAL"),
    ("hold_seconds", "REAL"),
    ("wrap_up_seconds", "REAL"),
    ("transfers", "TEXT NOT NULL DEFAULT '[]'"),
    ("recording_id", "TEXT"),
    ("disposition", "TEXT NOT NULL DEFAULT ''"),
    ("consent", "TEXT NOT NULL DEFAULT ''"),
    ("ended_by", "TEXT NOT NULL DEFAULT ''"),
)

QUEUE_EVENTS_V2 = """
CREATE TABLE IF NOT EXISTS queue_events (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    call_id TEXT NOT NULL,
    queue TEXT NOT NULL,
    agent TEXT NOT NULL,
    event TEXT NOT NULL,
    data1 TEXT NOT NULL DEFAULT '',
    data2 TEXT NOT NULL DEFAULT '',
    data3 TEXT NOT NULL DEFAULT '',
    data4 TEXT NOT NULL DEFAULT '',
    data5 TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS queue_events_time ON queue_events(time);
"""


def _migrate_to_2(db: sqlite3.Connection, subjects: SubjectKeyring) -> None:
    present = {row[1] for row in db.execute("PRAGMA table_info(calls)")}
    for name, decl in CALLS_V2_COLUMNS:
        if name not in present:
            db.execute(f"ALTER TABLE calls ADD COLUMN {name} {decl}")
    for statement in QUEUE_EVENTS_V2.split(";"):
        if statement.strip():
            db.execute(statement)


# Version 3: the parties' numbers sealed per data subject (docs/retention-and-erasure.md).
PARTY_COLUMNS = (("caller_subject", "TEXT"), ("caller_sealed", "BLOB"),
                 ("callee_subject", "TEXT"), ("callee_sealed", "BLOB"))
_PARTIES = ("caller", "callee")
_PARTY_SELECT = "caller_subject, caller_sealed, callee_subject, callee_sealed"
MAX_EXTENSION_DIGITS = 6


class CdrSchemaError(RuntimeError):
    """cdr.db was written by a newer vaultpbx: refused rather than misread."""


def _is_extension(value: str) -> bool:
    return value.isdigit() and len(value) <= MAX_EXTENSION_DIGITS or not value


def _party_columns(caller: str, callee: str, subjects: SubjectKeyring
                   ) -> tuple[str, str, str | None, bytes | None, str | None, bytes | None]:
    """(caller, callee, caller_subject, caller_sealed, callee_subject, callee_sealed) to store."""
    out: list[object] = []
    sealed: list[object] = []
    for party, value in zip(_PARTIES, (caller, callee), strict=True):
        if _is_extension(value):
            out.append(value)
            sealed += [None, None]
        else:
            out.append("")
            sealed += subjects.seal(value, context=f"cdr.{party}")
    return (str(out[0]), str(out[1]), *sealed)  # type: ignore[return-value]


def _open_parties(row: dict[str, object], subjects: SubjectKeyring) -> dict[str, object]:
    """A stored row as the code that masks by role sees it: caller/callee in clear ("" once
    erased), the sealed columns removed."""
    for party in _PARTIES:
        subject = row.pop(f"{party}_subject", None)
        sealed = row.pop(f"{party}_sealed", None)
        if subject is not None:
            row[party] = subjects.open(str(subject), sealed,  # type: ignore[arg-type]
                                       context=f"cdr.{party}") or ""
    return row


def _migrate_to_3(db: sqlite3.Connection, subjects: SubjectKeyring) -> None:
    present = {row[1] for row in db.execute("PRAGMA table_info(calls)")}
    for name, kind in PARTY_COLUMNS:
        if name not in present:
            db.execute(f"ALTER TABLE calls ADD COLUMN {name} {kind}")
    db.execute("CREATE INDEX IF NOT EXISTS calls_caller_subject ON calls(caller_subject)")
    db.execute("CREATE INDEX IF NOT EXISTS calls_callee_subject ON calls(callee_subject)")
    for call_id, caller, callee in db.execute(
            "SELECT call_id, caller, callee FROM calls").fetchall():
        # 0.1 stored numbers in clear, or masked (which names nobody for certain: "").
        parties = [("" if "*" in str(v) else str(v)) for v in (caller, callee)]
        db.execute(
            "UPDATE calls SET caller = ?, callee = ?, caller_subject = ?, caller_sealed = ?, "
            "callee_subject = ?, callee_sealed = ? WHERE call_id = ?",
            (*_party_columns(parties[0], parties[1], subjects), call_id))


# (version reached, step); applied in order to files below that version.
MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection, SubjectKeyring], None]], ...] = (
    (2, _migrate_to_2),
    (3, _migrate_to_3),
)

_INSERT_CALL = (
    "INSERT OR REPLACE INTO calls (call_id, caller, callee, caller_subject, caller_sealed,"
    " callee_subject, callee_sealed, route_kind, route_name, started,"
    " answered, ended, cause, status, legs, clock, timezone, queue, queue_entered,"
    " wait_seconds, agent, talk_seconds, hold_seconds, wrap_up_seconds, transfers,"
    " recording_id, disposition, consent, ended_by)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'utc',?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_EVENT = (
    "INSERT INTO queue_events (time, call_id, queue, agent, event, data1, data2, data3, data4,"
    " data5) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
REPORT_COLUMNS = (
    "call_id", "caller", "callee", "route_kind", "route_name", "started", "answered", "ended",
    "cause", "status", "timezone", "queue", "queue_entered", "wait_seconds", "agent",
    "talk_seconds", "hold_seconds", "wrap_up_seconds", "transfers", "recording_id",
    "disposition", "consent", "ended_by",
)
EVENT_COLUMNS = ("time", "call_id", "queue", "agent", "event", "data1", "data2", "data3",
                 "data4", "data5")


def wall_clock_offset(monotonic: Callable[[], float] = time.monotonic) -> float:
    """Seconds to add to the engine's clock for Unix time, as the wall clock says now."""
    return time.time() - monotonic()


class CdrStore:
    """Also the call records' `PersonalDataStore` for erasure (vaultpbx.recording.erasure)."""

    name = "cdr"

    def __init__(self, path: Path, subjects: SubjectKeyring, *, timezone: str = "UTC") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.subjects = subjects
        self.timezone = timezone  # the display zone written with each row (times are UTC)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA secure_delete=ON")  # blanked numbers leave no old page behind
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            self.db.close()
            raise CdrSchemaError(f"{path}: schema version {version} is newer than this "
                                 f"vaultpbx's ({SCHEMA_VERSION}); upgrade vaultpbx to open it")
        self.db.executescript(SCHEMA_V1)
        self._migrate()
        self.written = 0
        self.events_written = 0

    def _migrate(self) -> None:
        for version, step in MIGRATIONS:
            current = self.db.execute("PRAGMA user_version").fetchone()[0]
            if current >= version:
                continue
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                if self.db.execute("PRAGMA user_version").fetchone()[0] < version:
                    step(self.db, self.subjects)  # another process may have done it meanwhile
                    self.db.execute(f"PRAGMA user_version = {int(version)}")

    @property
    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def write(self, records: Sequence[CallRecord], queue_events: Sequence[QueueEvent] = (), *,
              wall_offset: float | None = None,
              recording_ids: Mapping[str, str] | None = None) -> None:
        """Store a batch in one transaction. `wall_offset`: Unix time minus the engine's clock
        now (default: the wall clock minus `time.monotonic`, the clock asyncio runs on);
        `recording_ids`: call id -> the id of its recording."""
        if not records and not queue_events:
            return
        offset = wall_clock_offset() if wall_offset is None else wall_offset
        recorded = recording_ids or {}
        tz = self.timezone
        rows = []
        # Full float precision is stored (rounding here cost a third of the write); exports
        # show milliseconds.
        for r in records:
            answered, entered = r.answered, r.queue_entered
            rows.append((
                r.call_id, *_party_columns(r.caller, r.callee, self.subjects), r.route_kind,
                r.route_name, r.started + offset,
                None if answered is None else answered + offset, r.ended + offset, r.cause,
                r.status, r.legs, tz, r.queue, None if entered is None else entered + offset,
                None if entered is None else (r.ended if answered is None else answered)
                - entered,
                r.agent, None if answered is None else r.ended - answered, r.hold_seconds,
                r.wrap_up_seconds, r.transfers, recorded.get(r.call_id), r.disposition,
                r.consent, r.ended_by,
            ))
        events = [(e.at + offset, e.call_id, e.queue, e.agent, e.event, e.data1, e.data2,
                   e.data3, e.data4, e.data5) for e in queue_events]
        with self.db:
            self.db.execute("BEGIN")
            if rows:
                self.db.executemany(_INSERT_CALL, rows)
            if events:
                self.db.executemany(_INSERT_EVENT, events)
        self.written += len(rows)
        self.events_written += len(events)

    def recent(self, limit: int = 100) -> list[dict[str, object]]:
        cursor = self.db.execute(
            "SELECT call_id, caller, callee, route_kind, route_name, started, answered, ended,"
            f" cause, status, legs, {_PARTY_SELECT} FROM calls ORDER BY started DESC LIMIT ?",
            (limit,)
        )
        names = [d[0] for d in cursor.description]
        return [_open_parties(dict(zip(names, row, strict=True)), self.subjects)
                for row in cursor.fetchall()]

    def calls_between(self, start: float, end: float, queue: str | None = None,
                      limit: int = -1) -> list[dict[str, object]]:
        """Calls that started in [start, end) (Unix seconds), oldest first, every reporting
        column (docs/cdr.md), at most `limit` (-1: all). Rows without a wall-clock time
        (clock 'monotonic') are left out."""
        where = "clock = 'utc' AND started >= ? AND started < ?"
        args: list[object] = [start, end]
        if queue is not None:
            where += " AND queue = ?"
            args.append(queue)
        cursor = self.db.execute(
            f"SELECT {', '.join(REPORT_COLUMNS)}, {_PARTY_SELECT} FROM calls WHERE {where}"
            " ORDER BY started, call_id LIMIT ?", [*args, limit])
        names = [d[0] for d in cursor.description]
        return [_open_parties(dict(zip(names, row, strict=True)), self.subjects)
                for row in cursor.fetchall()]

    def recording_calls(self, recording_ids: Sequence[str]) -> dict[str, dict[str, object]]:
        """recording id -> {call_id, queue, agent} of the call it recorded (the console's
        recordings search); ids with no call record yet are absent. One pass over the recorded
        calls (no index on recording_id: batched IN lookups would each scan the table)."""
        wanted = set(recording_ids)
        found: dict[str, dict[str, object]] = {}
        cursor = self.db.execute(
            "SELECT recording_id, call_id, queue, agent FROM calls WHERE recording_id != ''")
        for recording_id, call_id, queue, agent in cursor:
            if recording_id in wanted:
                found[recording_id] = {"call_id": call_id, "queue": queue or "",
                                       "agent": agent or ""}
        return found

    def queue_events_between(self, start: float, end: float, queue: str | None = None,
                             limit: int = -1) -> list[dict[str, object]]:
        """Queue events with time in [start, end), in the order they happened, at most
        `limit` (-1: all)."""
        where = "time >= ? AND time < ?"
        args: list[object] = [start, end]
        if queue is not None:
            where += " AND queue = ?"
            args.append(queue)
        cursor = self.db.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM queue_events WHERE {where}"
            " ORDER BY time, id LIMIT ?", [*args, limit])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # -- erasure ----------------------------------------------------------------------------------

    def count_subject(self, subject: str) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM calls WHERE caller_subject = ? OR callee_subject = ?",
            (subject, subject)).fetchone()
        return int(row[0])

    def erase_subject(self, subject: str, *, actor: str, now: float) -> StoreErasure:
        """Blank the subject's number columns; the rest of the record (times, cause, route,
        queue) stays for statistics and names nobody once the key is destroyed."""
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
