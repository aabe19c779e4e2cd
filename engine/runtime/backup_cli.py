"""`vaultpbx backup [-o DIR [--incremental] | verify DIR]` and `vaultpbx restore DIR`.

The commands over backup.py: they read the configuration (`-c`), open the KEK it names (never
anything else), audit every backup and restore in the engine's audit log (who, which element,
how many files; a checkpoint over each record, so it reaches the outside copies at once) and
print a summary. Exit 0 when everything checked out, 1 otherwise (the message names the file),
2 for a bad configuration or usage.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path
from typing import Any

from ..recording.config import RecordingConfig
from ..recording.errors import RecordingError
from ..recording.kek import KekProvider, open_kek
from ..recording.keystore import Keystore
from ..recording.shredlog import ShredLog, ShredLogError
from ..security.cli import audit_paths, open_audit_log
from .backup import AuditWriter, BackupError, restore, take_backup, verify_chain
from .config import Config


def _actor(given: str | None) -> str:
    if given:
        return given
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def add_backup_commands(sub: Any) -> None:
    backup = sub.add_parser("backup", help="take or verify an encrypted backup "
                            "(docs/backup-and-restore.md)")
    backup.add_argument("-c", "--config", default=argparse.SUPPRESS)
    backup.add_argument("-o", "--output", type=Path, help="the backup set directory")
    backup.add_argument("--incremental", action="store_true",
                        help="copy only recordings the set's earlier elements do not hold")
    backup.add_argument("--actor", help="who is taking it (default cli:<OS user>)")
    backup.set_defaults(handler=_cmd_backup)
    backup_sub = backup.add_subparsers(dest="backup_command")
    verify = backup_sub.add_parser("verify", help="check a backup set: MACs, hashes, no extra "
                                   "or missing file (needs the KEK)")
    verify.add_argument("-c", "--config", default=argparse.SUPPRESS)
    verify.add_argument("set", type=Path)
    verify.set_defaults(handler=_cmd_verify)
    rest = sub.add_parser("restore", help="restore a backup set into an empty data directory")
    rest.add_argument("-c", "--config", default=argparse.SUPPRESS)
    rest.add_argument("set", type=Path)
    rest.add_argument("--into", type=Path, help="data directory (default the config's data_dir)")
    rest.add_argument("--force", action="store_true", help="write into a non-empty directory")
    rest.add_argument("--audit-from", type=Path,
                      help="a surviving newer copy of the audit directory that extends the "
                      "backup's log (so the log verifies across the restore)")
    rest.add_argument("--accept-audit-gap", action="store_true",
                      help="restore although the backup's audit log is behind its outside "
                      "checkpoints (records after the backup lost; the log shows the gap)")
    rest.add_argument("--actor", help="who is restoring (default cli:<OS user>)")
    rest.set_defaults(handler=_cmd_restore)


def _load(args: argparse.Namespace) -> tuple[Config, Path] | int:
    from .config import ConfigError, load_config

    try:
        return load_config(args.config).config, Path(args.config)
    except ConfigError as exc:
        print(f"vaultpbx: configuration error: {exc}", file=sys.stderr)
        return 2


def _kek(config: Config, data_dir: Path) -> KekProvider:
    return open_kek(RecordingConfig.from_dict(config.recording).kek, data_dir)


def _auditor(config: Config, data_dir: Path, actor: str) -> AuditWriter:
    def write(*, action: str, target: str, details: dict[str, Any]) -> None:
        log = open_audit_log(data_dir, config.security)
        try:
            log.append(actor=actor, action=action, target=target, details=details,
                       now=time.time())
        finally:
            log.close(now=time.time())  # a checkpoint over it, to the outside copies too

    return write


def _cmd_backup(args: argparse.Namespace) -> int:
    if getattr(args, "backup_command", None) == "verify":
        return _cmd_verify(args)
    if args.output is None:
        print("vaultpbx backup: give -o DIR (the backup set)", file=sys.stderr)
        return 2
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    config, config_path = loaded
    data_dir = Path(config.data_dir)
    actor = _actor(args.actor)
    kek = _kek(config, data_dir)
    try:
        audit = _auditor(config, data_dir, actor)
        result = take_backup(config, config_path, args.output, incremental=args.incremental,
                             kek=kek, audit=audit)
    except (BackupError, RecordingError, ShredLogError, OSError) as exc:
        print(f"vaultpbx backup: {exc}", file=sys.stderr)
        try:
            _auditor(config, data_dir, actor)(action="backup.failed", target=str(args.output),
                                              details={"error": str(exc)[:300]})
        except Exception as audit_exc:  # noqa: BLE001 - the first error is the one to show
            print(f"vaultpbx backup: and its audit record failed: {audit_exc}",
                  file=sys.stderr)
        return 1
    finally:
        kek.close()
    print(f"backup {result.element} ({result.kind}): {result.files} files, "
          f"{result.recordings_copied} of {result.recordings_total} recordings copied, "
          f"{result.bytes_written} bytes")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    config, _ = loaded
    kek = _kek(config, Path(config.data_dir))
    try:
        chain, problems = verify_chain(args.set, kek)
    except (BackupError, RecordingError) as exc:
        print(f"backup NOT intact: {exc}", file=sys.stderr)
        return 1
    finally:
        kek.close()
    if problems:
        print("backup NOT intact:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    files = sum(len(e.files) for e in chain[-1:])
    print(f"backup intact: {len(chain)} element(s) ({', '.join(e.name for e in chain)}), "
          f"{files} files verified")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from ..recording.export import verify_recording
    from ..security.audit import verify as audit_verify
    from ..security.cli import OutsideSinkInDataDir

    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    config, _ = loaded
    data_dir = args.into or Path(config.data_dir)
    settings = RecordingConfig.from_dict(config.recording)
    # The KEK and the shred log are where the configuration keeps them, apart from any data
    # directory (`var/...` means the configured data_dir, not the one restored into).
    kek = _kek(config, Path(config.data_dir))
    shred_path = settings.shred_log_path(config.data_dir)
    actor = _actor(args.actor)
    try:
        result = restore(args.set, config, data_dir=data_dir, kek=kek,
                         shred_log=ShredLog(shred_path) if shred_path else None,
                         force=args.force, audit_from=args.audit_from,
                         accept_audit_gap=args.accept_audit_gap)
        with Keystore(data_dir / "keystore.db", kek) as store:
            for row in store.rows():
                if row.state == "shredded":
                    continue
                if row.state == "recording" and not Path(row.path).exists():
                    result.in_progress += 1  # being written at backup time: not in it
                    continue
                check = verify_recording(store, row.recording_id, actor=actor)
                if check.passed:
                    result.recordings_verified += 1
                else:
                    result.recordings_failed.append(row.recording_id)
        paths = audit_paths(data_dir, config.security)
        # Checked before the restore's own record goes in: records written after the backup,
        # covered by outside checkpoints but not restored, show here as what they are (the log
        # truncated after a checkpoint); the record below would then fork the history.
        before = audit_verify(paths.directory, paths.sink, public_key=paths.config.public_key)
        _auditor(config, data_dir, actor)(action="backup.restore", target=result.element,
               details={"files": result.files, "recordings": result.recordings,
                        "replayed_shreds": result.replayed_recordings,
                        "replayed_subject_keys": result.replayed_subject_keys,
                        "shred_entries_newer": result.shred_entries_newer,
                        "into": str(data_dir)})
        audit = audit_verify(paths.directory, paths.sink, public_key=paths.config.public_key)
    except (BackupError, RecordingError, ShredLogError, OutsideSinkInDataDir, OSError) as exc:
        print(f"vaultpbx restore: {exc}", file=sys.stderr)
        return 1
    finally:
        kek.close()
    print(f"restored {result.element} into {data_dir}: {result.files} files, "
          f"{result.recordings} recordings; shred log replayed: {result.replayed_recordings} "
          f"recording(s) shredded again, {result.replayed_subject_keys} caller key(s) "
          f"destroyed again, {result.cdr_blanked} call record number(s) blanked "
          f"({result.shred_entries_newer} entries newer than the backup); recordings verified: "
          f"{result.recordings_verified}, failed: {len(result.recordings_failed)}, being "
          f"written at backup time (not in it): {result.in_progress}; "
          f"audit log: {'intact' if audit.ok else 'NOT intact'}")
    failed = False
    if result.recordings_failed:
        print("recordings that do not verify: " + ", ".join(result.recordings_failed),
              file=sys.stderr)
        failed = True
    if not before.ok and args.accept_audit_gap:
        print(f"audit log: continued after a gap (accepted): {before.problems[0]}",
              file=sys.stderr)
    elif not audit.ok:
        for problem in audit.problems[:10]:
            print(f"audit log: {problem}", file=sys.stderr)
        failed = True
    return 1 if failed else 0
