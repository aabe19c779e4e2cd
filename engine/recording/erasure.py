"""Erasure of one data subject's personal data (GDPR art. 17), across every store that holds it.

  service = ErasureService(keystore, [RetentionManager(keystore), cdr_store], hooks=hooks,
                           needs_approval=True)
  request = service.request("02079460000", actor="alice", now=now)   # four eyes: pending
  report = service.approve(request.id, actor="bob", now=now)          # runs it

Invariants:
- A subject is found only by its keyed identity (subjects.py): every spelling of the number,
  and no other caller. Nothing here stores or logs the number; a pending request keeps the
  subject id, which is blanked once the request has run.
- Each store that holds personal data joins by implementing `PersonalDataStore` and being passed
  in: recordings (RetentionManager) and call records (CdrStore) today, voicemail and callback
  requests when they exist. A store erases (or blanks) every item of the subject, except items
  it must keep (legal hold), which it re-seals with `SubjectKeyring.seal_for` and reports.
- Order makes it safe against writers running meanwhile (the engine writes call records while
  the CLI erases): a fresh subject key is made first, the stores run, then every older key of
  the subject is destroyed, and the fresh one too unless something was kept. A value sealed
  under a destroyed key, in this database, a copy or a backup, can no longer be opened.
- With four eyes (`security.privacy.erasure_needs_approval`), the request and the approval are
  two people; the requester cannot approve. Requests live in keystore.db, so the CLI and the
  admin API see the same ones. Every request, refusal and erasure goes to the RETENTION_CHANGE
  hook point (audited) with counts and request id, never the number or the subject id.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..hooks.registry import HookPoint, HookRegistry
from .errors import RecordingError

if TYPE_CHECKING:
    from .keystore import Keystore

SCHEMA = """
CREATE TABLE IF NOT EXISTS erasure_requests (
    request_id      TEXT PRIMARY KEY,
    subject         TEXT,                       -- blanked once the request has run
    requested_by    TEXT NOT NULL,
    requested_at    REAL NOT NULL,
    approved_by     TEXT,
    done_at         REAL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    report          TEXT                        -- JSON counts per store; no personal data
);
"""


class ErasureError(RecordingError):
    """A refused erasure step: unknown request, same person approving, approval required."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreErasure:
    store: str  # "recordings", "cdr", later "voicemail", "callbacks"
    erased: int  # items erased or blanked
    kept: tuple[str, ...] = ()  # ids of items kept (legal hold), re-sealed under the new key


class PersonalDataStore(Protocol):
    """What a store holding subject-linked personal data implements to join erasure."""

    name: str

    def count_subject(self, subject: str) -> int:
        """Items of `subject` that an erasure would touch now."""
        ...

    def erase_subject(self, subject: str, *, actor: str, now: float) -> StoreErasure:
        """Erase or blank every item of `subject`; re-seal and report the ones kept."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ErasureRequest:
    id: str
    requested_by: str
    requested_at: float
    state: str
    found: dict[str, int] = field(default_factory=dict)  # per store, when made


@dataclass(frozen=True, slots=True, kw_only=True)
class ErasureReport:
    request_id: str
    actor: str
    stores: tuple[StoreErasure, ...]
    keys_destroyed: int

    def as_dict(self) -> dict[str, object]:
        return {"request": self.request_id, "actor": self.actor,
                "erased": {s.store: s.erased for s in self.stores},
                "kept": {s.store: list(s.kept) for s in self.stores if s.kept},
                "keys_destroyed": self.keys_destroyed}


class ErasureService:
    def __init__(self, keystore: Keystore, stores: list[PersonalDataStore], *,
                 hooks: HookRegistry | None = None, needs_approval: bool = True) -> None:
        self.keystore = keystore
        self.stores = list(stores)
        self.hooks = hooks or keystore.hooks
        self.needs_approval = needs_approval
        keystore.db.executescript(SCHEMA)

    def add_store(self, store: PersonalDataStore) -> None:
        """A store that holds subject data joins every later erasure (voicemail, callbacks)."""
        self.stores.append(store)

    # -- finding ----------------------------------------------------------------------------------

    def find(self, number: str) -> dict[str, int]:
        """What an erasure of `number` would touch now, per store (nothing is changed)."""
        subject = self.keystore.subjects.subject_of(number)
        return {store.name: store.count_subject(subject) for store in self.stores}

    # -- four eyes --------------------------------------------------------------------------------

    def request(self, number: str, *, actor: str, now: float) -> ErasureRequest:
        subject = self.keystore.subjects.subject_of(number)
        found = {store.name: store.count_subject(subject) for store in self.stores}
        request_id = "era-" + os.urandom(6).hex()
        with self.keystore.transaction() as db:
            db.execute(
                "INSERT INTO erasure_requests (request_id, subject, requested_by, requested_at, "
                "state) VALUES (?, ?, ?, ?, 'pending')", (request_id, subject, actor, now))
        self._audit(actor, "erasure.request", request_id, {"found": found})
        return ErasureRequest(id=request_id, requested_by=actor, requested_at=now,
                              state="pending", found=found)

    def pending(self) -> list[ErasureRequest]:
        rows = self.keystore.db.execute(
            "SELECT request_id, requested_by, requested_at FROM erasure_requests "
            "WHERE state = 'pending' ORDER BY requested_at").fetchall()
        return [ErasureRequest(id=r, requested_by=b, requested_at=t, state="pending")
                for r, b, t in rows]

    def approve(self, request_id: str, *, actor: str, now: float) -> ErasureReport:
        row = self.keystore.db.execute(
            "SELECT subject, requested_by, state FROM erasure_requests WHERE request_id = ?",
            (request_id,)).fetchone()
        if row is None or row[2] != "pending":
            raise ErasureError(f"no pending erasure request {request_id}")
        subject, requested_by, _ = row
        if requested_by == actor:
            self._audit(actor, "erasure.refused", request_id, {"reason": "same person"},
                        allowed=False)
            raise ErasureError(f"{actor!r} requested this erasure and cannot also approve it "
                               "(four eyes)")
        return self._execute(str(subject), actor=actor, now=now, request_id=request_id,
                             approved_from=str(requested_by))

    def erase(self, number: str, *, actor: str, now: float) -> ErasureReport:
        """Erase at once; only when the configuration asks for no second person."""
        if self.needs_approval:
            raise ErasureError("erasure needs a second person's approval here: make a request "
                               "and have another admin approve it")
        subject = self.keystore.subjects.subject_of(number)
        request_id = "era-" + os.urandom(6).hex()
        with self.keystore.transaction() as db:
            db.execute(
                "INSERT INTO erasure_requests (request_id, subject, requested_by, requested_at, "
                "state) VALUES (?, ?, ?, ?, 'pending')", (request_id, subject, actor, now))
        return self._execute(subject, actor=actor, now=now, request_id=request_id,
                             approved_from=None)

    # -- the erasure itself -----------------------------------------------------------------------

    def _execute(self, subject: str, *, actor: str, now: float, request_id: str,
                 approved_from: str | None) -> ErasureReport:
        subjects = self.keystore.subjects
        fresh, _ = subjects.add_key(subject)  # kept items are re-sealed under it
        results = tuple(store.erase_subject(subject, actor=actor, now=now)
                        for store in self.stores)
        kept = any(result.kept for result in results)
        keep = (fresh,) if kept else ()
        if self.keystore.outside_log is not None:  # write-ahead: a restore replays it
            self.keystore.outside_log.append(
                kind="subject_keys", ids=[k for k in subjects.key_ids(subject) if k not in keep],
                reason="erasure", actor=actor, now=now)
        destroyed = subjects.destroy(subject, keep=keep)
        report = ErasureReport(request_id=request_id, actor=actor, stores=results,
                               keys_destroyed=destroyed)
        with self.keystore.transaction() as db:
            db.execute(
                "UPDATE erasure_requests SET subject = NULL, state = 'done', approved_by = ?, "
                "done_at = ?, report = ? WHERE request_id = ?",
                (actor if approved_from is not None else None, now,
                 json.dumps(report.as_dict()), request_id))
        self.keystore.scrub()
        details: dict[str, object] = dict(report.as_dict())
        if approved_from is not None:
            details["requested_by"] = approved_from
        self._audit(actor, "erasure.execute", request_id, details)
        return report

    def _audit(self, actor: str, action: str, request_id: str, details: dict[str, object],
               allowed: bool = True) -> None:
        self.hooks.notify(HookPoint.RETENTION_CHANGE, {
            "actor": actor, "action": action, "target": request_id,
            "details": {**details, "allowed": allowed}})
