"""Path templates in the admin HTTP server (a real one on 127.0.0.1): exact paths first, `{name}`
matches one non-empty segment, 404 for an unknown path, 405 for a known path under another
method, JSON either way; and the users: section."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from vaultpbx.api.admin import load_users
from vaultpbx.api.messages import HttpRequest, HttpResponse
from vaultpbx.api.server import AdminHttpServer, Route
from vaultpbx.runtime.cdr import CdrStore
from vaultpbx.security.config import SecurityConfig
from vaultpbx.security.users import UserStore

from .api_helpers import HASHER, PASSWORD_HASH, USERS, ServerThread, body, make_harness


def _echo(tag: str):  # type: ignore[no-untyped-def]
    def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse.of_json({"tag": tag, "params": request.params})
    return handler


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    server = AdminHttpServer([
        Route.open("GET", "/recordings/{id}/export", _echo("export")),
        Route.open("GET", "/recordings/{id}", _echo("one")),
        Route.open("GET", "/recordings", _echo("list")),
        Route.open("GET", "/recordings/special", _echo("special")),
    ])
    _, port = ServerThread.get().run(server.start("127.0.0.1", 0))
    yield port
    ServerThread.get().run(server.close())


@pytest.mark.parametrize(("method", "path", "status", "tag", "params"), [
    ("GET", "/recordings", 200, "list", {}),
    ("GET", "/recordings/abc/export", 200, "export", {"id": "abc"}),
    ("GET", "/recordings/a%2Fb/export", 200, "export", {"id": "a/b"}),
    ("GET", "/recordings/special", 200, "special", {}),  # the exact path beats {id}
    ("GET", "/recordings/xyz", 200, "one", {"id": "xyz"}),
    ("GET", "/recordings//export", 404, None, None),
    ("GET", "/recordings/abc/export/more", 404, None, None),
    ("POST", "/recordings/abc/export", 405, None, None),
    ("POST", "/recordings", 405, None, None),
    ("GET", "/recordings/{id}/export", 200, "export", {"id": "{id}"}),
])
def test_templates_in_http_server(echo_port: int, method: str, path: str, status: int,
                                  tag: str | None, params: dict[str, str] | None) -> None:
    client = http.client.HTTPConnection("127.0.0.1", echo_port, timeout=10)
    client.request(method, path)
    response = client.getresponse()
    payload = json.loads(response.read())
    client.close()
    assert response.status == status
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("Cache-Control") == "no-store"
    if tag is not None:
        assert payload == {"tag": tag, "params": params}
    else:
        assert payload == {"error": {404: "not found", 405: "method not allowed"}[status]}


@pytest.mark.parametrize("bad", ["/a/{id", "/a/x{id}", "/a/{}"])
def test_bad_templates_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="whole segment"):
        AdminHttpServer([Route.open("GET", bad, _echo("bad"))])


def test_users_from_config_and_from_dicts() -> None:
    config = SecurityConfig.from_dict({"users": USERS})
    assert [u.name for u in config.users][:2] == ["agent", "qa"]
    assert PASSWORD_HASH not in repr(config.users) and USERS[0]["totp_secret"] not in repr(
        config.users)
    store = load_users(UserStore(HASHER), config.users)
    assert store.get("admin2") is not None and store.get("admin2").role == "admin"  # type: ignore[union-attr]
    raw = load_users(UserStore(HASHER), [USERS[0]])
    assert raw.check_password("agent", "correct horse battery staple")


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "x", "role": "boss", "password_hash": PASSWORD_HASH}, r"users\[0\]\.role"),
    ({"name": "x", "role": "agent", "password_hash": "plain"}, r"users\[0\]\.password_hash"),
    ({"name": "x", "role": "admin", "password_hash": PASSWORD_HASH},
     r"users\[0\]\.totp_secret: role admin requires"),
    ({"name": "x", "role": "agent", "password_hash": PASSWORD_HASH, "totp_secret": "SHORT"},
     r"users\[0\]\.totp_secret: expected a base32"),
    ({"name": "x", "role": "agent", "password_hash": PASSWORD_HASH, "pasword": "x"},
     r"users\[0\]: unknown"),
    ({"role": "agent", "password_hash": PASSWORD_HASH}, r"users\[0\]\.name"),
    ({"name": "x", "role": "agent", "password_hash": PASSWORD_HASH, "extension": ["2001"]},
     r"users\[0\]\.extension: expected an extension"),
])
def test_bad_user_entries_name_the_path(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=r"^security\." + message) as caught:
        SecurityConfig.from_dict({"users": [entry]})
    assert PASSWORD_HASH not in str(caught.value)


def test_an_account_may_name_its_agent_extension() -> None:
    entries = [dict(USERS[0], extension=2001), dict(USERS[1], name="qa2")]
    config = SecurityConfig.from_dict({"users": entries})
    assert [u.extension for u in config.users] == ["2001", None]  # YAML's 2001 is an int
    store = load_users(UserStore(HASHER), config.users)
    assert store.get("agent").extension == "2001"  # type: ignore[union-attr]


def test_duplicate_user_refused() -> None:
    with pytest.raises(ValueError, match=r"users\[1\]\.name: duplicate"):
        SecurityConfig.from_dict({"users": [USERS[0], USERS[0]]})


def test_calls_from_a_real_cdr_store(tmp_path: Path) -> None:
    from vaultpbx.b2bua.call import CallRecord
    from vaultpbx.recording.kek import LocalFileKek
    from vaultpbx.recording.keystore import Keystore

    keystore = Keystore(tmp_path / "keystore.db", LocalFileKek(tmp_path / "kek.key"))
    cdr = CdrStore(tmp_path / "cdr.db", keystore.subjects)
    cdr.write([CallRecord(call_id="a@b", caller="sip:13912345678@127.100.0.9",
                          callee="sip:6222020200112233@pbx", route_kind="queue",
                          route_name="sales", started=1.0, answered=2.0, ended=9.0,
                          cause="normal", status=200, legs="[]")])
    h = make_harness(tmp_path / "api", cdr=cdr)  # type: ignore[arg-type]
    calls = body(h.request("GET", "/calls?limit=5", token=h.token("qa")))["calls"]
    assert calls[0]["caller"] == "sip:139****5678@127.100.0.9"
    assert "13912345678" not in str(calls) and "6222020200112233" not in str(calls)
    assert h.request("GET", "/calls?limit=0", token=h.token("qa")).status == 400
    h.audit.close()
    cdr.close()
