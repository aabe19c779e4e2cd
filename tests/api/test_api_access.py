"""Each role against each endpoint: allowed → 2xx, denied → 403 + ACCESS_DENIED audited;
no session → 401; every request passes the API_REQUEST hook point."""

from __future__ import annotations

import json

import pytest
from vaultpbx.api.admin import ROUTES
from vaultpbx.hooks.registry import HookPoint

from .api_helpers import ERASE, RECORDING_ID, ROLES, Harness, body, erasure_service

# (method, path as called, roles that may) — every route of the API but /login.
TABLE: list[tuple[str, str, set[str]]] = [
    ("POST", "/logout", set(ROLES)),
    ("GET", "/me", set(ROLES)),
    ("GET", "/calls", {"agent", "qa", "supervisor", "admin"}),
    ("GET", "/cdr.csv?from=2026-01-01&to=2027-01-01", {"agent", "qa", "supervisor", "admin"}),
    ("GET", "/queue-events.csv?from=2026-01-01&to=2027-01-01",
     {"agent", "qa", "supervisor", "admin"}),
    ("POST", "/calls/call-1/sensitive", {"agent", "supervisor"}),
    ("GET", "/recordings", {"agent", "qa", "supervisor", "admin"}),
    ("POST", f"/recordings/{RECORDING_ID}/export-requests", {"supervisor", "admin"}),
    ("GET", "/export-requests", {"supervisor", "admin"}),
    ("POST", "/export-requests/{request}/approve", {"admin"}),
    ("GET", f"/recordings/{RECORDING_ID}/export?request={{request}}", {"supervisor", "admin"}),
    ("GET", f"/recordings/{RECORDING_ID}/verify", {"supervisor", "admin"}),
    ("POST", "/erasures", {"admin"}),
    ("GET", "/erasures", {"admin"}),
    ("POST", "/erasures/{request}/approve", {"admin"}),
    ("POST", "/users/agent/unlock", {"admin"}),
    ("GET", "/audit", {"auditor"}),
    ("GET", "/audit/verify", {"auditor"}),
]


def _template(path: str) -> str:
    return (path.split("?")[0].replace(RECORDING_ID, "{id}").replace("{request}", "{id}")
            .replace("/users/agent/", "/users/{name}/").replace("/call-1/", "/{id}/"))


def test_table_covers_every_route() -> None:
    routes = {(m, p) for m, p, _, _ in ROUTES} - {("POST", "/login")}
    assert {(m, _template(p)) for m, p, _ in TABLE} == routes


def _prepare(h: Harness, role: str, method: str, path: str) -> str:
    """Make what a call needs to succeed for `role`, e.g. an export request to approve."""
    if path.endswith("/sensitive"):  # a recorded call (the runtime provides the switch)
        h.api.sensitive = lambda call_id, on, actor: call_id == "call-1"
    if path.startswith("/erasures"):  # a real erasure service over a real keystore
        h.api.erasure = erasure_service(h)
        if "{request}" in path:  # asked by another admin, so approving is a second person's
            ask = h.request("POST", "/erasures", token=h.token("admin2"), body=ERASE)
            return path.replace("{request}", body(ask)["request"])
    if "{request}" not in path:
        return path
    if path.endswith("/approve"):
        # Someone else (the supervisor) asks, so an admin's approval is a second person's.
        ask = h.request("POST", f"/recordings/{RECORDING_ID}/export-requests",
                        token=h.token("supervisor"))
        return path.replace("{request}", body(ask)["id"])
    if role in ("supervisor", "admin"):
        token = h.token(role)
        ask = body(h.request("POST", f"/recordings/{RECORDING_ID}/export-requests",
                             token=token))
        h.request("POST", f"/export-requests/{ask['id']}/approve", token=h.token("admin2"))
        return path.replace("{request}", ask["id"])
    return path.replace("{request}", "apr-999")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "path", "allowed"), TABLE,
                         ids=[f"{m} {_template(p)}" for m, p, _ in TABLE])
def test_role_endpoint_table(harness: Harness, role: str, method: str, path: str,
                             allowed: set[str]) -> None:
    h = harness
    path = _prepare(h, role, method, path)
    token = h.token(role)
    before = len(h.heard(HookPoint.ACCESS_DENIED))
    response = h.request(method, path, token=token,
                         body={"on": True} if path.endswith("/sensitive") else
                         ERASE if path == "/erasures" else None)
    denied = h.heard(HookPoint.ACCESS_DENIED)[before:]
    if role in allowed:
        assert 200 <= response.status < 300, (response.status, response.body)
        assert denied == []
    else:
        assert response.status == 403, (response.status, response.body)
        assert response.content_type == "application/json"
        assert body(response)["error"] == "forbidden"
        assert [(e["actor"], e["details"]["role"]) for e in denied] == [(role, role)]
        # ...and the audit log holds it.
        h.audit.close()
        lines = (h.audit.directory / "audit.jsonl").read_text().splitlines()
        assert any(json.loads(line)["action"] == "access.denied"
                   and json.loads(line)["actor"] == role for line in lines)


@pytest.mark.parametrize(("method", "path", "_allowed"), TABLE,
                         ids=[f"{m} {_template(p)}" for m, p, _ in TABLE])
@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_no_session_is_401(harness: Harness, method: str, path: str, _allowed: set[str],
                           token: str | None) -> None:
    response = harness.request(method, path.replace("{request}", "apr-1"), token=token)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert harness.heard(HookPoint.ACCESS_DENIED) == []


def test_auditor_reads_audit_log_and_nothing_else(harness: Harness) -> None:
    h = harness
    h.login("agent", password="wrong")
    token = h.token("auditor")
    h.request("GET", "/calls", token=token)
    records = body(h.request("GET", "/audit", token=token))["records"]
    actions = [(r["actor"], r["action"]) for r in records]
    assert ("agent", "login.failed") in actions
    assert ("auditor", "login") in actions
    assert ("auditor", "access.denied") in actions
    # Paging: after= skips what was read, limit bounds the answer.
    page = body(h.request("GET", "/audit?after=0&limit=1", token=token))
    assert [r["seq"] for r in page["records"]] == [1] and "after=1" in page["next"]
    h.audit.checkpoint(now=h.clock())  # signed, and copied outside the data directory
    verified = body(h.request("GET", "/audit/verify", token=token))
    assert (verified["ok"], verified["verified"]) == (True, True), verified
    assert set(p.value for p in h.api.policy.permissions("auditor")) == {
        "audit.read", "audit.verify"}


def test_audit_verify_checks_the_outside_copy_as_the_cli_does(harness: Harness) -> None:
    """GET /audit/verify is `vaultpbx audit verify`: a record rewritten in place, with the
    chain recomputed and the local checkpoints rewritten to match, still fails against the
    signed copy kept outside the data directory; a log with no outside copy is never called
    intact (the auditor's finding 8)."""
    from tests.security.audit_attacker import change_actor, rewrite_history

    h = harness
    token = h.token("auditor")
    h.audit.checkpoint(now=h.clock())
    assert body(h.request("GET", "/audit/verify", token=token))["ok"] is True
    rewrite_history(h.audit.directory, change_actor(0, "nobody"), now=h.clock())
    verified = body(h.request("GET", "/audit/verify", token=token))
    assert verified["ok"] is False and "NOT intact" in verified["summary"], verified
    (h.audit.directory.parent / "audit-outside" / "checkpoints.jsonl").unlink()
    gone = body(h.request("GET", "/audit/verify", token=token))
    assert gone["ok"] is False, gone


def test_every_request_passes_api_request_hook(harness: Harness) -> None:
    h = harness
    token = h.token("qa")
    h.request("GET", "/calls", token=token)
    h.request("GET", "/audit", token=token)
    h.request("GET", "/me")
    seen = [(e["target"], e["details"]["status"], e["actor"])
            for e in h.heard(HookPoint.API_REQUEST)]
    assert seen == [("POST /login", 200, "-"), ("GET /calls", 200, "qa"),
                    ("GET /audit", 403, "qa"), ("GET /me", 401, "-")]
    for event in h.heard(HookPoint.API_REQUEST):  # never a token, header or body
        assert token not in json.dumps(event)
        assert "password" not in json.dumps(event)


def test_logout_ends_the_session(harness: Harness) -> None:
    h = harness
    token = h.token("supervisor")
    assert h.request("GET", "/me", token=token).status == 200
    assert h.request("POST", "/logout", token=token).status == 200
    assert h.request("GET", "/me", token=token).status == 401
    assert h.heard(HookPoint.LOGOUT)[0]["actor"] == "supervisor"


def test_security_headers_and_me(harness: Harness) -> None:
    h = harness
    response = h.request("GET", "/me", token=h.token("admin"))
    assert response.headers["Cache-Control"] == "no-store"
    me = body(response)
    assert me["user"] == "admin" and me["role"] == "admin" and me["mfa"] is True
    assert "approval.grant" in me["permissions"]


def test_no_one_unlocks_their_own_account(harness: Harness) -> None:
    h = harness
    token = h.token("admin")
    assert h.request("POST", "/users/admin/unlock", token=token).status == 403
    assert h.request("POST", "/users/ghost/unlock", token=token).status == 404
