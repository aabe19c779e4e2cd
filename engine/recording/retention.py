"""Retention: expiry by class, two-person legal hold, erasure by caller number.

Invariants:
- `expire(now)` shreds every finished recording (closed or incomplete) past its expiry that is not
  on legal hold. A recording still being written is never expired under its writer.
- A legal hold takes two distinct people: one requests, another approves. The requester cannot
  approve their own request; until approval the recording expires as usual.
- Erasure (a data-subject request) shreds every recording of that caller (found by subject id,
  subjects.py: every spelling of the number, and no other caller) except those on legal hold,
  which are reported back and re-sealed under the subject's newest key: the hold is the
  documented reason to keep them, and the erasure (erasure.py) destroys the older keys.
- Every shred goes through `Keystore.shred`, so it is logged and notified exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..hooks.registry import HookPoint
from .erasure import StoreErasure
from .errors import LegalHoldError, UnknownRecordingError
from .keystore import CALLER_CONTEXT, Keystore, RecordingEvent, ShredRecord


@dataclass(slots=True, kw_only=True)
class ErasureResult:
    shredded: list[ShredRecord] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # recording ids kept because of a legal hold


class RetentionManager:
    """Also the recordings' `PersonalDataStore` for erasure (erasure.py)."""

    name = "recordings"

    def __init__(self, store: Keystore, *, job_actor: str = "system:retention") -> None:
        self.store = store
        self.job_actor = job_actor

    def expire(self, now: float) -> list[ShredRecord]:
        due = self.store.db.execute(
            "SELECT recording_id FROM recordings WHERE state IN ('closed', 'incomplete') "
            "AND legal_hold = 0 AND expires_at <= ? ORDER BY expires_at",
            (now,),
        ).fetchall()
        return [
            self.store.shred(rid, reason="expired", actor=self.job_actor, now=now)
            for (rid,) in due
        ]

    # -- legal hold -------------------------------------------------------------------------------

    def request_hold(self, recording_id: str, *, actor: str, reason: str, now: float) -> None:
        with self.store.transaction() as db:
            state = db.execute(
                "SELECT state FROM recordings WHERE recording_id = ?", (recording_id,)
            ).fetchone()
            if state is None:
                raise UnknownRecordingError(recording_id)
            if state[0] == "shredded":
                raise LegalHoldError(f"recording {recording_id} is already shredded")
            existing = db.execute(
                "SELECT requested_by FROM legal_holds WHERE recording_id = ?", (recording_id,)
            ).fetchone()
            if existing is not None:
                raise LegalHoldError(
                    f"recording {recording_id} already has a hold request by {existing[0]!r}"
                )
            db.execute(
                "INSERT INTO legal_holds (recording_id, requested_by, requested_at, reason) "
                "VALUES (?, ?, ?, ?)",
                (recording_id, actor, now, reason),
            )
        self._notify("hold_request", recording_id, actor, now, reason)

    def approve_hold(self, recording_id: str, *, actor: str, now: float) -> None:
        with self.store.transaction() as db:
            request = db.execute(
                "SELECT requested_by, approved_by FROM legal_holds WHERE recording_id = ?",
                (recording_id,),
            ).fetchone()
            if request is None:
                raise LegalHoldError(f"recording {recording_id} has no hold request to approve")
            requested_by, approved_by = request
            if approved_by is not None:
                raise LegalHoldError(f"recording {recording_id} is already on hold")
            if requested_by == actor:
                self._notify("hold_refused", recording_id, actor, now, "same person", False)
                raise LegalHoldError(
                    f"{actor!r} requested this hold and cannot also approve it (two-person rule)"
                )
            db.execute(
                "UPDATE legal_holds SET approved_by = ?, approved_at = ? WHERE recording_id = ?",
                (actor, now, recording_id),
            )
            db.execute(
                "UPDATE recordings SET legal_hold = 1 WHERE recording_id = ?", (recording_id,)
            )
        self._notify("hold", recording_id, actor, now, f"requested by {requested_by}")

    def release_hold(self, recording_id: str, *, actor: str, now: float) -> None:
        """Lift a hold (or withdraw a request). Normal expiry applies again from the next run."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM legal_holds WHERE recording_id = ?", (recording_id,))
            db.execute(
                "UPDATE recordings SET legal_hold = 0 WHERE recording_id = ?", (recording_id,)
            )
        self._notify("hold_release", recording_id, actor, now, "")

    # -- erasure ----------------------------------------------------------------------------------

    def erase_caller(self, number: str, *, actor: str, now: float) -> ErasureResult:
        """Shred every recording of caller `number` (in any spelling), except held ones."""
        return self._erase(self.store.subjects.subject_of(number), actor=actor, now=now)

    def count_subject(self, subject: str) -> int:
        row = self.store.db.execute(
            "SELECT COUNT(*) FROM recordings WHERE caller_subject = ? AND state != 'shredded'",
            (subject,)).fetchone()
        return int(row[0])

    def erase_subject(self, subject: str, *, actor: str, now: float) -> StoreErasure:
        result = self._erase(subject, actor=actor, now=now)
        return StoreErasure(store=self.name, erased=len(result.shredded),
                            kept=tuple(result.held))

    def _erase(self, subject: str, *, actor: str, now: float) -> ErasureResult:
        result = ErasureResult()
        rows = self.store.db.execute(
            "SELECT recording_id, legal_hold, caller_sealed FROM recordings "
            "WHERE caller_subject = ? AND state != 'shredded' ORDER BY created_at",
            (subject,),
        ).fetchall()
        subjects = self.store.subjects
        for rid, hold, sealed in rows:
            if hold:
                result.held.append(rid)
                # Kept, under the subject's newest key: an erasure destroys the older ones.
                number = subjects.open(subject, sealed, context=CALLER_CONTEXT)
                if number is not None:
                    resealed = subjects.seal_for(subject, number, context=CALLER_CONTEXT)
                    with self.store.transaction() as db:
                        db.execute("UPDATE recordings SET caller_sealed = ? "
                                   "WHERE recording_id = ?", (resealed, rid))
                continue
            result.shredded.append(self.store.shred(rid, reason="erasure", actor=actor, now=now))
        return result

    def _notify(
        self, action: str, recording_id: str, actor: str, now: float, detail: str,
        allowed: bool = True,
    ) -> None:
        self.store.hooks.notify(
            HookPoint.RECORDING_ACCESSED,
            RecordingEvent(action=action, recording_id=recording_id, actor=actor, at=now,
                           detail=detail, allowed=allowed),
        )
