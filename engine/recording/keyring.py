"""The keystore's register of key-encryption keys, and of the running engines that wrap under them.

Invariants:
- The `keks` table is the one authority on which KEK is current: at most one row is 'current'
  (a partial unique index). Every wrap reads it inside the transaction that stores the wrapped
  key, so no data key is ever wrapped under a KEK a committed rotation has replaced, and a
  retire (which counts the rows under a KEK in its own transaction) can never race a new row.
- Rotation: the provider makes the key first, then the register names it current (one
  transaction), so whoever reads the new current id finds the key after a `refresh`.
- Retire is refused while the KEK is current, while any live data key is wrapped under it, or
  while a live engine says it still wraps under it. The register marks it retired in the same
  transaction as those checks; only then does the provider destroy it.
- A KEK is created implicitly only when there is neither a register nor a wrapped data key (a
  first start). A KEK the register or a wrapped key names but the provider lacks is an error that
  names the key and where it should be (KekMissingError); nothing is created in its place.
- Engines register (host, pid, heartbeat, the KEK they follow) and follow a rotation within a
  housekeeping tick. A row whose heartbeat is older than ENGINE_STALE, or whose pid is gone on
  this host, is not a running engine and holds nothing back.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from .errors import KekInUseError, KekMissingError, RecordingKeyError, UnknownKekError
from .kek import KekProvider

KEK_SCHEMA = """
CREATE TABLE IF NOT EXISTS keks (
    kek_id          TEXT PRIMARY KEY,
    state           TEXT NOT NULL CHECK (state IN ('current', 'previous', 'retired')),
    created_at      REAL NOT NULL,
    retired_at      REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS keks_one_current ON keks (state) WHERE state = 'current';
CREATE INDEX IF NOT EXISTS recordings_kek ON recordings (kek_id);

CREATE TABLE IF NOT EXISTS engines (
    engine_id       TEXT PRIMARY KEY,           -- host:pid:random
    host            TEXT NOT NULL,
    pid             INTEGER NOT NULL,
    started_at      REAL NOT NULL,
    heartbeat_at    REAL NOT NULL,
    kek_id          TEXT NOT NULL               -- the KEK this engine wraps new data keys under
);
"""

ENGINE_STALE = 15.0  # seconds without a heartbeat after which an engine row is ignored
HEARTBEAT_EVERY = 5.0

Transaction = Callable[[], AbstractContextManager[sqlite3.Connection]]


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineRow:
    engine_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    kek_id: str


@dataclass(slots=True, kw_only=True)
class RewrapReport:
    rewrapped: int = 0  # recordings' data keys
    caller_keys: int = 0  # the callers' keys and the keyed hash's key (recording.subjects)
    # (recording id, KEK id, why) of live data keys that could not be unwrapped: they stay as
    # they are, and the rest is still re-wrapped.
    failed: list[tuple[str, str, str]] = field(default_factory=list)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class KekRegistry:
    def __init__(self, db: sqlite3.Connection, provider: KekProvider, *,
                 transaction: Transaction, clock: Callable[[], float]) -> None:
        self._db = db
        self.provider = provider
        self._transaction = transaction
        self._clock = clock
        self.ready = False
        # SELECTs of the kek_id of every other key wrapped in this database (callers' keys):
        # they count as data keys for first-start detection, rewrap reports and retire.
        self._other_wrapped: list[str] = []
        db.executescript(KEK_SCHEMA)

    def count_wrapped_in(self, select_kek_ids: str) -> None:
        self._other_wrapped.append(select_kek_ids)

    # -- reading ----------------------------------------------------------------------------------

    def current(self, db: sqlite3.Connection | None = None) -> str | None:
        row = (db or self._db).execute(
            "SELECT kek_id FROM keks WHERE state = 'current'").fetchone()
        return None if row is None else str(row[0])

    def states(self) -> dict[str, str]:
        """KEK id -> current | previous | retired, for every KEK ever registered."""
        return {str(k): str(s) for k, s in self._db.execute(
            "SELECT kek_id, state FROM keks ORDER BY created_at, kek_id")}

    def in_use(self, db: sqlite3.Connection | None = None) -> dict[str, int]:
        """KEK id -> number of live data keys wrapped under it."""
        wrapped = " UNION ALL ".join(
            ["SELECT kek_id FROM recordings WHERE wrapped_key IS NOT NULL", *self._other_wrapped])
        return {str(k): int(n) for k, n in (db or self._db).execute(
            f"SELECT kek_id, COUNT(*) FROM ({wrapped}) GROUP BY kek_id")}

    # -- opening: adopt, create on a first start, or refuse ---------------------------------------

    def ensure(self, *, strict: bool = True, create: bool = True) -> None:
        """Check that the provider holds the current KEK and every KEK a data key needs.

        On a first start (no register, no wrapped data key) the provider makes the first KEK;
        a keystore from before the register adopts the provider's keys. Otherwise a missing
        KEK raises KekMissingError saying what to restore. `strict=False` (rotation) lets a
        missing current KEK pass when no data key is wrapped under it.
        """
        with self._transaction() as db:
            registered = {str(k): str(s) for k, s in db.execute("SELECT kek_id, state FROM keks")}
            in_use = self.in_use(db)
            self.provider.refresh()
            held = self.provider.key_ids()
            if not registered:
                missing = set(in_use) - set(held)
                if missing:
                    raise KekMissingError(self._missing_message(missing, in_use, None))
                if not held:  # first start: the one place a KEK is made without rotation
                    if not create:
                        return
                    held = [self.provider.new_key()]
                now = self._clock()
                for kek_id in held:
                    db.execute("INSERT INTO keks (kek_id, state, created_at) VALUES (?, ?, ?)",
                               (kek_id, "current" if kek_id == held[-1] else "previous", now))
            else:
                current = self.current(db)
                need = set(in_use)
                if current is not None and (strict or in_use.get(current)):
                    need.add(current)
                missing = need - set(held)
                if missing:
                    raise KekMissingError(self._missing_message(missing, in_use, current))
        self.ready = True

    def _missing_message(self, missing: set[str], in_use: dict[str, int],
                         current: str | None) -> str:
        names = ", ".join(
            f"{kek_id} ({'current, ' if kek_id == current else ''}"
            f"{in_use.get(kek_id, 0)} data key(s) wrapped under it)" for kek_id in sorted(missing))
        if not any(in_use.get(k) for k in missing):
            hint = ("No data key is wrapped under it: `vaultpbx keys rotate` starts a new "
                    "key-encryption key.")
        else:
            hint = ("Restore it there from your KEK backup (docs/keys.md). vaultpbx does not "
                    "create a new key-encryption key while wrapped data keys exist: recordings "
                    "made under a new one would become unreadable once the original is "
                    "restored.")
        return f"key-encryption key {names} not found in {self.provider.where}. {hint}"

    # -- wrapping ---------------------------------------------------------------------------------

    def wrap_current(self, db: sqlite3.Connection, data_key: bytes) -> tuple[str, bytes]:
        """(current KEK id, data key wrapped under it); call inside the storing transaction."""
        current = self.current(db)
        if current is None:
            raise KekMissingError("the keystore has no current key-encryption key "
                                  "(it was never opened with `ensure`)")
        try:
            return current, self.provider.wrap(current, data_key)
        except UnknownKekError:
            self.provider.refresh()  # rotated by another process since we last looked
        try:
            return current, self.provider.wrap(current, data_key)
        except UnknownKekError:
            raise KekMissingError(
                f"current key-encryption key {current} not found in {self.provider.where}"
            ) from None

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        try:
            return self.provider.unwrap(kek_id, wrapped)
        except UnknownKekError:
            self.provider.refresh()  # re-wrapped under a KEK another process made
        return self.provider.unwrap(kek_id, wrapped)

    # -- rotation, rewrap, retire -----------------------------------------------------------------

    def rotate(self) -> tuple[str | None, str]:
        """Make a new KEK and register it as current; return (previous, new)."""
        self.ensure(strict=False)
        with self._transaction() as db:
            previous = self.current(db)
            new_id = self.provider.new_key()
            db.execute("UPDATE keks SET state = 'previous' WHERE state = 'current'")
            db.execute("INSERT INTO keks (kek_id, state, created_at) VALUES (?, 'current', ?)",
                       (new_id, self._clock()))
        return previous, new_id

    def rewrap(self, *, batch: int = 500) -> RewrapReport:
        """Re-wrap every live data key not under the current KEK, in batches (writers are not
        blocked for long). A key that does not unwrap is reported and skipped, not fatal."""
        self.ensure()
        report = RewrapReport()
        after = ""
        while True:
            with self._transaction() as db:
                current = self.current(db)
                pending = db.execute(
                    "SELECT recording_id, kek_id, wrapped_key FROM recordings "
                    "WHERE wrapped_key IS NOT NULL AND kek_id != ? AND recording_id > ? "
                    "ORDER BY recording_id LIMIT ?", (current, after, batch)).fetchall()
                for rid, kek_id, wrapped in pending:
                    try:
                        data_key = self.unwrap(kek_id, wrapped)
                    except RecordingKeyError as exc:
                        report.failed.append((str(rid), str(kek_id), str(exc)))
                        continue
                    _, rewrapped = self.wrap_current(db, data_key)
                    db.execute("UPDATE recordings SET kek_id = ?, wrapped_key = ? "
                               "WHERE recording_id = ? AND wrapped_key IS NOT NULL",
                               (current, rewrapped, rid))
                    report.rewrapped += 1
            if len(pending) < batch:
                return report
            after = str(pending[-1][0])

    def retirable(self) -> list[str]:
        """KEKs the provider holds that are not current (retire checks the rest)."""
        self.provider.refresh()
        current = self.current()
        return [k for k in self.provider.key_ids() if k != current]

    def retire(self, kek_id: str) -> None:
        """Destroy `kek_id`, unless it is current, wraps a live data key, or a running engine
        still wraps under it (KekInUseError)."""
        self.provider.refresh()
        if kek_id not in self.provider.key_ids():
            raise UnknownKekError(kek_id)  # nothing to destroy; the register is left alone
        with self._transaction() as db:
            if kek_id == self.current(db):
                raise KekInUseError(kek_id, "it is the current key-encryption key")
            count = self.in_use(db).get(kek_id, 0)
            if count:
                raise KekInUseError(kek_id, f"{count} data key(s) are still wrapped under it "
                                            "(`vaultpbx keys rotate --rewrap` re-wraps them)")
            engines = [e for e in self.live_engines(db) if e.kek_id == kek_id]
            if engines:
                who = ", ".join(f"pid {e.pid} on {e.host}" for e in engines)
                raise KekInUseError(kek_id, f"running engine(s) {who} still wrap under it",
                                    engines=True)
            db.execute(
                "INSERT INTO keks (kek_id, state, created_at, retired_at) "
                "VALUES (?, 'retired', ?, ?) ON CONFLICT (kek_id) DO UPDATE "
                "SET state = 'retired', retired_at = excluded.retired_at",
                (kek_id, self._clock(), self._clock()))
        self.provider.destroy_key(kek_id)

    # -- running engines --------------------------------------------------------------------------

    def register_engine(self, kek_id: str) -> str:
        host, pid = socket.gethostname(), os.getpid()
        engine_id = f"{host}:{pid}:{os.urandom(4).hex()}"
        now = self._clock()
        with self._transaction() as db:
            live = {e.engine_id for e in self.live_engines(db)}
            # Rows of engines that died without unregistering (SIGKILL, power cut) go now.
            db.executemany("DELETE FROM engines WHERE engine_id = ?",
                           [(e,) for (e,) in db.execute("SELECT engine_id FROM engines")
                            if e not in live])
            db.execute("INSERT INTO engines (engine_id, host, pid, started_at, heartbeat_at, "
                       "kek_id) VALUES (?, ?, ?, ?, ?, ?)",
                       (engine_id, host, pid, now, now, kek_id))
        return engine_id

    def engine_heartbeat(self, engine_id: str, kek_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE engines SET heartbeat_at = ?, kek_id = ? WHERE engine_id = ?",
                       (self._clock(), kek_id, engine_id))

    def unregister_engine(self, engine_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM engines WHERE engine_id = ?", (engine_id,))

    def live_engines(self, db: sqlite3.Connection | None = None) -> list[EngineRow]:
        rows = [EngineRow(engine_id=str(e), host=str(h), pid=int(p), started_at=float(s),
                          heartbeat_at=float(b), kek_id=str(k))
                for e, h, p, s, b, k in (db or self._db).execute(
                    "SELECT engine_id, host, pid, started_at, heartbeat_at, kek_id FROM engines")]
        now, here = self._clock(), socket.gethostname()
        return [r for r in rows if now - r.heartbeat_at < ENGINE_STALE
                and (r.host != here or _pid_alive(r.pid))]
