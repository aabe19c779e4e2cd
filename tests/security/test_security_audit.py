"""Audit log: any flip, deletion, swap or truncation is caught and named; signed checkpoints."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from vaultpbx.hooks.registry import HookPoint, HookRegistry
from vaultpbx.security.audit import (
    CHECKPOINTS_FILE,
    KEY_FILE,
    RECORDS_FILE,
    AuditLog,
    AuditLogLocked,
    FileSink,
    RetentionError,
    canonical,
    record_hash,
    verify,
)
from vaultpbx.security.cli import main as cli_main
from vaultpbx.security.observer import AuditObserver

T0 = 1_767_225_600.0  # 2026-01-01
DAY = 86400.0
N = 12


def build(tmp: Path, n: int = N, **kw: object) -> tuple[Path, Path]:
    directory, sink = tmp / "audit", tmp / "outside" / "checkpoints.jsonl"
    log = AuditLog(directory, sinks=[FileSink(sink, fsync=False)], fsync=False,
                   checkpoint_every=1000, **kw)  # type: ignore[arg-type]
    for i in range(n):
        log.append(actor=f"user{i % 3}", action="recording.play", target=f"rec-{i}",
                   details={"i": i}, now=T0 + i)
    log.close(now=T0 + n)
    return directory, sink


def lines(directory: Path) -> list[bytes]:
    return (directory / RECORDS_FILE).read_bytes().splitlines()


def write(directory: Path, rows: list[bytes]) -> None:
    (directory / RECORDS_FILE).write_bytes(b"".join(r + b"\n" for r in rows))


def first_bad(directory: Path, sink: Path) -> tuple[str, int | None]:
    report = verify(directory, sink)
    assert not report.ok
    bad = report.first_bad
    assert bad is not None
    return bad.reason, bad.index


def test_intact_log_verifies_and_key_is_private(tmp_path: Path) -> None:
    directory, sink = build(tmp_path)
    report = verify(directory, sink)
    assert report.ok, report.problems
    assert report.records == N and report.checkpoints_checked == 1
    assert stat.S_IMODE(os.stat(directory / KEY_FILE).st_mode) == 0o600
    assert len(sink.read_text().splitlines()) == 1


@pytest.mark.parametrize("index", range(N))
def test_bit_flip_anywhere_in_a_record_is_altered_there(tmp_path: Path, index: int) -> None:
    directory, sink = build(tmp_path)
    original = lines(directory)
    row = original[index]
    for pos in range(0, len(row), 7):
        rows = list(original)
        rows[index] = row[:pos] + bytes([row[pos] ^ 0x01]) + row[pos + 1 :]
        write(directory, rows)
        assert first_bad(directory, sink) == ("altered", index), (pos, rows[index])


@pytest.mark.parametrize("index", range(N - 1))
def test_deleted_record_is_missing(tmp_path: Path, index: int) -> None:
    directory, sink = build(tmp_path)
    rows = lines(directory)
    del rows[index]
    write(directory, rows)
    assert first_bad(directory, sink) == ("missing", index)


def test_deleted_last_record_is_truncation(tmp_path: Path) -> None:
    directory, sink = build(tmp_path)
    write(directory, lines(directory)[:-1])
    assert first_bad(directory, sink) == ("truncated after checkpoint", N - 1)


@pytest.mark.parametrize("index", range(N - 1))
def test_swapped_records_are_reordered(tmp_path: Path, index: int) -> None:
    directory, sink = build(tmp_path)
    rows = lines(directory)
    rows[index], rows[index + 1] = rows[index + 1], rows[index]
    write(directory, rows)
    assert first_bad(directory, sink) == ("reordered", index)


@pytest.mark.parametrize("keep", [0, 1, 5, N - 1])
def test_truncation_after_checkpoint(tmp_path: Path, keep: int) -> None:
    directory, sink = build(tmp_path)
    write(directory, lines(directory)[:keep])
    assert first_bad(directory, sink) == ("truncated after checkpoint", keep)


def _rehash_from(rows: list[bytes], start: int, change: dict[str, object]) -> list[bytes]:
    """What an intruder does: edit a record and recompute every hash after it."""
    out = list(rows[:start])
    prev = json.loads(rows[start - 1])["hash"] if start else "0" * 64
    for i, row in enumerate(rows[start:]):
        record = json.loads(row)
        if i == 0:
            record.update(change)
        record["prev_hash"] = prev
        record["hash"] = record_hash(record)
        prev = record["hash"]
        out.append(canonical(record))
    return out


def test_consistently_rewritten_tail_fails_signed_checkpoint(tmp_path: Path) -> None:
    directory, sink = build(tmp_path, n=6)
    log = AuditLog(directory, sinks=[FileSink(sink, fsync=False)], fsync=False)
    for i in range(6, 12):
        log.append(actor="a", action="x", target="t", now=T0 + i)
    log.close(now=T0 + 20)  # checkpoints at sizes 6 and 12
    rows = _rehash_from(lines(directory), 8, {"actor": "someone-else"})
    write(directory, rows)
    report = verify(directory, sink)
    bad = report.first_bad
    assert bad is not None and bad.reason == "altered" and bad.index == 6
    assert "6..11" in bad.detail


def test_rewritten_and_resigned_in_dir_still_caught_by_outside_sink(tmp_path: Path) -> None:
    directory, sink = build(tmp_path)
    rows = _rehash_from(lines(directory), 3, {"action": "nothing"})
    write(directory, rows)
    # The intruder also replaces the key and re-signs the directory's checkpoint.
    (directory / KEY_FILE).unlink()
    (directory / "audit-ed25519.pub").unlink()
    (directory / CHECKPOINTS_FILE).unlink()
    log = AuditLog(directory, fsync=False)
    log.checkpoint(T0 + 100)
    log.close()
    assert verify(directory).ok  # fooled without the outside copy...
    reasons = {p.reason for p in verify(directory, sink).problems}
    assert "bad signature" in reasons  # ...but the pinned key from the sink rejects it


def test_forged_checkpoint_signature(tmp_path: Path) -> None:
    directory, sink = build(tmp_path)
    cp = json.loads(sink.read_text())
    cp["tree_size"] = 3
    sink.write_text(json.dumps(cp) + "\n")
    assert first_bad(directory, sink)[0] == "bad signature"


def test_appends_resume_after_reopen(tmp_path: Path) -> None:
    directory, sink = build(tmp_path, n=4)
    with AuditLog(directory, sinks=[FileSink(sink, fsync=False)], fsync=False) as log:
        assert log.size == 4
        rec = log.append(actor="b", action="y", now=T0 + 50)
        assert rec.seq == 4
        log.checkpoint(T0 + 51)
    assert verify(directory, sink).ok


def test_single_writer_lock(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a", fsync=False)
    with pytest.raises(AuditLogLocked):
        AuditLog(tmp_path / "a", fsync=False)
    log.close()


def test_details_stored_masked_and_secrets_dropped(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a", fsync=False)
    log.append(actor="admin", action="config.change", target="13812345678",
               details={"card": "4111111111111111", "password": "hunter2"}, now=T0)
    log.close()
    text = (tmp_path / "a" / RECORDS_FILE).read_text()
    for leak in ("4111111111111111", "hunter2", "13812345678"):
        assert leak not in text


def test_periodic_checkpoints(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a", fsync=False, checkpoint_every=5, checkpoint_interval=60)
    for i in range(11):
        log.append(actor="a", action="x", now=T0 + i)
    log.append(actor="a", action="x", now=T0 + 200)  # interval elapsed
    log.close()
    sizes = [json.loads(x)["tree_size"] for x in (tmp_path / "a" / CHECKPOINTS_FILE)
             .read_text().splitlines()]
    assert sizes == [5, 10, 12]


def test_prune_refuses_young_records_and_keeps_log_verifiable(tmp_path: Path) -> None:
    directory, sink = tmp_path / "a", tmp_path / "sink.jsonl"
    log = AuditLog(directory, sinks=[FileSink(sink, fsync=False)], fsync=False)
    for i in range(10):
        log.append(actor="a", action="x", now=T0 + i * 30 * DAY)  # one a month
    now = T0 + 300 * DAY
    with pytest.raises(RetentionError):
        log.prune(before=now - 179 * DAY, now=now)
    removed = log.prune(before=now - 200 * DAY, now=now)  # records older than 200 days
    assert removed == 4
    log.append(actor="a", action="after", now=now + 1)
    log.close(now=now + 2)
    report = verify(directory, sink)
    assert report.ok, report.problems
    assert json.loads(lines(directory)[0])["seq"] == 4
    rows = lines(directory)
    del rows[0]
    write(directory, rows)
    assert first_bad(directory, sink) == ("missing", 0)


def test_observer_records_hook_events(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a", fsync=False)
    registry = HookRegistry()
    AuditObserver(log, clock=lambda: T0).attach(registry)
    registry.notify(HookPoint.LOGIN, {"actor": "alice", "source_ip": "127.100.0.1", "ok": True})
    registry.notify(HookPoint.KEY_ROTATION, {"actor": "admin", "target": "kek-2"})
    registry.notify(HookPoint.CALL_STATE, {"actor": "ignored"})  # not audited
    log.close(now=T0)
    records = [json.loads(x) for x in lines(tmp_path / "a")]
    assert [(r["actor"], r["action"]) for r in records] == [
        ("alice", "login"), ("admin", "key_rotation")]
    assert records[0]["details"] == {"source_ip": "127.100.0.1", "ok": True}


def test_cli_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory, sink = build(tmp_path)
    assert cli_main(["audit", "verify", "--dir", str(directory), "--sink", str(sink)]) == 0
    rows = lines(directory)
    rows[2], rows[3] = rows[3], rows[2]
    write(directory, rows)
    assert cli_main(["audit", "verify", "--dir", str(directory), "--sink", str(sink)]) == 1
    assert "record 2 (seq 2): reordered" in capsys.readouterr().err


def test_cli_default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main(["audit", "verify"]) == 2  # no var/audit yet
    build(tmp_path / "var")
    # Without a configuration: var/audit against the default outside copy beside var/.
    (tmp_path / "var" / "outside").rename(tmp_path / "audit-outside")
    assert cli_main(["audit", "verify"]) == 0
