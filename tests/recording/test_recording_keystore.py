"""Keystore, KEK file, rotation, crypto-shredding, retention, legal hold, erasure, access."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest
from vaultpbx.hooks.registry import HookPoint
from vaultpbx.recording.errors import (
    AccessDeniedError,
    KeyShreddedError,
    LegalHoldError,
    RecordingKeyError,
)
from vaultpbx.recording.export import export_wav, verify_all
from vaultpbx.recording.kek import KekFileError, KekProvider, LocalFileKek
from vaultpbx.recording.keystore import DAY, Keystore
from vaultpbx.recording.reader import RecordingReader
from vaultpbx.recording.retention import RetentionManager

from .recording_helpers import WALL, write_recording


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def db_bytes(env) -> bytes:
    return b"".join(p.read_bytes() for p in env.root.glob("keystore.db*"))


def accessed(env) -> list:
    return [e for p, e in env.events if p is HookPoint.RECORDING_ACCESSED]


def test_kek_file_is_created_private_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    kek = LocalFileKek(tmp_path / "kek.key")
    assert isinstance(kek, KekProvider)
    Keystore(tmp_path / "keystore.db", kek).check_kek()  # a first start makes the first KEK
    assert stat.S_IMODE((tmp_path / "kek.key").stat().st_mode) == 0o600
    os.chmod(tmp_path / "kek.key", 0o644)
    with pytest.raises(KekFileError, match="chmod 600"):
        LocalFileKek(tmp_path / "kek.key")


def test_keystore_holds_only_wrapped_keys(env) -> None:
    rid, _, _, _ = write_recording(env.store, env.directory)
    data_key = env.store.data_key(rid)
    assert data_key not in db_bytes(env)
    wrapped = env.store.db.execute(
        "SELECT wrapped_key FROM recordings WHERE recording_id = ?", (rid,)).fetchone()[0]
    assert len(wrapped) == 40  # RFC 3394: 32-byte key + 8-byte integrity block
    env.store.db.execute("UPDATE recordings SET wrapped_key = ? WHERE recording_id = ?",
                         (bytes([wrapped[0] ^ 1]) + wrapped[1:], rid))
    with pytest.raises(RecordingKeyError, match="does not unwrap"):
        env.store.data_key(rid)


def test_rotation_and_rewrap_leave_audio_files_untouched(env, tmp_path: Path) -> None:
    old_rid, old_path, _, _ = write_recording(env.store, env.directory, seed=1)
    old_kek = env.store.current_kek_id()
    before = sha(old_path)
    previous, new_kek = env.store.rotate_kek()
    assert previous == old_kek
    new_rid, _, _, _ = write_recording(env.store, env.directory, seed=2)
    assert env.store.get(old_rid).kek_id == old_kek
    assert env.store.get(new_rid).kek_id == new_kek
    assert env.store.rewrap().rewrapped == 1
    assert env.store.kek_ids_in_use() == {new_kek}
    env.store.retire_kek(old_kek)
    assert old_kek not in LocalFileKek(env.root / "kek.key").key_ids()
    assert sha(old_path) == before
    assert export_wav(env.store, old_rid, tmp_path / "o.wav", actor="admin").complete
    assert verify_all(env.store, actor="auditor").ok


def test_expiry_shreds_key_and_file_and_a_copy_dies_too(env, tmp_path: Path) -> None:
    short, short_path, _, _ = write_recording(env.store, env.directory, retention_class="sales")
    long, _, _, _ = write_recording(env.store, env.directory, seed=2)
    copy = tmp_path / "stolen-copy.vrec"
    shutil.copyfile(short_path, copy)
    wrapped = env.store.db.execute(
        "SELECT wrapped_key FROM recordings WHERE recording_id = ?", (short,)).fetchone()[0]
    data_key = env.store.data_key(short)
    retention = RetentionManager(env.store)

    assert retention.expire(WALL + 29 * DAY) == []
    shredded = retention.expire(WALL + 31 * DAY)  # sales keeps 30 days, the default 180
    assert [s.recording_id for s in shredded] == [short]
    assert shredded[0].reason == "expired" and shredded[0].file_deleted
    assert not short_path.exists()
    with pytest.raises(KeyShreddedError):
        env.store.data_key(short)
    row = env.store.get(short)
    assert row.state == "shredded" and row.caller_number is None
    # the wrapped key is gone from the database file and its WAL, not just unlinked
    blob = db_bytes(env)
    assert wrapped not in blob and data_key not in blob
    # the copy is still a well-formed file, but nothing left can open it
    with pytest.raises(KeyShreddedError):
        env.store.data_key(short)
    assert copy.exists() and env.store.get(long).state == "closed"
    log = env.store.shred_log()
    assert [(r.recording_id, r.reason, r.actor) for r in log] == [
        (short, "expired", "system:retention")
    ]
    assert [(e.action, e.recording_id) for e in accessed(env)] == [("shred", short)]
    assert [s.recording_id for s in retention.expire(WALL + 181 * DAY)] == [long]


def test_legal_hold_needs_two_distinct_people(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory)
    retention = RetentionManager(env.store)
    retention.request_hold(rid, actor="alice", reason="case 42", now=WALL)
    with pytest.raises(LegalHoldError, match="two-person rule"):
        retention.approve_hold(rid, actor="alice", now=WALL)
    assert not env.store.get(rid).legal_hold
    retention.approve_hold(rid, actor="bob", now=WALL)
    assert env.store.get(rid).legal_hold
    with pytest.raises(LegalHoldError, match="already on hold"):
        retention.approve_hold(rid, actor="carol", now=WALL)
    assert retention.expire(WALL + 400 * DAY) == []
    assert path.exists()
    retention.release_hold(rid, actor="alice", now=WALL + 400 * DAY)
    assert [s.recording_id for s in retention.expire(WALL + 400 * DAY)] == [rid]
    actions = [(e.action, e.actor, e.allowed) for e in accessed(env)]
    assert actions == [
        ("hold_request", "alice", True), ("hold_refused", "alice", False), ("hold", "bob", True),
        ("hold_release", "alice", True), ("shred", "system:retention", True),
    ]


def test_unapproved_hold_request_does_not_stop_expiry(env) -> None:
    rid, _, _, _ = write_recording(env.store, env.directory)
    retention = RetentionManager(env.store)
    retention.request_hold(rid, actor="alice", reason="maybe", now=WALL)
    assert [s.recording_id for s in retention.expire(WALL + 181 * DAY)] == [rid]


def test_erasure_by_caller_number_shreds_every_spelling_but_respects_holds(env) -> None:
    a, _, _, _ = write_recording(env.store, env.directory, caller="+44 20 7946 0000", seed=1)
    b, _, _, _ = write_recording(env.store, env.directory, caller="+44-20-7946-0000", seed=2)
    c, _, _, _ = write_recording(env.store, env.directory, caller="+44 20 7946 0001", seed=3)
    held, _, _, _ = write_recording(env.store, env.directory, caller="+4420 79460000", seed=4)
    retention = RetentionManager(env.store)
    retention.request_hold(held, actor="alice", reason="dispute", now=WALL)
    retention.approve_hold(held, actor="bob", now=WALL)
    result = retention.erase_caller("+44 (20) 7946 0000", actor="dpo", now=WALL + DAY)
    assert sorted(r.recording_id for r in result.shredded) == sorted([a, b])
    assert result.held == [held]
    assert all(r.reason == "erasure" and r.actor == "dpo" for r in env.store.shred_log())
    for rid in (a, b):
        with pytest.raises(KeyShreddedError):
            env.store.data_key(rid)
    env.store.data_key(c)
    assert b"7946" not in b"".join(
        str(row.caller_number).encode() for row in env.store.rows(states=("shredded",))
    )


def test_access_check_runs_first_and_is_audited(env, tmp_path: Path) -> None:
    rid, _, _, _ = write_recording(env.store, env.directory)

    def agents_cannot_export(actor: str, action: str, recording_id: str) -> bool:
        return not (actor.startswith("agent") and action == "export")

    with pytest.raises(AccessDeniedError, match="'agent7' may not export"):
        export_wav(env.store, rid, tmp_path / "o.wav", actor="agent7",
                   authorize=agents_cannot_export)
    assert not (tmp_path / "o.wav").exists()
    export_wav(env.store, rid, tmp_path / "o.wav", actor="qa1", authorize=agents_cannot_export)
    assert stat.S_IMODE((tmp_path / "o.wav").stat().st_mode) == 0o600
    denied = verify_all(env.store, actor="agent7", authorize=lambda *a: False)
    assert denied.denied == [rid] and not denied.ok
    assert [(e.action, e.actor, e.allowed) for e in accessed(env)] == [
        ("export", "agent7", False), ("export", "qa1", True), ("verify", "agent7", False)
    ]


def test_caller_number_is_shown_through_the_masker(env) -> None:
    write_recording(env.store, env.directory, caller="+44 20 7946 0000")
    (row,) = env.store.rows()
    # The role's policy first (supervisors see phone numbers in clear, agents never)...
    assert env.store.masked_caller(row, role="supervisor") == "+44 20 7946 0000"
    assert env.store.masked_caller(row, role="agent") == "+44 2* **** 0000"
    # ...then the plug-in maskers.
    env.store.hooks.add_masker(
        lambda kind, value, role: value[:3] + "*" * (len(value) - 6) + value[-3:]
        if kind == "phone" and role != "admin" else value
    )
    assert env.store.masked_caller(row, role="qa") == "+44**********000"


def test_keystore_file_is_private(env) -> None:
    assert stat.S_IMODE((env.root / "keystore.db").stat().st_mode) == 0o600


def test_a_second_keystore_connection_sees_the_same_index(env) -> None:
    rid, _, _, _ = write_recording(env.store, env.directory)
    other = Keystore(env.root / "keystore.db", LocalFileKek(env.root / "kek.key"))
    try:
        key = other.data_key(rid)
        with RecordingReader(env.store.get(rid).path, key, expected_id=bytes.fromhex(rid)) as r:
            assert sum(1 for _ in r.iter_chunks()) == 5
    finally:
        other.close()


def test_unsynced_commits_survive_a_sigkill_and_a_checkpoint_makes_them_durable(
        tmp_path: Path) -> None:
    """The engine's store (sync_commits=False) loses nothing when its process is SIGKILLed:
    a real child process indexes recordings and is killed; every row is there afterwards. Its
    checkpoint leaves no committed frame only in the WAL."""
    import signal
    import sqlite3
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from vaultpbx.recording.kek import LocalFileKek\n"
        "from vaultpbx.recording.keystore import Keystore\n"
        "root = Path(sys.argv[1])\n"
        "store = Keystore(root / 'keystore.db', LocalFileKek(root / 'kek.key'), "
        "sync_commits=False)\n"
        "for n in range(50):\n"
        "    store.create_recording(root / 'recordings', caller_number='+4420794600%02d' % n)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    store = Keystore(tmp_path / "keystore.db", LocalFileKek(tmp_path / "kek.key"),
                     sync_commits=False)
    try:
        assert len(store.rows()) == 50
        store.create_recording(tmp_path / "recordings")
        store.checkpoint()
        with sqlite3.connect(tmp_path / "keystore.db") as other:
            busy, frames, copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0 and frames == copied
    finally:
        store.close()


def test_closes_written_together_move_only_open_rows(env) -> None:
    open_one = env.store.create_recording(env.directory)
    cut = env.store.create_recording(env.directory)
    shredded = env.store.create_recording(env.directory)
    env.store.mark_incomplete(cut.recording_id.hex())
    env.store.shred(shredded.recording_id.hex(), actor="dpo", reason="erasure")
    env.store.mark_closed_many([(open_one.recording_id.hex(), 1000.0),
                                (cut.recording_id.hex(), 1001.0),
                                (shredded.recording_id.hex(), 1002.0)])
    assert env.store.get(open_one.recording_id.hex()).state == "closed"
    assert env.store.get(cut.recording_id.hex()).state == "closed"  # its final chunk came late
    assert env.store.get(shredded.recording_id.hex()).state == "shredded"  # nothing moves back
