"""A test harness for the admin API: a manual clock, cheap argon2 parameters, one account per
role, a call-record store and a recording store in memory, a real audit log, and the real aiohttp
server on 127.0.0.1 (one uvloop in a background thread hosts every harness's server) with a
keep-alive HTTP client.

Source addresses: a peer in 127.0.0.0/8 is the client socket's real source address. The tests
also log in "from" documentation networks (192.0.2.0/24, 198.51.100.0/24, ...) that must never
be used on a socket here: for those alone the harness adds a test-only middleware, in front of
the API's own, that takes the peer from an `X-Test-Peer` header."""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyotp
import uvloop
from aiohttp import web
from multidict import CIMultiDict
from vaultpbx.api.admin import AdminApi
from vaultpbx.api.recordings import BytesStream
from vaultpbx.api.server import AdminHttpServer
from vaultpbx.hooks.maskers import resident_id_check_char
from vaultpbx.hooks.registry import HookPoint, HookRegistry
from vaultpbx.security.audit import AuditLog, FileSink
from vaultpbx.security.config import SecurityConfig
from vaultpbx.security.observer import AuditObserver
from vaultpbx.security.users import make_password_hasher

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, on a 30 s TOTP step boundary
PASSWORD = "correct horse battery staple"
HASHER = make_password_hasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD_HASH = HASHER.hash(PASSWORD)
ROLES = ("agent", "qa", "supervisor", "admin", "auditor")
# One account per role (named after it) and a second admin to approve.
SECRETS = {name: pyotp.random_base32() for name in (*ROLES, "admin2")}
USERS = [{"name": name, "role": "admin" if name == "admin2" else name,
          "password_hash": PASSWORD_HASH, "totp_secret": secret}
         for name, secret in SECRETS.items()]
RECORDING_ID = "0f" * 16
OFFICE = "127.101.2.3"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def resident_id(rng: random.Random) -> str:
    """A random valid 18-digit PRC resident ID (Beijing Dongcheng, a real birth date)."""
    first17 = (f"110101{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}"
               f"{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}")
    return first17 + resident_id_check_char(first17)


def luhn_card(rng: random.Random, prefix: str = "622202", length: int = 16) -> str:
    body = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # these are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


class FakeCdr:
    def __init__(self, records: list[dict[str, object]] | None = None) -> None:
        self.records = records or []

    def recent(self, limit: int = 100) -> list[dict[str, object]]:
        return [dict(r) for r in self.records[:limit]]

    # The CSV exports' reads (tests/api/test_api_cdr_export.py uses the real CdrStore).
    def calls_between(self, start: float, end: float, queue: str | None = None,
                      limit: int = -1) -> list[dict[str, object]]:
        return []

    def queue_events_between(self, start: float, end: float, queue: str | None = None,
                             limit: int = -1) -> list[dict[str, object]]:
        return []


class FakeRecordings:
    def __init__(self, rows: list[dict[str, object]] | None = None) -> None:
        self.rows = rows if rows is not None else [{
            "recording_id": RECORDING_ID, "created_at": T0 - 3600, "closed_at": T0 - 3500,
            "state": "closed", "retention_class": "default", "expires_at": T0 + 180 * 86400,
            "legal_hold": False, "caller": "+8613812345678"}]
        self.exports: list[tuple[str, str]] = []

    def list_recordings(self) -> list[dict[str, object]]:
        return [dict(r) for r in self.rows]

    def exists(self, recording_id: str) -> bool:
        return any(r["recording_id"] == recording_id for r in self.rows)

    async def export(self, recording_id: str, *, actor: str) -> BytesStream:
        self.exports.append((recording_id, actor))
        return BytesStream(b"RIFF....WAVE")

    async def verify(self, recording_id: str, *, actor: str) -> dict[str, object]:
        return {"recording_id": recording_id, "state": "closed", "passed": True, "problems": []}


T = TypeVar("T")


class ServerThread:
    """One uvloop in a daemon thread, for the whole test session."""

    _instance: ServerThread | None = None

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="api-harness").start()

    @classmethod
    def get(cls) -> ServerThread:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`function` on the loop's thread: objects the server uses there, such as a Keystore
        (SQLite handles belong to one thread), must be made and used there too."""
        async def on_loop() -> T:
            return function(*args, **kwargs)
        return self.run(on_loop(), timeout=300)


TEST_PEER = "X-Test-Peer"


@web.middleware
async def _test_peer(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
    peer = request.headers.get(TEST_PEER)
    return await handler(request.clone(remote=peer) if peer else request)


@dataclass
class Reply:
    """An HTTP answer as read off the socket."""

    status: int
    body: bytes
    headers: CIMultiDict[str]

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


def _loopback(peer: str) -> bool:
    try:
        return ipaddress.ip_address(peer) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        return False


@dataclass
class Harness:
    api: AdminApi
    clock: Clock
    events: list[tuple[HookPoint, dict[str, Any]]]
    audit: AuditLog
    recordings: FakeRecordings
    cdr: FakeCdr
    server: AdminHttpServer = field(init=False)
    port: int = field(init=False)
    _clients: dict[str, http.client.HTTPConnection] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.server = AdminHttpServer(self.api.routes(),
                                      middlewares=[_test_peer, *self.api.middlewares()],
                                      executor=self.api.workers)
        _, self.port = ServerThread.get().run(self.server.start("127.0.0.1", 0))
        OPEN_HARNESSES.append(self)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        ServerThread.get().run(self.server.close())
        self.api.close()
        self.audit.close()

    # -- requests -------------------------------------------------------------------------------

    def request(self, method: str, target: str, *, token: str | None = None,
                body: object = None, peer: str = OFFICE, raw: bytes | None = None) -> Reply:
        """One request over the harness's keep-alive connection for `peer`."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if not _loopback(peer):
            headers[TEST_PEER] = peer
        data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        for attempt in range(2):
            client = self._clients.get(peer)
            if client is None:
                source = (peer, 0) if _loopback(peer) else None
                client = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                                    source_address=source)
                self._clients[peer] = client
            try:
                client.request(method, target, body=data, headers=headers)
                answer = client.getresponse()
                payload = answer.read()
            except (ConnectionError, http.client.BadStatusLine) as exc:
                client.close()
                del self._clients[peer]
                if attempt:
                    raise AssertionError(f"{method} {target}: {exc!r}") from exc
                continue
            if answer.will_close:
                client.close()
                del self._clients[peer]
            # Date changes with the second; the tests compare everything else.
            kept = CIMultiDict((k, v) for k, v in answer.getheaders() if k.lower() != "date")
            return Reply(status=answer.status, body=payload, headers=kept)
        raise AssertionError("unreachable")

    def login(self, name: str, *, otp: str | None | bool = True, password: str = PASSWORD,
              peer: str = OFFICE) -> Reply:
        """otp=True: a fresh valid code (the clock moves one TOTP step first, so codes are
        never replayed); a string: that code; None/False: no code."""
        if otp is True:
            self.clock.advance(30)
            otp = pyotp.TOTP(SECRETS[name]).at(self.clock.now)
        return self.request("POST", "/login", peer=peer, body={
            "user": name, "password": password, "otp": otp or None})

    def token(self, name: str, **kwargs: Any) -> str:
        response = self.login(name, **kwargs)
        assert response.status == 200, response.body
        return str(json.loads(response.body)["token"])

    # -- what the hooks heard -------------------------------------------------------------------

    def heard(self, point: HookPoint, action: str | None = None) -> list[dict[str, Any]]:
        return [e for p, e in self.events
                if p is point and (action is None or e.get("action") == action)]


OPEN_HARNESSES: list[Harness] = []


def body(response: Reply) -> Any:
    return json.loads(response.body)


ERASE = {"number": "020 7946 0000"}  # the body of an erasure request


def erasure_service(h: Harness, *, needs_approval: bool = True) -> Any:
    """A real ErasureService over a real keystore and call-record store beside the audit log."""
    from vaultpbx.recording.erasure import ErasureService
    from vaultpbx.recording.kek import LocalFileKek
    from vaultpbx.recording.keystore import Keystore
    from vaultpbx.recording.retention import RetentionManager
    from vaultpbx.runtime.cdr import CdrStore

    root = h.audit.directory.parent / "erasure"
    keystore = Keystore(root / "keystore.db", LocalFileKek(root / "kek.key"), hooks=h.api.hooks)
    cdr = CdrStore(root / "cdr.db", keystore.subjects)
    return ErasureService(keystore, [RetentionManager(keystore), cdr], hooks=h.api.hooks,
                          needs_approval=needs_approval)


def make_harness(tmp_path: Path, *, security: dict[str, Any] | None = None,
                 cdr: FakeCdr | None = None, recordings: FakeRecordings | None = None,
                 **api_kwargs: Any) -> Harness:
    clock = Clock()
    # A generous budget: a slow CI disk must not get the audit observer struck off mid-test.
    hooks = HookRegistry(budget_seconds=10.0)
    events: list[tuple[HookPoint, dict[str, Any]]] = []
    for point in HookPoint:
        hooks.add_observer(point, lambda p, e: events.append((p, dict(e))), name="capture")
    # The outside copy of the checkpoints, beside the data as in configs/default.yaml: what
    # GET /audit/verify checks the log against.
    outside = tmp_path / "audit-outside" / "checkpoints.jsonl"
    audit = AuditLog(tmp_path / "audit", sinks=[FileSink(outside)], fsync=False,
                     checkpoint_every=10_000)
    AuditObserver(audit, clock).attach(hooks)
    config = SecurityConfig.from_dict({**(security or {}), "users": USERS})
    recordings = recordings if recordings is not None else FakeRecordings()
    cdr = cdr if cdr is not None else FakeCdr()
    api = AdminApi.from_config(config, hooks=hooks, cdr=cdr, recordings=recordings,
                               clock=clock, audit_dir=audit.directory, audit_sink=outside,
                               hasher=HASHER)
    for name, value in api_kwargs.items():
        setattr(api, name, value)
    return Harness(api=api, clock=clock, events=events, audit=audit, recordings=recordings,
                   cdr=cdr)
