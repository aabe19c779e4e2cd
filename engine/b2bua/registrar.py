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
"""

from __future__ import annotations

from ..runtime.config import Config
from ..sip.endpoint import Flow
from ..sip.headers import parse_name_addr
from ..sip.message import Request
from ..sip.uri import parse_uri
from .authgate import Reply
from .location import LocationService


class Registrar:
    def __init__(self, config: Config) -> None:
        self.location = LocationService()
        self.counters = {"registrations": 0}
        self.apply_config(config)

    def apply_config(self, config: Config) -> None:
        self.config = config

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
        self.counters["registrations"] += 1
        bindings = self.location.lookup(aor, now)
        return Reply(status=200, headers=tuple(
            ("contact", f"<{b.contact}>;expires={max(0, round(b.expires_at - now))}")
            for b in bindings))
