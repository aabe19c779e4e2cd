"""The CDR store (cdr.db) and its CSV export: wall-clock UTC times from the core's monotonic
clock, the migration from the schema before reporting, batched writes, masking by role, CSV
injection, and the audit record every export leaves (CLI run in-process on real files)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import stat
import time
from pathlib import Path

import pytest
import yaml
from vaultpbx.b2bua.acd import QueueEvent
from vaultpbx.b2bua.call import CallRecord
from vaultpbx.hooks.maskers import TextMasker
from vaultpbx.hooks.registry import HookPoint, HookRegistry
from vaultpbx.recording.cli import open_store
from vaultpbx.runtime import cdr_export
from vaultpbx.runtime.cdr import SCHEMA_V1, SCHEMA_VERSION, CdrStore
from vaultpbx.runtime.cli import main

CALLER = "13812345678"  # a mobile number: masked for agents and QA, clear for supervisors


def call(call_id: str, started: float, *, queue: str = "support", caller: str = CALLER,
         answered_after: float | None = 4.0, talk: float = 30.0) -> CallRecord:
    answered = None if answered_after is None else started + answered_after
    return CallRecord(
        call_id=call_id, caller=caller, callee="700", route_kind="queue", route_name=queue,
        started=started, answered=answered,
        ended=(answered if answered is not None else started + 9.0) + (
            talk if answered is not None else 0.0),
        cause="normal_clearing" if answered is not None else "cancelled",
        status=200 if answered is not None else 487, legs="[]", queue=queue,
        queue_entered=started + 1.0, agent="2001" if answered is not None else "",
        hold_seconds=5.0 if answered is not None else 0.0,
        wrap_up_seconds=20.0 if answered is not None else None,
        ended_by="caller" if answered is not None else "",
        disposition="answered" if answered is not None else "abandoned")


def cdr_store(path: Path, **options: str) -> CdrStore:
    """A CdrStore over the keystore beside it (the parties' numbers are sealed per caller)."""
    return CdrStore(path, open_store(path.parent).subjects, **options)


def rows(path: Path) -> list[dict]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM calls ORDER BY started")]
    finally:
        db.close()


# -- wall-clock time (the auditor's finding) ----------------------------------------------------
def test_started_is_wall_clock_utc_not_the_monotonic_clock(tmp_path: Path) -> None:
    """The core stamps calls with time.monotonic() (the event loop's clock); the stored
    `started` must be a Unix time a carrier's bill can be matched against."""
    store = cdr_store(tmp_path / "cdr.db")
    before = time.time()
    now = time.monotonic()
    store.write([call("c1", now - 40.0)])
    after = time.time()
    [row] = rows(tmp_path / "cdr.db")
    assert before - 40.0 - 0.01 <= row["started"] <= after - 40.0 + 0.01
    assert row["answered"] - row["started"] == pytest.approx(4.0, abs=0.002)
    assert row["clock"] == "utc" and row["timezone"] == "UTC"


def test_a_clock_step_moves_absolute_times_but_never_durations(tmp_path: Path) -> None:
    """Durations are differences of the monotonic clock; absolute times use the wall clock's
    offset when written, so a record written after an NTP step carries the corrected time."""
    store = cdr_store(tmp_path / "cdr.db")
    offset = 1_800_000_000.0 - 500.0  # the engine clock 500 s is this Unix time
    store.write([call("before", 500.0)], wall_offset=offset)
    store.write([call("after", 600.0)], wall_offset=offset - 3600.0)  # clock stepped back 1 h
    first, second = sorted(rows(tmp_path / "cdr.db"), key=lambda r: r["call_id"] != "before")
    assert first["started"] == pytest.approx(1_800_000_000.0)
    assert second["started"] == pytest.approx(1_800_000_000.0 + 100.0 - 3600.0)
    for row in (first, second):
        assert (row["wait_seconds"], row["talk_seconds"], row["hold_seconds"]) == (3.0, 30.0, 5.0)
        assert row["queue_entered"] == pytest.approx(row["started"] + 1.0)
        assert row["answered"] - row["started"] == pytest.approx(4.0)
        assert row["ended"] - row["answered"] == pytest.approx(30.0)


def test_reporting_columns_are_stored_as_documented(tmp_path: Path) -> None:
    store = cdr_store(tmp_path / "cdr.db", timezone="Asia/Shanghai")
    store.write([call("a", 10.0), call("b", 20.0, answered_after=None)], wall_offset=1e9,
                recording_ids={"a": "ab" * 16})
    answered, abandoned = rows(tmp_path / "cdr.db")
    assert {k: answered[k] for k in ("queue", "agent", "wait_seconds", "talk_seconds",
                                     "hold_seconds", "wrap_up_seconds", "transfers",
                                     "recording_id", "disposition", "consent", "ended_by",
                                     "timezone", "caller")} == {
        "queue": "support", "agent": "2001", "wait_seconds": 3.0, "talk_seconds": 30.0,
        "hold_seconds": 5.0, "wrap_up_seconds": 20.0, "transfers": "[]",
        "recording_id": "ab" * 16, "disposition": "answered", "consent": "not_asked",
        "ended_by": "caller", "timezone": "Asia/Shanghai", "caller": ""}
    # The number is on disk only sealed under its caller's key; the store's reader opens it.
    assert answered["caller_sealed"] and CALLER.encode() not in answered["caller_sealed"]
    assert store.calls_between(0, 2e9)[0]["caller"] == CALLER
    assert (abandoned["disposition"], abandoned["talk_seconds"], abandoned["wait_seconds"],
            abandoned["recording_id"], abandoned["answered"]) == ("abandoned", None, 8.0, None,
                                                                  None)


# -- schema version and migration ---------------------------------------------------------------
def test_a_file_of_the_old_schema_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "cdr.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_V1)
    old.execute("INSERT INTO calls VALUES ('old', ?, '700', 'queue', 'support', 12345.5, NULL,"
                " 12350.0, 'cancelled', 487, '[]')", (CALLER,))
    old.commit()
    old.close()
    store = cdr_store(path)
    assert store.version == SCHEMA_VERSION == 3
    columns = [r[1] for r in store.db.execute("PRAGMA table_info(calls)")]
    assert columns[:11] == ["call_id", "caller", "callee", "route_kind", "route_name",
                            "started", "answered", "ended", "cause", "status", "legs"]
    assert "recording_id" in columns[11:] and "consent" in columns[11:]
    store.write([call("new", time.monotonic())])
    by_id = {r["call_id"]: r for r in rows(path)}
    # The old row keeps its values, its clear number now sealed; its time is the old engine's
    # clock, so it says so and stays out of date ranges.
    assert (by_id["old"]["caller"], by_id["old"]["started"], by_id["old"]["clock"]) == (
        "", 12345.5, "monotonic")
    assert [r["caller"] for r in store.recent() if r["call_id"] == "old"] == [CALLER]
    everything = store.calls_between(0, 4e9)
    assert [r["call_id"] for r in everything] == ["new"]
    store.close()
    again = cdr_store(path)  # opening a current file changes nothing
    assert again.version == 3 and len(rows(path)) == 2
    again.close()


def test_a_batch_is_one_transaction_whatever_its_size(tmp_path: Path) -> None:
    store = cdr_store(tmp_path / "cdr.db")
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)

    def batch(n: int) -> int:
        statements.clear()
        store.write([call(f"c{n}-{i}", float(i)) for i in range(n)],
                    [QueueEvent(at=float(i), call_id=f"c{n}-{i}", queue="support", agent="NONE",
                                event="ENTERQUEUE") for i in range(3 * n)], wall_offset=1e9)
        return sum(s.strip().upper() in ("BEGIN", "COMMIT") for s in statements)

    assert batch(10) == batch(1000) == 2
    assert store.written == 1010 and store.events_written == 3030


def test_queue_events_are_read_back_in_order_by_range_and_queue(tmp_path: Path) -> None:
    store = cdr_store(tmp_path / "cdr.db")
    store.write([], [QueueEvent(at=float(t), call_id="c", queue=q, agent="2001", event=e,
                                data1=str(t))
                     for t, q, e in ((1, "support", "ENTERQUEUE"), (2, "billing", "ENTERQUEUE"),
                                     (3, "support", "CONNECT"), (4, "support", "COMPLETEAGENT"))],
                wall_offset=1000.0)
    got = store.queue_events_between(1002.0, 1004.0, "support")
    assert [(r["time"], r["event"]) for r in got] == [(1003.0, "CONNECT")]
    assert len(store.queue_events_between(0, 2000)) == 4


# -- CSV export -----------------------------------------------------------------------------------
def _export(store: CdrStore, role: str, audit: list, kind: str = "calls",
            hooks: HookRegistry | None = None) -> list[dict[str, str]]:
    def write(actor: str, action: str, target: str, details: dict) -> None:
        audit.append((actor, action, target, dict(details)))

    result = cdr_export.export_csv(
        store, kind=kind, start=0.0, end=4e9, queue=None, role=role, actor="tester", via="test",
        masker=cdr_export.RowMasker(TextMasker(), hooks), audit=write)
    table = list(csv.DictReader(io.StringIO(result.body.decode())))
    assert len(table) == result.rows
    return table


def test_export_masks_the_caller_for_agents_and_qa_and_not_for_supervisors(
        tmp_path: Path) -> None:
    store = cdr_store(tmp_path / "cdr.db", timezone="Asia/Shanghai")
    started = 1_790_000_000.0
    store.write([call("a", 0.0)], wall_offset=started)
    audit: list = []
    for role in ("agent", "qa", "admin"):
        [row] = _export(store, role, audit)
        assert row["caller"] == "138****5678", role
    [row] = _export(store, "supervisor", audit)
    assert row["caller"] == CALLER
    assert row["start_utc"] == "2026-09-21T14:13:20.000Z"
    assert row["start_local"] == "2026-09-21T22:13:20.000+08:00"  # the record's display zone
    assert (row["queue"], row["agent"], row["wait_seconds"], row["talk_seconds"],
            row["hold_seconds"], row["wrap_up_seconds"], row["disposition"], row["consent"],
            row["transfers"]) == ("support", "2001", "3.000", "30.000", "5.000", "20.000",
                                  "answered", "not_asked", "[]")
    assert [a[3]["role"] for a in audit] == ["agent", "qa", "admin", "supervisor"]
    assert audit[0][:3] == ("tester", "cdr.export", "calls")
    assert audit[0][3]["rows"] == 1 and audit[0][3]["from"] == "1970-01-01T00:00:00.000Z"


def test_a_formula_in_a_caller_field_is_defused_and_numbers_stay_numbers(tmp_path: Path) -> None:
    store = cdr_store(tmp_path / "cdr.db")
    store.write([call("x", 0.0, caller="=HYPERLINK(\"http://evil\")"),
                 call("y", 1.0, caller="+8613812345678")], wall_offset=1e9)
    formula, plus = _export(store, "supervisor", [])
    assert formula["caller"] == "'=HYPERLINK(\"http://evil\")"
    assert plus["caller"] == "+8613812345678"


def test_an_export_whose_audit_record_fails_exports_nothing(tmp_path: Path) -> None:
    store = cdr_store(tmp_path / "cdr.db")
    store.write([call("a", 0.0)], wall_offset=1e9)
    hooks = HookRegistry()

    def broken(point: HookPoint, event: object) -> None:
        raise OSError("disk full")

    hooks.add_observer(HookPoint.DATA_EXPORT, broken, name="audit", essential=True)
    with pytest.raises(RuntimeError, match="audit record"):
        cdr_export.export_csv(store, kind="calls", start=0, end=4e9, queue=None, role="admin",
                              actor="a", via="test", masker=cdr_export.RowMasker(TextMasker()),
                              audit=cdr_export.hook_audit(hooks))


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        cdr_export.parse_range("yesterday", "2026-12-03")
    with pytest.raises(ValueError, match="after its start"):
        cdr_export.parse_range("2026-12-03", "2026-12-03")
    # No zone: UTC; an offset is honoured.
    assert cdr_export.parse_range("2026-12-03", "2026-12-03T09:00+08:00") == (
        1_796_256_000.0, 1_796_256_000.0 + 3600.0)


def test_cli_export_writes_a_private_file_and_an_audit_record(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    data = tmp_path / "var"
    config = tmp_path / "vaultpbx.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data), "cdr": {"timezone": "UTC"}}))
    store = cdr_store(data / "cdr.db")
    store.write([call("in", 0.0), call("late", 86_400.0)], wall_offset=1_796_256_000.0)
    store.write([], [QueueEvent(at=0.0, call_id="in", queue="support", agent="NONE",
                                event="ENTERQUEUE", data3="1")], wall_offset=1_796_256_000.0)
    store.close()
    out = tmp_path / "day.csv"
    out.write_text("an older, world-readable export")
    out.chmod(0o644)
    assert main(["cdr", "export", "-c", str(config), "--from", "2026-12-03",
                 "--to", "2026-12-04", "-o", str(out), "--role", "qa",
                 "--actor", "cli:auditor-test"]) == 0
    assert "1 rows" in capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    [row] = list(csv.DictReader(io.StringIO(out.read_text())))
    assert (row["call_id"], row["caller"]) == ("in", "138****5678")
    events = tmp_path / "events.csv"
    assert main(["cdr", "export", "-c", str(config), "--from", "2026-12-03T00:00:00Z",
                 "--to", "2026-12-04", "--events", "-o", str(events)]) == 0
    [event] = list(csv.DictReader(io.StringIO(events.read_text())))
    assert (event["time"], event["event"], event["data3"]) == ("1796256000", "ENTERQUEUE", "1")
    records = [json.loads(line) for line in (data / "audit" / "audit.jsonl").read_text()
               .splitlines()]
    exports = [r for r in records if r["action"] == "cdr.export"]
    assert [(r["actor"], r["target"], r["details"]["rows"], r["details"]["role"])
            for r in exports] == [("cli:auditor-test", "calls", 1, "qa"),
                                  (exports[1]["actor"], "queue_events", 1, "admin")]
    assert exports[0]["details"]["from"] == "2026-12-03T00:00:00.000Z"
    assert main(["cdr", "export", "-c", str(config), "--from", "soon", "--to", "later",
                 "-o", str(out)]) == 2


def test_an_unknown_time_zone_is_a_config_error_naming_its_line() -> None:
    from vaultpbx.runtime.config import ConfigError, parse_config

    assert parse_config("cdr:\n  timezone: Asia/Shanghai\n").config.cdr.timezone == (
        "Asia/Shanghai")
    with pytest.raises(ConfigError, match=r"line 3: cdr: timezone: unknown time zone 'Mars/Base'"):
        parse_config("data_dir: var\ncdr:\n  timezone: Mars/Base\n")


def test_cli_export_without_its_audit_log_exports_nothing(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    data = tmp_path / "var"
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = tmp_path / "vaultpbx.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data), "security": {
        "audit": {"dir": str(blocker / "audit"), "sink": None}}}))
    store = cdr_store(data / "cdr.db")
    store.write([call("c", 0.0)], wall_offset=1_796_256_000.0)
    store.close()
    out = tmp_path / "never.csv"
    assert main(["cdr", "export", "-c", str(config), "--from", "2026-12-03", "--to",
                 "2026-12-04", "-o", str(out)]) == 1
    assert "cannot open the audit log, nothing exported" in capsys.readouterr().err
    assert not out.exists()
