"""The location service (RFC 3261 §10.3): address-of-record → contact bindings with expiry.

Invariants:
- At most `max_contacts` bindings per AOR; when full, the one expiring soonest is replaced.
- A binding remembers the flow it was registered over, so calls reach a UA behind NAT or over
  its own TCP/TLS connection (the RFC 5626 idea, without the instance machinery).
- Expired bindings are never returned; they are swept lazily and by `sweep(now)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sip.endpoint import Flow


@dataclass(slots=True)
class Binding:
    contact: str  # the Contact URI as registered
    expires_at: float
    flow: Flow
    call_id: str
    cseq: int
    q: float = 1.0


class LocationService:
    def __init__(self) -> None:
        self._bindings: dict[str, list[Binding]] = {}

    def lookup(self, aor: str, now: float) -> list[Binding]:
        bindings = self._bindings.get(aor)
        if not bindings:
            return []
        live = [b for b in bindings if b.expires_at > now]
        if len(live) != len(bindings):
            if live:
                self._bindings[aor] = live
            else:
                del self._bindings[aor]
        return sorted(live, key=lambda b: -b.q)

    def update(
        self,
        aor: str,
        contact: str,
        expires: int,
        flow: Flow,
        call_id: str,
        cseq: int,
        now: float,
        *,
        q: float = 1.0,
        max_contacts: int = 5,
    ) -> bool:
        """Add, refresh or (expires 0) remove one binding. False: out-of-order CSeq (§10.3.7)."""
        bindings = [b for b in self._bindings.get(aor, []) if b.expires_at > now]
        for index, binding in enumerate(bindings):
            if binding.contact == contact:
                if binding.call_id == call_id and cseq <= binding.cseq:
                    return False
                if expires == 0:
                    del bindings[index]
                else:
                    bindings[index] = Binding(contact, now + expires, flow, call_id, cseq, q)
                break
        else:
            if expires > 0:
                if len(bindings) >= max_contacts:
                    bindings.remove(min(bindings, key=lambda b: b.expires_at))
                bindings.append(Binding(contact, now + expires, flow, call_id, cseq, q))
        if bindings:
            self._bindings[aor] = bindings
        else:
            self._bindings.pop(aor, None)
        return True

    def remove(self, aor: str, contact: str) -> bool:
        """Remove one binding (a contact that stopped answering); False when it is gone."""
        bindings = self._bindings.get(aor, [])
        kept = [b for b in bindings if b.contact != contact]
        if len(kept) == len(bindings):
            return False
        if kept:
            self._bindings[aor] = kept
        else:
            del self._bindings[aor]
        return True

    def remove_all(self, aor: str) -> None:
        self._bindings.pop(aor, None)

    def sweep(self, now: float) -> int:
        removed = 0
        for aor in list(self._bindings):
            before = len(self._bindings[aor])
            removed += before - len(self.lookup(aor, now))
        return removed

    def count(self) -> int:
        return sum(len(v) for v in self._bindings.values())

    def aors(self) -> list[str]:
        return list(self._bindings)
