"""GET /cdr.csv and GET /queue-events.csv on the admin API over a real cdr.db: masked by the
session's role, one audit record per export (who, range, rows), bad ranges refused."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from vaultpbx.b2bua.acd import QueueEvent
from vaultpbx.b2bua.call import CallRecord
from vaultpbx.hooks.registry import HookPoint
from vaultpbx.recording.cli import open_store
from vaultpbx.runtime.cdr import CdrStore

from .api_helpers import Harness, make_harness

CALLER = "13812345678"
DAY = 1_796_256_000.0  # 2026-12-03T00:00:00Z


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    store = CdrStore(tmp_path / "cdr.db", open_store(tmp_path).subjects)
    store.write([CallRecord(
        call_id="c1", caller=CALLER, callee="700", route_kind="queue", route_name="support",
        started=10.0, answered=14.0, ended=44.0, cause="normal_clearing", status=200, legs="[]",
        queue="support", queue_entered=11.0, agent="2001", wrap_up_seconds=5.0,
        ended_by="caller", disposition="answered")],
        [QueueEvent(at=11.0, call_id="c1", queue="support", agent="NONE", event="ENTERQUEUE",
                    data3="1"),
         QueueEvent(at=14.0, call_id="c1", queue="support", agent="2001", event="CONNECT",
                    data1="3")], wall_offset=DAY)
    harness = make_harness(tmp_path, cdr=store)  # type: ignore[arg-type]
    yield harness
    harness.audit.close()
    store.close()


def table(response) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    assert response.status == 200, response.body
    assert response.content_type == "text/csv; charset=utf-8"
    return list(csv.DictReader(io.StringIO(response.body.decode())))


def test_the_caller_is_masked_for_agents_and_qa_and_clear_for_supervisors(h: Harness) -> None:
    path = "/cdr.csv?from=2026-12-03&to=2026-12-04"
    for role, caller in (("agent", "138****5678"), ("qa", "138****5678"),
                         ("supervisor", CALLER), ("admin", "138****5678")):
        [row] = table(h.request("GET", path, token=h.token(role)))
        assert row["caller"] == caller, role
        assert (row["start_utc"], row["agent"], row["wait_seconds"], row["talk_seconds"],
                row["disposition"]) == ("2026-12-03T00:00:10.000Z", "2001", "3.000", "30.000",
                                        "answered")


def test_each_export_leaves_an_audit_record_with_who_range_and_rows(h: Harness) -> None:
    token = h.token("supervisor")
    assert len(table(h.request("GET", "/queue-events.csv?from=2026-12-03T00:00:12Z"
                               "&to=2026-12-04&queue=support", token=token))) == 1
    assert table(h.request("GET", "/cdr.csv?from=2026-12-04&to=2026-12-05",
                           token=token)) == []
    h.audit.close()
    records = [json.loads(line) for line in
               (h.audit.directory / "audit.jsonl").read_text().splitlines()]
    exports = [r for r in records if r["action"] == "cdr.export"]
    assert [(r["actor"], r["target"], r["details"]["rows"], r["details"]["queue"],
             r["details"]["from"], r["details"]["via"]) for r in exports] == [
        ("supervisor", "queue_events", 1, "support", "2026-12-03T00:00:12.000Z", "admin-api"),
        ("supervisor", "calls", 0, None, "2026-12-04T00:00:00.000Z", "admin-api")]
    assert len(h.heard(HookPoint.DATA_EXPORT)) == 2
    assert h.api.counters["admin_cdr_exports_total"] == 2


def test_bad_or_missing_ranges_are_400_and_auditors_are_refused(h: Harness) -> None:
    token = h.token("admin")
    for path in ("/cdr.csv", "/cdr.csv?from=yesterday&to=today",
                 "/cdr.csv?from=2026-12-04&to=2026-12-03"):
        response = h.request("GET", path, token=token)
        assert response.status == 400, path
    assert h.heard(HookPoint.DATA_EXPORT) == []
    assert h.api.counters["admin_cdr_exports_refused_total"] == 3
    response = h.request("GET", "/cdr.csv?from=2026-12-03&to=2026-12-04",
                         token=h.token("auditor"))
    assert response.status == 403
    assert h.api.counters["admin_cdr_exports_total"] == 0


def test_an_export_over_the_row_cap_is_refused_whole_and_not_audited(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaultpbx.runtime import cdr_export

    token = h.token("supervisor")
    path = "/queue-events.csv?from=2026-12-03&to=2026-12-04"
    monkeypatch.setattr(cdr_export, "API_MAX_ROWS", 1)  # the range holds 2 events
    response = h.request("GET", path, token=token)
    assert response.status == 400
    assert "vaultpbx cdr export" in json.loads(response.body)["error"]
    assert h.heard(HookPoint.DATA_EXPORT) == []
    monkeypatch.setattr(cdr_export, "API_MAX_ROWS", 2)
    assert len(table(h.request("GET", path, token=token))) == 2
