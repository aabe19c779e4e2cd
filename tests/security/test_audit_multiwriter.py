"""Audit log with several writers: the engine and the CLI (or two instances) append at once and
the log stays one chain, one Merkle tree and one series of checkpoints; tampering is still named."""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from vaultpbx.security import audit as audit_module
from vaultpbx.security.audit import (
    CHECKPOINTS_FILE,
    LOCK_FILE,
    RECORDS_FILE,
    AuditLog,
    AuditLogLocked,
    FileSink,
    verify,
)

T0 = 1_767_225_600.0  # 2026-01-01
DAY = 86400.0


def records(directory: Path) -> list[dict]:
    return [json.loads(x) for x in (directory / RECORDS_FILE).read_bytes().splitlines()]


def open_log(directory: Path, sink: Path, **kw: object) -> AuditLog:
    return AuditLog(directory, sinks=[FileSink(sink, fsync=False)], fsync=False, shared=True,
                    **kw)  # type: ignore[arg-type]


def test_two_instances_interleaved_make_one_chain(tmp_path: Path) -> None:
    directory, sink = tmp_path / "audit", tmp_path / "outside.jsonl"
    a = open_log(directory, sink, checkpoint_every=7)
    b = open_log(directory, sink, checkpoint_every=7)
    expected = []
    for i in range(40):
        writer, name = (a, "a") if i % 3 else (b, "b")
        rec = writer.append(actor=name, action="recording.play", target=f"rec-{i}",
                            details={"i": i}, now=T0 + i)
        assert rec.seq == i
        expected.append((name, f"rec-{i}"))
    assert a.size == 39  # a's view is as of its own last append (i=39 was b's)
    a.refresh()
    assert a.size == b.size == 40 and a.head_hash == b.head_hash
    assert a.root_hash() == b.root_hash()
    a.close(now=T0 + 50)
    b.close(now=T0 + 51)
    rows = records(directory)
    assert [(r["actor"], r["target"]) for r in rows] == expected
    assert [r["seq"] for r in rows] == list(range(40))
    report = verify(directory, sink)
    assert report.ok, report.problems
    assert report.checkpoints_checked >= 40 // 7
    sizes = [json.loads(x)["tree_size"] for x in (directory / CHECKPOINTS_FILE)
             .read_text().splitlines()]
    assert sizes == sorted(sizes) and sizes[-1] == 40


def test_a_checkpoint_covers_the_other_writers_records(tmp_path: Path) -> None:
    directory, sink = tmp_path / "audit", tmp_path / "outside.jsonl"
    engine = open_log(directory, sink)
    engine.append(actor="system", action="engine.start", now=T0)
    cli = open_log(directory, sink)
    cli.append(actor="cli:ops", action="key.rotate", target="local-0002", now=T0 + 1)
    cli.close(now=T0 + 2)  # signs both records
    engine.append(actor="system", action="engine.stop", now=T0 + 3)
    engine.close(now=T0 + 4)
    cps = [json.loads(x) for x in sink.read_text().splitlines()]
    assert [cp["tree_size"] for cp in cps] == [2, 3]
    assert [r["action"] for r in records(directory)] == [
        "engine.start", "key.rotate", "engine.stop"]
    report = verify(directory, sink)
    assert report.ok and report.checkpoints_checked == 2, report.problems


def test_no_read_when_nobody_else_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path / "a", fsync=False)
    log.append(actor="a", action="x", now=T0)
    reads: list[int] = []
    real = audit_module._pread_all
    monkeypatch.setattr(audit_module, "_pread_all",
                        lambda fd, off, n: reads.append(n) or real(fd, off, n))
    for i in range(200):
        log.append(actor="a", action="x", now=T0 + i)
    assert reads == []
    other = AuditLog(tmp_path / "a", fsync=False, shared=True)  # reads the file once to open
    other.append(actor="b", action="y", now=T0 + 300)
    reads.clear()
    log.append(actor="a", action="x", now=T0 + 301)  # reads just b's record
    assert len(reads) == 1 and 0 < reads[0] < 400
    other.close()
    log.close()
    assert verify(tmp_path / "a").ok


def test_prune_by_one_writer_is_followed_by_the_other(tmp_path: Path) -> None:
    directory, sink = tmp_path / "audit", tmp_path / "outside.jsonl"
    a = open_log(directory, sink)
    b = open_log(directory, sink)
    for i in range(10):
        (a if i % 2 else b).append(actor="x", action="x", now=T0 + i * 30 * DAY)
    now = T0 + 300 * DAY
    assert a.prune(before=now - 200 * DAY, now=now) == 4
    rec = b.append(actor="b", action="after", now=now + 1)  # b's file was replaced under it
    assert rec.seq == 11  # after 10 records and the prune record
    a.append(actor="a", action="after", now=now + 2)
    a.close(now=now + 3)
    b.close(now=now + 4)
    report = verify(directory, sink)
    assert report.ok, report.problems
    assert [r["seq"] for r in records(directory)] == list(range(4, 13))


def test_tampering_is_still_named(tmp_path: Path) -> None:
    directory, sink = tmp_path / "audit", tmp_path / "outside.jsonl"
    a, b = open_log(directory, sink), open_log(directory, sink)
    for i in range(12):
        (a if i % 2 else b).append(actor="x", action="x", target=f"r{i}", now=T0 + i)
    a.close(now=T0 + 20)
    b.close(now=T0 + 21)
    original = (directory / RECORDS_FILE).read_bytes().splitlines()
    assert verify(directory, sink).ok

    def check(rows: list[bytes]) -> tuple[str, int | None]:
        (directory / RECORDS_FILE).write_bytes(b"".join(r + b"\n" for r in rows))
        report = verify(directory, sink)
        assert not report.ok and report.first_bad is not None
        return report.first_bad.reason, report.first_bad.index

    flipped = list(original)
    flipped[5] = flipped[5].replace(b'"r5"', b'"r6"')
    assert check(flipped) == ("altered", 5)
    assert check(original[:4] + original[5:]) == ("missing", 4)
    swapped = list(original)
    swapped[7], swapped[8] = swapped[8], swapped[7]
    assert check(swapped) == ("reordered", 7)
    assert check(original[:9]) == ("truncated after checkpoint", 9)


def test_a_writer_keeps_the_evidence_when_the_file_is_cut_under_it(tmp_path: Path) -> None:
    directory, sink = tmp_path / "audit", tmp_path / "outside.jsonl"
    log = open_log(directory, sink)
    for i in range(6):
        log.append(actor="x", action="x", now=T0 + i)
    rows = (directory / RECORDS_FILE).read_bytes().splitlines()
    (directory / RECORDS_FILE).write_bytes(b"".join(r + b"\n" for r in rows[:3]))
    log.append(actor="x", action="after", now=T0 + 10)  # continues seq 6, not seq 3
    log.close(now=T0 + 11)
    report = verify(directory, sink)
    assert not report.ok and report.first_bad is not None
    assert (report.first_bad.reason, report.first_bad.index) == ("missing", 3)


def test_torn_last_line_does_not_stop_the_writers(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    log = AuditLog(directory, fsync=False)
    for i in range(3):
        log.append(actor="x", action="x", now=T0 + i)
    log.close()
    with open(directory / RECORDS_FILE, "ab") as f:
        f.write(b'{"action":"half a rec')  # a writer died mid-write
    log = AuditLog(directory, fsync=False)
    log.append(actor="x", action="after", now=T0 + 10)
    log.close(now=T0 + 11)
    report = verify(directory)
    assert not report.ok and report.first_bad is not None
    assert (report.first_bad.reason, report.first_bad.index) == ("altered", 3)


def test_same_process_needs_shared_and_lock_times_out(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a", fsync=False, lock_timeout=0.2)
    with pytest.raises(AuditLogLocked):
        AuditLog(tmp_path / "a", fsync=False)
    fd = os.open(tmp_path / "a" / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer stuck while holding the lock
        started = time.monotonic()
        with pytest.raises(AuditLogLocked):
            log.append(actor="x", action="x", now=T0)
        assert 0.15 < time.monotonic() - started < 2
    finally:
        os.close(fd)
    log.append(actor="x", action="x", now=T0)
    log.close()
    again = AuditLog(tmp_path / "a", fsync=False)  # closed logs free the directory
    assert again.size == 1
    again.close()


WRITER = textwrap.dedent("""
    import os, sys, time
    from vaultpbx.security.audit import AuditLog, FileSink
    directory, sink, name, count, go = sys.argv[1:6]
    log = AuditLog(directory, sinks=[FileSink(sink, fsync=False)], fsync=False,
                   checkpoint_every=25)
    while not os.path.exists(go):
        time.sleep(0.001)
    for i in range(int(count)):
        log.append(actor=name, action="recording.list", target=f"{name}-{i}",
                   details={"i": i}, now=time.time())
    log.close(now=time.time())
""")


def test_two_processes_appending_at_once(tmp_path: Path) -> None:
    directory, sink, go = tmp_path / "audit", tmp_path / "outside.jsonl", tmp_path / "go"
    count = 300
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(directory), str(sink), name,
                          str(count), str(go)], env=env)
        for name in ("engine", "cli")
    ]
    time.sleep(0.5)  # both open (and have read the empty log) before either writes
    go.touch()
    assert [p.wait(60) for p in procs] == [0, 0]
    rows = records(directory)
    assert [r["seq"] for r in rows] == list(range(2 * count))
    for name in ("engine", "cli"):
        mine = [r["target"] for r in rows if r["actor"] == name]
        assert mine == [f"{name}-{i}" for i in range(count)]
    actors = [r["actor"] for r in rows]
    switches = sum(1 for x, y in zip(actors, actors[1:], strict=False) if x != y)
    report = verify(directory, sink)
    assert report.ok, report.problems
    assert report.checkpoints_checked >= 2 * count // 25
    assert switches >= 1, "the writers never interleaved"


# -- the commands: where the log is, and what they leave in it ---------------------------------


def write_config(tmp: Path, audit_dir: str) -> tuple[Path, Path, Path]:
    data_dir, worm = tmp / "data", tmp / "worm" / "cp.jsonl"
    config = tmp / "vaultpbx.yaml"
    config.write_text(f"data_dir: {data_dir}\nsecurity:\n"
                      f"  audit: {{dir: {audit_dir}, sink: {worm}}}\n")
    return config, data_dir, worm


def test_commands_use_the_configured_log_and_verify_reads_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vaultpbx.runtime.cli import main as vaultpbx

    config, data_dir, worm = write_config(tmp_path, "var/logs/audit")
    directory = data_dir / "logs" / "audit"
    engine = AuditLog(directory, sinks=[FileSink(worm)], fsync=False)  # this process: "engine"
    engine.append(actor="system", action="engine.start", now=time.time())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for command in (["keys", "rotate", "--actor", "ops"], ["recordings", "list"]):
        done = subprocess.run([sys.executable, "-m", "vaultpbx.runtime.cli", "-c", str(config),
                               *command], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    engine.append(actor="system", action="engine.stop", now=time.time())
    engine.close(now=time.time())
    rows = records(directory)
    assert [(r["actor"], r["action"]) for r in rows] == [
        ("system", "engine.start"), ("ops", "key.rotate"),
        (f"cli:{getpass.getuser()}", "recording.list"), ("system", "engine.stop")]
    assert rows[1]["target"].startswith("local-0002") and rows[2]["target"] == "*"
    capsys.readouterr()
    assert vaultpbx(["-c", str(config), "audit", "verify"]) == 0  # no --dir: the config's
    assert "4 records" in capsys.readouterr().out
    cps = worm.read_text().splitlines()
    worm.write_text("\n".join(cps[:-1] + [cps[-1].replace('"tree_size":4', '"tree_size":3')])
                    + "\n")
    assert vaultpbx(["audit", "verify", "-c", str(config)]) == 1  # the configured sink counts
    assert "bad signature" in capsys.readouterr().err


def test_a_command_whose_audit_log_cannot_open_does_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vaultpbx.runtime.cli import main as vaultpbx

    config, data_dir, _ = write_config(tmp_path, "var/blocked")
    data_dir.mkdir()
    (data_dir / "blocked").write_text("a file where the log directory should be\n")
    assert vaultpbx(["-c", str(config), "keys", "rotate"]) == 1
    assert "cannot open the audit log, nothing done" in capsys.readouterr().err
    assert not (data_dir / "kek.key").exists()


def test_observer_names_recording_events_like_the_admin_api(tmp_path: Path) -> None:
    from vaultpbx.hooks.registry import HookPoint, HookRegistry
    from vaultpbx.recording.keystore import RecordingEvent
    from vaultpbx.security.observer import AuditObserver

    log = AuditLog(tmp_path / "a", fsync=False)
    registry = HookRegistry()
    AuditObserver(log, clock=lambda: T0).attach(registry)
    registry.notify(HookPoint.RECORDING_ACCESSED,
                    RecordingEvent(action="shred", recording_id="r1", actor="system:retention"))
    registry.notify(HookPoint.RECORDING_ACCESSED,
                    {"actor": "sam", "action": "recording.play", "target": "r2"})
    registry.notify(HookPoint.RECORDING_SHREDDED, {"actor": "sam", "target": "r3"})
    log.close()
    assert [(r["actor"], r["action"], r["target"]) for r in records(tmp_path / "a")] == [
        ("system:retention", "recording.shred", "r1"), ("sam", "recording.play", "r2"),
        ("sam", "recording_shredded", "r3")]
