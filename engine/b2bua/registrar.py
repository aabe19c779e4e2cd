"""The registrar (RFC 3261 §10.3): REGISTER after authentication, into the location service.

The registrar owns the `LocationService` (the only copy of who is registered where); the B2BUA
reads it through `registrar.location` to ring extensions. No I/O: it returns the `Reply` to
send, and takes `now`.

Invariants:
- Only an extension of the configuration may hold bindings, and only for its own AOR (the
  digest gate has checked who is asking before `register` runs).
- Contacts of one REGISTER are applied in order; the first refused one (423 too brief, 400 bad
  q, 500 out-of-order CSeq) ends the request with that answer (RFC 3261 §10.3 steps 7-8).
- A 200 lists every live binding of the AOR with its remaining lifetime (§10.3 step 8).
- Qualify (OPTIONS probes, the shell sends them through the B2BUA): at most one probe per
  binding is in flight; any response proves the contact alive and clears its failures, and so
  does a REGISTER; only `max_failures` unanswered probes in a row remove it, and only if the
  binding is still the one probed. Every removal is counted and listed in `pruned` for the
  shell to log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..sip.endpoint import Flow
from ..sip.headers import parse_name_addr
from ..sip.message import Request
from ..sip.uri import parse_uri
from .authgate import Reply
from .location import LocationService

if TYPE_CHECKING:  # annotations only: the core does not load the runtime's config module
    from ..runtime.config import Config


@dataclass(frozen=True, slots=True, kw_only=True)
class QualifyProbe:
    """One OPTIONS probe to a registered contact (the owner of its client transaction)."""

    aor: str
    contact: str
    flow: Flow
    call_id: str  # the binding probed: its REGISTER's Call-ID and CSeq
    cseq: int


class Registrar:
    def __init__(self, config: Config) -> None:
        self.location = LocationService()
        self.counters = {"registrations": 0, "qualify_probes": 0, "contacts_pruned": 0}
        self._next_qualify: float | None = None
        self._in_flight: set[tuple[str, str]] = set()
        self._failures: dict[tuple[str, str], int] = {}
        self.pruned: list[tuple[str, str]] = []  # (aor, contact) removed, for the shell's log
        self.apply_config(config)

    def apply_config(self, config: Config) -> None:
        self.config = config
        if not config.sip.qualify.interval:
            self._next_qualify = None

    # -- qualify ---------------------------------------------------------------------------------
    def qualify_due(self, now: float) -> list[QualifyProbe]:
        """The probes to send now: every live binding once per `qualify.interval`."""
        interval = self.config.sip.qualify.interval
        if not interval:
            return []
        if self._next_qualify is None:
            self._next_qualify = now + interval  # phones just registered need no probe yet
            return []
        if now < self._next_qualify:
            return []
        self._next_qualify = now + interval
        probes: list[QualifyProbe] = []
        live: set[tuple[str, str]] = set()
        for aor in self.location.aors():
            for binding in self.location.lookup(aor, now):
                key = (aor, binding.contact)
                live.add(key)
                if key in self._in_flight:
                    continue
                self._in_flight.add(key)
                probes.append(QualifyProbe(aor=aor, contact=binding.contact, flow=binding.flow,
                                           call_id=binding.call_id, cseq=binding.cseq))
        # Failures of bindings that expired or were removed are forgotten (bounded memory).
        self._failures = {k: n for k, n in self._failures.items() if k in live}
        self.counters["qualify_probes"] += len(probes)
        return probes

    def qualify_answered(self, probe: QualifyProbe) -> None:
        """Any response, even 404 or 405, proves the contact reachable."""
        key = (probe.aor, probe.contact)
        self._in_flight.discard(key)
        self._failures.pop(key, None)

    def qualify_failed(self, probe: QualifyProbe, now: float) -> bool:
        """A probe timed out or could not be sent; True when the binding was removed."""
        key = (probe.aor, probe.contact)
        self._in_flight.discard(key)
        current = next((b for b in self.location.lookup(probe.aor, now)
                        if b.contact == probe.contact), None)
        if current is None or (current.call_id, current.cseq) != (probe.call_id, probe.cseq):
            self._failures.pop(key, None)  # gone or registered again since the probe
            return False
        failures = self._failures.get(key, 0) + 1
        if failures < self.config.sip.qualify.max_failures:
            self._failures[key] = failures
            return False
        self._failures.pop(key, None)
        self.location.remove(probe.aor, probe.contact)
        self.counters["contacts_pruned"] += 1
        self.pruned.append(key)
        return True

    @staticmethod
    def check_aor(request: Request) -> Reply | None:
        """Refuse a REGISTER whose To is not a SIP AOR, before asking for credentials."""
        if not parse_uri(request.to.uri).is_sip:
            return Reply(status=400, reason="To must be a SIP AOR")
        return None

    def register(self, request: Request, flow: Flow, now: float) -> Reply:
        """Apply an authenticated REGISTER (§10.3 steps 4-8) and say what to answer."""
        aor = parse_uri(request.to.uri).user or ""
        ext = self.config.extensions.get(aor)
        if ext is None:
            return Reply(status=403)
        sip = self.config.sip
        header_expires = request.get("expires")
        contacts = request.values("contact")
        call_id = request.call_id
        cseq = request.cseq.number
        if contacts == ["*"]:
            if header_expires is None or int(header_expires) != 0:
                return Reply(status=400, reason="Wildcard needs Expires: 0")
            self.location.remove_all(aor)
        for value in contacts if contacts != ["*"] else []:
            addr = parse_name_addr(value)
            raw = addr.params.get("expires", header_expires)
            expires = int(raw) if raw is not None else sip.register_default_expires
            if 0 < expires < sip.register_min_expires:
                return Reply(status=423,
                             headers=(("min-expires", str(sip.register_min_expires)),))
            expires = min(expires, sip.register_max_expires)
            try:
                q = float(addr.params.get("q", "1") or 1)
            except ValueError:
                return Reply(status=400, reason="Bad q value")
            if not self.location.update(aor, addr.uri, expires, flow, call_id, cseq, now, q=q,
                                        max_contacts=ext.max_contacts):
                return Reply(status=500, reason="Out of order CSeq")
            self._failures.pop((aor, addr.uri), None)  # it registered: it is alive
        self.counters["registrations"] += 1
        bindings = self.location.lookup(aor, now)
        return Reply(status=200, headers=tuple(
            ("contact", f"<{b.contact}>;expires={max(0, round(b.expires_at - now))}")
            for b in bindings))
