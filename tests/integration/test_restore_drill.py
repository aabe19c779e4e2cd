"""The restore drill (issue 16, item 5), with a real engine and the real `vaultpbx` CLI:

back up while a call is being recorded, make more calls, erase a caller, stop, restore into an
empty data directory — every recording finished before the backup exports and verifies, the
erased caller's do not (their keys, files and call-record numbers are gone again, from the
shred log kept apart), the call being recorded at backup time is reported as not in it, and
the audit log verifies across the restore against the outside checkpoints.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from vaultpbx.recording.kek import LocalFileKek
from vaultpbx.recording.keystore import Keystore
from vaultpbx.runtime.cdr import CdrStore

from tests.integration.engine import RunningEngine, start_engine
from tests.integration.test_erasure import _recorded_call
from tests.integration.test_media_calls import RawUa
from tests.integration.test_recording_calls import (
    _close,
    _free_rtp_ports,
)

ALICE, BOB, CAROL = "+447700900123", "+442079460000", "+447911123456"


def _overrides(callee: RawUa, keys: Path) -> dict:
    port_min, port_max = _free_rtp_ports()
    return {
        "media": {"anchor": True, "workers": 1, "port_min": port_min, "port_max": port_max},
        # The KEK apart from the data; the shred log and the audit checkpoints' outside copy
        # keep their defaults beside var/ (audit-outside/).
        "recording": {"enabled": True, "kek": {"file": str(keys / "kek.key")}},
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "trunks": {"carrier": {"target": f"sip:127.0.0.1:{callee.port}", "srtp": "off"}},
        "dialplan": [{"match": "0(\\d+)", "trunk": "carrier", "number": "\\1"}],
        "security": {"floodguard": {"trusted": ["127.0.0.1/32"]},
                     "privacy": {"default_country": "GB", "erasure_needs_approval": False}},
    }


def _cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultpbx.runtime.cli", *args, "-c", str(config)],
        capture_output=True, text=True, timeout=120, cwd=config.parent, input=stdin)


def _listing(config: Path) -> list[dict]:
    done = _cli(config, "recordings", "list", "--json", "--role", "supervisor", "--all")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _wait(predicate, what: str, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def _call_held_during(engine: RunningEngine, caller: RawUa, callee: RawUa, number: str,
                      call_id: str, started: int, during) -> object:  # type: ignore[no-untyped-def]
    """A recorded call from `number` that stays up (audio before and after) while `during()`
    runs; returns what it returned."""
    return _recorded_call(engine, caller, callee, number, call_id, started, during=during)


def test_restore_drill(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    callee, caller = RawUa(), RawUa()
    engine = start_engine(tmp_path, _overrides(callee, keys))
    backup_set = tmp_path / "backups"
    try:
        _recorded_call(engine, caller, callee, ALICE, "drill-1", 1)
        _recorded_call(engine, caller, callee, BOB, "drill-2", 2)
        _wait(lambda: [r["state"] for r in _listing(engine.config_path)] == ["closed"] * 2,
              "both recordings closed")
        # The backup is taken while Carol's call is being recorded.
        done = _call_held_during(
            engine, caller, callee, CAROL, "drill-3", 3,
            lambda: _cli(engine.config_path, "backup", "-o", str(backup_set)))
        assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
        before = {r["caller"]: r for r in _listing(engine.config_path)}
        assert before[CAROL]["created"]  # her call was up while the backup ran
        # After the backup: more calls, then Alice is erased.
        _recorded_call(engine, caller, callee, ALICE, "drill-4", 4)
        _recorded_call(engine, caller, callee, BOB, "drill-5", 5)
        erased = _cli(engine.config_path, "recordings", "erase", "-", "--actor", "dpo",
                      stdin=ALICE + "\n")
        assert erased.returncode == 0, erased.stderr
        assert json.loads(erased.stdout)["erased"]["recordings"] == 2
    finally:
        _close(caller, callee)
        assert engine.stop() == 0

    # What the backup holds: the two calls finished before it, not Carol's (being recorded).
    manifest = json.loads((backup_set / "0001-full" / "manifest.json").read_text())
    in_backup = {Path(rel).stem for rel in manifest["files"] if rel.startswith("recordings/")}
    alice_before, bob_before = before[ALICE]["id"], before[BOB]["id"]
    assert in_backup == {alice_before, bob_before}, (manifest["files"].keys(), before)
    kek_bytes = [bytes.fromhex(line.split()[1]) for line in
                 (keys / "kek.key").read_text().splitlines() if line and line[0] != "#"]
    for path in backup_set.rglob("*"):
        if path.is_file():
            assert not any(key in path.read_bytes() for key in kek_bytes), path

    # Restore into an empty data directory, with the audit directory that survived.
    restored = tmp_path / "restored"
    done = _cli(engine.config_path, "restore", str(backup_set), "--into", str(restored),
                "--audit-from", str(engine.data_dir / "audit"))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "1 recording(s) shredded again" in done.stdout, done.stdout  # Alice's first call
    assert "being written at backup time (not in it): 1" in done.stdout
    assert "audit log: intact" in done.stdout

    # Operate the restored node with its own configuration.
    config = yaml.safe_load(engine.config_path.read_text())
    config["data_dir"] = str(restored)
    restored_config = tmp_path / "restored.yaml"
    restored_config.write_text(yaml.safe_dump(config))
    rows = {r["id"]: r for r in _listing(restored_config)}
    assert rows[bob_before]["state"] == "closed" and rows[bob_before]["caller"] == BOB
    assert rows[alice_before]["state"] == "shredded" and rows[alice_before]["caller"] == ""
    wav = tmp_path / "bob.wav"
    done = _cli(restored_config, "recordings", "export", bob_before, "-o", str(wav))
    assert done.returncode == 0 and wav.stat().st_size > 1000, done.stderr
    done = _cli(restored_config, "recordings", "export", alice_before, "-o",
                str(tmp_path / "alice.wav"))
    assert done.returncode != 0 and not (tmp_path / "alice.wav").exists()
    assert not (restored / "recordings" / f"{alice_before}.vrec").exists()
    done = _cli(restored_config, "recordings", "verify", bob_before)
    assert done.returncode == 0, done.stderr + done.stdout

    # Alice's call record names nobody; Bob's still names Bob.
    with Keystore(restored / "keystore.db", LocalFileKek(keys / "kek.key")) as store:
        cdr = CdrStore(restored / "cdr.db", store.subjects)
        try:
            assert sorted(c["caller"] for c in cdr.recent()) == ["", BOB]
        finally:
            cdr.close()
    for name in ("keystore.db", "cdr.db"):
        assert b"7700900123" not in (restored / name).read_bytes()

    # The audit log, continued across the restore, verifies against the outside copy.
    done = _cli(restored_config, "audit", "verify")
    assert done.returncode == 0, done.stderr + done.stdout
    actions = [json.loads(line)["action"] for line in
               (restored / "audit" / "audit.jsonl").read_text().splitlines()]
    assert actions.index("backup.create") < actions.index("erasure.execute") < \
        actions.index("backup.restore")


def test_backups_taken_while_calls_are_recorded_are_consistent(tmp_path: Path) -> None:
    """A full backup and two incrementals taken while calls are being set up, recorded and
    hung up: each element verifies, no recording is copied twice, and the newest restores
    with every recording it holds verifying (none half-written, none without its key)."""
    keys = tmp_path / "keys"
    callee, caller = RawUa(), RawUa()
    engine = start_engine(tmp_path, _overrides(callee, keys))
    backup_set = tmp_path / "backups"
    errors: list[BaseException] = []

    def calls() -> None:
        try:
            for n in range(1, 7):
                _recorded_call(engine, caller, callee, BOB if n % 2 else CAROL,
                               f"busy-{n}", n)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    worker = threading.Thread(target=calls)
    started = lambda: engine.metrics().get("vaultpbx_recordings_started_total", 0)  # noqa: E731
    try:
        worker.start()
        # A full backup while the second call is being recorded, an incremental during the
        # fourth, and one after the last has been closed.
        for when, extra in ((2, []), (4, ["--incremental"])):
            _wait(lambda n=when: started() >= n, f"call {when} recorded", timeout=60)
            # The calls before it are closed in the index (closes reach it once a second), so
            # this element has finished recordings to copy as well as one being written.
            _wait(lambda n=when: sum(r["state"] == "closed" for r in
                                     _listing(engine.config_path)) >= n - 1,
                  f"{when - 1} closed recording(s)", timeout=60)
            done = _cli(engine.config_path, "backup", "-o", str(backup_set), *extra)
            assert done.returncode == 0, done.stderr
        worker.join(timeout=120)
        assert not worker.is_alive() and not errors, errors
        _wait(lambda: [r["state"] for r in _listing(engine.config_path)] == ["closed"] * 6,
              "six closed recordings")
        done = _cli(engine.config_path, "backup", "-o", str(backup_set), "--incremental")
        assert done.returncode == 0, done.stderr
    finally:
        _close(caller, callee)
        assert engine.stop() == 0
    done = _cli(engine.config_path, "backup", "verify", str(backup_set))
    assert done.returncode == 0 and "3 element(s)" in done.stdout, done.stderr
    copied = {e.name: [p.stem for p in e.rglob("*.vrec")] for e in sorted(backup_set.iterdir())}
    everything = [rid for rids in copied.values() for rid in rids]
    assert len(everything) == len(set(everything)) == 6, copied  # none copied twice
    assert all(copied.values()), copied  # each incremental brought new recordings
    restored = tmp_path / "restored"
    done = _cli(engine.config_path, "restore", str(backup_set), "--into", str(restored),
                "--audit-from", str(engine.data_dir / "audit"))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "recordings verified: 6, failed: 0, being written at backup time (not in it): 0" \
        in done.stdout, done.stdout
