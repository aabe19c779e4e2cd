"""The admin HTTP API: password + TOTP login, call records and recordings shown through the
role's mask policy, four-eyes recording export, and the audit log for auditors.

  POST /login                             {user, password, otp} → token     anyone
  POST /logout, GET /me                                                      any session
  GET  /calls?limit=N                     call records, masked for the role  metadata.read
  GET  /cdr.csv?from=T&to=T[&queue=Q]     call records as CSV, masked, audited metadata.read
  GET  /queue-events.csv?from=T&to=T[&queue=Q]  queue log as CSV (docs/cdr.md)  metadata.read
  POST /calls/{id}/sensitive              {on: bool}: PCI pause of a recorded calls.handle
                                          call (id: engine call id or SIP Call-ID)
  GET  /recordings                        list, caller masked for the role   recording.list
  POST /recordings/{id}/export-requests   ask for an export                  recording.export
  GET  /export-requests                   open requests (approvers: all)     recording.export
  POST /export-requests/{id}/approve      a second admin approves            approval.grant
  GET  /recordings/{id}/export?request=ID the WAV, once per approval         recording.export
  GET  /recordings/{id}/verify            integrity of one recording         recording.export
  POST /erasures                          {number}: erase a caller's data    recording.delete
  GET  /erasures                          pending erasure requests           recording.delete
  POST /erasures/{id}/approve             a second admin runs it             approval.grant
  POST /users/{name}/unlock               lift a lock (not one's own)        users.manage
  GET  /audit?after=SEQ&limit=N           audit records                      audit.read
  GET  /audit/verify                      chain, Merkle roots, signatures    audit.verify

Transport is aiohttp's (server.py); the checks every route shares are three aiohttp middlewares
of this class, in this order: `audit` (the API_REQUEST record of every answer), `authenticate`
(bearer token → session, else 401), `authorize` (the route's permission in the role's matrix,
else 403; also answers a refusal raised inside a handler). Handlers keep only what is theirs.

Invariants:
- Every request passes HookPoint.API_REQUEST exactly once, after it is answered (method, route,
  status, peer, user, role); never a header or a body, so tokens and passwords cannot leak.
- CPU-heavy work never runs on the event loop (it is the SIP loop too): the argon2 check of a
  login runs in `workers`, an export's decryption and a verify in worker threads.
- A route names one permission of the RBAC matrix (security.access); the matrix is the only
  source of truth, and it cannot grant agents/QA an export nor auditors anything but audit.*.
  Missing/expired session → 401; a permission the role lacks → 403 with a JSON error and an
  ACCESS_DENIED hook (so an audit record).
- /login answers unknown users, wrong passwords, locked accounts and missing enrolment with the
  same status and body; "second factor required" is only said after a correct password. Failed
  logins are throttled per (account, source) and per account (security.login_throttle): a
  throttled attempt is 429 with Retry-After, for unknown and known names alike, and never ends
  a session.
- Personal data leaves only through the role's policy: the configured TextMasker, then any
  plug-in maskers of the registry; party fields (caller/callee) mask any 7+ digit user part.
- An export needs an approval of exactly (recording.export, this recording, this requester) by
  someone else holding approval.grant, and uses it up. Each export is a download for the anomaly
  rules: the first one over the limit locks the account (sessions revoked) and answers 423.
- Time comes only from the injected clock; nothing here reads the system time.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web
from argon2 import PasswordHasher

from ..hooks.maskers import DEFAULT_MASKER, TextMasker, mask_phone_number, mask_value
from ..hooks.registry import HookPoint, HookRegistry
from ..recording.errors import RecordingError, UnknownRecordingError
from ..security import audit as audit_log
from ..security.anomaly import AnomalyDetector, WebhookSink, hook_sink, log_sink
from ..security.approvals import Approval, ApprovalStore
from ..security.config import SecurityConfig, UserEntry, parse_users
from ..security.mfa import TotpVerifier
from ..security.rbac import Permission
from ..security.sessions import Session, SessionStore
from ..security.throttle import CredentialThrottle
from ..security.users import Authenticator, UserStore
from .erasure import ErasureApi, ErasureRefused
from .messages import HttpRequest, HttpResponse
from .recordings import RecordingAccess
from .recsearch import RecordingFilter, with_calls
from .server import OPEN, SESSION, Route, head_of, route_of, to_web

P = Permission
ANY_SESSION = "session"  # a route any logged-in user may call, whatever the role
PUBLIC = "public"

# (method, path template, permission | ANY_SESSION | PUBLIC, handler method name)
ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("POST", "/login", PUBLIC, "login"),
    ("POST", "/logout", ANY_SESSION, "logout"),
    ("GET", "/me", ANY_SESSION, "me"),
    ("GET", "/calls", P.METADATA_READ, "list_calls"),
    ("POST", "/calls/{id}/sensitive", P.CALLS_HANDLE, "switch_sensitive"),
    ("GET", "/cdr.csv", P.METADATA_READ, "export_cdr_csv"),
    ("GET", "/queue-events.csv", P.METADATA_READ, "export_queue_events_csv"),
    ("GET", "/recordings", P.RECORDING_LIST, "list_recordings"),
    ("POST", "/recordings/{id}/export-requests", P.RECORDING_EXPORT, "request_export"),
    ("GET", "/export-requests", P.RECORDING_EXPORT, "export_requests"),
    ("POST", "/export-requests/{id}/approve", P.APPROVE, "approve_export"),
    ("GET", "/recordings/{id}/export", P.RECORDING_EXPORT, "export_recording"),
    ("GET", "/recordings/{id}/verify", P.RECORDING_EXPORT, "verify_recording"),
    ("POST", "/erasures", P.RECORDING_DELETE, "request_erasure"),
    ("GET", "/erasures", P.RECORDING_DELETE, "erasure_requests"),
    ("POST", "/erasures/{id}/approve", P.APPROVE, "approve_erasure"),
    ("POST", "/users/{name}/unlock", P.USERS_MANAGE, "unlock_user"),
    ("GET", "/audit", P.AUDIT_READ, "read_audit"),
    ("GET", "/audit/verify", P.AUDIT_VERIFY, "audit_verify"),
)

PARTY_FIELDS = frozenset({"caller", "callee", "caller_number", "callee_number"})
_PARTY_USER_RE = re.compile(r"(?P<head>^|sips?:|tel:|<)(?P<number>\+?\d{7,})(?=$|[@;>])")
_log = logging.getLogger("vaultpbx.api.admin")
T = TypeVar("T")
WebHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CallRecordSource(Protocol):
    def recent(self, limit: int = 100) -> list[dict[str, object]]: ...


def load_users(store: UserStore, entries: Iterable[UserEntry | Mapping[str, Any]]) -> UserStore:
    """Add the configured accounts (SecurityConfig.users, or raw dicts of the same shape:
    {name, role, password_hash: "$argon2id$...", totp_secret}) to `store`."""
    items = list(entries)
    raw = [item for item in items if not isinstance(item, UserEntry)]
    parsed = list(parse_users(raw)) if raw else []
    for entry in [item for item in items if isinstance(item, UserEntry)] + parsed:
        store.add_hashed(entry.name, entry.role.value, entry.password_hash,
                         totp_secret=entry.totp_secret, extension=entry.extension)
    return store


@dataclass(slots=True)
class _LoginWindow:
    times: deque[float]
    told: bool = False


class _Denied(Exception):
    """A refusal inside a handler; the wrapper answers it and records ACCESS_DENIED."""

    def __init__(self, reason: str, *, status: int = 403, permission: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.permission = permission


class AdminApi:
    """Routes and middlewares for AdminHttpServer:
    `AdminHttpServer([*engine_routes, *api.routes()], middlewares=api.middlewares())`."""

    def __init__(
        self,
        security: SecurityConfig,
        *,
        users: UserStore,
        sessions: SessionStore,
        approvals: ApprovalStore,
        anomaly: AnomalyDetector,
        hooks: HookRegistry,
        cdr: CallRecordSource,
        recordings: RecordingAccess | None = None,
        clock: Callable[[], float] = time.time,
        audit_dir: str | os.PathLike[str] | None = None,
        audit_sink: str | os.PathLike[str] | None = None,
        totp: TotpVerifier | None = None,
        login_attempts: int = 10,
        login_window: float = 60.0,
    ) -> None:
        self.security = security
        self.policy = security.access
        self.users = users
        self.sessions = sessions
        self.approvals = approvals
        self.anomaly = anomaly
        self.hooks = hooks
        self.cdr = cdr
        self.recordings = recordings
        self.clock = clock
        self.audit_dir = Path(audit_dir) if audit_dir is not None else None
        self.audit_sink = Path(audit_sink) if audit_sink is not None else None
        self.masker = TextMasker(security.masking, country=security.privacy.default_country)
        # (call id, on, actor) -> False if no such recorded call; set by the runtime when it
        # records calls. The switch is audited there (HookPoint.RECORDING_SENSITIVE).
        self.sensitive: Callable[[str, bool, str], bool] | None = None
        # Erasure by caller (vaultpbx.recording.erasure.ErasureService); set by the runtime.
        self.erasure: Any = None
        # The browser console's cookie session (console.py): request → token, or None. Its
        # CSRF middleware runs before `authenticate`, so a token found here passed that check.
        self.cookie_token: Callable[[HttpRequest], str | None] | None = None
        self.auth = Authenticator(users, sessions, totp=totp, anomaly=anomaly, hooks=hooks,
                                  throttle=CredentialThrottle(security.login_throttle))
        self.login_attempts = login_attempts
        self.login_window = login_window
        self._login_sources: dict[str, _LoginWindow] = {}
        # Two threads for argon2 (64 MiB each at the default cost): logins beyond that queue
        # instead of taking memory, and never hold the event loop.
        self.workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vaultpbx-admin")
        self.counters: dict[str, int] = {
            "admin_requests_total": 0, "admin_logins_total": 0, "admin_login_failures_total": 0,
            "admin_login_rate_limited_total": 0, "admin_login_throttled_total": 0,
            "admin_unauthenticated_total": 0,
            "admin_denied_total": 0, "admin_exports_total": 0, "admin_errors_total": 0,
            "admin_cdr_exports_total": 0, "admin_cdr_exports_refused_total": 0,
        }

    @classmethod
    def from_config(
        cls,
        security: SecurityConfig,
        *,
        hooks: HookRegistry,
        cdr: CallRecordSource,
        recordings: RecordingAccess | None = None,
        clock: Callable[[], float] = time.time,
        audit_dir: str | os.PathLike[str] | None = None,
        audit_sink: str | os.PathLike[str] | None = None,
        hasher: PasswordHasher | None = None,
    ) -> AdminApi:
        """Build the stores from the `security:` section: users, sessions, approvals (policy),
        anomaly rules with alerts to the log and to the SECURITY_ALERT hook (hence the audit)."""
        users = load_users(UserStore(hasher), security.users)
        sessions = SessionStore(lifetime=security.sessions.lifetime_seconds,
                                idle_timeout=security.sessions.idle_seconds)
        sinks = [log_sink(), hook_sink(hooks)]
        if security.anomaly.webhook_url:
            sinks.append(WebhookSink(security.anomaly.webhook_url,
                                     security.anomaly.webhook_timeout))
        anomaly = AnomalyDetector(security.anomaly, sinks=sinks)
        return cls(security, users=users, sessions=sessions,
                   approvals=ApprovalStore(security.access), anomaly=anomaly, hooks=hooks,
                   cdr=cdr, recordings=recordings, clock=clock, audit_dir=audit_dir,
                   audit_sink=audit_sink)

    # -- routing --------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [Route(method=method, path=path, permission=permission,
                      handler=getattr(self, name))
                for method, path, permission, name in ROUTES]

    def middlewares(self) -> list[Callable[[web.Request, WebHandler], Awaitable[
            web.StreamResponse]]]:
        """For AdminHttpServer, outermost first."""
        return [self.audit, self.authenticate, self.authorize]

    def guard_routes(self, routes: Mapping[tuple[str, str], Callable[[HttpRequest], Any]],
                     permissions: Mapping[str, str], *,
                     own_agent_only: Collection[tuple[str, str]] = ()
                     ) -> list[Route]:
        """Put another component's routes (the ACD's agent controls) behind the same sessions,
        permission matrix, audit and API_REQUEST hook: `permissions` maps a method to the
        permission it needs. On the `own_agent_only` routes a session without `queue.manage`
        may name (JSON field `agent`) only its own user's `extension`; anything else is a 403,
        audited like any refusal."""
        guarded: list[Route] = []
        for (method, path), handler in routes.items():
            def with_session(request: HttpRequest, session: Session | None,
                             _handler: Callable[[HttpRequest], Any] = handler,
                             _scoped: bool = (method, path) in own_agent_only) -> HttpResponse:
                if _scoped and session is not None:
                    self._check_own_agent(request, session)
                result: HttpResponse = _handler(request)
                return result
            with_session.__name__ = getattr(handler, "__name__", "route")
            guarded.append(Route(method=method, path=path, permission=permissions[method],
                                 handler=with_session))
        return guarded

    def _check_own_agent(self, request: HttpRequest, session: Session) -> None:
        if self.policy.allows(session.role, P.QUEUE_MANAGE):
            return  # supervisors manage every agent
        try:
            body = request.json()
        except (ValueError, UnicodeDecodeError):
            return  # the handler answers 400
        agent = body.get("agent") if isinstance(body, dict) else None
        if not isinstance(agent, str):
            return  # the handler answers 400
        user = self.users.get(session.user)
        own = user.extension if user is not None else None
        if own is None or agent != own:
            raise _Denied(f"user {session.user} may change only its own agent "
                          f"({own or 'none configured'})", permission=P.QUEUE_MANAGE)

    # -- middlewares ------------------------------------------------------------------------------

    @web.middleware
    async def audit(self, request: web.Request, handler: WebHandler) -> web.StreamResponse:
        """The API_REQUEST record of every answer of an admin route, whatever answered it."""
        route = route_of(request)
        if route is None or route.permission == OPEN:
            return await handler(request)
        self.counters["admin_requests_total"] += 1
        status = 500
        try:
            response = await handler(request)
            status = response.status
        except web.HTTPException as exc:
            status = exc.status
            raise
        except Exception:
            self.counters["admin_errors_total"] += 1
            _log.exception("admin api handler failed: %s %s", request.method, route.path)
            response = to_web(_error(500, "internal error"))
        finally:
            self._finish(head_of(request), route.path, request.get(SESSION), status)
        return response

    @web.middleware
    async def authenticate(self, request: web.Request, handler: WebHandler
                           ) -> web.StreamResponse:
        """Bearer token → request[SESSION]; none or a dead one on a route that needs it: 401."""
        route = route_of(request)
        if route is None or route.permission in (OPEN, PUBLIC):
            return await handler(request)
        session = self._session(head_of(request))
        if session is None:
            self.counters["admin_unauthenticated_total"] += 1
            return to_web(_error(401, "authentication required",
                                 headers={"WWW-Authenticate": 'Bearer realm="vaultpbx"'}))
        request[SESSION] = session
        return await handler(request)

    @web.middleware
    async def authorize(self, request: web.Request, handler: WebHandler) -> web.StreamResponse:
        """The route's permission in the role's matrix, else 403 and ACCESS_DENIED; also the
        refusals handlers raise (`_Denied`), answered and audited the same way."""
        route = route_of(request)
        session: Session | None = request.get(SESSION)
        if route is None or session is None:
            return await handler(request)
        try:
            if route.permission not in (ANY_SESSION, PUBLIC, OPEN) and not self.policy.allows(
                    session.role, route.permission):
                raise _Denied(f"role {session.role} may not {route.permission}",
                              permission=route.permission)
            return await handler(request)
        except _Denied as denied:
            return to_web(self._deny(head_of(request), route.path, session, denied))

    async def run_blocking(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`function` in one of `workers`' threads (argon2): the event loop carries SIP."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.workers,
                                          functools.partial(function, *args, **kwargs))

    def close(self) -> None:
        self.workers.shutdown(wait=False, cancel_futures=True)

    def _finish(self, request: HttpRequest, route: str, session: Session | None,
                status: int) -> None:
        self.hooks.notify(HookPoint.API_REQUEST, {
            "actor": session.user if session else "-", "action": "api.request",
            "target": f"{request.method} {route}",
            "details": {"path": request.path, "status": status, "peer": request.peer,
                        "role": session.role if session else None}})

    def _deny(self, request: HttpRequest, route: str, session: Session | None,
              denied: _Denied) -> HttpResponse:
        self.counters["admin_denied_total"] += 1
        self.hooks.notify(HookPoint.ACCESS_DENIED, {
            "actor": session.user if session else "-", "action": "access.denied",
            "target": f"{request.method} {request.path}",
            "details": {"role": session.role if session else None, "reason": denied.reason,
                        "permission": denied.permission or None, "peer": request.peer}})
        body: dict[str, object] = {"error": "forbidden", "reason": denied.reason}
        if denied.permission:
            body["permission"] = denied.permission
        return HttpResponse.of_json(body, denied.status)

    def _session(self, request: HttpRequest) -> Session | None:
        token = _bearer(request)
        if token is None and self.cookie_token is not None:
            token = self.cookie_token(request)
        if token is None:
            return None
        session = self.sessions.get(token, self.clock())
        if session is None:
            return None
        user = self.users.get(session.user)
        now = self.clock()
        if (user is None or session.user in self.anomaly.locked
                or (user.locked_until is not None and now < user.locked_until)):
            self.sessions.revoke_user(session.user)
            return None
        return session

    # -- sessions -------------------------------------------------------------------------------

    async def login(self, request: HttpRequest, _: Session | None) -> HttpResponse:
        body = _json_object(request)
        if body is None:
            return _error(400, "expected a JSON object {user, password, otp}")
        name, password, otp = body.get("user"), body.get("password"), body.get("otp")
        if not isinstance(name, str) or not isinstance(password, str) or not (
                otp is None or isinstance(otp, str)):
            return _error(400, "user and password must be strings, otp a string or absent")
        try:
            ipaddress.ip_address(request.peer)
        except ValueError:
            return _error(400, "unknown peer address")
        now = self.clock()
        if not self._login_admitted(request.peer, now):
            return _error(429, "too many login attempts", headers={
                "Retry-After": str(int(self.login_window))})
        if self.auth.throttle.check(name, request.peer, now, count=False) > 0.0:
            password_ok = False  # throttled: answered before any hashing (users.py)
        else:
            # The argon2 check (tens of ms of CPU) in a worker thread; the rest on the loop.
            password_ok = await self.run_blocking(self.users.check_password, name, password)
        result = self.auth.login(name, password, otp, source_ip=request.peer, now=now,
                                 password_ok=password_ok)
        if result.throttled:  # the same for every account name, known or not (users.py)
            self.counters["admin_login_throttled_total"] += 1
            return _error(429, "too many failed attempts", headers={
                "Retry-After": _retry_after(result.retry_after)})
        if not result.ok or result.token is None:
            self.counters["admin_login_failures_total"] += 1
            payload: dict[str, object] = {"error": result.public_message}
            if result.second_factor_required:
                payload["second_factor_required"] = True
            return HttpResponse.of_json(payload, 503 if result.unavailable else 401)
        self.counters["admin_logins_total"] += 1
        session = self.sessions.get(result.token, now)
        assert session is not None
        return HttpResponse.of_json({
            "token": result.token, "token_type": "Bearer",
            "expires_in": round(session.expires - now), "user": session.user,
            "role": session.role})

    def _login_admitted(self, peer: str, now: float) -> bool:
        """At most `login_attempts` per source per window: each costs an argon2 hash (tens of
        ms of CPU on the loop), so one source must not be able to stall the engine."""
        window = self._login_sources.get(peer)
        if window is None:
            if len(self._login_sources) > 10_000:  # bounded: drop sources that went quiet
                self._login_sources = {k: w for k, w in self._login_sources.items()
                                       if w.times and now - w.times[-1] < self.login_window}
            window = self._login_sources[peer] = _LoginWindow(deque())
        times = window.times
        while times and now - times[0] >= self.login_window:
            times.popleft()
        if len(times) >= self.login_attempts:
            self.counters["admin_login_rate_limited_total"] += 1
            if not window.told:  # one audit record per burst, not one fsync per attempt
                window.told = True
                self.hooks.notify(HookPoint.ACCESS_DENIED, {
                    "actor": "-", "action": "login.rate_limited", "target": "admin-api",
                    "details": {"peer": peer, "attempts": len(times),
                                "window_seconds": self.login_window}})
            return False
        window.told = False
        times.append(now)
        return True

    def logout(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        token = _bearer(request)
        if token is not None:
            self.sessions.revoke(token)
        self.hooks.notify(HookPoint.LOGOUT, {
            "actor": session.user, "action": "logout", "target": "admin-api",
            "details": {"peer": request.peer}})
        return HttpResponse.of_json({"status": "logged out"})

    def me(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        return HttpResponse.of_json({
            "user": session.user, "role": session.role, "mfa": session.mfa,
            "expires": session.expires,
            "permissions": sorted(p.value for p in self.policy.permissions(session.role))})

    # -- call records ---------------------------------------------------------------------------

    def list_calls(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        limit = _int_query(request, "limit", 100, 1, 1000)
        if limit is None:
            return _error(400, "limit must be an integer from 1 to 1000")
        records = [self.mask_record(record, session.role) for record in self.cdr.recent(limit)]
        return HttpResponse.of_json({"calls": records})

    def export_cdr_csv(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        return self._export_csv(request, session, "calls")

    def export_queue_events_csv(self, request: HttpRequest, session: Session | None
                                ) -> HttpResponse:
        return self._export_csv(request, session, "queue_events")

    def _export_csv(self, request: HttpRequest, session: Session | None,
                    kind: str) -> HttpResponse:
        """The logic (masking, audit) is in runtime/cdr_export.py; this only maps HTTP."""
        from ..runtime import cdr_export

        assert session is not None
        if not hasattr(self.cdr, "calls_between"):
            return _error(404, "no call record store on this node")
        query = {name: (request.query.get(name) or [""])[0] for name in ("from", "to", "queue")}
        try:
            start, end = cdr_export.parse_range(query["from"], query["to"])
        except ValueError as exc:
            self.counters["admin_cdr_exports_refused_total"] += 1
            return _error(400, f"from and to must be ISO 8601 times: {exc}")
        try:
            result = cdr_export.export_csv(
                self.cdr, kind=kind, start=start, end=end,  # type: ignore[arg-type]
                queue=query["queue"] or None, role=session.role, actor=session.user,
                via="admin-api", masker=cdr_export.RowMasker(self.masker, self.hooks),
                audit=cdr_export.hook_audit(self.hooks), max_rows=cdr_export.API_MAX_ROWS)
        except cdr_export.TooManyRows as exc:
            self.counters["admin_cdr_exports_refused_total"] += 1
            return _error(400, str(exc))
        self.counters["admin_cdr_exports_total"] += 1
        name = "cdr" if kind == "calls" else "queue-events"
        return HttpResponse(body=result.body, content_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{name}.csv"'})

    def switch_sensitive(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        """PCI pause on or off: while on, no audio of the call reaches its recording."""
        assert session is not None
        body = _json_object(request)
        on = None if body is None else body.get("on")
        if not isinstance(on, bool):
            return _error(400, "expected a JSON object {\"on\": true|false}")
        if self.sensitive is None:
            return _error(404, "calls are not recorded on this node")
        call_id = request.params.get("id", "")
        if not self.sensitive(call_id, on, session.user):
            return _error(404, "no recorded call with this id")
        return HttpResponse.of_json({"call": call_id, "sensitive": on})

    def mask_record(self, record: Mapping[str, object], role: str) -> dict[str, object]:
        """One record as `role` may see it (also used for recording listings)."""
        out: dict[str, object] = {}
        for key, value in record.items():
            masked = mask_value(value, role, self.masker)
            if isinstance(masked, str):
                if key in PARTY_FIELDS:
                    masked = self._mask_party(masked, role)
                masked = self._plugins(masked, role)
            out[key] = masked
        return out

    def _mask_party(self, value: str, role: str) -> str:
        # A caller or callee field is a phone number by definition: mask any 7+ digit user part
        # the validating maskers let through (landlines, foreign numbers without a "+").
        policy = self.masker.policy_for(role)
        return _PARTY_USER_RE.sub(
            lambda m: m.group("head") + mask_phone_number(m.group("number"), policy), value)

    def _plugins(self, value: str, role: str) -> str:
        if self.hooks.has_masker_other_than(DEFAULT_MASKER):
            # The built-in masker already ran above with the configured policies; skip its
            # default-policy registration so an admin's configured view is not re-masked.
            return self.hooks.mask("api", value, role, skip=DEFAULT_MASKER)
        return value

    # -- recordings -----------------------------------------------------------------------------

    def _recording_store(self) -> RecordingAccess:
        if self.recordings is None:
            raise _Denied("recordings are not available on this node", status=404)
        return self.recordings

    def _recording_accessed(self, session: Session, action: str, recording_id: str, *,
                            allowed: bool, **details: object) -> None:
        self.hooks.notify(HookPoint.RECORDING_ACCESSED, {
            "actor": session.user, "action": f"recording.{action}", "target": recording_id,
            "details": {"role": session.role, "allowed": allowed, "via": "admin-api",
                        **details}})

    def list_recordings(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        try:  # ?from=&to=&queue=&agent=&caller= (engine/api/recsearch.py)
            search = RecordingFilter.parse(request.query)
        except ValueError as exc:
            return _error(400, str(exc))
        rows = with_calls(self._recording_store().list_recordings(), self.cdr)
        shown = [row for row in (self.mask_record(row, session.role) for row in rows)
                 if search.matches(row)]
        self._recording_accessed(session, "list", "*", allowed=True, count=len(shown))
        return HttpResponse.of_json({"recordings": shown})

    def request_export(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        recording_id = request.params.get("id", "")
        if not self._recording_store().exists(recording_id):
            return _error(404, "no such recording")
        approval = self.approvals.request(action=P.RECORDING_EXPORT, target=recording_id,
                                          requester=session.user, role=session.role,
                                          now=self.clock())
        self.hooks.notify(HookPoint.APPROVAL, {
            "actor": session.user, "action": "approval.request", "target": recording_id,
            "details": {"request": approval.id, "kind": P.RECORDING_EXPORT.value}})
        return HttpResponse.of_json(_approval_json(approval), 201)

    def export_requests(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        approver = self.policy.allows(session.role, P.APPROVE)
        items = [a for a in self.approvals.pending(self.clock())
                 if a.action == P.RECORDING_EXPORT and (approver or a.requester == session.user)]
        return HttpResponse.of_json({"requests": [_approval_json(a) for a in items]})

    def approve_export(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        request_id = request.params.get("id", "")
        now = self.clock()
        pending = next((a for a in self.approvals.pending(now)
                        if a.id == request_id and a.action == P.RECORDING_EXPORT), None)
        if pending is None:
            return _error(404, "no pending export request with this id")
        if pending.requester == session.user:
            raise _Denied("an export needs a second person: the requester cannot approve it")
        approval = self.approvals.approve(request_id, approver=session.user, role=session.role,
                                          now=now)
        self.hooks.notify(HookPoint.APPROVAL, {
            "actor": session.user, "action": "approval.grant", "target": approval.target,
            "details": {"request": approval.id, "requester": approval.requester,
                        "kind": P.RECORDING_EXPORT.value}})
        return HttpResponse.of_json(_approval_json(approval))

    async def export_recording(self, request: HttpRequest, session: Session | None
                               ) -> HttpResponse:
        assert session is not None
        recording_id = request.params.get("id", "")
        request_id = (request.query.get("request") or [""])[0]
        recordings = self._recording_store()
        if not recordings.exists(recording_id):
            return _error(404, "no such recording")
        now = self.clock()
        try:
            self.approvals.consume(request_id, action=P.RECORDING_EXPORT, target=recording_id,
                                   requester=session.user, now=now)
        except PermissionError as exc:  # ApprovalError: none, not approved, other target...
            self._recording_accessed(session, "export", recording_id, allowed=False,
                                     reason="no approval", request=request_id or None)
            raise _Denied(f"export needs an approved request (?request=ID): {exc}") from None
        if not self.anomaly.record_download(session.user, now):
            # Over the limit: the detector has alerted and locked the account (sessions gone).
            self._recording_accessed(session, "export", recording_id, allowed=False,
                                     reason="download limit", request=request_id)
            return _error(423, "account locked: too many recording downloads")
        self._recording_accessed(session, "export", recording_id, allowed=True,
                                 request=request_id)
        try:
            wav = await recordings.export(recording_id, actor=session.user)
        except UnknownRecordingError:
            return _error(404, "no such recording")
        except RecordingError as exc:
            return _error(409, f"recording cannot be exported: {type(exc).__name__}")
        self.counters["admin_exports_total"] += 1
        return HttpResponse(stream=wav, content_type="audio/wav", headers={
            "Content-Disposition": f'attachment; filename="{recording_id}.wav"'})

    async def verify_recording(self, request: HttpRequest, session: Session | None
                               ) -> HttpResponse:
        assert session is not None
        recording_id = request.params.get("id", "")
        recordings = self._recording_store()
        if not recordings.exists(recording_id):
            return _error(404, "no such recording")
        self._recording_accessed(session, "verify", recording_id, allowed=True)
        return HttpResponse.of_json(dict(await recordings.verify(recording_id,
                                                                 actor=session.user)))

    # -- erasure (logic in erasure.py) ----------------------------------------------------------

    def _erasure_api(self) -> ErasureApi:
        if self.erasure is None:
            raise _Denied("erasure is not available on this node", status=404)
        return ErasureApi(self.erasure, self.clock)

    def request_erasure(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        status, doc = self._erasure_api().request(_json_object(request), session.user)
        return HttpResponse.of_json(doc, status)

    def erasure_requests(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        status, doc = self._erasure_api().pending()
        return HttpResponse.of_json(doc, status)

    def approve_erasure(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        try:
            status, doc = self._erasure_api().approve(request.params.get("id", ""),
                                                      session.user)
        except ErasureRefused as exc:
            raise _Denied(str(exc), permission=P.APPROVE) from None
        return HttpResponse.of_json(doc, status)

    # -- accounts -------------------------------------------------------------------------------

    def unlock_user(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        """Lift a failure or anomaly lock. A locked account has no session, so this is always
        someone else's decision; the USER_CHANGE hook records who lifted it."""
        assert session is not None
        name = request.params.get("name", "")
        if name == session.user:
            raise _Denied("an account cannot unlock itself")
        if self.users.get(name) is None:
            return _error(404, "no such user")
        self.auth.unlock(name, by=session.user)
        return HttpResponse.of_json({"user": name, "status": "unlocked"})

    # -- audit ----------------------------------------------------------------------------------

    def read_audit(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        if self.audit_dir is None:
            return _error(404, "no audit log on this node")
        after = _int_query(request, "after", -1, -1, 2**62)
        limit = _int_query(request, "limit", 100, 1, 1000)
        if after is None or limit is None:
            return _error(400, "after must be an integer >= -1, limit from 1 to 1000")
        records = read_audit_records(self.audit_dir, after=after, limit=limit)
        body: dict[str, object] = {"records": records}
        if len(records) == limit:
            body["next"] = f"/audit?after={records[-1]['seq']}&limit={limit}"
        return HttpResponse.of_json(body)

    async def audit_verify(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        """What `vaultpbx audit verify` says: the log against the configured outside copies
        (file sink, HTTP receiver), the pinned key and the allowed lag. Reading the whole log
        runs in a worker thread, off the signalling loop."""
        from ..security.cli import verify_configured

        if self.audit_dir is None:
            return _error(404, "no audit log on this node")
        report = await self.run_blocking(verify_configured, self.audit_dir,
                                         self.security.audit, self.audit_sink, now=self.clock())
        if isinstance(report, str):  # nothing outside the data directory to check against
            return HttpResponse.of_json({"ok": False, "verified": False,
                                         "summary": f"audit log NOT verified: {report}"})
        return HttpResponse.of_json({"ok": report.ok, "verified": True,
                                     "summary": report.summary(),
                                     "first_bad": None if report.first_bad is None
                                     else str(report.first_bad)})


# -- helpers ---------------------------------------------------------------------------------------


def read_audit_records(directory: Path, *, after: int = -1, limit: int = 100
                       ) -> list[dict[str, Any]]:
    """Records with seq > `after`, at most `limit`, read line by line (memory ∝ limit). A line
    that does not parse is shown as such: the reader must see damage, not skip it."""
    out: list[dict[str, Any]] = []
    path = directory / audit_log.RECORDS_FILE
    if not path.exists():
        return out
    with path.open("rb") as handle:
        for line_number, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
                seq = int(record["seq"])
            except (ValueError, KeyError, TypeError):
                out.append({"seq": None, "line": line_number, "error": "unreadable record"})
            else:
                if seq > after:
                    out.append(record)
            if len(out) >= limit:
                break
    return out


def _approval_json(approval: Approval) -> dict[str, object]:
    status = "used" if approval.used else "approved" if approval.approver else "pending"
    out: dict[str, object] = {
        "id": approval.id, "recording_id": approval.target, "requester": approval.requester,
        "requested_at": approval.requested_at, "expires": approval.expires, "status": status,
        "approver": approval.approver}
    if status == "approved":
        out["download"] = f"/recordings/{approval.target}/export?request={approval.id}"
    return out


def _bearer(request: HttpRequest) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _json_object(request: HttpRequest) -> dict[str, Any] | None:
    try:
        value = request.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _int_query(request: HttpRequest, name: str, default: int, low: int, high: int) -> int | None:
    values = request.query.get(name)
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        return None
    return value if low <= value <= high else None


def _retry_after(seconds: float) -> str:
    """Retry-After in whole seconds (RFC 9110 §10.2.3); a refusal without end says a day."""
    return str(min(math.ceil(seconds), 86400))


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse.of_json({"error": message}, status)
    if headers:
        response.headers.update(headers)
    return response
