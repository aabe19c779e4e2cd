"""Erasure of a data subject over the admin API: the logic behind three thin routes of admin.py.

  POST /erasures                 {number}        recording.delete   202 pending (four eyes) or
                                                                    200 done (no approval needed)
  GET  /erasures                                 recording.delete   pending requests (no numbers)
  POST /erasures/{id}/approve                    approval.grant     a second admin: runs it

Invariants:
- The number arrives in the request body only (never in a path or query, which proxies and
  access logs keep) and is never echoed, logged or stored: the service keeps the subject id.
- The requester cannot approve (403, audited by the admin API as any refusal); an unknown or
  finished request is 404. Every step is audited by the service (RETENTION_CHANGE).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..recording.erasure import ErasureError, ErasureService

MAX_NUMBER_LENGTH = 64


class ErasureRefused(Exception):
    """The person may not do this step (the admin API answers 403 and audits it)."""


class ErasureApi:
    def __init__(self, service: ErasureService, clock: Callable[[], float]) -> None:
        self.service = service
        self.clock = clock

    def request(self, body: Mapping[str, Any] | None, actor: str) -> tuple[int, dict[str, object]]:
        number = None if body is None else body.get("number")
        if not isinstance(number, str) or not number.strip() or len(number) > MAX_NUMBER_LENGTH:
            return 400, {"error": "expected a JSON object {\"number\": \"+44...\"}"}
        now = self.clock()
        if not self.service.needs_approval:
            return 200, self.service.erase(number, actor=actor, now=now).as_dict()
        request = self.service.request(number, actor=actor, now=now)
        return 202, {"request": request.id, "status": "pending", "found": request.found,
                     "approve": f"/erasures/{request.id}/approve"}

    def pending(self) -> tuple[int, dict[str, object]]:
        return 200, {"requests": [
            {"request": r.id, "requested_by": r.requested_by, "requested_at": r.requested_at}
            for r in self.service.pending()]}

    def approve(self, request_id: str, actor: str) -> tuple[int, dict[str, object]]:
        if request_id not in {r.id for r in self.service.pending()}:
            return 404, {"error": "no pending erasure request with this id"}
        try:
            report = self.service.approve(request_id, actor=actor, now=self.clock())
        except ErasureError as exc:
            raise ErasureRefused(str(exc)) from None
        return 200, report.as_dict()
