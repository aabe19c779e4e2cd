"""The digest gate (RFC 3261 §22, RFC 8760): who may REGISTER and who may place a call.

The gate decides; the B2BUA sends. `check` returns a `Verdict`: the authenticated extension, or
the exact answer to give (401/407 with a fresh challenge, 400, 403). No I/O: time comes in as
`now`, the challenge's entropy from the injected `token`.

Invariants:
- Known and unknown users get the same answers (no extension enumeration).
- Wrong passwords are throttled per (user, source address) and per user, whatever the source
  (trusted ones too). While a user is throttled for a source its attempts are not believed,
  right or wrong, and get the same fresh challenge as a wrong password: the answer tells
  neither whether the user exists nor whether the password was right.
- Every refused attempt is counted once in `counters` and reported once to `on_failure`
  (the runtime's ban list and audit); a stale nonce is not a failure.
- The throttle's counts survive a configuration reload; only its thresholds change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..security.throttle import CredentialThrottle
from ..sip.digest import DigestAnswer, DigestReason, DigestServer
from ..sip.endpoint import Flow
from ..sip.message import Request
from ..sip.uri import parse_uri

if TYPE_CHECKING:  # annotations only: the core does not load the runtime's config module
    from ..runtime.config import Config


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A final answer a sans-IO module asks the B2BUA to send on the request's transaction."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    user: str | None = None
    """The authenticated extension; None when `reply` must be sent instead."""
    reply: Reply | None = None


class DigestGate:
    def __init__(self, config: Config, *, secret: bytes, token: Callable[[], str]) -> None:
        self._secret = secret
        self._token = token
        self.throttle = CredentialThrottle(config.sip.digest_throttle)
        self.counters = {"auth_challenges": 0, "auth_failures": 0, "auth_throttled": 0}
        self.on_failure: Callable[[str, str, Flow], None] | None = None
        self.apply_config(config)

    def apply_config(self, config: Config) -> None:
        self.config = config
        self.digest = DigestServer(
            realm=config.sip.domain, secret=self._secret, nonce_ttl=config.sip.nonce_ttl,
            algorithms=tuple(config.sip.digest_algorithms),
        )
        self.throttle.config = config.sip.digest_throttle  # counts survive a reload

    def check(self, request: Request, flow: Flow, now: float, *, proxy: bool) -> Verdict:
        """Authenticate `request` (WWW- for REGISTER, Proxy- for calls when `proxy`)."""
        header = request.get("proxy-authorization" if proxy else "authorization")
        if header is None or not header.lstrip().lower().startswith("digest"):
            return self._challenge(now, proxy=proxy, stale=False)
        extensions = self.config.extensions

        def password_of(user: str) -> str | None:
            ext = extensions.get(user)
            return ext.password if ext is not None else None

        result = self.digest.verify(request.method, header, password_of, now,
                                    request_uri=request.uri)
        throttle = self.throttle
        if result.username and throttle.check(result.username, flow.host, now) > 0.0:
            self.counters["auth_throttled"] += 1
            self._count_failure(result.username, "throttled", flow)
            return self._challenge(now, proxy=proxy, stale=False)
        if result.ok:
            if self.config.auth.require_from_match:
                aor = request.to if request.method == "REGISTER" else request.from_
                if parse_uri(aor.uri).user != result.username:
                    self._count_failure(result.username, "identity-mismatch", flow)
                    return Verdict(reply=Reply(status=403))
            throttle.succeeded(result.username, flow.host, now)
            return Verdict(user=result.username)
        if result.reason in (DigestReason.BAD_RESPONSE, DigestReason.UNKNOWN_USER):
            throttle.failed(result.username, flow.host, now)
        answer = result.answer
        if answer is DigestAnswer.CHALLENGE_STALE:
            return self._challenge(now, proxy=proxy, stale=True)
        self._count_failure(result.username, result.reason.value, flow)
        if answer is DigestAnswer.BAD_REQUEST:
            return Verdict(reply=Reply(status=400, reason="Bad Authorization"))
        return self._challenge(now, proxy=proxy, stale=False)

    def _challenge(self, now: float, *, proxy: bool, stale: bool) -> Verdict:
        self.counters["auth_challenges"] += 1
        name = "proxy-authenticate" if proxy else "www-authenticate"
        values = self.digest.challenge_headers(now, stale, entropy=self._token().encode())
        return Verdict(reply=Reply(status=407 if proxy else 401,
                                   headers=tuple((name, value) for value in values)))

    def _count_failure(self, username: str, why: str, flow: Flow) -> None:
        self.counters["auth_failures"] += 1
        if self.on_failure is not None:
            self.on_failure(username, why, flow)
