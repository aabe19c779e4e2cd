"""Retention and erasure with a real engine (issue 17, items 5-7): real recorded calls from four
callers, then the admin API and the `vaultpbx recordings` CLI as an operator uses them, then
what is left in the log, cdr.db and keystore.db, read as bytes.

Callers: 02079460000 and +442079460000 (one person: GB national and E.164 spellings),
+447700900123 and +447711900123 (two people whose masked forms are the same, +447*****0123).

- no clear number in the engine log, cdr.db or keystore.db; a standard-library log line (the
  anomaly detector's alert) is masked too;
- the roles: a supervisor sees the numbers in clear (so an abandoned caller can be called
  back), an agent masked, over the API and the CLI;
- erasure over the API with four eyes finds both spellings of the first caller and nobody else;
  over the CLI (number on standard input) exactly +447700900123, not +447711900123; erasing by
  the masked form finds nothing; a backup of cdr.db made before the erasure cannot be read
  for the erased caller afterwards;
- the engine's housekeeping shreds a recording once it is past its expiry, and audits it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyotp
from argon2 import PasswordHasher
from vaultpbx.media.rtppeer import RtpPeer
from vaultpbx.sip.message import Request, Response, build_response

from tests.integration.engine import RunningEngine, start_engine
from tests.integration.test_media_calls import RawUa
from tests.integration.test_recording_calls import (
    FRAME,
    _admin,
    _close,
    _free_rtp_ports,
    _play,
    _wait_recording,
)

NATIONAL, E164 = "02079460000", "+442079460000"  # one data subject
FIRST_C, SECOND_C = "+447700900123", "+447711900123"  # two subjects, one masked form
CALLERS = (NATIONAL, E164, FIRST_C, SECOND_C)
CLEAR = (b"2079460000", b"7700900123", b"7711900123")  # no store or log may hold these
SECRET = pyotp.random_base32()
HASHER = PasswordHasher(time_cost=1, memory_cost=8192)
PASSWORD = "pw-erasure-test"
USERS = [
    {"name": name, "role": role, "totp_secret": SECRET, "password_hash": HASHER.hash(PASSWORD)}
    for name, role in (("admin", "admin"), ("admin2", "admin"), ("supervisor", "supervisor"),
                       ("agent7", "agent"), ("jane.doe@example.com", "agent"))
]


def _overrides(callee: RawUa) -> dict:
    port_min, port_max = _free_rtp_ports()
    return {
        "media": {"anchor": True, "workers": 1, "port_min": port_min, "port_max": port_max},
        "recording": {"enabled": True, "expire_every": 1},
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "trunks": {"carrier": {"target": f"sip:127.0.0.1:{callee.port}", "srtp": "off"}},
        "dialplan": [{"match": "0(\\d+)", "trunk": "carrier", "number": "\\1"}],
        "security": {"floodguard": {"trusted": ["127.0.0.1/32"]}, "users": USERS,
                     "privacy": {"default_country": "GB", "erasure_needs_approval": True}},
    }


def _recorded_call(engine: RunningEngine, caller: RawUa, callee: RawUa, number: str,
                   call_id: str, started: int,
                   during: Callable[[], object] | None = None) -> object:
    """A whole call from `number`: answered, recorded, a second of audio, hung up. With
    `during`, the call stays up (half the audio before, half after) while it runs; returns
    what it returned."""
    alice, bob = RtpPeer(ssrc=0x7101), RtpPeer(ssrc=0x7102)
    port = engine.sip_port
    sdp = alice.sdp()
    head = (f"From: <sip:{number}@127.0.0.1>;tag=from-{call_id}\r\n"
            f"To: <sip:0555@127.0.0.1>\r\nCall-ID: {call_id}\r\n")
    caller.send((
        f"INVITE sip:0555@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK-{call_id}\r\n{head}"
        f"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:{number}@127.0.0.1:{caller.port}>"
        f"\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n"
    ).encode() + sdp, port)
    b_invite = callee.wait(lambda m: isinstance(m, Request) and m.method == "INVITE")
    assert isinstance(b_invite, Request)
    ok = build_response(b_invite, 200, to_tag=f"t-{call_id}", extra=[
        ("contact", f"<sip:callee@127.0.0.1:{callee.port}>"),
        ("content-type", "application/sdp")], body=bob.answer_to(b_invite.body))
    callee.send(ok.serialize(), port)
    a_ok = caller.wait(lambda m: isinstance(m, Response) and m.status == 200)
    assert isinstance(a_ok, Response)
    to = f"To: <sip:0555@127.0.0.1>;tag={a_ok.to.tag}\r\n"
    head = head.replace("To: <sip:0555@127.0.0.1>\r\n", to)
    caller.send((
        f"ACK sip:vaultpbx@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK-ack-{call_id}\r\n{head}"
        f"CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), port)
    try:
        alice.learn(a_ok.body)
        _wait_recording(engine, started)
        if during is None:
            asyncio.run(_play([(alice, bytes(50 * FRAME)), (bob, bytes(50 * FRAME))]))
            result = None
        else:
            asyncio.run(_play([(alice, bytes(25 * FRAME)), (bob, bytes(25 * FRAME))]))
            result = during()
            asyncio.run(_play([(alice, bytes(25 * FRAME)), (bob, bytes(25 * FRAME))]))
        caller.send((
            f"BYE sip:vaultpbx@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK-bye-{call_id}\r\n{head}"
            f"CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), port)
        caller.wait(lambda m: isinstance(m, Response) and m.cseq.method == "BYE")
        bye = callee.wait(lambda m: isinstance(m, Request) and m.method == "BYE")
        assert isinstance(bye, Request)
        callee.send(build_response(bye, 200).serialize(), port)
    finally:
        _close(alice, bob)
    return result


def _cli(engine: RunningEngine, *args: str, stdin: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultpbx.runtime.cli", *args, "-c", str(engine.config_path)],
        capture_output=True, text=True, timeout=60, cwd=engine.config_path.parent, input=stdin)


def _listing(engine: RunningEngine, role: str, *extra: str) -> list[dict]:
    done = _cli(engine, "recordings", "list", "--json", "--role", role, *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _wait(predicate, what: str, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _login(engine: RunningEngine, user: str, source: str = "127.0.0.1", step: int = 0
           ) -> str | None:
    """Log in from `source` (any 127/8 address: a different /24 is a new network), with the
    TOTP code `step` steps ahead (a code works once per account; ±1 step is accepted)."""
    connection = http.client.HTTPConnection("127.0.0.1", engine.admin_port, timeout=10,
                                            source_address=(source, 0))
    try:
        otp = pyotp.TOTP(SECRET).at(time.time() + 30 * step)
        connection.request("POST", "/login", json.dumps({
            "user": user, "password": PASSWORD, "otp": otp}), {"Content-Type": "application/json"})
        answer = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    return answer.get("token")


def _store_bytes(engine: RunningEngine) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in engine.data_dir.glob("*.db*")}


def test_numbers_sealed_masked_by_role_erased_by_subject_and_expired(tmp_path: Path) -> None:
    callee = RawUa()
    engine = start_engine(tmp_path, _overrides(callee))
    caller = RawUa()
    try:
        for n, number in enumerate(CALLERS, 1):
            _recorded_call(engine, caller, callee, number, f"erasure-call-{n}", n)
        rows = _wait(lambda: (lambda rs: rs if [r["state"] for r in rs] == ["closed"] * 4
                              else None)(_listing(engine, "supervisor")),
                     "four closed recordings")
        tokens = {user: _login(engine, user) for user in
                  ("admin", "admin2", "supervisor", "agent7")}
        assert all(tokens.values()), tokens
        calls = _wait(lambda: (lambda c: c if len(c) == 4 else None)(
            _admin(engine, "GET", "/calls", token=tokens["supervisor"])[1]["calls"]),
            "four call records")

        # -- item 7: readable for the roles allowed to see them, and only for them ---------------
        assert sorted(r["caller"] for r in rows) == sorted(CALLERS)  # supervisor: clear
        assert sorted(c["caller"] for c in calls) == sorted(CALLERS)
        for listing in (_listing(engine, "agent"),
                        _admin(engine, "GET", "/calls", token=tokens["agent7"])[1]["calls"]):
            shown = json.dumps(listing)
            assert not any(clear.decode() in shown for clear in CLEAR), shown
            assert "020****0000" in shown and "+447*****0123" in shown
        # ...and in clear nowhere at rest.
        for name, data in _store_bytes(engine).items():
            for clear in CLEAR:
                assert clear not in data, f"{clear!r} in clear in {name}"

        # A standard-library log line (the anomaly detector's alert for a login from a new
        # network) goes through the maskers like the rest.
        assert _login(engine, "jane.doe@example.com")
        assert _login(engine, "jane.doe@example.com", source="127.0.9.9", step=1)
        _wait(lambda: "j***@example.com" in engine.log(), "the new-network alert in the log")

        # -- item 6: erasure over the API, four eyes, finds both spellings and nobody else ------
        backup = tmp_path / "cdr-backup.db"
        with sqlite3.connect(engine.data_dir / "cdr.db") as live, \
                sqlite3.connect(backup) as copy:
            live.backup(copy)
        status, asked = _admin(engine, "POST", "/erasures", {"number": "020 7946 0000"},
                               tokens["admin"])
        assert status == 202 and asked["found"] == {"recordings": 2, "cdr": 2}, asked
        status, refused = _admin(engine, "POST", f"/erasures/{asked['request']}/approve", {},
                                 tokens["admin"])
        assert status == 403, refused  # the requester cannot approve
        assert _admin(engine, "POST", "/erasures", {"number": NATIONAL},
                      tokens["supervisor"])[0] == 403
        status, report = _admin(engine, "POST", f"/erasures/{asked['request']}/approve", {},
                                tokens["admin2"])
        assert status == 200, report
        assert report["erased"] == {"recordings": 2, "cdr": 2} and report["keys_destroyed"] >= 1

        # -- over the CLI: the number on standard input; the masked form finds nobody ----------
        done = _cli(engine, "recordings", "erase", "--find", "+447*****0123")
        assert done.returncode == 0 and json.loads(done.stdout) == {"recordings": 0, "cdr": 0}
        done = _cli(engine, "recordings", "erase", "-", "--actor", "dpo1",
                    stdin="+44 7700 900123\n")
        assert done.returncode == 0, done.stdout + done.stderr
        request_id = done.stdout.split()[2]
        assert "7700" not in done.stdout
        same = _cli(engine, "recordings", "erase", "--approve", request_id, "--actor", "dpo1")
        assert same.returncode == 1 and "four eyes" in same.stdout
        done = _cli(engine, "recordings", "erase", "--approve", request_id, "--actor", "dpo2")
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["erased"] == {"recordings": 1, "cdr": 1}

        # What is left: +447711900123's recording and call record, intact and readable.
        left = _listing(engine, "supervisor")
        assert [r["caller"] for r in left] == [SECOND_C] and left[0]["state"] == "closed"
        erased_rows = [r for r in _listing(engine, "supervisor", "--all")
                       if r["state"] == "shredded"]
        assert len(erased_rows) == 3 and all(r["caller"] == "" for r in erased_rows)
        assert len(list((engine.data_dir / "recordings").glob("*.vrec"))) == 1
        calls = _admin(engine, "GET", "/calls", token=tokens["supervisor"])[1]["calls"]
        assert sorted(c["caller"] for c in calls) == ["", "", "", SECOND_C]
        # The backup made before the erasure still holds the sealed numbers, but their key is
        # destroyed: opened with the live keystore, the erased callers read as nothing.
        from vaultpbx.recording.cli import open_store
        from vaultpbx.runtime.cdr import CdrStore

        with open_store(engine.data_dir) as store:
            old = CdrStore(backup, store.subjects)
            try:
                assert sorted(c["caller"] for c in old.recent()) == ["", "", "", SECOND_C]
            finally:
                old.close()

        # -- item 5: the engine's housekeeping expires what is past its retention -------------
        with sqlite3.connect(engine.data_dir / "keystore.db") as db:
            db.execute("UPDATE recordings SET expires_at = ? WHERE recording_id = ?",
                       (time.time() - 1, left[0]["id"]))
        _wait(lambda: not _listing(engine, "supervisor"), "the engine to expire the recording")
        assert not list((engine.data_dir / "recordings").glob("*.vrec"))
    finally:
        _close(caller, callee)
        assert engine.stop() == 0
    audit = [json.loads(line) for line in
             (engine.data_dir / "audit" / "audit.jsonl").read_text().splitlines()]
    actions = [(a["action"], a["actor"]) for a in audit]
    assert ("erasure.request", "admin") in actions and ("erasure.execute", "admin2") in actions
    assert ("erasure.execute", "dpo2") in actions
    assert sum(1 for a in audit if a["action"] == "recording.shred"
               and a["details"].get("detail") == "expired") == 1
    # Nothing in clear in the log (call.ended and the rest), the audit log or the stores.
    log = engine.log().encode()
    for clear in CLEAR:
        assert clear not in log, f"{clear!r} in clear in the engine log"
        assert clear not in (engine.data_dir / "audit" / "audit.jsonl").read_bytes()
    assert b"jane.doe@example.com" not in log
    for name, data in _store_bytes(engine).items():
        for clear in CLEAR:
            assert clear not in data, f"{clear!r} in clear in {name}"


def test_engine_refuses_a_keystore_from_a_newer_version_clearly(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "keystore.db") as db:
        db.execute("PRAGMA user_version = 9")
    try:
        engine = start_engine(tmp_path)
    except RuntimeError as exc:
        message = str(exc)
    else:
        engine.stop()
        raise AssertionError("the engine started on a keystore it cannot read")
    assert "engine exited 1" in message
    assert "vaultpbx: cannot start:" in message and "schema version 9 is newer" in message
    assert "Traceback" not in message
