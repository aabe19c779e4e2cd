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
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..b2bua.acd import QueueEvent
from ..b2bua.call import CallRecord

SCHEMA_VERSION = 2

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


def _migrate_to_2(db: sqlite3.Connection) -> None:
    present = {row[1] for row in db.execute("PRAGMA table_info(calls)")}
    for name, decl in CALLS_V2_COLUMNS:
        if name not in present:
            db.execute(f"ALTER TABLE calls ADD COLUMN {name} {decl}")
    for statement in QUEUE_EVENTS_V2.split(";"):
        if statement.strip():
            db.execute(statement)


# (version reached, step); applied in order to files below that version.
MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection], None]], ...] = (
    (2, _migrate_to_2),
)

_INSERT_CALL = (
    "INSERT OR REPLACE INTO calls (call_id, caller, callee, route_kind, route_name, started,"
    " answered, ended, cause, status, legs, clock, timezone, queue, queue_entered,"
    " wait_seconds, agent, talk_seconds, hold_seconds, wrap_up_seconds, transfers,"
    " recording_id, disposition, consent, ended_by)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,'utc',?,?,?,?,?,?,?,?,?,?,?,?,?)"
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
    def __init__(self, path: Path, *, timezone: str = "UTC") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.timezone = timezone  # the display zone written with each row (times are UTC)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
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
                    step(self.db)  # another process may have done it while we waited
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
                r.call_id, r.caller, r.callee, r.route_kind, r.route_name, r.started + offset,
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
            " cause, status, legs FROM calls ORDER BY started DESC LIMIT ?", (limit,)
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

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
            f"SELECT {', '.join(REPORT_COLUMNS)} FROM calls WHERE {where}"
            " ORDER BY started, call_id LIMIT ?", [*args, limit])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

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

    def close(self) -> None:
        self.db.close()
