"""Reporting on a real engine: SIPp callers into a routed queue, SIPp agent phones, media
anchored and recorded, then the call records and queue log read from cdr.db and exported as CSV
by the `vaultpbx cdr export` command (a real process) and by GET /cdr.csv and
/queue-events.csv, masked by role, with the exports in the audit log.

The caller is extension 13812345678 (a mobile number: masked for agents, QA and admins, clear
for supervisors under the default policies). Every time is checked against the test's own
wall-clock window around the call.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from vaultpbx.runtime.cdr import SCHEMA_VERSION

from tests.integration.engine import RunningEngine, start_engine
from tests.integration.sipp import SIPP, SippProcess, SippRunner
from tests.integration.test_recording_calls import _free_rtp_ports
from tests.integration.test_sipp_calls import start_pbx
from tests.integration.test_sipp_queue import (
    DOMAIN,
    RING_TIMEOUT,
    _token,
    acd_overrides,
    agent_phone,
    login,
    remote,
    settle,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) is not installed"),
]

CALLER = "13812345678"
CALLER_PASSWORD = "pw-caller-secret"
MASKED = "138****5678"


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippRunner]:
    runner = SippRunner(tmp_path / "sipp")
    yield runner
    runner.cleanup()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[RunningEngine]:
    overrides = acd_overrides()
    overrides["extensions"][CALLER] = {"password": CALLER_PASSWORD}
    low, high = _free_rtp_ports()
    overrides.update({
        "media": {"anchor": True, "workers": 1, "port_min": low, "port_max": high},
        "recording": {"enabled": True},
        "cdr": {"timezone": "Asia/Shanghai"},
    })
    started: list[RunningEngine] = []
    try:
        yield start_pbx(started, tmp_path, overrides)
    finally:
        for each in started:
            each.stop(timeout=10)


def call_into(sipp: SippRunner, engine: RunningEngine, number: str, *, name: str = "caller",
              scenario: str = "uac_call.xml", extra: list[str] | None = None) -> SippProcess:
    return sipp.start(
        name, scenario=scenario, remote=remote(engine), service=number,
        auth=(CALLER, CALLER_PASSWORD), auth_uri=f"{number}@{remote(engine)}",
        keys={"domain": DOMAIN, "caller": CALLER}, timeout=25, extra=extra)


def query(engine: RunningEngine, sql: str, count: int, timeout: float = 8.0) -> list[dict]:
    """Rows from cdr.db, waiting for the engine's once-a-second batch."""
    path = engine.data_dir / "cdr.db"
    rows: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
            db.row_factory = sqlite3.Row
            try:
                rows = [dict(r) for r in db.execute(sql)]
            except sqlite3.OperationalError:
                rows = []
            finally:
                db.close()
            if len(rows) >= count:
                break
        time.sleep(0.1)
    assert len(rows) == count, (rows, engine.log()[-3000:])
    return rows


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def cli(engine: RunningEngine, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultpbx.runtime.cli", *args, "-c", str(engine.config_path)],
        capture_output=True, text=True, timeout=60, cwd=engine.config_path.parent)


def get_csv(engine: RunningEngine, path: str, user: str) -> list[dict[str, str]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{engine.admin_port}{path}",
        headers={"authorization": f"Bearer {_token(engine, user)}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/csv")
        return list(csv.DictReader(io.StringIO(response.read().decode())))


def stored_caller(engine: RunningEngine, call_id: str) -> str:
    """The caller as the CDR store returns it (what exports mask by role): sealed per caller
    on disk, opened in clear by the store's reader, the one place that knows how it is kept."""
    from vaultpbx.recording.cli import open_store
    from vaultpbx.runtime.cdr import CdrStore

    store = CdrStore(engine.data_dir / "cdr.db", open_store(engine.data_dir).subjects)
    try:
        [row] = [r for r in store.calls_between(0, 4e9) if r["call_id"] == call_id]
    finally:
        store.close()
    return str(row["caller"])


def audit_exports(engine: RunningEngine) -> list[dict]:
    lines = (engine.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["action"] == "cdr.export"]


def test_an_answered_queue_call_is_reported_recorded_and_exported(
        sipp: SippRunner, engine: RunningEngine, tmp_path: Path) -> None:
    phone = agent_phone(sipp, engine, "2001", "queue_uas_answer.xml", offers=1)
    login(engine, "2001")
    window_start = time.time()
    call_into(sipp, engine, "700").wait().assert_ok(calls=1)
    window_end = time.time()
    phone.wait(10).assert_ok(calls=1)
    settle(engine)
    [row] = query(engine, "SELECT * FROM calls", 1)
    # Wall-clock UTC inside the test's own window, in order.
    assert window_start - 0.05 <= row["started"] <= row["queue_entered"] <= row["answered"] \
        <= row["ended"] <= window_end + 0.05, row
    assert (row["clock"], row["timezone"]) == ("utc", "Asia/Shanghai")
    assert (row["queue"], row["agent"], row["disposition"], row["ended_by"], row["consent"],
            row["transfers"]) == ("support", "2001", "answered", "caller", "not_asked", "[]")
    assert row["wait_seconds"] == pytest.approx(row["answered"] - row["queue_entered"],
                                                abs=0.002)
    # The caller's scenario talks 300 ms after the 200 before its BYE.
    assert 0.3 <= row["talk_seconds"] <= window_end - window_start
    assert row["talk_seconds"] == pytest.approx(row["ended"] - row["answered"], abs=0.002)
    assert (row["hold_seconds"], row["wrap_up_seconds"]) == (0.0, 4.0)  # the queue's wrap_up
    stored = stored_caller(engine, row["call_id"])
    # The recording it names exists.
    listing = cli(engine, "recordings", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert row["recording_id"] in {r["id"] for r in json.loads(listing.stdout)}
    # The queue log.
    events = query(engine, "SELECT * FROM queue_events WHERE call_id != 'NONE'"
                   " ORDER BY time, id", 3)
    assert [(e["event"], e["queue"], e["agent"]) for e in events] == [
        ("ENTERQUEUE", "support", "NONE"), ("CONNECT", "support", "2001"),
        ("COMPLETECALLER", "support", "2001")]
    assert events[0]["time"] == pytest.approx(row["queue_entered"], abs=0.002)
    assert events[2]["data2"] == str(round(row["talk_seconds"]))
    metrics = engine.metrics()
    assert metrics["vaultpbx_cdr_records_written_total"] == 1
    assert metrics["vaultpbx_cdr_queue_events_written_total"] == 4  # with the AGENTLOGIN
    [session] = query(engine, "SELECT * FROM queue_events WHERE call_id = 'NONE'", 1)
    assert (session["event"], session["agent"], session["queue"]) == (
        "AGENTLOGIN", "2001", "NONE")
    # The login came just before window_start; its UTC time is the engine's clock plus the
    # wall-clock offset at the moment the batch was written (docs/cdr.md), which may have
    # moved by microseconds since (clock slewing): a few ms of slack, not more.
    assert session["time"] <= window_start + 0.005

    # Exports: the CLI for QA (masked), the API for the supervisor (clear) and agent alice.
    span = ("--from", iso(window_start - 1), "--to", iso(window_end + 1))
    out = tmp_path / "qa.csv"
    done = cli(engine, "cdr", "export", *span, "-o", str(out), "--role", "qa",
               "--actor", "cli:report-test")
    assert done.returncode == 0, done.stderr
    [qa] = list(csv.DictReader(io.StringIO(out.read_text())))
    assert (qa["call_id"], qa["caller"], qa["agent"], qa["recording_id"]) == (
        row["call_id"], MASKED, "2001", row["recording_id"])
    assert qa["start_local"].endswith("+08:00") and qa["start_utc"].endswith("Z")
    path = f"/cdr.csv?from={iso(window_start - 1)}&to={iso(window_end + 1)}".replace("+", "%2B")
    [clear] = get_csv(engine, path, "sup")
    [agent_view] = get_csv(engine, path, "alice")
    # The supervisor's policy shows phone numbers in clear: exactly what the store holds.
    assert (clear["caller"], agent_view["caller"]) == (stored, MASKED)
    assert clear["wait_seconds"] == f"{row['wait_seconds']:.3f}"
    wait_for(lambda: len(audit_exports(engine)) == 3, 5, "three export audit records")
    exports = audit_exports(engine)
    assert [(e["actor"], e["target"], e["details"]["rows"], e["details"]["role"],
             e["details"]["via"]) for e in exports] == [
        ("cli:report-test", "calls", 1, "qa", "cli"),
        ("sup", "calls", 1, "supervisor", "admin-api"),
        ("alice", "calls", 1, "agent", "admin-api")]


def test_ring_no_answer_and_abandon_are_logged_and_exported(
        sipp: SippRunner, engine: RunningEngine, tmp_path: Path) -> None:
    # 2001 rings without answering; the caller gives up after 5 s, 2 s after the ring timeout.
    phone = agent_phone(sipp, engine, "2001", "queue_uas_ring.xml", offers=1)
    login(engine, "2001")
    window_start = time.time()
    call_into(sipp, engine, "700", scenario="queue_uac_abandon.xml",
              extra=["-d", "5000"]).wait().assert_ok(calls=1)
    window_end = time.time()
    phone.wait(10).assert_ok(calls=1)
    settle(engine)
    [row] = query(engine, "SELECT * FROM calls", 1)
    assert window_start - 0.05 <= row["started"] <= row["ended"] <= window_end + 0.05
    assert (row["disposition"], row["queue"], row["agent"], row["answered"],
            row["talk_seconds"], row["recording_id"]) == ("abandoned", "support", "", None,
                                                          None, None)
    assert 5.0 <= row["wait_seconds"] <= window_end - window_start
    events = query(engine, "SELECT * FROM queue_events WHERE call_id != 'NONE'"
                   " ORDER BY time, id", 3)
    assert [(e["event"], e["agent"]) for e in events] == [
        ("ENTERQUEUE", "NONE"), ("RINGNOANSWER", "2001"), ("ABANDON", "NONE")]
    assert int(events[1]["data1"]) == pytest.approx(RING_TIMEOUT * 1000, abs=300)  # ms rung
    assert events[2]["data3"] == str(round(row["wait_seconds"]))
    assert all(window_start - 0.05 <= e["time"] <= window_end + 0.05 for e in events)
    # The missed offer also paused the agent, as Asterisk's auto-pause.
    sessions = query(engine, "SELECT * FROM queue_events WHERE call_id = 'NONE'"
                     " ORDER BY time, id", 2)
    assert [(e["event"], e["data1"]) for e in sessions] == [
        ("AGENTLOGIN", ""), ("PAUSE", "not-responding")]
    assert sessions[1]["time"] == pytest.approx(events[1]["time"], abs=0.002)

    out = tmp_path / "queue_log.csv"
    done = cli(engine, "cdr", "export", "--from", iso(window_start - 1), "--to",
               iso(window_end + 1), "--queue", "support", "--events", "-o", str(out))
    assert done.returncode == 0, done.stderr
    exported = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [e["event"] for e in exported] == ["ENTERQUEUE", "RINGNOANSWER", "ABANDON"]
    assert int(exported[0]["time"]) == int(events[0]["time"])
    path = (f"/queue-events.csv?from={iso(window_start - 1)}&to={iso(window_end + 1)}"
            "&queue=billing").replace("+", "%2B")
    assert get_csv(engine, path, "sup") == []  # another queue: nothing
    [abandoned] = get_csv(engine, f"/cdr.csv?from={iso(window_start - 1)}"
                          f"&to={iso(window_end + 1)}".replace("+", "%2B"), "alice")
    assert (abandoned["disposition"], abandoned["caller"]) == ("abandoned", MASKED)
    wait_for(lambda: len(audit_exports(engine)) == 3, 5, "three export audit records")
    assert [(e["target"], e["details"]["rows"], e["details"]["queue"])
            for e in audit_exports(engine)] == [
        ("queue_events", 3, "support"), ("queue_events", 0, "billing"), ("calls", 1, None)]


def test_the_api_refuses_a_bad_range(engine: RunningEngine) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{engine.admin_port}/cdr.csv?from=monday&to=friday",
        headers={"authorization": f"Bearer {_token(engine, 'sup')}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400


def test_written_records_survive_a_sigkill_and_the_restarted_engine_exports_them(
        sipp: SippRunner, engine: RunningEngine, tmp_path: Path) -> None:
    phone = agent_phone(sipp, engine, "2001", "queue_uas_answer.xml", offers=1)
    login(engine, "2001")
    window_start = time.time()
    call_into(sipp, engine, "700").wait().assert_ok(calls=1)
    phone.wait(10).assert_ok(calls=1)
    settle(engine)
    [before] = query(engine, "SELECT * FROM calls", 1)
    events_before = query(engine, "SELECT * FROM queue_events ORDER BY id", 4)  # + AGENTLOGIN
    pid = engine.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children")
    workers = [int(child) for child in children.read_text().split()]
    engine.process.send_signal(signal.SIGKILL)
    engine.process.wait(5)
    wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 10,
             "the media worker to die with its engine")
    restarted = start_engine(tmp_path, config=engine.config)
    try:
        # Same rows, same schema version; nothing written twice or lost.
        [after] = query(restarted, "SELECT * FROM calls", 1)
        assert after == before
        assert query(restarted, "SELECT * FROM queue_events ORDER BY id", 4) == events_before
        db = sqlite3.connect(f"file:{restarted.data_dir / 'cdr.db'}?mode=ro", uri=True)
        try:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            db.close()
        out = tmp_path / "after-crash.csv"
        done = cli(restarted, "cdr", "export", "--from", iso(window_start - 1), "--to",
                   iso(time.time() + 1), "-o", str(out), "--role", "agent")
        assert done.returncode == 0, done.stderr
        [row] = list(csv.DictReader(io.StringIO(out.read_text())))
        assert (row["call_id"], row["caller"], row["disposition"]) == (
            before["call_id"], MASKED, "answered")
    finally:
        restarted.stop(timeout=10)
