"""The console's defences, as an attacker meets them, on a real engine over real sockets:

- the login puts the token only in an HttpOnly, Secure, SameSite=Strict `__Host-` cookie; the
  answer's body has no token;
- a state change by cookie without the CSRF token, with a wrong one, or from another Origin is
  refused (403, audited) and changes nothing; the same request with the token works;
- a WebSocket from another origin, or without a session, is refused; an agent's is refused;
- the pages carry a strict Content-Security-Policy, hold no inline script and no secret;
- logout revokes the cookie's session.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import aiohttp
import pyotp
import pytest
from argon2 import PasswordHasher

from tests.integration.engine import RunningEngine
from tests.integration.test_sipp_calls import start_pbx

pytestmark = pytest.mark.integration

HASHER = PasswordHasher()
SUP_SECRET, SUP2_SECRET, SUP3_SECRET, SUP4_SECRET, SUP5_SECRET, AGENT_SECRET, AUDITOR_SECRET = (
    pyotp.random_base32(32) for _ in range(7))
USERS = [
    {"name": "sup", "role": "supervisor", "password_hash": HASHER.hash("sup-password-123"),
     "totp_secret": SUP_SECRET},
    {"name": "agent", "role": "agent", "password_hash": HASHER.hash("agent-password-123"),
     "totp_secret": AGENT_SECRET, "extension": "2001"},
    # One supervisor per test: a TOTP code works once, so reusing one would wait for the next.
    {"name": "sup2", "role": "supervisor", "password_hash": HASHER.hash("sup-password-123"),
     "totp_secret": SUP2_SECRET},
    *({"name": name, "role": "supervisor", "password_hash": HASHER.hash("sup-password-123"),
       "totp_secret": secret}
      for name, secret in (("sup3", SUP3_SECRET), ("sup4", SUP4_SECRET), ("sup5", SUP5_SECRET))),
    {"name": "auditor", "role": "auditor", "password_hash": HASHER.hash("auditor-password-1"),
     "totp_secret": AUDITOR_SECRET},
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    started: list[RunningEngine] = []
    overrides = {
        "security": {"floodguard": {"trusted": ["127.0.0.1/32"]}, "users": USERS},
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "dialplan": [{"match": "700", "queue": "support"}],
        "routing": {"skills": ["english"], "agents": {"2001": {"skills": {"english": 1}},
                                               "2002": {"skills": {"english": 1}}},
                    "queues": {"support": {"skills": {"english": 1}}}},
    }
    try:
        yield start_pbx(started, tmp_path_factory.mktemp("console-sec"), overrides)
    finally:
        for each in started:
            each.stop(timeout=10)


_codes: set[str] = set()


async def _code(secret: str) -> str:
    while (code := pyotp.TOTP(secret).now()) + secret in _codes:  # a code works once
        await asyncio.sleep(0.5)
    _codes.add(code + secret)
    return code


async def _session(engine: RunningEngine, http: aiohttp.ClientSession, user: str,
                   password: str, secret: str) -> tuple[str, str]:
    """Log in as the page does; returns (cookie value, csrf token)."""
    async with http.post(f"{engine.admin_url}/session", json={
            "user": user, "password": password, "otp": await _code(secret)},
            headers={"Origin": engine.admin_url}) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
        cookie = response.headers["Set-Cookie"]
    assert "token" not in body and "Bearer" not in json.dumps(body)
    name, _, rest = cookie.partition("=")
    value = rest.split(";", 1)[0]
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert name == "__Host-vaultpbx"
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= flags
    assert value not in json.dumps(body)
    return value, body["csrf"]


def _audit(engine: RunningEngine) -> list[dict]:
    path = next(engine.config_path.parent.rglob("audit.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cookie_state_changes_need_the_csrf_token_and_this_origin(engine: RunningEngine) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            cookie, csrf = await _session(engine, http, "sup", "sup-password-123", SUP_SECRET)
            jar = {"Cookie": f"__Host-vaultpbx={cookie}"}
            login = f"{engine.admin_url}/agents/login"
            attempts = [
                ({**jar, "Origin": engine.admin_url}, "X-CSRF-Token"),       # no token
                ({**jar, "Origin": engine.admin_url, "X-CSRF-Token": "0" * 64}, "X-CSRF-Token"),
                ({**jar, "Origin": "https://evil.example", "X-CSRF-Token": csrf}, "Origin"),
                ({**jar, "X-CSRF-Token": csrf}, "Origin"),                    # no Origin
            ]
            for headers, reason in attempts:
                async with http.post(login, json={"agent": "2001"}, headers=headers) as r:
                    assert r.status == 403, (headers, await r.text())
                    assert reason in (await r.json())["reason"]
            # Nothing changed: the agent is still offline.
            async with http.get(f"{engine.admin_url}/agents", headers=jar) as r:
                assert (await r.json())["agents"]["2001"]["state"] == "offline"
            async with http.post(login, json={"agent": "2001"}, headers={
                    **jar, "Origin": engine.admin_url, "X-CSRF-Token": csrf}) as r:
                assert r.status == 200 and (await r.json())["state"] == "available"
            # Logout revokes the session behind the cookie.
            async with http.delete(f"{engine.admin_url}/session", headers={
                    **jar, "Origin": engine.admin_url, "X-CSRF-Token": csrf}) as r:
                assert r.status == 200
                assert "Max-Age=0" in r.headers["Set-Cookie"]
            async with http.get(f"{engine.admin_url}/session", headers=jar) as r:
                assert r.status == 401

    asyncio.run(run())
    refusals = [r for r in _audit(engine) if r["action"] == "access.denied"
                and r["details"].get("via") == "console"]
    assert len(refusals) == 4
    metrics = engine.metrics()
    assert metrics.get("vaultpbx_console_csrf_refused_total") == 4, sorted(
        name for name in metrics if "console" in name)


def test_websocket_needs_a_session_this_origin_and_a_live_view(engine: RunningEngine) -> None:
    async def run() -> None:
        ws_url = engine.admin_url.replace("http", "ws", 1) + "/ws"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            sup, _ = await _session(engine, http, "sup2", "sup-password-123", SUP2_SECRET)
            agent, _ = await _session(engine, http, "agent", "agent-password-123",
                                      AGENT_SECRET)
            auditor, _ = await _session(engine, http, "auditor", "auditor-password-1",
                                        AUDITOR_SECRET)
            cases = [({"Origin": engine.admin_url}, 401),
                     ({"Origin": "https://evil.example", "Cookie": f"__Host-vaultpbx={sup}"},
                      403),
                     ({"Cookie": f"__Host-vaultpbx={sup}"}, 403),  # no Origin at all
                     ({"Origin": engine.admin_url, "Cookie": f"__Host-vaultpbx={auditor}"},
                      403)]
            for headers, status in cases:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(ws_url, headers=headers)
                assert refused.value.status == status, headers
            async with http.ws_connect(ws_url, headers={
                    "Origin": engine.admin_url, "Cookie": f"__Host-vaultpbx={sup}"}) as ws:
                history = await ws.receive_json(timeout=5)
                assert history["type"] == "history"
                first = await ws.receive_json(timeout=5)
                assert first["type"] == "snapshot"
                assert set(first["data"]) == {"queues", "agents", "calls"}
                assert "2001" in first["data"]["agents"]
                # Nothing changes, yet a snapshot comes at least once a second.
                second = await ws.receive_json(timeout=3)
                assert second["type"] == "snapshot" and second["at"] > first["at"]
            # An agent's desktop feed: its own agent only, no queues, no one else.
            async with http.ws_connect(ws_url, headers={
                    "Origin": engine.admin_url, "Cookie": f"__Host-vaultpbx={agent}"}) as ws:
                await ws.receive_json(timeout=5)
                own = (await ws.receive_json(timeout=5))["data"]
                assert set(own["agents"]) == {"2001"} and own["queues"] == {}

    asyncio.run(run())


def test_pages_have_a_strict_csp_and_no_inline_script_or_secret(engine: RunningEngine) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{engine.admin_url}/") as r:
                assert r.status == 200
                csp = r.headers["Content-Security-Policy"]
                page = await r.text()
                assert r.headers["X-Frame-Options"] == "DENY"
            for name in ("app.js", "style.css"):
                async with http.get(f"{engine.admin_url}/static/{name}") as r:
                    assert r.status == 200 and "Content-Security-Policy" in r.headers
                    page += await r.text()
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), "inline script in the page"
        for user in USERS:  # no password, hash or TOTP secret reaches a static file
            assert user["totp_secret"] not in page
            assert str(user["password_hash"])[:30] not in page
        assert ".innerHTML" not in page and "insertAdjacentHTML" not in page

    asyncio.run(run())


def test_logout_closes_the_open_websocket(engine: RunningEngine) -> None:
    async def run() -> None:
        ws_url = engine.admin_url.replace("http", "ws", 1) + "/ws"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            cookie, csrf = await _session(engine, http, "sup3", "sup-password-123", SUP3_SECRET)
            jar = {"Origin": engine.admin_url, "Cookie": f"__Host-vaultpbx={cookie}"}
            async with http.ws_connect(ws_url, headers=jar) as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "history"
                async with http.delete(f"{engine.admin_url}/session",
                                       headers={**jar, "X-CSRF-Token": csrf}) as r:
                    assert r.status == 200
                # Snapshots may still be in flight; then the server closes with 4401.
                for _ in range(20):
                    message = await ws.receive(timeout=5)
                    if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                        break
                assert ws.closed and ws.close_code == 4401, (message, ws.close_code)

    asyncio.run(run())


def test_hang_up_by_bearer_and_an_agent_only_its_own_call(engine: RunningEngine) -> None:
    from vaultpbx.media.rtppeer import RtpPeer

    from tests.integration.test_media_calls import RawUa, invite

    caller = RawUa()  # no agent is ready: the call waits in `support`
    data = invite(caller, engine.sip_port, RtpPeer(ssrc=0x7171).sdp())
    caller.send(data.replace(b"0555", b"700").replace(b"media-call-1", b"waiting-1"),
                engine.sip_port)

    async def run() -> None:
        ws_url = engine.admin_url.replace("http", "ws", 1) + "/ws"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            sup, _ = await _session(engine, http, "sup4", "sup-password-123", SUP4_SECRET)
            agent, csrf = await _session(engine, http, "agent", "agent-password-123",
                                         AGENT_SECRET)
            async with http.ws_connect(ws_url, headers={
                    "Origin": engine.admin_url, "Cookie": f"__Host-vaultpbx={sup}"}) as ws:
                calls: list[dict] = []
                while not calls:
                    message = await ws.receive_json(timeout=5)
                    calls = message.get("data", {}).get("calls", [])
                call_id = calls[0]["id"]
                assert calls[0]["queue"] == "support" and calls[0]["state"] == "queued"
                # An agent may not end a call that is not its own (audited).
                async with http.post(f"{engine.admin_url}/calls/{call_id}/hangup", headers={
                        "Origin": engine.admin_url, "X-CSRF-Token": csrf,
                        "Cookie": f"__Host-vaultpbx={agent}"}) as r:
                    assert r.status == 403, await r.text()
                # An API client with a bearer token needs no CSRF token.
                login = {"user": "sup5", "password": "sup-password-123",
                         "otp": await _code(SUP5_SECRET)}
                async with http.post(f"{engine.admin_url}/login", json=login) as r:
                    token = (await r.json())["token"]
                async with http.post(f"{engine.admin_url}/calls/{call_id}/hangup",
                                     headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200, await r.text()
                async with http.post(f"{engine.admin_url}/calls/{call_id}/hangup",
                                     headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 404  # gone
                while calls:  # the feed drops the call
                    message = await ws.receive_json(timeout=5)
                    calls = [c for c in message.get("data", {}).get("calls", [])
                             if c["id"] == call_id]

    try:
        asyncio.run(run())
    finally:
        caller.close()
    denied = [r for r in _audit(engine) if r["action"] == "access.denied"
              and r["actor"] == "agent" and "hangup" in r["target"]]
    assert len(denied) == 1, denied
    hangups = [r for r in _audit(engine) if r["action"] == "call.hangup"]
    assert [(r["actor"], r["details"]["queue"]) for r in hangups] == [("sup5", "support")]
