"""Call records in SQLite (WAL) under the data directory, written in batches.

The B2BUA appends finished `CallRecord`s to a list; `flush` writes them with one executemany
per second, so the per-call cost is a list append on the signalling path.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..b2bua.call import CallRecord

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


class CdrStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.written = 0

    def write(self, records: list[CallRecord]) -> None:
        if not records:
            return
        rows = [
            (r.call_id, r.caller, r.callee, r.route_kind, r.route_name, r.started, r.answered,
             r.ended, r.cause, r.status, r.legs)
            for r in records
        ]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows
            )
        self.written += len(rows)

    def recent(self, limit: int = 100) -> list[dict[str, object]]:
        cursor = self.db.execute(
            "SELECT call_id, caller, callee, route_kind, route_name, started, answered, ended,"
            " cause, status, legs FROM calls ORDER BY started DESC LIMIT ?", (limit,)
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def close(self) -> None:
        self.db.close()
