"""The audit trail against the auditor's findings (issue 17): item 8, someone with write access
to the data directory rewrites history and the local checkpoints; item 9, what a client types
into a login's user field (a password, a megabyte, a lone surrogate) reaches the log safely.

These drive the writer and `verify` directly; tests/integration/test_audit_sinks.py does the same
attacks against a running engine and the real `vaultpbx audit verify`."""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from vaultpbx.hooks.registry import HookPoint, HookRegistry
from vaultpbx.security.audit import (
    CHECKPOINTS_FILE,
    LOCK_FILE,
    NAMES_KEY_FILE,
    PUBLIC_KEY_FILE,
    RECORDS_FILE,
    AuditKeyMismatch,
    AuditLog,
    AuditLogLocked,
    FileSink,
    Unverified,
    read_file_copy,
    verify,
)
from vaultpbx.security.merkle import (
    consistency_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
)
from vaultpbx.security.observer import AuditObserver

from .audit_attacker import change_actor, delete_record, keep_first, records, rewrite_history

T0 = 1_767_225_600.0  # 2026-01-01


def build(tmp: Path, n: int = 12, every: int = 4, **kw: object) -> tuple[Path, Path]:
    """A log of `n` records with a checkpoint every `every`, its outside copy out of `var/`."""
    directory, sink = tmp / "var" / "audit", tmp / "outside" / "checkpoints.jsonl"
    log = AuditLog(directory, sinks=[FileSink(sink, fsync=False)], fsync=False,
                   checkpoint_every=every, **kw)  # type: ignore[arg-type]
    for i in range(n):
        log.append(actor=f"user{i % 3}", action="recording.play", target=f"rec-{i}",
                   details={"i": i}, now=T0 + i)
    log.close(now=T0 + n)
    return directory, sink


def problem(report_problems: list, reason: str) -> str:  # type: ignore[type-arg]
    found = [str(p) for p in report_problems if p.reason == reason]
    assert found, [str(p) for p in report_problems]
    return found[0]


# -- item 8: history rewritten under the data directory ---------------------------------------


def test_rewritten_record_with_chain_merkle_and_local_checkpoints_redone(tmp_path: Path) -> None:
    directory, sink = build(tmp_path)
    rewrite_history(directory, change_actor(5, "someone-else"), now=T0 + 99)
    assert verify(directory).ok  # the directory alone is fooled: that is the attack
    report = verify(directory, sink)
    assert not report.ok
    first = report.first_bad
    assert first is not None and first.reason == "altered" and first.index == 4
    assert "records 4..7 were rewritten" in first.detail
    # The re-signed local checkpoint disagrees with the outside one for the same size.
    assert "disagree" in problem(report.problems, "bad signature")


def test_deleted_record_with_everything_recomputed(tmp_path: Path) -> None:
    directory, sink = build(tmp_path)
    rewrite_history(directory, delete_record(9), now=T0 + 99)
    report = verify(directory, sink)
    assert str(report.first_bad) == (
        "record 11 (seq 11): truncated after checkpoint: a signed checkpoint covers 12 records "
        "but only 11 remain (the last checkpoint that still matches covers 8: records from seq "
        "8 on were cut or rewritten)")
    # With a checkpoint between the deletion and the end, the range is named exactly.
    directory, sink = build(tmp_path / "again", n=14)
    rewrite_history(directory, delete_record(5), now=T0 + 99)
    first = verify(directory, sink).first_bad
    assert first is not None and first.reason == "altered" and first.index == 4
    assert "records 4..7 were rewritten" in first.detail


def test_tail_cut_and_recomputed_is_the_log_behind_a_checkpoint(tmp_path: Path) -> None:
    directory, sink = build(tmp_path)
    rewrite_history(directory, keep_first(10), now=T0 + 99)
    report = verify(directory, sink)
    assert not report.ok
    assert str(report.first_bad).startswith(
        "record 10 (seq 10): truncated after checkpoint: a signed checkpoint covers 12 records "
        "but only 10 remain")


def test_local_checkpoints_deleted_changes_nothing_a_missing_outside_copy_fails(
        tmp_path: Path) -> None:
    directory, sink = build(tmp_path)
    (directory / CHECKPOINTS_FILE).unlink()
    assert verify(directory, sink).ok  # the outside copy is what counts
    rewrite_history(directory, change_actor(1, "x"), now=T0 + 99)
    (directory / CHECKPOINTS_FILE).unlink()
    assert not verify(directory, sink).ok
    sink.unlink()  # and gone: configured but missing is a failure, not "skipped"
    report = verify(directory, sink)
    assert str(report.first_bad) == (f"log: outside copy unreadable: file {sink}: missing "
                                     f"(no such file)")


def test_outside_copy_unreadable_is_a_failure(tmp_path: Path) -> None:
    directory, sink = build(tmp_path)
    sink.unlink()
    sink.mkdir()  # a directory where the file should be: unreadable even for root
    report = verify(directory, sink)
    assert not report.ok and report.first_bad is not None
    assert report.first_bad.reason == "outside copy unreadable"
    assert "unreadable" in report.first_bad.detail


def test_own_key_resigned_fails_under_the_pinned_key(tmp_path: Path) -> None:
    directory, sink = build(tmp_path)
    pinned = (directory / PUBLIC_KEY_FILE).read_text().strip()
    attacker = Ed25519PrivateKey.generate()
    rewrite_history(directory, change_actor(2, "x"), now=T0 + 99, own_key=attacker)
    # The outside copy gone as well (the worst case): the pinned key still says no.
    report = verify(directory, public_key=pinned)
    assert not report.ok
    assert "has a bad signature or an untrusted key" in problem(report.problems, "bad signature")
    # And the writer refuses to sign with a key other than the pinned one.
    with pytest.raises(AuditKeyMismatch, match="pins"):
        AuditLog(directory, public_key=pinned, fsync=False)


def test_outside_checkpoints_are_consistent_with_each_other(tmp_path: Path) -> None:
    """Each outside checkpoint's tree is a prefix of the next (RFC 9162 §2.1.4 consistency,
    proved from the log's leaves and checked against the signed roots)."""
    directory, sink = build(tmp_path, n=23, every=5)
    leaves = [leaf_hash(x) for x in (directory / RECORDS_FILE).read_bytes().splitlines()]
    cps = [json.loads(x) for x in read_file_copy(sink).lines]
    sizes = [cp["tree_size"] for cp in cps]
    assert sizes == [5, 10, 15, 20, 23]
    for old, new in zip(cps, cps[1:], strict=False):
        proof = consistency_proof(leaves[:new["tree_size"]], old["tree_size"])
        verify_consistency(old["tree_size"], new["tree_size"], proof,
                           bytes.fromhex(old["root_hash"]), bytes.fromhex(new["root_hash"]))
        assert root_from_leaf_hashes(leaves[:new["tree_size"]]).hex() == new["root_hash"]


# -- the window: checkpoints come by count and by time, and a sink behind is named ------------


def test_checkpoint_due_by_time_without_further_records(tmp_path: Path) -> None:
    sink = tmp_path / "outside.jsonl"
    log = AuditLog(tmp_path / "a", sinks=[FileSink(sink, fsync=False)], fsync=False,
                   checkpoint_every=100, checkpoint_interval=60)
    log.append(actor="a", action="login", now=T0)
    assert log.checkpoint_if_due(T0 + 59.9) is None
    cp = log.checkpoint_if_due(T0 + 60)
    assert cp is not None and cp.tree_size == 1
    assert log.checkpoint_if_due(T0 + 500) is None  # nothing new: nothing to sign
    assert [json.loads(x)["tree_size"] for x in sink.read_text().splitlines()] == [1]
    log.close()


def test_reopened_log_signs_what_a_killed_writer_left_uncovered(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a", fsync=False, checkpoint_every=100, checkpoint_interval=60)
    for i in range(3):
        log.append(actor="a", action="x", now=T0 + i)
    log._release()  # as if SIGKILLed: no closing checkpoint
    again = AuditLog(tmp_path / "a", fsync=False, checkpoint_every=100, checkpoint_interval=60)
    cp = again.checkpoint_if_due(T0 + 61)
    assert cp is not None and cp.tree_size == 3
    again.close()


def test_forged_local_checkpoint_does_not_stop_the_writer(tmp_path: Path) -> None:
    sink = tmp_path / "outside.jsonl"
    log = AuditLog(tmp_path / "a", sinks=[FileSink(sink, fsync=False)], fsync=False,
                   checkpoint_every=3, shared=True)
    log.append(actor="a", action="x", now=T0)
    forged = {"type": "checkpoint", "tree_size": 10**6, "root_hash": "00" * 32,
              "head_hash": "00" * 32, "time": T0, "public_key": log.public_key,
              "signature": "00" * 64}
    with (tmp_path / "a" / CHECKPOINTS_FILE).open("a") as f:
        f.write(json.dumps(forged) + "\n")
    for i in range(5):
        log.append(actor="a", action="x", now=T0 + 1 + i)
    log.close()
    assert [json.loads(x)["tree_size"] for x in sink.read_text().splitlines()] == [3, 6]


def test_a_failing_sink_is_counted_logged_and_verify_says_it_is_behind(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "blocked" / "cp.jsonl"
    (tmp_path / "blocked").write_text("a file where the sink's directory should be\n")
    log = AuditLog(tmp_path / "a", sinks=[FileSink(good, fsync=False), FileSink(bad)],
                   fsync=False, checkpoint_every=2)
    with caplog.at_level(logging.ERROR, logger="vaultpbx.audit"):
        for i in range(4):
            log.append(actor="a", action="x", now=T0 + i)
    samples = {name: value for name, _, value, _ in log.metric_samples()}
    assert samples["vaultpbx_audit_sink_failures_total"] == 2
    assert samples["vaultpbx_audit_checkpoints_total"] == 2
    assert sum(f"audit checkpoint sink file {bad} failed" in r.getMessage()
               for r in caplog.records) == 2
    log.close()
    (tmp_path / "blocked").unlink()
    bad.parent.mkdir()
    bad.write_text("")  # the sink's store, empty: it never got a checkpoint
    report = verify(tmp_path / "a", good, outside=[read_file_copy(bad)], now=T0 + 100,
                    max_lag=70)
    assert not report.ok
    assert str(report.first_bad) == (
        f"record 0 (seq 0): outside copy behind: file {bad} covers 0 records, the log holds 4: "
        f"records 0..3 are vouched for by no outside checkpoint, the oldest written 100 s ago "
        f"(allowed: 70 s)")
    # Younger than the allowed lag: a running engine's next checkpoint is not due yet.
    assert verify(tmp_path / "a", good, outside=[read_file_copy(bad)], now=T0 + 50,
                  max_lag=70).ok


# -- item 9: what a client typed ---------------------------------------------------------------


def test_unverified_names_are_stored_as_a_keyed_hash(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a", fsync=False)
    secret = "Tr0ub4dor&3-typed-in-the-user-field"
    first = log.append(actor=Unverified(secret), action="login.failed", now=T0)
    second = log.append(actor=Unverified(secret), action="login.failed", now=T0 + 1)
    log.close()
    key = (tmp_path / "a" / NAMES_KEY_FILE).read_bytes()
    assert oct((tmp_path / "a" / NAMES_KEY_FILE).stat().st_mode & 0o777) == "0o600"
    expected = hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()[:32]
    assert first.actor == second.actor == f"unverified:{expected}"
    assert secret not in (tmp_path / "a" / RECORDS_FILE).read_text()
    assert "Tr0ub4dor" not in repr(Unverified(secret)) + str(Unverified(secret))
    # Another log (another key): the same text does not give the same value, so a table of
    # hashed guesses from one deployment says nothing about another.
    other = AuditLog(tmp_path / "b", fsync=False)
    assert other.append(actor=Unverified(secret), action="x", now=T0).actor != first.actor
    other.close()


def test_fields_are_bounded_with_a_marker_and_the_length(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a", fsync=False, max_field_chars=512)
    huge = "u" * 1_000_000
    before = 0
    for i in range(3):
        log.append(actor=huge, action="login.failed", target=huge,
                   details={"reason": huge, "items": list(range(500)),
                            "nested": {"k": {"k": {"k": {"k": {"k": {"k": {"k": "deep"}}}}}}}},
                   now=T0 + i)
        size = (tmp_path / "a" / RECORDS_FILE).stat().st_size
        assert size - before < 8 * 1024  # a megabyte in, a few KiB out, every time
        before = size
    log.close()
    row = records(tmp_path / "a")[0]
    assert row["actor"] == "u" * 512 + "…[truncated: 1000000 chars]"
    assert row["details"]["reason"].endswith("…[truncated: 1000000 chars]")
    assert len(row["details"]["items"]) == 65 and row["details"]["items"][-1] == (
        "…truncated: 436 more items")
    assert verify(tmp_path / "a").ok


def test_many_bounded_details_still_make_a_bounded_record(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a", fsync=False)
    wide = {f"k{i}": {f"j{j}": "v" * 600 for j in range(60)} for i in range(60)}
    record = log.append(actor="a", action="x", details=wide, now=T0)
    log.close()
    assert set(record.details) == {"…truncated", "preview"}
    assert record.details["…truncated"].startswith("details of ")
    assert (tmp_path / "a" / RECORDS_FILE).stat().st_size < 4096
    assert verify(tmp_path / "a").ok


def test_lone_surrogates_and_odd_values_are_escaped_not_dropped(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a", fsync=False)
    log.append(actor="bad\udcffname", action="login.failed", target="\ud800",
               details={"why": "x\udc80y", 7: b"\xff\xfe", "set": {1}, "nan": float("nan")},
               now=T0)
    log.close()
    row = records(tmp_path / "a")[0]
    assert row["actor"] == "bad\\udcffname" and row["target"] == "\\ud800"
    assert row["details"]["why"] == "x\\udc80y" and row["details"]["nan"] == "nan"
    assert "7" in row["details"]
    assert verify(tmp_path / "a").ok


def test_a_record_that_cannot_be_written_is_loud(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(tmp_path / "a", fsync=False, lock_timeout=0.2)
    registry = HookRegistry(budget_seconds=10.0)
    AuditObserver(log, clock=lambda: T0).attach(registry)
    fd = os.open(tmp_path / "a" / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another writer stuck holding the lock
        with caplog.at_level(logging.ERROR):
            with pytest.raises(AuditLogLocked):
                log.append(actor="alice", action="recording.export", now=T0)
            registry.notify(HookPoint.KEY_ROTATION, {"actor": "admin", "target": "kek-2"})
    finally:
        os.close(fd)
    assert log.counters["write_failures_total"] == 2
    assert registry.essential_errors == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("audit record 'recording.export' by alice could not be written" in m
               for m in messages)
    assert any("essential hook audit failed at key_rotation" in m for m in messages)
    log.close()


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(("audit", "message"), [
    ({"sink": "var/audit-checkpoints.jsonl"},
     "line 4: security.audit.sink: {data}/audit-checkpoints.jsonl is inside {data}"),
    ({"sink": "{data}/audit/cp.jsonl"}, "is inside {data}"),
    ({"public_key": "abc"}, "public_key: expected 64 hex digits"),
    ({"syslog": "nowhere"}, "syslog address 'nowhere'"),
    ({"http": "ftp://x"}, "http: expected an http:// or https:// URL"),
    ({"checkpoint_every": 0}, "checkpoint_every: must be at least 1"),
    ({"checkpoint_interval": "soon"}, "security.audit.checkpoint_interval: must be a number"),
])
def test_bad_audit_settings_are_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              audit: dict[str, object], message: str) -> None:
    from vaultpbx.runtime.cli import main as vaultpbx

    data = tmp_path / "data"
    values = {k: v.format(data=data) if isinstance(v, str) else v for k, v in audit.items()}
    config = tmp_path / "vaultpbx.yaml"
    config.write_text(f"data_dir: {data}\nsecurity:\n  audit:\n"
                      + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in values.items()))
    assert vaultpbx(["-c", str(config), "check-config"]) == 2
    assert message.format(data=data) in capsys.readouterr().err
