"""A test harness for the admin API: a manual clock, cheap argon2 parameters, one account per
role, a call-record store and a recording store in memory, a real audit log, and a client that
routes like HttpServer but calls the handlers in-process."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyotp
from vaultpbx.api.admin import AdminApi
from vaultpbx.api.http import HttpRequest, HttpResponse
from vaultpbx.api.router import TemplateRouter, is_template
from vaultpbx.hooks.maskers import resident_id_check_char
from vaultpbx.hooks.registry import HookPoint, HookRegistry
from vaultpbx.security.audit import AuditLog
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

    def export(self, recording_id: str, *, actor: str) -> bytes:
        self.exports.append((recording_id, actor))
        return b"RIFF....WAVE"

    def verify(self, recording_id: str, *, actor: str) -> dict[str, object]:
        return {"recording_id": recording_id, "state": "closed", "passed": True, "problems": []}


@dataclass
class Harness:
    api: AdminApi
    clock: Clock
    events: list[tuple[HookPoint, dict[str, Any]]]
    audit: AuditLog
    recordings: FakeRecordings
    cdr: FakeCdr
    router: TemplateRouter[Any] = field(init=False)

    def __post_init__(self) -> None:
        self.routes = self.api.routes()
        self.router = TemplateRouter(self.routes.items())

    # -- requests -------------------------------------------------------------------------------

    def request(self, method: str, target: str, *, token: str | None = None,
                body: object = None, peer: str = OFFICE) -> HttpResponse:
        """Route like HttpServer._dispatch (exact, then templates) and call the handler."""
        path, _, query = target.partition("?")
        params: dict[str, list[str]] = {}
        for pair in filter(None, query.split("&")):
            key, _, value = pair.partition("=")
            params.setdefault(key, []).append(value)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        request = HttpRequest(method=method, path=path, query=params, headers=headers,
                              body=b"" if body is None else json.dumps(body).encode(), peer=peer)
        handler = None if is_template(path) else self.routes.get((method, path))
        if handler is None:
            handler, found, _ = self.router.match(method, path)
            assert handler is not None, f"no route for {method} {path}"
            request = replace(request, params=found)
        response = handler(request)
        assert isinstance(response, HttpResponse)
        return response

    def login(self, name: str, *, otp: str | None | bool = True, password: str = PASSWORD,
              peer: str = OFFICE) -> HttpResponse:
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


def body(response: HttpResponse) -> Any:
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
    audit = AuditLog(tmp_path / "audit", fsync=False, checkpoint_every=10_000)
    AuditObserver(audit, clock).attach(hooks)
    config = SecurityConfig.from_dict({**(security or {}), "users": USERS})
    recordings = recordings if recordings is not None else FakeRecordings()
    cdr = cdr if cdr is not None else FakeCdr()
    api = AdminApi.from_config(config, hooks=hooks, cdr=cdr, recordings=recordings,
                               clock=clock, audit_dir=audit.directory, hasher=HASHER)
    for name, value in api_kwargs.items():
        setattr(api, name, value)
    return Harness(api=api, clock=clock, events=events, audit=audit, recordings=recordings,
                   cdr=cdr)
