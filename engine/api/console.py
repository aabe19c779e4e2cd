"""The web console: static pages served by the engine, a cookie session for the browser, CSRF
protection, a live feed over a WebSocket, and the few routes only the console needs (hang up a
live call, play a recording).

  GET  /, /static/{name}          index.html, app.js, style.css          open (no data in them)
  POST /session                   {user, password, otp} → cookie + csrf  anyone (Origin checked)
  GET  /session                   who am I, with the csrf token         any session
  DELETE /session                 log out: session revoked, cookie gone  any session
  GET  /ws                        WebSocket: wallboard + live calls      calls.monitor, or
                                  (an agent's desktop: its own agent     calls.handle and
                                  and calls only)                        an extension
  POST /calls/{id}/hangup         end a live call (BYE on both legs)     calls.handle
  GET  /recordings/{id}/play      the WAV, streamed and audited          recording.play
  GET  /recordings/{id}/waveform  envelope + PCI-paused spans (JSON),    recording.play
                                  audited as recording.waveform
  POST /recordings/{id}/legal-hold          {reason}: ask for a hold      recording.legal_hold
  GET  /legal-holds                         requested and active holds    recording.legal_hold
  POST /recordings/{id}/legal-hold/approve  a second person approves      approval.grant
                                  (two people: the requester's own approval is refused, 403,
                                  and audited by the retention manager)

Invariants:
- The browser never holds the session token in script: it is only in a cookie that is
  HttpOnly, Secure, SameSite=Strict, Path=/ (named `__Host-vaultpbx` so that no sub-domain or
  plain-HTTP page can set it). The login itself is the admin API's (`AdminApi.login`: argon2,
  TOTP, throttles, audit); this module only moves its token into the cookie.
- A request that authenticates by cookie (no `Authorization` header) and changes state, and every
  WebSocket upgrade, must come from this origin (`Origin` equal to the listener's own) and, for
  state changes, carry `X-CSRF-Token`: an HMAC-SHA256 of the session token under a key drawn at
  start (the signed double-submit pattern, OWASP). Anything else is a 403, audited as
  ACCESS_DENIED. Bearer clients are not CSRF-prone and are untouched.
- Every page answer has a strict Content-Security-Policy: scripts and styles only from this
  origin, no inline script, no framing; the static files hold no secret and no data.
- The WebSocket is a route like the others: it passes authentication (cookie session) and a
  permission check (calls.monitor for everything; an agent with an extension sees only its own
  agent and calls; anyone else gets 403, audited). It pushes a snapshot (the same stats as
  GET /queues and /agents, live calls masked for the role) when anything changed and at least
  once a second; the page never polls. The session is re-checked before each push: logout,
  expiry or a lock closes the socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import Any, Protocol, runtime_checkable

from aiohttp import WSMsgType, web

from ..hooks.registry import HookPoint
from ..recording.errors import LegalHoldError, RecordingError, UnknownRecordingError
from ..recording.retention import RetentionManager
from ..recording.waveform import MAX_COLUMNS
from ..security.rbac import Permission
from ..security.sessions import Session
from .admin import ANY_SESSION, PUBLIC, AdminApi, _Denied, _error
from .messages import HttpRequest, HttpResponse
from .recordings import KeystoreRecordings
from .server import Route, head_of, route_of, to_web

P = Permission
COOKIE = "__Host-vaultpbx"
CSRF_HEADER = "x-csrf-token"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "media-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer", "Cross-Origin-Opener-Policy": "same-origin"}
STATIC = {"index.html": "text/html; charset=utf-8",
          "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUSH_CHECK = 0.2  # seconds between looks for a change: a change reaches the page within this
PUSH_EVERY = 1.0  # a snapshot at least this often, changed or not
# One snapshot per (role, scope) serves every WebSocket that looks within this: building one
# masks every live call, and per socket that cost grew with clients x calls on the SIP loop.
SNAPSHOT_SHARED = PUSH_CHECK / 2
HISTORY_SECONDS = 3600



@runtime_checkable
class WaveformSource(Protocol):
    async def waveform(self, recording_id: str, *, columns: int) -> Any: ...


WebHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LiveCalls = Callable[[], list[dict[str, Any]]]


class ConsoleApi:
    """Wire with `routes()` beside the admin API's and put `csrf` between its `audit` and
    `authenticate` middlewares (`middlewares()` gives the whole list)."""

    def __init__(self, admin: AdminApi, *, stats: Callable[[], dict[str, Any]] | None = None,
                 live_calls: LiveCalls | None = None,
                 hangup: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.time,
                 ticker: Callable[[], float] = time.monotonic) -> None:
        self.admin = admin
        self.stats = stats          # the ACD's {"queues": ..., "agents": ...}, or None
        self.live_calls = live_calls
        self.hangup_call = hangup
        self.clock = clock
        self.ticker = ticker
        # (role, scope) -> (ticker time, snapshot JSON): bounded by the users' roles and
        # extensions, each at most SNAPSHOT_SHARED old when handed out.
        self._bodies: dict[tuple[str, str], tuple[float, str]] = {}
        self._csrf_key = secrets.token_bytes(32)
        self._files = {name: (resources.files(__package__) / "static" / name).read_bytes()
                       for name in STATIC}
        # (time, waiting callers, agents available): one sample a second, the chart's hour.
        self.history: deque[tuple[float, int, int]] = deque(maxlen=HISTORY_SECONDS)
        self._states: dict[str, tuple[str, float]] = {}
        self.counters = {"console_csrf_refused_total": 0, "console_ws_open": 0,
                         "console_hangups_total": 0, "console_plays_total": 0,
                         # looks by the sockets, and the snapshots built for them
                         "console_feed_looks_total": 0, "console_snapshots_built_total": 0}
        admin.cookie_token = self.cookie_token

    # -- wiring ---------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        def static(name: str) -> Route:
            return Route.open("GET", "/" if name == "index.html" else f"/static/{name}",
                              lambda _request: self._static(name))
        return [
            *(static(name) for name in STATIC),
            Route(method="POST", path="/session", permission=PUBLIC, handler=self.login),
            Route(method="GET", path="/session", permission=ANY_SESSION, handler=self.whoami),
            Route(method="DELETE", path="/session", permission=ANY_SESSION,
                  handler=self.logout),
            Route(method="GET", path="/ws", permission=ANY_SESSION,
                  handler=_no_body, upgrade=self.feed),
            Route(method="POST", path="/calls/{id}/hangup", permission=P.CALLS_HANDLE,
                  handler=self.hangup),
            Route(method="GET", path="/recordings/{id}/play", permission=P.RECORDING_PLAY,
                  handler=self.play),
            Route(method="GET", path="/recordings/{id}/waveform", permission=P.RECORDING_PLAY,
                  handler=self.waveform),
            Route(method="POST", path="/recordings/{id}/legal-hold", permission=P.LEGAL_HOLD,
                  handler=self.request_hold),
            Route(method="GET", path="/legal-holds", permission=P.LEGAL_HOLD,
                  handler=self.legal_holds),
            Route(method="POST", path="/recordings/{id}/legal-hold/approve",
                  permission=P.APPROVE, handler=self.approve_hold),
        ]

    def middlewares(self) -> list[Callable[[web.Request, WebHandler],
                                           Awaitable[web.StreamResponse]]]:
        audit, authenticate, authorize = self.admin.middlewares()
        return [audit, self.csrf, authenticate, authorize]

    # -- cookie session and CSRF ----------------------------------------------------------------
    def csrf_token(self, token: str) -> str:
        return hmac.new(self._csrf_key, token.encode(), hashlib.sha256).hexdigest()

    def cookie_token(self, request: HttpRequest) -> str | None:
        return _cookie(request.headers.get("cookie", ""))

    @web.middleware
    async def csrf(self, request: web.Request, handler: WebHandler) -> web.StreamResponse:
        route = route_of(request)
        if route is None or "authorization" in request.headers:
            return await handler(request)
        upgrade = route.upgrade is not None
        login = route.path == "/session" and request.method == "POST"
        if request.method in SAFE_METHODS and not upgrade:
            return await handler(request)
        token = _cookie(request.headers.get("Cookie", ""))
        if token is None and not login:
            return await handler(request)  # no credentials at all: authenticate answers 401
        origin = request.headers.get("Origin")
        reason = None
        if origin != f"{request.scheme}://{request.host}":
            reason = "cross-origin request refused (Origin)"
        elif not (upgrade or login) and not hmac.compare_digest(
                request.headers.get(CSRF_HEADER, ""), self.csrf_token(token or "")):
            reason = "missing or wrong X-CSRF-Token"
        if reason is None:
            return await handler(request)
        self.counters["console_csrf_refused_total"] += 1
        head = head_of(request)
        self.admin.hooks.notify(HookPoint.ACCESS_DENIED, {
            "actor": "-", "action": "access.denied", "target": f"{request.method} {head.path}",
            "details": {"reason": reason, "peer": head.peer, "via": "console"}})
        return to_web(HttpResponse.of_json({"error": "forbidden", "reason": reason}, 403))

    async def login(self, request: HttpRequest, _: Session | None) -> HttpResponse:
        answer = await self.admin.login(request, None)
        if answer.status != 200:
            return answer
        body = json.loads(answer.body)
        token = body.pop("token")
        body.pop("token_type", None)
        return HttpResponse(body=_dumps({**body, **self._me(token)}).encode(), headers={
                "Set-Cookie": f"{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; "
                              f"Max-Age={int(body.get('expires_in', 0))}"})

    def whoami(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        token = self.cookie_token(request)
        if token is None:
            return _error(400, "GET /session is the browser's: log in with a cookie")
        return HttpResponse.of_json(self._me(token))

    def logout(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        token = self.cookie_token(request)
        if token is not None:
            self.admin.sessions.revoke(token)
        self.admin.hooks.notify(HookPoint.LOGOUT, {
            "actor": session.user, "action": "logout", "target": "console",
            "details": {"peer": request.peer}})
        return HttpResponse(body=b'{"status": "logged out"}\n', headers={
            "Set-Cookie": f"{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"})

    def _me(self, token: str) -> dict[str, Any]:
        session = self.admin.sessions.get(token, self.admin.clock())
        if session is None:
            return {}
        user = self.admin.users.get(session.user)
        return {"user": session.user, "role": session.role, "csrf": self.csrf_token(token),
                "extension": user.extension if user is not None else None,
                "permissions": sorted(p.value for p in
                                      self.admin.policy.permissions(session.role))}

    # -- static files ---------------------------------------------------------------------------
    def _static(self, name: str) -> HttpResponse:
        return HttpResponse(body=self._files[name], content_type=STATIC[name],
                            headers=dict(PAGE_HEADERS))

    # -- the live feed --------------------------------------------------------------------------
    def feed_scope(self, session: Session) -> str | None:
        """What the feed may show this session: every queue, agent and call (`calls.monitor`),
        else only its own agent and that agent's calls (an agent's desktop: `calls.handle` and
        an `extension`), else nothing (None: the feed is refused)."""
        if self.admin.policy.allows(session.role, P.CALLS_MONITOR):
            return "*"
        user = self.admin.users.get(session.user)
        if (user is not None and user.extension
                and self.admin.policy.allows(session.role, P.CALLS_HANDLE)):
            return str(user.extension)
        return None

    def snapshot(self, role: str, scope: str = "*") -> dict[str, Any]:
        stats = self.stats() if self.stats is not None else {"queues": {}, "agents": {}}
        calls = self.live_calls() if self.live_calls is not None else []
        allowed = self.admin.policy.allows(role, P.METADATA_READ)
        agents = {name: {**agent, "since": self._since(name, agent)}
                  for name, agent in stats.get("agents", {}).items()}
        queues = stats.get("queues", {})
        if scope != "*":
            agents = {name: agent for name, agent in agents.items() if name == scope}
            calls = [call for call in calls if call.get("agent") == scope]
            queues = {}
        return {"queues": queues, "agents": agents,
                "calls": [self.admin.mask_record(call, role) for call in calls] if allowed
                else []}

    def snapshot_body(self, role: str, scope: str = "*") -> str:
        """The snapshot as JSON, shared by every WebSocket of this role and scope that asks
        within SNAPSHOT_SHARED (masking is by role, the scope filters: both are in the key)."""
        self.counters["console_feed_looks_total"] += 1
        now = self.ticker()
        cached = self._bodies.get((role, scope))
        if cached is not None and now - cached[0] < SNAPSHOT_SHARED:
            return cached[1]
        body = _dumps(self.snapshot(role, scope))
        self.counters["console_snapshots_built_total"] += 1
        self._bodies[(role, scope)] = (now, body)
        return body

    def _since(self, name: str, agent: dict[str, Any]) -> float:
        """When this agent entered its state (a cache of the snapshots: the ACD keeps no such
        time; it resets when the state or the pause reason differs from the last look)."""
        state = f"{agent.get('state')}/{agent.get('break_reason')}"
        seen = self._states.get(name)
        if seen is None or seen[0] != state:
            seen = self._states[name] = (state, self.clock())
        return seen[1]

    def sample(self, now: float) -> None:
        """One point of the wallboard's chart (the runtime calls this once a second)."""
        if self.stats is None:
            return
        stats = self.stats()
        waiting = sum(int(q.get("waiting", 0)) for q in stats.get("queues", {}).values())
        available = sum(1 for a in stats.get("agents", {}).values()
                        if a.get("state") == "available")
        self.history.append((now, waiting, available))

    async def feed(self, request: web.Request, session: Session | None) -> web.StreamResponse:
        assert session is not None
        scope = self.feed_scope(session)
        if scope is None:
            raise _Denied(f"role {session.role} has no live view", permission=P.CALLS_MONITOR)
        socket = web.WebSocketResponse(heartbeat=30.0, max_msg_size=4096)
        await socket.prepare(request)
        head = head_of(request)
        self.counters["console_ws_open"] += 1
        reader = asyncio.ensure_future(_drain(socket))
        try:
            await socket.send_json({"type": "history", "points": list(self.history)},
                                   dumps=_dumps)
            last, sent_at = "", 0.0
            while not socket.closed and not reader.done():
                live = self.admin._session(head)
                if live is None or live.user != session.user:
                    await socket.close(code=4401, message=b"session ended")
                    break
                body = self.snapshot_body(session.role, scope)
                now = time.monotonic()
                if body != last or now - sent_at >= PUSH_EVERY:
                    await socket.send_str(f'{{"type":"snapshot","at":{self.clock()},'
                                          f'"data":{body}}}')
                    last, sent_at = body, now
                await asyncio.wait({reader}, timeout=PUSH_CHECK)
        except ConnectionError:
            pass
        finally:
            reader.cancel()
            self.counters["console_ws_open"] -= 1
            if not socket.closed:
                await socket.close()
        return socket

    # -- call control ---------------------------------------------------------------------------
    def hangup(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        call_id = request.params.get("id", "")
        calls = self.live_calls() if self.live_calls is not None else []
        call = next((c for c in calls if c.get("id") == call_id), None)
        if call is None or self.hangup_call is None:
            return _error(404, "no live call with this id")
        if not self.admin.policy.allows(session.role, P.CALLS_MONITOR):
            # An agent (calls.handle without monitoring) may end only its own call.
            user = self.admin.users.get(session.user)
            own = user.extension if user is not None else None
            if own is None or call.get("agent") != own:
                raise _Denied(f"user {session.user} may hang up only its own calls",
                              permission=P.CALLS_MONITOR)
        ended = self.hangup_call(call_id)
        self.admin.hooks.notify(HookPoint.CALL_CONTROL, {
            "actor": session.user, "action": "call.hangup", "target": call_id,
            "details": {"role": session.role, "peer": request.peer, "ended": ended,
                        "queue": call.get("queue"), "via": "console"}})
        if not ended:
            return _error(404, "no live call with this id")
        self.counters["console_hangups_total"] += 1
        return HttpResponse.of_json({"call": call_id, "status": "ending"})

    # -- recordings -----------------------------------------------------------------------------
    async def play(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        """Listening is not exporting: no four-eyes approval, but audited as
        `recording.play`, counted as a download by the anomaly rules, and served inline."""
        assert session is not None
        recordings = self.admin.recordings
        recording_id = request.params.get("id", "")
        if recordings is None or not recordings.exists(recording_id):
            return _error(404, "no such recording")
        if not self.admin.anomaly.record_download(session.user, self.admin.clock()):
            self.admin._recording_accessed(session, "play", recording_id, allowed=False,
                                           reason="download limit")
            return _error(423, "account locked: too many recording downloads")
        self.admin._recording_accessed(session, "play", recording_id, allowed=True)
        try:
            wav = await recordings.export(recording_id, actor=session.user)
        except UnknownRecordingError:
            return _error(404, "no such recording")
        except RecordingError as exc:
            return _error(409, f"recording cannot be played: {type(exc).__name__}")
        self.counters["console_plays_total"] += 1
        return HttpResponse(stream=wav, content_type="audio/wav", headers={
            "Content-Disposition": f'inline; filename="{recording_id}.wav"'})

    async def waveform(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        """The picture of a recording: seeing its envelope is a view like listening (same
        permission), audited as `recording.waveform`; no audio leaves the server."""
        assert session is not None
        recordings = self.admin.recordings
        recording_id = request.params.get("id", "")
        if (recordings is None or not isinstance(recordings, WaveformSource)
                or not recordings.exists(recording_id)):
            return _error(404, "no such recording")
        try:
            columns = int((request.query.get("columns") or ["600"])[0])
        except ValueError:
            columns = 0
        if not 1 <= columns <= MAX_COLUMNS:
            return _error(400, f"columns must be an integer 1..{MAX_COLUMNS}")
        self.admin._recording_accessed(session, "waveform", recording_id, allowed=True)
        try:
            picture = await recordings.waveform(recording_id, columns=columns)
        except UnknownRecordingError:
            return _error(404, "no such recording")
        except RecordingError as exc:
            return _error(409, f"recording cannot be read: {type(exc).__name__}")
        return HttpResponse.of_json(picture)

    # -- legal hold (two people: engine/recording/retention.py) ----------------------------------
    def _retention(self) -> RetentionManager:
        recordings = self.admin.recordings
        if not isinstance(recordings, KeystoreRecordings):
            raise _Denied("recordings are not available on this node", status=404)
        return RetentionManager(recordings.store)

    def request_hold(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        retention = self._retention()
        body = _json_body(request)
        reason = body.get("reason") if body is not None else None
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
            return _error(400, 'expected {"reason": "..."} (1 to 200 characters)')
        recording_id = request.params.get("id", "")
        try:
            retention.request_hold(recording_id, actor=session.user, reason=reason.strip(),
                                   now=self.admin.clock())
        except UnknownRecordingError:
            return _error(404, "no such recording")
        except LegalHoldError as exc:
            return _error(409, str(exc))
        return HttpResponse.of_json({"recording_id": recording_id, "status": "pending",
                                     "requested_by": session.user}, 201)

    def legal_holds(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        retention = self._retention()
        rows = retention.store.db.execute(
            "SELECT recording_id, requested_by, requested_at, reason, approved_by, approved_at"
            " FROM legal_holds ORDER BY requested_at").fetchall()
        return HttpResponse.of_json({"holds": [
            {"recording_id": rid, "requested_by": by, "requested_at": at, "reason": reason,
             "approved_by": approver, "approved_at": approved,
             "status": "pending" if approver is None else "active"}
            for rid, by, at, reason, approver, approved in rows]})

    def approve_hold(self, request: HttpRequest, session: Session | None) -> HttpResponse:
        assert session is not None
        retention = self._retention()
        recording_id = request.params.get("id", "")
        row = retention.store.db.execute(
            "SELECT requested_by FROM legal_holds WHERE recording_id = ?",
            (recording_id,)).fetchone()
        try:
            retention.approve_hold(recording_id, actor=session.user, now=self.admin.clock())
        except LegalHoldError as exc:
            # The retention manager audited a same-person attempt as hold_refused.
            return _error(403 if row is not None and row[0] == session.user else 409, str(exc))
        return HttpResponse.of_json({"recording_id": recording_id, "status": "active",
                                     "approved_by": session.user,
                                     "requested_by": row[0] if row else None})


def _json_body(request: HttpRequest) -> dict[str, Any] | None:
    try:
        body = request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _no_body(request: HttpRequest, session: Any) -> HttpResponse:
    return _error(400, "this route is a WebSocket")  # never called: Route.upgrade answers


async def _drain(socket: web.WebSocketResponse) -> None:
    """Read (and ignore) what the page sends; returns when the socket closes."""
    async for message in socket:
        if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
            break


def _dumps(value: object) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _cookie(header: str) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None

