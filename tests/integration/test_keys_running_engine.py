"""Key rotation against a running engine (issue 17, "Keys"): a real `vaultpbx run` with a media
worker, real calls from raw SIP sockets and RTP peers, the real `vaultpbx keys` CLI as a process,
and exports through the admin API (four-eyes, as an operator does it).

- `keys rotate` applies to the next call at once (no restart);
- `keys rotate --rewrap --retire` while the engine runs: the old recordings export through the
  admin API (no restart), the next call's recording exports bit-exact and verifies, and a later
  `--rewrap` has nothing to trip over;
- the KEK file moved away: `recordings list` still lists and creates no KEK, export says what to
  restore, the engine refuses to start (and creates nothing); restored, everything reads;
- the same rotation sequence with the KEK on a PKCS#11 token (SoftHSM2) selected in the YAML,
  with no key file anywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyotp
import pytest
from vaultpbx.codecs.g711 import ulaw_decode
from vaultpbx.security.users import make_password_hasher
from vaultpbx.sip.message import Request

from tests.integration.engine import RunningEngine, start_engine
from tests.integration.test_media_calls import RawUa
from tests.integration.test_recording_calls import (
    FRAME,
    _channels,
    _cli,
    _close,
    _contains,
    _establish,
    _hang_up,
    _listing,
    _overrides,
    _play,
    _wait_recording,
)

HSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PASSWORD = "rotate-the-keys"
SECRETS = {"ops1": pyotp.random_base32(), "ops2": pyotp.random_base32()}


def _users() -> list[dict]:
    hasher = make_password_hasher(time_cost=1, memory_cost=8192, parallelism=1)
    return [{"name": name, "role": "admin", "totp_secret": secret,
             "password_hash": hasher.hash(PASSWORD)} for name, secret in SECRETS.items()]


def _http(engine: RunningEngine, method: str, path: str, body: dict | None = None,
          token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{engine.admin_port}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _login(engine: RunningEngine, user: str) -> str:
    status, body = _http(engine, "POST", "/login", {
        "user": user, "password": PASSWORD, "otp": pyotp.TOTP(SECRETS[user]).now()})
    assert status == 200, body
    return str(json.loads(body)["token"])


def _api_export(engine: RunningEngine, recording_id: str, tokens: tuple[str, str]
                ) -> tuple[int, bytes]:
    """Request (ops1), approve (ops2), download (ops1): what an operator does."""
    requester, approver = tokens
    status, body = _http(engine, "POST", f"/recordings/{recording_id}/export-requests",
                         token=requester)
    assert status == 201, body
    request_id = json.loads(body)["id"]
    status, body = _http(engine, "POST", f"/export-requests/{request_id}/approve",
                         token=approver)
    assert status == 200, body
    return _http(engine, "GET", f"/recordings/{recording_id}/export?request={request_id}",
                 token=requester)


def _left_channel_of(wav: bytes, tmp_path: Path) -> np.ndarray:
    path = tmp_path / f"api-{os.urandom(4).hex()}.wav"
    path.write_bytes(wav)
    left, _ = _channels(path)
    return left


def _record_call(engine: RunningEngine, caller: RawUa, callee: RawUa, call_id: str,
                 seed: int, known: set[str]) -> tuple[str, bytes]:
    """One real call with 1.2 s of random G.711 from the caller; returns the new recording's
    id (once its row is closed) and what was said."""
    said = np.random.default_rng(seed).integers(0, 256, 60 * FRAME, dtype=np.uint8).tobytes()
    started = engine.metrics().get("vaultpbx_recordings_started_total", 0)
    alice = bob = None
    try:
        ok, alice, bob = _establish(engine.sip_port, caller, callee, call_id)
        _wait_recording(engine, int(started) + 1)
        asyncio.run(_play([(alice, said)]))
        _hang_up(caller, engine.sip_port, ok.to.tag or "", call_id)
        callee.wait(lambda m: isinstance(m, Request) and m.method == "BYE")
    finally:
        _close(alice, bob)
    deadline = time.monotonic() + 10
    while True:
        fresh = [row for row in _listing(engine) if row["id"] not in known]
        if fresh and fresh[0]["state"] == "closed":
            known.add(fresh[0]["id"])
            return fresh[0]["id"], said
        assert time.monotonic() < deadline, f"no closed recording for {call_id}: {fresh}"
        time.sleep(0.2)


def _kek_of(engine: RunningEngine, recording_id: str) -> str:
    uri = f"file:{engine.data_dir / 'keystore.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        return str(db.execute("SELECT kek_id FROM recordings WHERE recording_id = ?",
                              (recording_id,)).fetchone()[0])


def _cli_export_says(engine: RunningEngine, recording_id: str, said: bytes,
                     tmp_path: Path) -> None:
    out = tmp_path / f"cli-{recording_id}.wav"
    done = _cli(engine, "recordings", "export", recording_id, "-o", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    left, _ = _channels(out)
    assert _contains(left, ulaw_decode(said))


@pytest.fixture
def softhsm(tmp_path: Path) -> dict[str, str]:
    """A SoftHSM2 token in a directory of this test; the PIN in a 0600 file outside var/."""
    root = tmp_path / "hsm"
    (root / "tokens").mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    env = {"SOFTHSM2_CONF": str(conf)}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "vaultpbx-it",
                    "--pin", "2468", "--so-pin", "13579246"],
                   check=True, capture_output=True, env={**os.environ, **env})
    pin = root / "pin"
    pin.write_text("2468\n")
    pin.chmod(0o600)
    return {"conf": str(conf), "pin_file": str(pin)}


@pytest.mark.parametrize("where", ["var", "pkcs11"])
def test_rotate_rewrap_retire_while_the_engine_runs(tmp_path: Path, where: str,
                                                    request: pytest.FixtureRequest,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    recording: dict = {"enabled": True}
    if where == "pkcs11":
        assert os.path.exists(HSM_MODULE) and shutil.which("softhsm2-util"), \
            "SoftHSM2 is part of the test environment (scripts/setup.sh)"
        hsm = request.getfixturevalue("softhsm")
        monkeypatch.setenv("SOFTHSM2_CONF", hsm["conf"])  # the engine and the CLI inherit it
        recording["kek"] = {"provider": "pkcs11", "pkcs11": {
            "module": HSM_MODULE, "token": "vaultpbx-it", "label": "it-kek",
            "pin_file": hsm["pin_file"]}}
    callee = RawUa()
    engine = start_engine(tmp_path, _overrides(
        callee, recording=recording,
        security={"floodguard": {"trusted": ["127.0.0.1/32"]}, "users": _users()}))
    caller = RawUa()
    known: set[str] = set()
    try:
        tokens = (_login(engine, "ops1"), _login(engine, "ops2"))
        first, first_said = _record_call(engine, caller, callee, "keys-1", 1, known)
        first_kek = _kek_of(engine, first)

        # A plain rotation applies to the very next call of the running engine.
        done = _cli(engine, "keys", "rotate")
        assert done.returncode == 0, done.stdout + done.stderr
        second_kek = done.stdout.split("new key-encryption key: ")[1].split()[0]
        second, second_said = _record_call(engine, caller, callee, "keys-2", 2, known)
        assert _kek_of(engine, second) == second_kek != first_kek

        # Rotate, re-wrap and retire while the engine runs.
        done = _cli(engine, "keys", "rotate", "--rewrap", "--retire")
        assert done.returncode == 0, done.stdout + done.stderr
        third_kek = done.stdout.split("new key-encryption key: ")[1].split()[0]
        assert "re-wrapped 2 data key(s)" in done.stdout
        assert f"retired {first_kek}" in done.stdout and f"retired {second_kek}" in done.stdout
        assert _kek_of(engine, first) == third_kek
        # The retire waited for the engine to say it follows the new KEK.
        status = json.loads(_cli(engine, "keys", "status", "--json").stdout)
        assert [(e["pid"], e["kek"]) for e in status["engines"]] == [
            (engine.process.pid, third_kek)]

        # Old recordings, re-wrapped under a KEK the engine never loaded: the admin API
        # exports them (no restart).
        for rid, said in ((first, first_said), (second, second_said)):
            status, wav = _api_export(engine, rid, tokens)
            assert status == 200, wav[:200]
            assert _contains(_left_channel_of(wav, tmp_path), ulaw_decode(said))

        # The next call after the retire is readable: through the API, the CLI, and verify.
        third, third_said = _record_call(engine, caller, callee, "keys-3", 3, known)
        assert _kek_of(engine, third) == third_kek
        status, wav = _api_export(engine, third, tokens)
        assert status == 200, wav[:200]
        assert _contains(_left_channel_of(wav, tmp_path), ulaw_decode(third_said))
        _cli_export_says(engine, third, third_said, tmp_path)
        done = _cli(engine, "recordings", "verify")
        assert done.returncode == 0 and "3 checked, 0 failed" in done.stdout, done.stdout

        # A later rewrap has no row to trip over.
        done = _cli(engine, "keys", "rotate", "--rewrap", "--retire")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "re-wrapped 3 data key(s)" in done.stdout
        fourth, fourth_said = _record_call(engine, caller, callee, "keys-4", 4, known)
        status, wav = _api_export(engine, fourth, tokens)
        assert status == 200, wav[:200]
        assert _contains(_left_channel_of(wav, tmp_path), ulaw_decode(fourth_said))
    finally:
        _close(caller, callee)
        assert engine.stop() == 0
    done = _cli(engine, "recordings", "verify")
    assert done.returncode == 0 and "4 checked, 0 failed" in done.stdout, done.stdout
    status = json.loads(_cli(engine, "keys", "status", "--json").stdout)
    assert [k["state"] for k in status["keks"]].count("current") == 1
    assert status["engines"] == []  # the engine left the register when it stopped
    if where == "pkcs11":
        assert not list(engine.data_dir.rglob("kek.key*")), "a key file next to the data"


def test_a_moved_kek_file_is_never_replaced(tmp_path: Path) -> None:
    callee = RawUa()
    engine = start_engine(tmp_path, _overrides(callee))
    caller = RawUa()
    known: set[str] = set()
    callee_port = callee.port  # the trunk target in the saved config
    try:
        rid, said = _record_call(engine, caller, callee, "moved-1", 7, known)
    finally:
        _close(caller, callee)
        assert engine.stop() == 0
    kek_file = engine.data_dir / "kek.key"
    original = kek_file.read_bytes()
    aside = tmp_path / "kek.key.aside"
    kek_file.rename(aside)

    # Listing needs no key, and makes none.
    [row] = _listing(engine)
    assert row["id"] == rid and not kek_file.exists()
    # Export and verify say which key is missing and what to restore; nothing is created.
    done = _cli(engine, "recordings", "export", rid, "-o", str(tmp_path / "x.wav"))
    assert done.returncode == 1
    assert f"not found in key file {kek_file} (missing)" in done.stderr
    assert "Restore it there from your KEK backup" in done.stderr
    assert not kek_file.exists() and not (tmp_path / "x.wav").exists()
    assert _cli(engine, "recordings", "verify").returncode == 1
    assert not kek_file.exists()
    # Neither does rotation make a new KEK beside the wrapped keys.
    done = _cli(engine, "keys", "rotate")
    assert done.returncode == 1 and "Restore" in done.stderr
    assert not kek_file.exists()
    # The engine refuses to start, before it listens, saying the same; nothing is created.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    refused = subprocess.run(
        [sys.executable, "-m", "vaultpbx.runtime.cli", "run", "-c", str(engine.config_path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "cannot start" in refused.stderr and str(kek_file) in refused.stderr
    assert "Restore it there" in refused.stderr
    assert not kek_file.exists()

    # Restored: the engine starts, the old recording exports, a new call records under it.
    aside.rename(kek_file)
    restarted = start_engine(tmp_path, config=engine.config)
    caller, callee = RawUa(), RawUa(callee_port)
    try:
        _cli_export_says(restarted, rid, said, tmp_path)
        new_rid, new_said = _record_call(restarted, caller, callee, "moved-2", 8, {rid})
        _cli_export_says(restarted, new_rid, new_said, tmp_path)
    finally:
        _close(caller, callee)
        assert restarted.stop() == 0
    assert kek_file.read_bytes() == original


def test_a_running_engine_keeps_its_kek_when_the_file_is_moved(tmp_path: Path) -> None:
    callee = RawUa()
    engine = start_engine(tmp_path, _overrides(callee))
    caller = RawUa()
    known: set[str] = set()
    kek_file = engine.data_dir / "kek.key"
    try:
        first, first_said = _record_call(engine, caller, callee, "run-moved-1", 11, known)
        aside = tmp_path / "kek.key.aside"
        kek_file.rename(aside)
        second, second_said = _record_call(engine, caller, callee, "run-moved-2", 12, known)
        assert not kek_file.exists()  # never re-created under the running engine
        assert _kek_of(engine, second) == _kek_of(engine, first)
        deadline = time.monotonic() + 15  # noticed at the next heartbeat (every 5 s)
        while "recording.kek_file_missing" not in engine.log():
            assert time.monotonic() < deadline, "the engine did not report the missing file"
            time.sleep(0.1)
        aside.rename(kek_file)
    finally:
        _close(caller, callee)
        assert engine.stop() == 0
    for rid, said in ((first, first_said), (second, second_said)):
        _cli_export_says(engine, rid, said, tmp_path)
