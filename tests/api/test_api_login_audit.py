"""What a client types into /login reaches the audit log safely (issue 17, item 9): a password
typed into the user field is stored only as a keyed hash (and auditors see only that), a
megabyte of user name costs the log a bounded record, a lone surrogate is escaped and recorded,
and a login that cannot be audited does not happen."""

from __future__ import annotations

import fcntl
import json
import logging
import os

import pytest
from vaultpbx.hooks.registry import HookPoint
from vaultpbx.security.audit import LOCK_FILE, RECORDS_FILE, verify

from .api_helpers import Harness, body

TYPED_PASSWORD = "My-Real-Passw0rd!"


def audit_rows(h: Harness) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(x) for x in (h.audit.directory / RECORDS_FILE).read_bytes().splitlines()]


def test_password_in_the_user_field_is_stored_as_a_keyed_hash(harness: Harness) -> None:
    h = harness
    for _ in range(2):
        assert h.login(TYPED_PASSWORD, otp=None, password="whatever").status == 401
    assert h.login("admin", otp=None, password="wrong").status == 401  # a real account
    failed = [r for r in audit_rows(h) if r["action"] == "login.failed"]
    assert len(failed) == 3
    assert failed[0]["actor"].startswith("unverified:")
    assert failed[0]["actor"] == failed[1]["actor"]  # the same text: the same value
    assert failed[2]["actor"] == "admin"  # a known name is kept as it is
    assert TYPED_PASSWORD not in (h.audit.directory / RECORDS_FILE).read_text()
    # What an auditor is shown through the API.
    shown = h.request("GET", "/audit?limit=1000", token=h.token("auditor"))
    assert shown.status == 200 and TYPED_PASSWORD not in shown.body.decode()
    # No other observer of the login hook got the text printed either.
    heard = h.heard(HookPoint.LOGIN, "login.failed")[0]["actor"]
    assert TYPED_PASSWORD not in repr(heard) and TYPED_PASSWORD not in str(heard)


def test_a_megabyte_user_name_costs_a_bounded_record(harness: Harness) -> None:
    h = harness
    path = h.audit.directory / RECORDS_FILE
    for name in ("x" * 1_000_000, "y" * 1_000_000):
        before = path.stat().st_size if path.exists() else 0
        assert h.login(name, otp=None, password="p").status == 401
        assert path.stat().st_size - before < 2048
    rows = [r for r in audit_rows(h) if r["action"] == "login.failed"]
    assert len(rows) == 2 and rows[0]["actor"] != rows[1]["actor"]


def test_a_lone_surrogate_in_the_user_name_is_recorded(harness: Harness) -> None:
    h = harness
    # A JSON body may carry "\udcff": json.loads gives a str that UTF-8 cannot encode.
    assert h.login("ad\udcffmin", otp=None, password="p").status == 401
    assert h.login("admin", otp=None, password="p\ud800").status == 401
    rows = [r for r in audit_rows(h) if r["action"] == "login.failed"]
    assert len(rows) == 2 and rows[0]["actor"].startswith("unverified:")
    assert rows[1]["actor"] == "admin"
    h.audit.close()
    assert verify(h.audit.directory).ok


def test_a_login_that_cannot_be_audited_is_refused(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h = harness
    h.audit.lock_timeout = 0.2
    fd = os.open(h.audit.directory / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another writer stuck holding the lock
        with caplog.at_level(logging.ERROR):
            refused = h.login("auditor")  # right password, right code
    finally:
        os.close(fd)
    assert refused.status == 503
    assert body(refused) == {"error": "login unavailable: the audit log cannot be written"}
    assert h.audit.counters["write_failures_total"] == 1
    assert h.api.hooks.essential_errors == 1
    assert any("essential hook audit failed at login" in r.getMessage() for r in caplog.records)
    # No session came out of it; with the log back, logging in works and is recorded.
    assert not h.api.sessions._sessions
    assert h.login("auditor").status == 200
    assert [r["action"] for r in audit_rows(h)] == ["login"]
