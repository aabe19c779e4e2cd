"""Password guessing against a real engine process (issue 17, items 10 and 18): failures are
throttled per (account, source) and per account, whatever the source, and never end a session.

Each "source" is its own loopback address (the client socket is bound to it); the engine listens
on 127.0.0.1 inside the test's private network namespace. Waits are the configured ones (short
in these configs), never more.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from vaultpbx.sip.digest import build_authorization
from vaultpbx.sip.message import Response

from tests.integration.engine import RunningEngine, start_engine
from tests.integration.sipclient import UdpClient
from tests.integration.test_abuse import final_raw, shape

pytestmark = [pytest.mark.integration]

DOMAIN = "vaultpbx.test"
PASSWORD = "pw-1001-Secret"
# The demo supervisor of configs/default.yaml (argon2id hash of "demo-supervisor-password").
SUPERVISOR = {
    "name": "supervisor", "role": "supervisor",
    "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$uJYyxTP792iTgGpYdIUkZA$"
                     "nPu5wD70D9GTnf7cjZyXPDRtX87YTLDqP3jgb9Mi4vQ",
    "totp_secret": "MLVV4NIT4HFOI2UZOSO64OIQN7HRTVKX",
}
SUPERVISOR_PASSWORD = "demo-supervisor-password"


@pytest.fixture
def engines() -> Iterator[list[RunningEngine]]:
    started: list[RunningEngine] = []
    yield started
    for engine in started:
        engine.stop(timeout=10)


def start(engines: list[RunningEngine], tmp_path: Path, overrides: dict) -> RunningEngine:
    base: dict = {
        "sip": {"digest_algorithms": ["MD5"]},
        "extensions": {"1001": {"password": PASSWORD}, "1002": {"password": "pw-1002-Secret"}},
        "dialplan": [{"match": r"1\d{3}", "extension": r"\g<0>"}],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    engine = start_engine(tmp_path, base)
    engines.append(engine)
    return engine


# ------------------------------------------------------------------------------------------------
# admin API (item 10)
def admin(engine: RunningEngine, source: str, method: str, path: str, body: object = None,
          token: str | None = None) -> tuple[int, dict, dict[str, str]]:
    """One request from `source` (the client socket is bound to that loopback address)."""
    conn = http.client.HTTPConnection("127.0.0.1", engine.admin_port, timeout=10,
                                      source_address=(source, 0))
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers=headers)
        response = conn.getresponse()
        payload = json.loads(response.read() or b"{}")
        return response.status, payload, dict(response.getheaders())
    finally:
        conn.close()


def login(engine: RunningEngine, source: str, user: str, password: str,
          otp: str | None = None) -> tuple[int, dict, dict[str, str]]:
    return admin(engine, source, "POST", "/login", {"user": user, "password": password,
                                                     "otp": otp})


def test_wrong_admin_passwords_neither_revoke_nor_lock_the_supervisor(
        engines: list[RunningEngine], tmp_path: Path) -> None:
    engine = start(engines, tmp_path, {"security": {
        "floodguard": {"trusted": ["127.0.0.1/32"]}, "users": [SUPERVISOR]}})
    totp = pyotp.TOTP(SUPERVISOR["totp_secret"])
    # The supervisor is at work on 127.0.0.3 (the previous step's code: each code is taken once).
    status, body, _ = login(engine, "127.0.0.3", "supervisor", SUPERVISOR_PASSWORD,
                            totp.at(time.time() - 30))
    assert status == 200, body
    token = body["token"]
    # Someone on 127.0.0.2 guesses the supervisor's password, and an unknown name's: the
    # answers are the same for both (401 five times, then 429 with a wait), no enumeration.
    # The last attempt has the right password (and code): it waits like the others.
    answers: dict[str, list[int]] = {"supervisor": [], "nobody-here": []}
    for name, source in (("supervisor", "127.0.0.2"), ("nobody-here", "127.0.0.4")):
        for i in range(9):
            password, code = (SUPERVISOR_PASSWORD, totp.now()) if i == 8 else (f"guess-{i}", None)
            status, body, headers = login(engine, source, name, password, code)
            answers[name].append(status)
            if status == 429:
                assert body == {"error": "too many failed attempts"}
                assert 1 <= int(headers["Retry-After"]) <= 8, headers
    assert answers["supervisor"] == answers["nobody-here"] == [401] * 5 + [429] * 4
    # ... but the supervisor's session is alive, and they log in again from their own desk.
    status, me, _ = admin(engine, "127.0.0.3", "GET", "/me", token=token)
    assert status == 200 and me["user"] == "supervisor", me
    status, body, _ = login(engine, "127.0.0.3", "supervisor", SUPERVISOR_PASSWORD, totp.now())
    assert status == 200, body
    metrics = engine.metrics()
    assert metrics["vaultpbx_admin_login_throttled_total"] == 8
    assert metrics["vaultpbx_login_throttle_throttled_source_total"] == 8
    # No lock was ever recorded in the audit log; the throttled attempts were.
    records = [json.loads(line) for line in
               (engine.data_dir / "audit" / "audit.jsonl").read_text().splitlines()]
    assert not [r for r in records if r.get("action") == "account.lock"]
    reasons = [r["details"]["reason"] for r in records if r.get("action") == "login.failed"]
    assert reasons.count("throttled") == 8, reasons
    assert reasons.count("bad password") == reasons.count("unknown user") == 5, reasons


# ------------------------------------------------------------------------------------------------
# SIP digest (item 18)
def same_shape(raw: bytes) -> list[str]:
    """`shape` (test_abuse) with the CSeq number blanked too: each attempt has its own."""
    return [re.sub(r"^CSeq: \d+", "CSeq: *", line) for line in shape(raw, "1001")]


class Guesser:
    """REGISTERs for one user from one address, each answering the previous challenge."""

    def __init__(self, engine: RunningEngine, host: str, user: str = "1001") -> None:
        self.client = UdpClient(engine.sip_port, host=host)
        self.user = user
        self.call_id = f"guess-{host}-{time.monotonic_ns()}"
        self.cseq = 1
        first = self.client.exchange(self.client.request(
            "REGISTER", f"sip:{DOMAIN}", user=user, call_id=self.call_id, cseq=self.cseq))
        assert first.status == 401
        self.challenge = first.get("www-authenticate") or ""

    def attempt(self, password: str) -> tuple[bytes, Response]:
        self.cseq += 1
        uri = f"sip:{DOMAIN}"
        auth = build_authorization(self.challenge, "REGISTER", uri, self.user, password,
                                   f"cn{self.cseq}", 1)
        raw, reply = final_raw(self.client, self.client.request(
            "REGISTER", uri, user=self.user, call_id=self.call_id, cseq=self.cseq,
            extra=f"Expires: 300\r\nAuthorization: {auth}\r\n"))
        if reply.status == 401:
            self.challenge = reply.get("www-authenticate") or ""
        return raw, reply

    def close(self) -> None:
        self.client.close()


def test_trusted_source_guessing_is_throttled_then_the_owner_gets_in(
        engines: list[RunningEngine], tmp_path: Path) -> None:
    """200 wrong passwords from 127.0.0.1 (trusted: never banned), then the right one: refused
    while the wait runs, with the very answer a wrong password gets; accepted once it is over."""
    max_delay = 2.0
    engine = start(engines, tmp_path, {"sip": {
        "digest_algorithms": ["MD5"],
        "digest_throttle": {"delay_after": 5, "base_delay": 0.25, "max_delay": max_delay}}})
    guesser = Guesser(engine, "127.0.0.1")
    try:
        wrong_raw = b""
        for i in range(200):
            wrong_raw, reply = guesser.attempt(f"guess-{i}")
            assert reply.status == 401, reply
        metrics = engine.metrics()
        assert metrics["vaultpbx_auth_throttled_total"] >= 150  # most were never checked
        # Guess on until a guess is counted (a new wait of max_delay starts with it; the answers
        # cannot tell: that is the point), then the right password at once.
        counted = metrics["vaultpbx_digest_throttle_failures_total"]
        while engine.metrics()["vaultpbx_digest_throttle_failures_total"] == counted:
            wrong_raw, reply = guesser.attempt("one-more-guess")
            assert reply.status == 401, reply
        throttled_before = engine.metrics()["vaultpbx_auth_throttled_total"]
        right_raw, reply = guesser.attempt(PASSWORD)
        assert reply.status == 401, reply
        assert engine.metrics()["vaultpbx_auth_throttled_total"] == throttled_before + 1
        # Nothing in the answer says "right password, come back later".
        assert same_shape(right_raw) == same_shape(wrong_raw)
        time.sleep(max_delay)  # the longest wait the config imposes
        _, reply = guesser.attempt(PASSWORD)
        assert reply.status == 200, reply
    finally:
        guesser.close()
    metrics = engine.metrics()
    assert metrics["vaultpbx_floodguard_bans_total"] == 0  # trusted: throttled, not banned
    assert metrics["vaultpbx_digest_throttle_failures_total"] < 20


def test_digest_guessing_is_throttled_per_account_across_sources(
        engines: list[RunningEngine], tmp_path: Path) -> None:
    """Guesses spread so that no address trips its own limit still trip the account's: new
    addresses wait, the address the owner registered from before does not."""
    engine = start(engines, tmp_path, {
        "sip": {"digest_algorithms": ["MD5"],
                "digest_throttle": {"delay_after": 50, "account_delay_after": 10,
                                    "base_delay": 30, "account_max_delay": 60}},
        "security": {"floodguard": {"trusted": ["127.0.0.1/32"], "auth_failures": 1000}}})
    owner = UdpClient(engine.sip_port, host="127.0.0.4")
    newcomer = UdpClient(engine.sip_port, host="127.0.0.5")
    guessers = [Guesser(engine, f"127.0.1.{i}") for i in range(10)]
    try:
        assert owner.register("1001", PASSWORD).status == 200
        for guesser in guessers:  # one wrong password from each of ten addresses
            assert guesser.attempt("guess")[1].status == 401
        assert newcomer.register("1001", PASSWORD).status == 401  # a new place: it waits
        assert owner.register("1001", PASSWORD).status == 200  # the owner's place does not
        assert newcomer.register("1002", "pw-1002-Secret").status == 200  # other accounts fine
        metrics = engine.metrics()
        assert metrics["vaultpbx_digest_throttle_throttled_account_total"] == 1
        assert metrics["vaultpbx_digest_throttle_throttled_source_total"] == 0
    finally:
        owner.close()
        newcomer.close()
        for guesser in guessers:
            guesser.close()
