"""Erasure by data subject (issue 17, item 6) and expiry from the CLI (item 5), on real
keystores, call-record stores and recordings on disk.

The subject keyring: every spelling of a number is one subject, two numbers are two; a number
is stored only sealed under its subject's key; erasure destroys that key, so copies made before
cannot be read afterwards; kept (held) data is re-sealed under a fresh key first.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sqlite3
import time
from pathlib import Path

import pytest
from vaultpbx.b2bua.call import CallRecord
from vaultpbx.recording.cli import add_recording_commands, open_store
from vaultpbx.recording.erasure import ErasureError, ErasureService, StoreErasure
from vaultpbx.recording.errors import KekInUseError, KeyShreddedError
from vaultpbx.recording.kek import LocalFileKek
from vaultpbx.recording.keystore import CALLER_CONTEXT, DAY, Keystore, KeystoreSchemaError
from vaultpbx.recording.retention import RetentionManager
from vaultpbx.runtime.cdr import CdrSchemaError, CdrStore

from .recording_helpers import WALL, write_recording

NATIONAL, E164 = "02079460000", "+44 20 7946 0000"
FIRST_C, SECOND_C = "+447700900123", "+447711900123"  # same masked form, two people


def _record(call_id: str, caller: str, callee: str = "1001") -> CallRecord:
    return CallRecord(call_id=call_id, caller=caller, callee=callee, route_kind="trunk",
                      route_name="carrier", started=WALL, answered=WALL + 1, ended=WALL + 9,
                      cause="normal_clearing", status=200, legs="[]")


def _files(root: Path, pattern: str) -> bytes:
    return b"".join(p.read_bytes() for p in root.glob(pattern))


@pytest.fixture
def cdr(env) -> CdrStore:  # type: ignore[no-untyped-def]
    store = CdrStore(env.root / "cdr.db", env.store.subjects)
    yield store
    store.close()


def _service(env, cdr: CdrStore, *, needs_approval: bool = True) -> ErasureService:  # type: ignore[no-untyped-def]
    return ErasureService(env.store, [RetentionManager(env.store), cdr],
                          needs_approval=needs_approval)


def test_subject_identity_is_keyed_and_covers_every_spelling(env) -> None:  # type: ignore[no-untyped-def]
    subjects = env.store.subjects
    same = {subjects.subject_of(n) for n in (NATIONAL, E164, "+442079460000",
                                             "0044 20 7946 0000")}
    assert len(same) == 1
    assert subjects.subject_of(FIRST_C) != subjects.subject_of(SECOND_C)
    # Keyed: not the plain hash of the number, and another keystore gives another identity.
    plain = hashlib.sha256(b"+442079460000").hexdigest()
    assert same != {plain}
    other = Keystore(env.root / "other.db", LocalFileKek(env.root / "other.key"))
    assert other.subjects.subject_of(NATIONAL) not in same
    other.close()
    # The hashing key is stored only wrapped: its bytes are nowhere in the database.
    assert subjects._identity_key not in _files(env.root, "keystore.db*")


def test_numbers_are_at_rest_only_sealed_and_bound_to_their_column(env, cdr) -> None:  # type: ignore[no-untyped-def]
    write_recording(env.store, env.directory, caller=NATIONAL)
    cdr.write([_record("c1", NATIONAL, callee="+447700900999"), _record("c2", "1002")])
    env.store.checkpoint()
    data = _files(env.root, "*.db*")
    for clear in (b"2079460000", b"7700900999"):
        assert clear not in data
    (row,) = env.store.rows()
    assert row.caller_number == NATIONAL
    recent = {r["call_id"]: r for r in cdr.recent()}
    assert (recent["c1"]["caller"], recent["c1"]["callee"]) == (NATIONAL, "+447700900999")
    assert (recent["c2"]["caller"], recent["c2"]["callee"]) == ("1002", "1001")  # extensions
    subject, sealed = env.store.db.execute(
        "SELECT caller_subject, caller_sealed FROM recordings").fetchone()
    with pytest.raises(ValueError, match="does not authenticate"):
        env.store.subjects.open(subject, sealed, context="cdr.caller")
    assert env.store.subjects.open(subject, sealed, context=CALLER_CONTEXT) == NATIONAL


def test_erasure_finds_exactly_one_subject_in_recordings_and_call_records(env, cdr) -> None:  # type: ignore[no-untyped-def]
    a, _, _, _ = write_recording(env.store, env.directory, caller=NATIONAL, seed=1)
    b, _, _, _ = write_recording(env.store, env.directory, caller=E164, seed=2)
    c, _, _, _ = write_recording(env.store, env.directory, caller=FIRST_C, seed=3)
    d, _, _, _ = write_recording(env.store, env.directory, caller=SECOND_C, seed=4)
    cdr.write([_record("n", NATIONAL), _record("e", "1001", callee=E164),
               _record("c", FIRST_C), _record("d", SECOND_C)])
    backup = env.root / "cdr-backup.db"
    with sqlite3.connect(backup) as copy:
        cdr.db.backup(copy)
    service = _service(env, cdr, needs_approval=False)
    # The masked form that 0.1 stored identifies nobody: it finds nothing.
    assert service.find("+447*****0123") == {"recordings": 0, "cdr": 0}
    assert service.find("+44 7700 900123") == {"recordings": 1, "cdr": 1}

    report = service.erase("020 7946 0000", actor="dpo", now=WALL + DAY)
    assert {s.store: s.erased for s in report.stores} == {"recordings": 2, "cdr": 2}
    for rid in (a, b):
        with pytest.raises(KeyShreddedError):
            env.store.data_key(rid)
        assert env.store.get(rid).caller_number is None
    assert {r.recording_id for r in env.store.rows(states=("closed",))} == {c, d}
    recent = {r["call_id"]: (r["caller"], r["callee"]) for r in cdr.recent()}
    assert recent == {"n": ("", "1001"), "e": ("1001", ""), "c": (FIRST_C, "1001"),
                      "d": (SECOND_C, "1001")}
    # A copy of cdr.db made before still holds the sealed number; its key is gone.
    old = CdrStore(backup, env.store.subjects)
    assert {r["call_id"]: r["caller"] for r in old.recent()}["n"] == ""
    old.close()
    assert env.store.subjects.key_ids(env.store.subjects.subject_of(NATIONAL)) == []


def test_held_recordings_are_kept_readable_under_a_fresh_key(env, cdr) -> None:  # type: ignore[no-untyped-def]
    held, _, _, _ = write_recording(env.store, env.directory, caller=NATIONAL, seed=1)
    gone, _, _, _ = write_recording(env.store, env.directory, caller=NATIONAL, seed=2)
    retention = RetentionManager(env.store)
    retention.request_hold(held, actor="alice", reason="dispute", now=WALL)
    retention.approve_hold(held, actor="bob", now=WALL)
    env.store.checkpoint()
    copy = env.root / "keystore-copy.db"
    with sqlite3.connect(copy) as target:
        env.store.db.backup(target)
    report = _service(env, cdr, needs_approval=False).erase(NATIONAL, actor="dpo", now=WALL)
    [recordings] = [s for s in report.stores if s.store == "recordings"]
    assert recordings == StoreErasure(store="recordings", erased=1, kept=(held,))
    assert env.store.get(held).caller_number == NATIONAL and env.store.data_key(held)
    with pytest.raises(KeyShreddedError):
        env.store.data_key(gone)
    # The held row's value in the earlier copy was sealed under a key that is now destroyed.
    subject, sealed = sqlite3.connect(copy).execute(
        "SELECT caller_subject, caller_sealed FROM recordings WHERE recording_id = ?",
        (held,)).fetchone()
    assert env.store.subjects.open(subject, sealed, context=CALLER_CONTEXT) is None
    assert report.keys_destroyed == 1


def test_four_eyes_requests_persist_and_the_requester_cannot_approve(env, cdr) -> None:  # type: ignore[no-untyped-def]
    write_recording(env.store, env.directory, caller=FIRST_C)
    service = _service(env, cdr)
    with pytest.raises(ErasureError, match="second person"):
        service.erase(FIRST_C, actor="alice", now=WALL)
    request = service.request(FIRST_C, actor="alice", now=WALL)
    assert request.found == {"recordings": 1, "cdr": 0}
    with pytest.raises(ErasureError, match="four eyes"):
        service.approve(request.id, actor="alice", now=WALL)
    # Another process (the CLI, the API) sees the same pending request.
    other = Keystore(env.root / "keystore.db", LocalFileKek(env.root / "kek.key"))
    other_service = ErasureService(other, [RetentionManager(other)])
    assert [r.id for r in other_service.pending()] == [request.id]
    report = other_service.approve(request.id, actor="bob", now=WALL)
    assert report.as_dict()["erased"] == {"recordings": 1}
    other.close()
    with pytest.raises(ErasureError, match="no pending"):
        service.approve(request.id, actor="carol", now=WALL)
    stored = env.store.db.execute("SELECT subject, state, approved_by FROM erasure_requests"
                                  ).fetchone()
    assert stored == (None, "done", "bob")  # the subject id does not outlive the request
    audited = [(e["action"], e["actor"]) for p, e in env.events if isinstance(e, dict)]
    assert ("erasure.request", "alice") in audited and ("erasure.refused", "alice") in audited


def test_a_new_store_joins_erasure_through_the_interface(env, cdr) -> None:  # type: ignore[no-untyped-def]
    class Voicemails:
        """What a voicemail store will do: keep messages by subject, erase them on request."""

        name = "voicemail"

        def __init__(self) -> None:
            self.messages: dict[str, list[bytes]] = {}

        def leave(self, number: str, sealed_audio: bytes) -> None:
            subject = env.store.subjects.subject_of(number)
            self.messages.setdefault(subject, []).append(sealed_audio)

        def count_subject(self, subject: str) -> int:
            return len(self.messages.get(subject, []))

        def erase_subject(self, subject: str, *, actor: str, now: float) -> StoreErasure:
            return StoreErasure(store=self.name, erased=len(self.messages.pop(subject, [])))

    voicemail = Voicemails()
    voicemail.leave(NATIONAL, b"...")
    voicemail.leave(FIRST_C, b"...")
    service = _service(env, cdr, needs_approval=False)
    service.add_store(voicemail)
    assert service.find(E164) == {"recordings": 0, "cdr": 0, "voicemail": 1}
    report = service.erase(E164, actor="dpo", now=WALL)
    assert report.as_dict()["erased"] == {"recordings": 0, "cdr": 0, "voicemail": 1}
    assert voicemail.count_subject(env.store.subjects.subject_of(FIRST_C)) == 1


def test_key_rotation_with_retire_keeps_subject_keys_usable(env, cdr) -> None:  # type: ignore[no-untyped-def]
    write_recording(env.store, env.directory, caller=NATIONAL)
    cdr.write([_record("n", FIRST_C)])
    old = env.store.current_kek_id()
    env.store.rotate_kek()
    with pytest.raises(KekInUseError):  # the caller's keys still need it
        env.store.retire_kek(old)
    env.store.rewrap()
    assert old not in env.store.kek_ids_in_use()
    env.store.retire_kek(old)
    reopened = Keystore(env.root / "keystore.db", LocalFileKek(env.root / "kek.key"))
    assert reopened.rows()[0].caller_number == NATIONAL
    assert CdrStore(env.root / "cdr.db", reopened.subjects).recent()[0]["caller"] == FIRST_C
    assert reopened.subjects.subject_of(E164) == env.store.subjects.subject_of(NATIONAL)
    reopened.close()


def test_version_0_files_are_migrated_and_newer_ones_refused(tmp_path: Path) -> None:
    # A keystore.db and a cdr.db as vaultpbx 0.1 wrote them: one clear number, one masked.
    schema = (Path(__file__).parent / "data_v0_keystore.sql").read_text()  # 0.1's SCHEMA
    db = sqlite3.connect(tmp_path / "keystore.db")
    db.executescript(schema)
    for rid, caller in (("aa" * 16, NATIONAL), ("bb" * 16, "+447*****0123")):
        db.execute("INSERT INTO recordings (recording_id, path, key_id, created_at, state, "
                   "retention_class, expires_at, caller_number) VALUES (?, ?, ?, ?, 'closed', "
                   "'default', ?, ?)", (rid, f"/nowhere/{rid}.vrec", rid, WALL, WALL + DAY,
                                         caller))
    db.commit()
    db.close()
    cdr_db = sqlite3.connect(tmp_path / "cdr.db")
    cdr_db.executescript("CREATE TABLE calls (call_id TEXT PRIMARY KEY, caller TEXT NOT NULL, "
                         "callee TEXT NOT NULL, route_kind TEXT NOT NULL, route_name TEXT NOT "
                         "NULL, started REAL NOT NULL, answered REAL, ended REAL NOT NULL, cause "
                         "TEXT NOT NULL, status INTEGER NOT NULL, legs TEXT NOT NULL);")
    cdr_db.execute("INSERT INTO calls VALUES ('x', ?, '1001', 'trunk', 't', 1, 2, 3, 'n', 200, "
                   "'[]')", (NATIONAL,))
    cdr_db.commit()
    cdr_db.close()

    store = open_store(tmp_path)
    rows = {r.recording_id: r.caller_number for r in store.rows()}
    assert rows == {"aa" * 16: NATIONAL, "bb" * 16: None}
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == 1
    cdr = CdrStore(tmp_path / "cdr.db", store.subjects)
    assert cdr.recent()[0]["caller"] == NATIONAL
    service = ErasureService(store, [RetentionManager(store), cdr], needs_approval=False)
    assert service.find("+442079460000") == {"recordings": 1, "cdr": 1}
    cdr.close()
    store.close()
    for name in ("keystore.db", "cdr.db"):
        assert b"2079460000" not in _files(tmp_path, name + "*"), name

    for name, opener, error in (
            ("keystore.db", lambda: open_store(tmp_path), KeystoreSchemaError),
            ("cdr.db", lambda: CdrStore(tmp_path / "cdr.db", None), CdrSchemaError)):  # type: ignore[arg-type]
        with sqlite3.connect(tmp_path / name) as db:
            db.execute("PRAGMA user_version = 7")
        with pytest.raises(error, match="schema version 7 is newer"):
            opener()


def _cli(data_dir: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    parser = argparse.ArgumentParser(prog="vaultpbx")
    add_recording_commands(parser.add_subparsers(dest="command", required=True), out=out,
                           audit=None)
    args = parser.parse_args(argv)
    return args.handler(args, data_dir), out.getvalue()


def test_cli_expire_shreds_what_is_past_retention_and_nothing_else(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        old, _, _, _ = write_recording(store, tmp_path / "recordings", wall=1.0, seed=1)
        new, _, _, _ = write_recording(store, tmp_path / "recordings", seed=2,
                                       wall=time.time())
        held, _, _, _ = write_recording(store, tmp_path / "recordings", wall=1.0, seed=3)
        retention = RetentionManager(store)
        retention.request_hold(held, actor="alice", reason="court", now=2.0)
        retention.approve_hold(held, actor="bob", now=2.0)
    status, text = _cli(tmp_path, "recordings", "expire", "--actor", "ops")
    assert status == 0 and f"{old}  shredded (expired)" in text
    assert "1 recording(s) past their retention shredded" in text
    with open_store(tmp_path) as store:
        assert {r.recording_id: r.state for r in store.rows()} == {
            old: "shredded", new: "closed", held: "closed"}
        assert [(s.recording_id, s.reason, s.actor) for s in store.shred_log()] == [
            (old, "expired", "ops")]
    assert not (tmp_path / "recordings" / f"{old}.vrec").exists()
    assert (tmp_path / "recordings" / f"{new}.vrec").exists()
