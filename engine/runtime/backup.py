"""Backup sets of one node: encrypted, verifiable snapshots, and their restore (the commands are
in backup_cli.py: `vaultpbx backup`, `backup verify`, `restore`).

A backup set is a directory of elements, `0001-full`, `0002-incremental`, ... Each element holds
`manifest.json`, `manifest.mac` and its files:
- the SQLite databases of data_dir (`*.db`), taken with SQLite's online backup API (safe while
  the engine writes) into memory, then sealed; the audit directory (records and local
  checkpoints read under the writers' lock, keys) and the configuration file, sealed too;
- recordings (`recordings/*.vrec`) copied as they are: they are sealed already, under data keys
  that only the (sealed) keystore holds. A full element copies every recording its keystore
  snapshot names closed or incomplete; an incremental one only those the previous elements do
  not hold (by name and SHA-256), and its manifest points at the element holding each one.

Invariants:
- The KEK is never in a backup: each element has a fresh backup key (32 random bytes) stored
  only wrapped by the current KEK; sealed files are AES-256-GCM under an HKDF subkey of it,
  bound to their path; the manifest is HMAC-SHA256 under another subkey. A path that is the
  configured KEK file or PIN file is refused, whatever else is asked.
- `verify` and `restore` check the MAC of every element of the chain, then every file's size
  and hash, and that no file is missing or extra; any failure names the file, and a restore
  then writes nothing.
- `restore` writes only into an empty data directory (or with `force`), rewrites the recording
  paths of the restored index to it, then replays every entry of the shred log kept apart
  (shredlog.py): recordings shredded since are shredded again, erased callers' keys destroyed
  again and their numbers blanked in cdr.db. Replay is idempotent, so the whole log is replayed;
  the summary says how many entries are newer than the backup.
- Every backup and restore leaves an audit record (who, which element, how many files).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..recording.config import RecordingConfig, data_path
from ..recording.errors import RecordingError
from ..recording.kek import KekProvider
from ..recording.keystore import Keystore
from ..recording.shredlog import ShredLog
from ..security.cli import audit_paths
from .config import Config

FORMAT = "vaultpbx-backup-1"
MANIFEST, MAC = "manifest.json", "manifest.mac"
SEALED_SUFFIX = ".sealed"
_NONCE = 12
_AUDIT_SKIP = {"audit.lock"}  # an empty lock file, re-created by the first writer


class AuditWriter(Protocol):
    def __call__(self, *, action: str, target: str, details: dict[str, Any]) -> None: ...


class BackupError(Exception):
    """A refused or failed backup, verification or restore; the message names the file."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEntry:
    sha256: str  # of the bytes stored in the element (sealed bytes for sealed files)
    size: int
    sealed: bool
    element: str  # the element of the set that holds the file


@dataclass(slots=True, kw_only=True)
class Element:
    name: str
    directory: Path
    manifest: dict[str, Any]
    files: dict[str, FileEntry] = field(default_factory=dict)


def _subkey(backup_key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"vaultpbx-backup-v1 " + purpose).derive(backup_key)


def _seal(backup_key: bytes, rel: str, data: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(_subkey(backup_key, b"files")).encrypt(nonce, data, rel.encode())


def _open(backup_key: bytes, rel: str, sealed: bytes) -> bytes:
    try:
        return AESGCM(_subkey(backup_key, b"files")).decrypt(
            sealed[:_NONCE], sealed[_NONCE:], rel.encode())
    except InvalidTag:
        raise BackupError(f"{rel}: does not decrypt (altered, or another backup's)") from None


def _mac(backup_key: bytes, manifest_bytes: bytes) -> str:
    return hmac.new(_subkey(backup_key, b"manifest"), manifest_bytes, hashlib.sha256).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_new(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# -- what is never in a backup ----------------------------------------------------------------


def forbidden_paths(config: Config) -> set[Path]:
    """The KEK file and the PIN file the configuration names: never copied, whatever else."""
    kek = RecordingConfig.from_dict(config.recording).kek
    out = {kek.file_path(config.data_dir).resolve()}
    if kek.pkcs11 is not None and kek.pkcs11.pin_file:
        out.add(data_path(kek.pkcs11.pin_file, config.data_dir).resolve())
    return out


def _check_allowed(path: Path, forbidden: set[Path]) -> None:
    if path.resolve() in forbidden:
        raise BackupError(f"{path}: is the configured KEK or PIN file; it is never put in a "
                          "backup (keep it apart: docs/backup-and-restore.md)")


# -- taking a backup --------------------------------------------------------------------------


def _elements(backup_set: Path) -> list[Path]:
    if not backup_set.is_dir():
        return []
    return sorted(p for p in backup_set.iterdir()
                  if p.is_dir() and p.name[:4].isdigit() and (p / MANIFEST).exists())


def _snapshot_db(path: Path) -> bytes:
    """A consistent copy of a live SQLite database (online backup API), never on disk in clear."""
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    target = sqlite3.connect(":memory:")
    try:
        source.backup(target)
        return target.serialize()
    finally:
        source.close()
        target.close()


@contextmanager
def _audit_locked(directory: Path) -> Iterator[None]:
    lock = directory / "audit.lock"
    if not directory.is_dir():
        yield
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _complete_lines(data: bytes) -> bytes:
    """A writer may be mid-line (it appends without our lock only if killed): whole lines."""
    end = data.rfind(b"\n")
    return data[: end + 1] if end >= 0 else b""


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupResult:
    element: Path
    kind: str
    files: int
    recordings_copied: int
    recordings_total: int
    bytes_written: int


def take_backup(config: Config, config_path: Path, backup_set: Path, *, incremental: bool,
                kek: KekProvider, audit: AuditWriter | None = None,
                now: float | None = None) -> BackupResult:
    at = time.time() if now is None else now
    previous = _elements(backup_set)
    if incremental and not previous:
        raise BackupError(f"{backup_set}: no earlier backup to be incremental to; take a full "
                          "one first")
    base = load_chain(backup_set, kek) if incremental else []
    number = int(previous[-1].name[:4]) + 1 if previous else 1
    kind = "incremental" if incremental else "full"
    element_dir = backup_set / f"{number:04d}-{kind}"
    backup_set.mkdir(parents=True, exist_ok=True)
    element_dir.mkdir()
    try:
        return _fill_element(config, config_path, backup_set, element_dir, kind=kind,
                             base=base, kek=kek, audit=audit, at=at)
    except BaseException:
        shutil.rmtree(element_dir, ignore_errors=True)  # no half element in the set
        raise


def _fill_element(config: Config, config_path: Path, backup_set: Path, element_dir: Path, *,
                  kind: str, base: list[Element], kek: KekProvider, audit: AuditWriter | None,
                  at: float) -> BackupResult:
    data_dir = Path(config.data_dir)
    settings = RecordingConfig.from_dict(config.recording)
    forbidden = forbidden_paths(config)
    backup_key = os.urandom(32)
    keystore_db = data_dir / "keystore.db"
    if not keystore_db.exists():
        raise BackupError(f"{keystore_db}: missing; a backup is sealed under the keystore's "
                          "current KEK (start the engine once first)")
    with Keystore(keystore_db, kek) as store:
        store.keys.ensure()
        kek_id = store.current_kek_id()
    assert kek_id is not None
    files: dict[str, FileEntry] = {}
    written = 0

    def put(rel: str, data: bytes) -> None:
        nonlocal written
        sealed = _seal(backup_key, rel, data)
        _write_new(element_dir / (rel + SEALED_SUFFIX), sealed)
        files[rel] = FileEntry(sha256=hashlib.sha256(sealed).hexdigest(), size=len(sealed),
                               sealed=True, element=element_dir.name)
        written += len(sealed)

    # 1. The shred log's position first: what is destroyed from here on is replayed at restore.
    shred_path = settings.shred_log_path(data_dir)
    shred_seq = ShredLog(shred_path).last_seq() if shred_path is not None else -1
    # 2. The databases, keystore first: a recording file is copied only if this snapshot of
    #    the index names it finished, so every copied file has its key in the backup.
    databases = sorted(data_dir.glob("*.db"), key=lambda p: (p.name != "keystore.db", p.name))
    index: bytes | None = None
    for db in databases:
        _check_allowed(db, forbidden)
        data = _snapshot_db(db)
        if db.name == "keystore.db":
            index = data
        put(db.name, data)
    # 3. Which recordings: those the index snapshot names finished; an incremental copies
    #    only those no earlier element holds (finished recordings never change; a size that
    #    moved means a recovered file, copied again). Their SHA-256 goes in the manifest.
    finished: list[str] = []
    if index is not None:
        view = sqlite3.connect(":memory:")
        try:
            # Bytes 18-19 of the header say WAL (2): an in-memory copy must read as rollback
            # journal (1) to open; the stored copy keeps WAL, as the engine runs it.
            view.deserialize(index[:18] + b"\x01\x01" + index[20:])
            finished = sorted(Path(str(p)).name for (p,) in view.execute(
                "SELECT path FROM recordings WHERE state IN ('closed', 'incomplete')"))
        finally:
            view.close()
    held = base[-1].files if base else {}
    plan: list[tuple[str, Path, FileEntry | None]] = []
    for name in finished:
        rel = f"recordings/{name}"
        source = data_dir / "recordings" / name
        if not source.exists():
            continue  # shredded after the index snapshot: the shred log has it
        _check_allowed(source, forbidden)
        old = held.get(rel)
        plan.append((rel, source, old if old is not None
                     and old.size == source.stat().st_size else None))
    copied = sum(1 for _, _, old in plan if old is None)
    # 4. The audit record of this backup goes in before the audit log is copied, with the
    #    checkpoint that covers it: the restored log then ends where the outside copies
    #    vouched for it, and the restore's own record chains on.
    if audit is not None:
        audit(action="backup.create", target=element_dir.name,
              details={"kind": kind, "databases": len(databases), "recordings": len(plan),
                       "recordings_copied": copied, "set": str(backup_set)})
    # 5. The audit directory, under the writers' lock (records and checkpoints agree).
    paths = audit_paths(data_dir, config.security)
    audit_head: dict[str, Any] = {"records": 0, "hash": None}
    with _audit_locked(paths.directory):
        if paths.directory.is_dir():
            for item in sorted(paths.directory.iterdir()):
                if not item.is_file() or item.name in _AUDIT_SKIP:
                    continue
                _check_allowed(item, forbidden)
                data = item.read_bytes()
                if item.suffix == ".jsonl":
                    data = _complete_lines(data)
                if item.name == "audit.jsonl" and data:
                    lines = data.splitlines()
                    audit_head = {"records": len(lines),
                                  "hash": json.loads(lines[-1]).get("hash")}
                put(f"audit/{item.name}", data)
    # 6. The configuration file.
    _check_allowed(config_path, forbidden)
    put("config/" + config_path.name, config_path.read_bytes())
    # 7. The recordings, as they are (sealed already).
    for rel, source, old in plan:
        if old is not None:
            files[rel] = old
            continue
        target = element_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        files[rel] = FileEntry(sha256=_sha256_file(target), size=target.stat().st_size,
                               sealed=False, element=element_dir.name)
        written += files[rel].size
    manifest: dict[str, Any] = {
        "format": FORMAT, "name": element_dir.name, "kind": kind, "created_at": at,
        "previous": base[-1].name if base else None,
        "previous_mac": (base[-1].directory / MAC).read_text().strip() if base else None,
        "kek_id": kek_id, "wrapped_key": kek.wrap(kek_id, backup_key).hex(),
        "shred_log_seq": shred_seq, "audit": audit_head,
        "files": {rel: {"sha256": e.sha256, "size": e.size, "sealed": e.sealed,
                        "element": e.element} for rel, e in sorted(files.items())},
    }
    body = json.dumps(manifest, sort_keys=True, indent=1).encode()
    _write_new(element_dir / MANIFEST, body)
    _write_new(element_dir / MAC, (_mac(backup_key, body) + "\n").encode())
    return BackupResult(element=element_dir, kind=kind, files=len(files),
                        recordings_copied=copied, recordings_total=len(plan),
                        bytes_written=written)


# -- reading and verifying --------------------------------------------------------------------


def _backup_key(element: Element, kek: KekProvider) -> bytes:
    manifest = element.manifest
    try:
        return kek.unwrap(str(manifest["kek_id"]), bytes.fromhex(str(manifest["wrapped_key"])))
    except RecordingError as exc:
        raise BackupError(f"{element.directory / MANIFEST}: sealed under KEK "
                          f"{manifest.get('kek_id')}, which {kek.where} does not hold ({exc}); "
                          "restore that KEK from its own backup (docs/keys.md)") from None
    except Exception as exc:
        raise BackupError(f"{element.directory / MANIFEST}: its backup key does not unwrap "
                          f"under KEK {manifest.get('kek_id')} ({type(exc).__name__})") from None


def _read_element(directory: Path, kek: KekProvider) -> tuple[Element, bytes]:
    manifest_path, mac_path = directory / MANIFEST, directory / MAC
    for needed in (manifest_path, mac_path):
        if not needed.is_file():
            raise BackupError(f"{needed}: missing")
    body = manifest_path.read_bytes()
    try:
        manifest = json.loads(body)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
    except ValueError as exc:
        raise BackupError(f"{manifest_path}: not a vaultpbx backup manifest ({exc})") from None
    element = Element(name=directory.name, directory=directory, manifest=manifest)
    key = _backup_key(element, kek)
    if not hmac.compare_digest(_mac(key, body), mac_path.read_text().strip()):
        raise BackupError(f"{manifest_path} or {mac_path}: altered (the MAC does not match)")
    element.files = {rel: FileEntry(sha256=str(e["sha256"]), size=int(e["size"]),
                                    sealed=bool(e["sealed"]), element=str(e["element"]))
                     for rel, e in manifest["files"].items()}
    return element, key


def load_chain(backup_set: Path, kek: KekProvider, *, upto: str | None = None) -> list[Element]:
    """The newest element (or `upto`) and the ones it builds on, oldest first; every MAC and
    every link checked."""
    found = {p.name: p for p in _elements(backup_set)}
    if not found:
        raise BackupError(f"{backup_set}: no backup here (no element with a {MANIFEST})")
    name: str | None = upto or max(found)
    chain: list[Element] = []
    while name is not None:
        if name not in found:
            raise BackupError(f"{backup_set / name}: missing (an element the chain needs)")
        element, _ = _read_element(found[name], kek)
        if chain and chain[0].manifest.get("previous_mac") != (
                found[name] / MAC).read_text().strip():
            raise BackupError(f"{found[name]}: not the element {chain[0].name} was made on")
        chain.insert(0, element)
        name = element.manifest.get("previous")
    return chain


def verify_chain(backup_set: Path, kek: KekProvider) -> tuple[list[Element], list[str]]:
    """Every problem, each naming its file: altered, missing or extra."""
    chain = load_chain(backup_set, kek)
    problems: list[str] = []
    expected: dict[str, set[str]] = {e.name: {MANIFEST, MAC} for e in chain}
    by_name = {e.name: e for e in chain}
    for element in chain:
        for rel, entry in element.files.items():
            holder = by_name.get(entry.element)
            if holder is None:
                problems.append(f"{rel}: held by element {entry.element}, not in the chain")
                continue
            stored = rel + (SEALED_SUFFIX if entry.sealed else "")
            expected[holder.name].add(stored)
            if holder is not element:
                continue  # checked where it lives
            path = holder.directory / stored
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif path.stat().st_size != entry.size or _sha256_file(path) != entry.sha256:
                problems.append(f"{path}: altered (size or SHA-256 differs from the manifest)")
    for element in chain:
        for path in sorted(element.directory.rglob("*")):
            if path.is_file() and str(path.relative_to(element.directory)) not in \
                    expected[element.name]:
                problems.append(f"{path}: extra (not in the manifest)")
    return chain, problems


# -- restoring --------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class RestoreResult:
    element: str
    files: int = 0
    recordings: int = 0
    replayed_recordings: int = 0
    replayed_subject_keys: int = 0
    cdr_blanked: int = 0
    shred_entries_newer: int = 0
    recordings_verified: int = 0
    recordings_failed: list[str] = field(default_factory=list)
    in_progress: int = 0
    audit_from: str | None = None


def _is_empty(directory: Path) -> bool:
    return not directory.exists() or not any(directory.iterdir())


def restore(backup_set: Path, config: Config, *, data_dir: Path, kek: KekProvider,
            shred_log: ShredLog | None, force: bool = False,
            audit_from: Path | None = None, accept_audit_gap: bool = False) -> RestoreResult:
    if not _is_empty(data_dir) and not force:
        raise BackupError(f"{data_dir}: not empty; restore only into an empty data directory "
                          "(or --force to write over what is there)")
    chain, problems = verify_chain(backup_set, kek)
    if problems:
        raise BackupError("backup does not verify, nothing restored:\n  " + "\n  ".join(problems))
    entries = shred_log.read() if shred_log is not None else []  # a broken chain stops here
    newest = chain[-1]
    keys = {e.name: _backup_key(e, kek) for e in chain}
    result = RestoreResult(element=newest.name)
    audit_dir = audit_paths(data_dir, config.security).directory
    by_name = {e.name: e for e in chain}
    # An audit log already at the target (security.audit.dir outside data_dir survived) is
    # kept when it continues the backup's: its records after the backup are not lost.
    head = newest.manifest.get("audit") or {}
    if audit_from is None and (audit_dir / "audit.jsonl").exists() \
            and not _inside(audit_dir, data_dir):
        audit_from = audit_dir
    if audit_from is not None:
        _check_extends(audit_from / "audit.jsonl", head)
    elif not accept_audit_gap:
        _check_audit_current(newest, keys[newest.name], config, data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for rel, entry in sorted(newest.files.items()):
        holder = by_name[entry.element]
        if rel.startswith("audit/") and audit_from is not None:
            continue
        if rel.startswith("config/"):
            target = data_dir / "restored-config" / rel.split("/", 1)[1]
        elif rel.startswith("audit/"):
            target = audit_dir / rel.split("/", 1)[1]
        else:
            target = data_dir / rel
        if target.exists():
            target.unlink()  # --force
        if entry.sealed:
            data = _open(keys[holder.name], rel,
                         (holder.directory / (rel + SEALED_SUFFIX)).read_bytes())
            _write_new(target, data)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(holder.directory / rel, target)
            result.recordings += 1
        result.files += 1
    if audit_from is not None:
        if audit_from.resolve() != audit_dir.resolve():
            _take_newer_audit(audit_from, audit_dir)
        result.audit_from = str(audit_from)
    # The index names recordings by absolute path: point it at where they are now, before any
    # replay unlinks by that path.
    recordings_dir = data_dir / "recordings"
    with sqlite3.connect(data_dir / "keystore.db") as db:
        for rid, path in db.execute("SELECT recording_id, path FROM recordings").fetchall():
            db.execute("UPDATE recordings SET path = ? WHERE recording_id = ?",
                       (str(recordings_dir / Path(str(path)).name), rid))
    db.close()
    since = int(newest.manifest.get("shred_log_seq", -1))
    result.shred_entries_newer = sum(1 for e in entries if e.seq > since)
    _replay(entries, data_dir, kek, result)
    return result


def _check_audit_current(element: Element, key: bytes, config: Config, data_dir: Path) -> None:
    """Refuse (nothing written) when the backup's audit log is behind the outside checkpoints:
    records written after the backup would be lost, and continuing the log would fork it in
    the outside copy for good. The caller offers --audit-from or --accept-audit-gap."""
    from ..security.audit import verify as audit_verify

    paths = audit_paths(data_dir, config.security)
    if paths.sink is None or not paths.sink.exists():
        return
    with tempfile.TemporaryDirectory(prefix="vaultpbx-audit-check-") as scratch:
        for rel in element.files:
            if rel.startswith("audit/"):
                _write_new(Path(scratch) / rel.split("/", 1)[1], _open(
                    key, rel, (element.directory / (rel + SEALED_SUFFIX)).read_bytes()))
        report = audit_verify(scratch, paths.sink, public_key=paths.config.public_key)
    if not report.ok:
        raise BackupError(
            "the backup's audit log is behind its outside checkpoints (records written after "
            f"the backup are not in it): {report.problems[0]}; nothing restored. Give "
            "--audit-from with the surviving audit directory, or --accept-audit-gap to restore "
            "anyway (the log then shows the gap for good: docs/backup-and-restore.md)")


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def _check_extends(log: Path, head: dict[str, Any]) -> None:
    """Refuse an audit log that is not the backup's log continued (same record at its end)."""
    if not log.is_file():
        raise BackupError(f"{log}: missing (--audit-from names an audit directory)")
    records = int(head.get("records") or 0)
    if not records:
        return
    with log.open("rb") as f:
        for number, line in enumerate(f, 1):
            if number == records:
                if json.loads(line).get("hash") == head.get("hash"):
                    return
                break
    raise BackupError(f"{log}: does not continue the backup's audit log (record "
                      f"{records - 1} differs or is missing); restore refused")


def _take_newer_audit(source: Path, audit_dir: Path) -> None:
    """Copy a surviving, newer audit directory (checked by `_check_extends`) into place."""
    for item in source.iterdir():
        if item.is_file() and item.name not in _AUDIT_SKIP:
            target = audit_dir / item.name
            if target.exists():
                target.unlink()
            data = item.read_bytes()
            _write_new(target, _complete_lines(data) if item.suffix == ".jsonl" else data)


def _replay(entries: list[Any], data_dir: Path, kek: KekProvider, result: RestoreResult) -> None:
    doomed_keys = {i for e in entries if e.kind == "subject_keys" for i in e.ids}
    with Keystore(data_dir / "keystore.db", kek) as store:
        live = {rid for (rid,) in store.db.execute(
            "SELECT recording_id FROM recordings WHERE state != 'shredded'")}
        for entry in entries:
            if entry.kind != "recordings":
                continue
            for rid in entry.ids:
                if rid in live:
                    store.shred(rid, reason=f"replayed:{entry.reason}", actor="restore",
                                now=entry.time)
                    live.discard(rid)
                    result.replayed_recordings += 1
        present = {k for (k,) in store.db.execute("SELECT key_id FROM subject_keys")}
        gone = sorted(doomed_keys & present)
        if gone:
            with store.transaction() as db:
                db.executemany("DELETE FROM subject_keys WHERE key_id = ?", [(k,) for k in gone])
            store.scrub()
        result.replayed_subject_keys = len(gone)
    cdr = data_dir / "cdr.db"
    if doomed_keys and cdr.exists():
        # Values sealed under a destroyed key name its id (subjects.py: version, key id, ...):
        # blank them as the erasure did, so the rows name nobody even by subject id.
        db = sqlite3.connect(cdr)
        try:
            db.execute("PRAGMA secure_delete=ON")
            with db:
                for party in ("caller", "callee"):
                    rows = db.execute(f"SELECT rowid, {party}_sealed FROM calls "
                                      f"WHERE {party}_sealed IS NOT NULL").fetchall()
                    hit = [(r,) for r, sealed in rows if bytes(sealed)[1:17].hex() in doomed_keys]
                    db.executemany(f"UPDATE calls SET {party} = '', {party}_subject = NULL, "
                                   f"{party}_sealed = NULL WHERE rowid = ?", hit)
                    result.cdr_blanked += len(hit)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
