"""`vaultpbx backup`, `backup verify` and `restore` on real files through the real CLI entry
point (docs/backup-and-restore.md): what a backup holds and never holds, what an attacker who
alters it meets, incremental chains, and the shred log replayed at restore.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml
from vaultpbx.recording.erasure import ErasureService
from vaultpbx.recording.export import verify_recording
from vaultpbx.recording.kek import LocalFileKek
from vaultpbx.recording.keystore import Keystore
from vaultpbx.recording.retention import RetentionManager
from vaultpbx.recording.shredlog import ShredLog, ShredLogError
from vaultpbx.runtime.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recording"))
from recording_helpers import write_recording  # noqa: E402

ALICE, BOB = "+44 20 7946 0000", "+44 20 7946 0111"


class Site:
    """A node's data directory, its KEK and shred log kept apart, and its YAML."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "var"
        self.keys = root / "keys"
        self.apart = root / "apart"
        self.config = root / "vaultpbx.yaml"
        root.mkdir(parents=True, exist_ok=True)
        self.write_config(self.data)

    def write_config(self, data_dir: Path, path: Path | None = None,
                     kek: Path | None = None) -> Path:
        path = path or self.config
        path.write_text(yaml.safe_dump({
            "data_dir": str(data_dir),
            "recording": {"enabled": True, "kek": {"file": str(kek or self.keys / "kek.key")},
                          "shred_log": str(self.apart / "shred-log.jsonl")},
            "security": {"audit": {"sink": str(self.apart / "checkpoints.jsonl")},
                         "privacy": {"erasure_needs_approval": False}},
        }))
        return path

    def store(self) -> Keystore:
        store = Keystore(self.data / "keystore.db", LocalFileKek(self.keys / "kek.key"),
                         outside_log=ShredLog(self.apart / "shred-log.jsonl"))
        store.check_kek()
        return store

    def record(self, caller: str, seed: int) -> str:
        with self.store() as store:
            rid, _, _, _ = write_recording(store, self.data / "recordings", seconds=0.5,
                                           caller=caller, seed=seed)
        return rid


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Site:
    made = Site(tmp_path)
    made.record(ALICE, 99)  # the keystore exists; then the audit log gets its first record
    assert cli(capsys, "recordings", "list", "-c", str(made.config))[0] == 0
    return made


def test_backup_holds_no_kek_and_no_readable_database_and_restores(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rids = [site.record(ALICE, 1), site.record(BOB, 2)]
    code, out, err = cli(capsys, "backup", "-o", str(tmp_path / "set"), "-c", str(site.config))
    assert code == 0, err
    assert "3 of 3 recordings copied" in out
    element = tmp_path / "set" / "0001-full"
    stored = [p for p in element.rglob("*") if p.is_file()]
    assert {p.name for p in stored} >= {"keystore.db.sealed", "audit.jsonl.sealed",
                                        "vaultpbx.yaml.sealed", f"{rids[0]}.vrec"}

    # No KEK bytes, in any encoding, anywhere in the backup.
    kek_text = (site.keys / "kek.key").read_text()
    kek_keys = [bytes.fromhex(line.split()[-1]) for line in kek_text.split("\n")
                if line.strip() and not line.startswith("#")]
    assert kek_keys and all(len(key) == 32 for key in kek_keys)
    for path in stored:
        data = path.read_bytes()
        for key in kek_keys:
            assert key not in data and key.hex().encode() not in data, path
        assert not data.startswith(b"SQLite format 3"), f"{path} is a readable database"
    # The sealed keystore is not a database without the KEK.
    copy = tmp_path / "stolen.db"
    copy.write_bytes((element / "keystore.db.sealed").read_bytes())
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(copy).execute("SELECT * FROM recordings").fetchall()

    code, out, err = cli(capsys, "backup", "verify", str(tmp_path / "set"),
                         "-c", str(site.config))
    assert code == 0 and "backup intact" in out, err

    into = tmp_path / "restored"
    code, out, err = cli(capsys, "restore", str(tmp_path / "set"), "--into", str(into),
                         "-c", str(site.config))
    assert code == 0, err + out
    assert "recordings verified: 3, failed: 0" in out and "audit log: intact" in out
    with Keystore(into / "keystore.db", LocalFileKek(site.keys / "kek.key")) as store:
        for rid in rids:
            row = store.get(rid)
            assert Path(row.path).parent == into / "recordings"
            assert verify_recording(store, rid, actor="test").passed
        assert {store.get(r).caller_number for r in rids} == {ALICE, BOB}

    # Both are in the audit log, with who and how many files.
    records = (site.data / "audit" / "audit.jsonl").read_text()
    assert '"action":"backup.create"' in records and '"recordings_copied":3' in records
    restored = (into / "audit" / "audit.jsonl").read_text().splitlines()
    assert '"action":"backup.create"' in restored[-2]  # written before the log was copied
    assert '"action":"backup.restore"' in restored[-1] and '"files":10' in restored[-1]


def test_a_kek_file_among_the_files_to_back_up_is_refused(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site.record(ALICE, 1)
    # An operator put the KEK in the audit directory: the backup refuses to take it.
    inside = site.data / "audit" / "kek.key"
    inside.write_text((site.keys / "kek.key").read_text())
    inside.chmod(0o600)
    config = site.write_config(site.data, tmp_path / "bad.yaml", kek=inside)
    code, _, err = cli(capsys, "backup", "-o", str(tmp_path / "set"), "-c", str(config))
    assert code == 1 and "kek.key: is the configured KEK or PIN file" in err
    assert not any((tmp_path / "set").rglob("kek.key*"))


@pytest.mark.parametrize("victim", ["manifest.json", "manifest.mac", "keystore.db.sealed",
                                    "audit/audit.jsonl.sealed", "recording"])
@pytest.mark.parametrize("how", ["flip", "delete"])
def test_altered_or_missing_file_fails_verify_and_restore_naming_it(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str], victim: str,
        how: str) -> None:
    rid = site.record(ALICE, 1)
    backup_set = tmp_path / "set"
    assert cli(capsys, "backup", "-o", str(backup_set), "-c", str(site.config))[0] == 0
    element = backup_set / "0001-full"
    path = element / (f"recordings/{rid}.vrec" if victim == "recording" else victim)
    if how == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    code, _, err = cli(capsys, "backup", "verify", str(backup_set), "-c", str(site.config))
    assert code == 1 and "NOT intact" in err and path.name in err, err
    into = tmp_path / "restored"
    code, _, err = cli(capsys, "restore", str(backup_set), "--into", str(into),
                       "-c", str(site.config))
    assert code == 1 and path.name in err, err
    assert not into.exists() or not any(into.iterdir()), "a failed restore wrote something"


def test_an_extra_file_fails_verify(site: Site, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    site.record(ALICE, 1)
    backup_set = tmp_path / "set"
    assert cli(capsys, "backup", "-o", str(backup_set), "-c", str(site.config))[0] == 0
    (backup_set / "0001-full" / "recordings" / ("ab" * 16 + ".vrec")).write_bytes(b"x")
    code, _, err = cli(capsys, "backup", "verify", str(backup_set), "-c", str(site.config))
    assert code == 1 and "abab" in err and "extra" in err, err


def test_restore_refuses_a_non_empty_data_directory(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site.record(ALICE, 1)
    assert cli(capsys, "backup", "-o", str(tmp_path / "set"), "-c", str(site.config))[0] == 0
    code, _, err = cli(capsys, "restore", str(tmp_path / "set"), "-c", str(site.config))
    assert code == 1 and "not empty" in err and "--force" in err, err


def test_incremental_copies_only_new_recordings_and_the_chain_restores(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backup_set = tmp_path / "set"
    first = [site.record(ALICE, n) for n in range(3)]
    assert cli(capsys, "backup", "-o", str(backup_set), "-c", str(site.config))[0] == 0
    code, _, err = cli(capsys, "backup", "-o", str(backup_set), "--incremental",
                       "-c", str(site.config))
    assert code == 0, err
    # Nothing new: the incremental holds no recording at all.
    assert not list((backup_set / "0002-incremental").rglob("*.vrec"))
    later = [site.record(BOB, 10 + n) for n in range(2)]
    code, out, err = cli(capsys, "backup", "-o", str(backup_set), "--incremental",
                         "-c", str(site.config))
    assert code == 0 and "2 of 6 recordings copied" in out, err + out
    copied = {p.stem for p in (backup_set / "0003-incremental").rglob("*.vrec")}
    assert copied == set(later)

    code, out, err = cli(capsys, "backup", "verify", str(backup_set), "-c", str(site.config))
    assert code == 0 and "3 element(s)" in out, err
    into = tmp_path / "restored"
    code, out, err = cli(capsys, "restore", str(backup_set), "--into", str(into),
                         "-c", str(site.config))
    assert code == 0 and "recordings verified: 6, failed: 0" in out, err + out
    assert set(first + later) < {p.stem for p in (into / "recordings").iterdir()}
    assert len(list((into / "recordings").iterdir())) == 6

    # An element the chain needs, gone: named.
    shutil.rmtree(backup_set / "0001-full")
    code, _, err = cli(capsys, "backup", "verify", str(backup_set), "-c", str(site.config))
    assert code == 1 and "0001-full: missing" in err, err


def test_shreds_and_erasures_after_the_backup_are_replayed_at_restore(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alice = [site.record(ALICE, 1), site.record(ALICE, 2)]
    bob = [site.record(BOB, 3), site.record(BOB, 4)]
    backup_set = tmp_path / "set"
    assert cli(capsys, "backup", "-o", str(backup_set), "-c", str(site.config))[0] == 0
    with site.store() as store:
        doomed_keys = store.subjects.key_ids(store.subjects.subject_of(ALICE))
        store.shred(bob[0], reason="manual", actor="ops", now=5.0)
        report = ErasureService(store, [RetentionManager(store)], needs_approval=False).erase(
            ALICE, actor="dpo", now=6.0)
        assert report.as_dict()["erased"] == {"recordings": 3}  # with the fixture's
    entries = ShredLog(site.apart / "shred-log.jsonl").read()
    assert [e.kind for e in entries] == ["recordings"] * 4 + ["subject_keys"]  # 1+3 Alice
    # The caller's keys from before, and the fresh one the erasure made (nothing was kept).
    assert set(doomed_keys) < set(entries[-1].ids) and len(entries[-1].ids) == 2

    into = tmp_path / "restored"
    code, out, err = cli(capsys, "restore", str(backup_set), "--into", str(into),
                         "-c", str(site.config))
    assert code == 0, err + out
    assert "4 recording(s) shredded again" in out and "(5 entries newer" in out, out
    assert "recordings verified: 1, failed: 0" in out  # bob[1]; the fixture's was Alice's
    with Keystore(into / "keystore.db", LocalFileKek(site.keys / "kek.key")) as store:
        for rid in [*alice, bob[0]]:
            assert store.get(rid).state == "shredded"
            assert not (into / "recordings" / f"{rid}.vrec").exists()
        assert store.get(bob[1]).caller_number == BOB
        assert verify_recording(store, bob[1], actor="t").passed
        assert store.subjects.key_ids(store.subjects.subject_of(ALICE)) == []
    # The sealed number is not in the restored keystore's pages either.
    raw = (into / "keystore.db").read_bytes()
    assert b"2079460000" not in raw


def test_a_broken_shred_log_stops_the_restore(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rid = site.record(ALICE, 1)
    assert cli(capsys, "backup", "-o", str(tmp_path / "set"), "-c", str(site.config))[0] == 0
    with site.store() as store:
        store.shred(rid, reason="manual", actor="ops", now=5.0)
    log = site.apart / "shred-log.jsonl"
    log.write_text(log.read_text().replace(rid, "0" * 32))  # someone hides the shred
    with pytest.raises(ShredLogError, match="line 1: altered"):
        ShredLog(log).read()
    into = tmp_path / "restored"
    code, _, err = cli(capsys, "restore", str(tmp_path / "set"), "--into", str(into),
                       "-c", str(site.config))
    assert code == 1 and "shred-log.jsonl line 1: altered" in err, err


def test_a_shred_whose_log_entry_cannot_be_written_does_not_happen(
        site: Site, tmp_path: Path) -> None:
    rid = site.record(ALICE, 1)
    (site.apart / "shred-log.jsonl").mkdir(parents=True)  # unwritable: a directory
    with site.store() as store, pytest.raises(IsADirectoryError):
        store.shred(rid, reason="manual", actor="ops", now=5.0)
    with site.store() as store:
        assert store.get(rid).state == "closed" and store.data_key(rid)
    assert (site.data / "recordings" / f"{rid}.vrec").exists()


def test_a_removed_shred_log_line_breaks_the_chain(tmp_path: Path) -> None:
    log = ShredLog(tmp_path / "shred-log.jsonl")
    for n in range(3):
        log.append(kind="recordings", ids=[f"{n:032x}"], reason="expired", actor="engine",
                   now=float(n))
    assert [e.seq for e in log.read()] == [0, 1, 2] and log.last_seq() == 2
    lines = log.path.read_text().splitlines(keepends=True)
    log.path.write_text(lines[0] + lines[2])
    with pytest.raises(ShredLogError, match="line 2: the chain is broken"):
        log.read()


def test_a_backup_does_not_open_under_another_kek(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "backup", "-o", str(tmp_path / "set"), "-c", str(site.config))[0] == 0
    # A thief with the backup and some other node's key file gets nothing.
    other = Site(tmp_path / "other")
    other.record(BOB, 5)
    stolen = site.write_config(tmp_path / "empty", tmp_path / "thief.yaml",
                               kek=other.keys / "kek.key")
    code, _, err = cli(capsys, "backup", "verify", str(tmp_path / "set"), "-c", str(stolen))
    assert code == 1 and "0001-full/manifest.json: sealed under KEK local-0001-" in err, err
    assert f"which key file {other.keys / 'kek.key'} does not hold" in err
    code, _, err = cli(capsys, "restore", str(tmp_path / "set"), "-c", str(stolen))
    assert code == 1 and not (tmp_path / "empty").exists(), err


def test_audit_records_after_the_backup_are_kept_or_reported_lost(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backup_set = tmp_path / "set"
    assert cli(capsys, "backup", "-o", str(backup_set), "-c", str(site.config))[0] == 0
    # Audited work after the backup, covered by a checkpoint in the outside copy.
    assert cli(capsys, "recordings", "list", "-c", str(site.config))[0] == 0
    # Without the newer log the restore says so: the records after the backup are gone, and
    # the outside checkpoints prove it.
    # Continuing that log would fork it in the outside copy for good: refused, nothing written.
    lost = tmp_path / "lost"
    code, out, err = cli(capsys, "restore", str(backup_set), "--into", str(lost),
                         "-c", str(site.config))
    assert code == 1 and "behind its outside checkpoints" in err and "truncated" in err, err
    assert "--audit-from" in err and "--accept-audit-gap" in err
    assert not lost.exists()
    # A copy that does not continue the backup's log is refused.
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "audit.jsonl").write_text('{"seq":0,"hash":"00"}\n')
    code, _, err = cli(capsys, "restore", str(backup_set), "--into", str(tmp_path / "f"),
                       "--audit-from", str(forged), "-c", str(site.config))
    assert code == 1 and "does not continue the backup's audit log" in err, err
    # With the surviving log it verifies across the restore.
    kept = tmp_path / "kept"
    code, out, err = cli(capsys, "restore", str(backup_set), "--into", str(kept),
                         "--audit-from", str(site.data / "audit"), "-c", str(site.config))
    assert code == 0 and "audit log: intact" in out, err
    actions = [line.split('"action":"')[1].split('"')[0] for line in
               (kept / "audit" / "audit.jsonl").read_text().splitlines()]
    assert actions[-3:] == ["backup.create", "recording.list", "backup.restore"]
    # With nothing newer, an operator may accept the gap; the log then shows it for good.
    gap = tmp_path / "gap"
    code, out, err = cli(capsys, "restore", str(backup_set), "--into", str(gap),
                         "--accept-audit-gap", "-c", str(site.config))
    assert code == 0 and "continued after a gap (accepted)" in err, err
    assert '"action":"backup.restore"' in (gap / "audit" / "audit.jsonl").read_text()


def test_an_audit_directory_kept_outside_data_dir_is_continued_not_replaced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path)
    config = yaml.safe_load(site.config.read_text())
    config["security"]["audit"]["dir"] = str(tmp_path / "audit-apart")
    site.config.write_text(yaml.safe_dump(config))
    site.record(ALICE, 1)
    assert cli(capsys, "recordings", "list", "-c", str(site.config))[0] == 0
    assert cli(capsys, "backup", "-o", str(tmp_path / "set"), "-c", str(site.config))[0] == 0
    assert cli(capsys, "recordings", "list", "-c", str(site.config))[0] == 0
    before = (tmp_path / "audit-apart" / "audit.jsonl").read_text()
    shutil.rmtree(site.data)  # the data directory is lost; the audit log was kept apart
    code, out, err = cli(capsys, "restore", str(tmp_path / "set"), "-c", str(site.config))
    assert code == 0 and "audit log: intact" in out, err
    after = (tmp_path / "audit-apart" / "audit.jsonl").read_text()
    assert after.startswith(before) and '"action":"backup.restore"' in after[len(before):]


def test_check_config_warns_when_the_shred_log_is_not_kept_apart(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = yaml.safe_load(site.config.read_text())
    config["recording"]["shred_log"] = "var/shred-log.jsonl"
    site.config.write_text(yaml.safe_dump(config))
    code, _, err = cli(capsys, "check-config", "-c", str(site.config))
    assert code == 0 and f"recording.shred_log: {site.data / 'shred-log.jsonl'} is inside " \
        "data_dir" in err, err
    config["recording"]["shred_log"] = None
    site.config.write_text(yaml.safe_dump(config))
    code, _, err = cli(capsys, "check-config", "-c", str(site.config))
    assert code == 0 and "recording.shred_log: none: a restored backup would bring back" in err
