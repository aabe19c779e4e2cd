"""Four-eyes approvals: an export, deletion or legal hold requested by one person runs only
after a different admin approves it.

Invariants:
- approver ≠ requester, and the approver's role must hold `approval.grant`.
- An approval is for one (action, target, requester) and is used once; it expires unused.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .rbac import AccessPolicy, Permission, PermissionDenied


class ApprovalError(PermissionError):
    pass


@dataclass(slots=True, kw_only=True)
class Approval:
    id: str
    action: str
    target: str
    requester: str
    requested_at: float
    expires: float
    approver: str | None = None
    approved_at: float | None = None
    used: bool = False


class ApprovalStore:
    __slots__ = ("policy", "ttl", "_items", "_ids")

    def __init__(self, policy: AccessPolicy, *, ttl: float = 24 * 3600.0) -> None:
        self.policy = policy
        self.ttl = ttl
        self._items: dict[str, Approval] = {}
        self._ids = itertools.count(1)

    def request(self, *, action: str, target: str, requester: str, role: str,
                now: float) -> Approval:
        self.policy.require(role, action)  # one may only ask for what one's role allows
        approval = Approval(
            id=f"apr-{next(self._ids)}", action=action, target=target, requester=requester,
            requested_at=now, expires=now + self.ttl,
        )
        self._items[approval.id] = approval
        return approval

    def approve(self, approval_id: str, *, approver: str, role: str, now: float) -> Approval:
        approval = self._live(approval_id, now)
        if not self.policy.allows(role, Permission.APPROVE):
            raise PermissionDenied(role, Permission.APPROVE)
        if approver == approval.requester:
            raise ApprovalError("an approval needs a second person: requester cannot approve")
        if approval.approver is not None:
            raise ApprovalError(f"{approval_id} is already approved")
        approval.approver = approver
        approval.approved_at = now
        return approval

    def consume(self, approval_id: str, *, action: str, target: str, requester: str,
                now: float) -> Approval:
        """Use an approval for exactly what it was given for; raise if it does not cover it."""
        approval = self._live(approval_id, now)
        if (approval.action, approval.target, approval.requester) != (action, target, requester):
            raise ApprovalError(f"{approval_id} does not cover {action} of {target} by {requester}")
        if approval.approver is None:
            raise ApprovalError(f"{approval_id} is not approved yet")
        approval.used = True
        return approval

    def _live(self, approval_id: str, now: float) -> Approval:
        approval = self._items.get(approval_id)
        if approval is None or approval.used:
            raise ApprovalError(f"no open approval {approval_id}")
        if now >= approval.expires:
            raise ApprovalError(f"approval {approval_id} expired")
        return approval

    def pending(self, now: float) -> list[Approval]:
        return [a for a in self._items.values()
                if a.approver is None and not a.used and now < a.expires]
