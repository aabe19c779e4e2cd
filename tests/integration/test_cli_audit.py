"""The recording and key commands leave audit records in the engine's log while the engine runs
(and writes the same log): afterwards `audit verify` passes and every record is there, once."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.engine import ROOT, RunningEngine, start_engine
from tests.recording.recording_helpers import write_recording

pytestmark = pytest.mark.integration


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vaultpbx.runtime.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def failed_logins(engine: RunningEngine, stop: threading.Event) -> None:
    """The engine writes the log too: a failed admin login is an audit record."""
    body = json.dumps({"user": "nobody", "password": "wrong"}).encode()
    while not stop.is_set():
        request = urllib.request.Request(f"http://127.0.0.1:{engine.admin_port}/login",
                                         data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except (urllib.error.URLError, OSError):
            pass
        stop.wait(0.02)


def test_cli_commands_are_audited_while_the_engine_runs(tmp_path: Path) -> None:
    engine = start_engine(tmp_path)
    data_dir = engine.data_dir
    config = str(engine.config_path)
    stop = threading.Event()
    background = threading.Thread(target=failed_logins, args=(engine, stop), daemon=True)
    try:
        from vaultpbx.recording.cli import open_store

        with open_store(data_dir) as store:
            rec_id, *_ = write_recording(store, data_dir / "recordings", seed=1,
                                         caller="+1 555 0101", wall=time.time())
        background.start()
        rotate = run_cli("-c", config, "keys", "rotate", "--actor", "ops-kim", cwd=tmp_path)
        assert rotate.returncode == 0, rotate.stdout + rotate.stderr
        new_kek = rotate.stdout.split("new key-encryption key: ")[1].split()[0]
        assert new_kek.startswith("local-0002")
        listing = run_cli("-c", config, "recordings", "list", cwd=tmp_path)
        assert listing.returncode == 0, listing.stdout + listing.stderr
        assert rec_id in listing.stdout
        wav = tmp_path / "out.wav"
        export = run_cli("recordings", "export", rec_id, "-o", str(wav), "-c", config,
                         "--actor", "ops-kim", cwd=tmp_path)
        assert export.returncode == 0 and wav.exists(), export.stdout + export.stderr
        check = run_cli("-c", config, "recordings", "verify", cwd=tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
        assert engine.health()  # still up, still answering
    finally:
        stop.set()
        if background.is_alive():
            background.join(10)
        assert engine.stop() == 0, engine.log()

    verify = run_cli("audit", "verify", "--dir", str(data_dir / "audit"),
                     "--sink", str(tmp_path / "audit-outside" / "checkpoints.jsonl"), cwd=ROOT)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # No --dir: the configuration names the log (data_dir/audit and its outside copy).
    by_config = run_cli("-c", config, "audit", "verify", cwd=tmp_path)
    assert by_config.returncode == 0, by_config.stdout + by_config.stderr
    # The same counts (the outside copy is named as each was given).
    assert by_config.stdout.split(";")[0] == verify.stdout.split(";")[0]

    records = [json.loads(line) for line in
               (data_dir / "audit" / "audit.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(len(records)))
    actions = [(r["actor"], r["action"], r["target"]) for r in records]
    user = f"cli:{getpass.getuser()}"
    rotation = [a for a in actions if a[1] == "key.rotate"]
    assert rotation == [("ops-kim", "key.rotate", new_kek)]
    assert (user, "recording.list", "*") in actions
    assert ("ops-kim", "recording.export", rec_id) in actions
    assert (user, "recording.verify", rec_id) in actions
    listed = next(r for r in records if r["action"] == "recording.list")
    assert listed["details"]["count"] == 1 and listed["details"]["via"] == "cli"
    # The engine's own records before and after: one history, whoever wrote it.
    assert actions[0][1] == "engine.start" and actions[-1][1] == "engine.stop"
    assert any(a[1] == "login.failed" for a in actions)
    # The CLI's records are signed: a checkpoint was written when each command ended.
    sizes = [json.loads(x)["tree_size"] for x in
             (tmp_path / "audit-outside" / "checkpoints.jsonl").read_text().splitlines()]
    rotate_seq = next(r["seq"] for r in records if r["action"] == "key.rotate")
    assert any(size > rotate_seq for size in sizes[:-1])
