"""Every log line passes the maskers, including the standard library's `logging` records of the
modules that use it (admin API, audit log, anomaly rules, hook registry): before, those went to
`logging.lastResort` and printed a card number in clear. Each test drives a real code path of
the module where it can, and its module logger directly otherwise."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from vaultpbx.api import admin
from vaultpbx.hooks import registry as hook_registry
from vaultpbx.hooks.registry import HookRegistry
from vaultpbx.runtime.logs import configure_logging
from vaultpbx.security import anomaly, audit

from tests.api.api_helpers import FakeRecordings, make_harness

CARD = "4111 1111 1111 1111"  # passes Luhn
PHONE = "020 7946 0000"  # GB national format
RESIDENT_ID = "11010519491231002X"  # valid check character
CLEAR = ("4111 1111 1111 1111", "4111111111111111", "7946", RESIDENT_ID, "jane.doe@")


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", HookRegistry(), stream=stream)
    yield stream
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def _records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _assert_masked(stream: io.StringIO) -> str:
    text = stream.getvalue()
    assert text, "nothing was logged"
    for clear in CLEAR:
        assert clear not in text, f"{clear!r} in clear: {text}"
    return text


def test_admin_api_handler_failure_traceback_is_masked(lines: io.StringIO, tmp_path: Path
                                                       ) -> None:
    class BrokenRecordings(FakeRecordings):
        def list_recordings(self) -> list[dict[str, object]]:
            raise RuntimeError(f"index row for card {CARD} and caller {PHONE} is damaged")

    h = make_harness(tmp_path, recordings=BrokenRecordings())
    try:
        assert h.request("GET", "/recordings", token=h.token("admin")).status == 500
    finally:
        h.audit.close()
    text = _assert_masked(lines)
    [record] = [r for r in _records(lines) if r.get("logger") == admin._log.name]
    assert record["level"] == "error" and "4111 **** **** 1111" in record["exception"]
    assert "020 **** 0000" in record["exception"] and "RuntimeError" in text


def test_anomaly_alert_line_is_masked(lines: io.StringIO) -> None:
    sink = anomaly.log_sink()
    sink(anomaly.Alert(kind="new_network", account="jane.doe@example.com", time=0.0,
                       detail={"callback": PHONE}))
    _assert_masked(lines)
    [record] = _records(lines)
    assert record["logger"] == anomaly._log.name == "vaultpbx.security.anomaly"
    assert "j***@example.com" in record["event"] and "020 **** 0000" in record["event"]


def test_hook_registry_disable_line_is_masked(lines: io.StringIO) -> None:
    registry = HookRegistry()

    def setup(reg: HookRegistry) -> None:
        raise ValueError(f"cannot load table for {RESIDENT_ID} / {CARD}")

    registry.register_builtin("crm", setup)
    registry.enable(["crm"])
    _assert_masked(lines)
    [record] = _records(lines)
    assert record["logger"] == hook_registry._log.name and record["level"] == "warning"
    assert "plug-in crm disabled" in record["event"] and "1101" in record["event"]


def test_audit_module_logger_is_masked(lines: io.StringIO) -> None:
    # The audit log's own lines name files and records; whatever they carry is masked.
    audit._log.error("audit log %s: record %d is not well-formed", f"/var/{PHONE}", 7)
    audit._log.warning("sink answered %s", {"card": CARD})
    _assert_masked(lines)
    assert [r["logger"] for r in _records(lines)] == ["vaultpbx.audit", "vaultpbx.audit"]


def test_any_stdlib_logger_and_structlog_share_one_masked_pipeline(lines: io.StringIO) -> None:
    logging.getLogger("some.library").warning("paid with %s, call back on %s", CARD, PHONE)
    structlog.get_logger("vaultpbx").info("call.ended", caller="02079460000",
                                          callee="+447700900123")
    _assert_masked(lines)
    library, engine = _records(lines)
    assert library["event"] == "paid with 4111 **** **** 1111, call back on 020 **** 0000"
    assert (engine["caller"], engine["callee"]) == ("020****0000", "+447*****0123")
    # Ours is the only handler that prints (pytest adds capture handlers of its own).
    printing = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    assert logging.lastResort is None and len(printing) == 1
