"""`vaultpbx recordings list|export|verify` and `vaultpbx keys rotate [--rewrap]`.

The main CLI resolves the data directory from the config and calls `args.handler(args, data_dir)`
(each parser sets `handler`). Layout under the data directory: recordings/, keystore.db, kek.key.
Handlers return the process exit status; they print results, never keys or unmasked numbers.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ..hooks.registry import HookRegistry
from .errors import RecordingError
from .export import Authorize, allow_all, check_access, export_wav, verify_all, verify_recording
from .kek import KekProvider, LocalFileKek
from .keystore import Keystore
from .recorder import recover_unfinished

Handler = Callable[[argparse.Namespace, Path], int]


def recordings_dir(data_dir: Path) -> Path:
    return data_dir / "recordings"


def open_store(
    data_dir: Path, *, kek: KekProvider | None = None, hooks: HookRegistry | None = None
) -> Keystore:
    return Keystore(data_dir / "keystore.db", kek or LocalFileKek(data_dir / "kek.key"),
                    hooks=hooks)


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _iso(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_recording_commands(
    subparsers: Any,
    *,
    kek_factory: Callable[[Path], KekProvider] | None = None,
    hooks: HookRegistry | None = None,
    authorize: Authorize = allow_all,
    out: TextIO | None = None,
) -> None:
    """Add `recordings` and `keys` to an argparse sub-command set.

    `kek_factory(data_dir)` picks the KEK provider (default: the local key file); `hooks` and
    `authorize` are what every list/export/verify goes through.
    """

    def store_for(data_dir: Path) -> Keystore:
        kek = kek_factory(data_dir) if kek_factory else None
        return open_store(data_dir, kek=kek, hooks=hooks)

    def stdout() -> TextIO:
        return out or sys.stdout

    def list_handler(args: argparse.Namespace, data_dir: Path) -> int:
        with store_for(data_dir) as store:
            recover_unfinished(store, recordings_dir(data_dir))
            rows = store.rows(states=None if args.all else ("recording", "closed", "incomplete"))
            for row in rows:
                check_access(store, actor=args.actor, action="list", recording_id=row.recording_id,
                             hooks=hooks, authorize=authorize)
            docs = [
                {
                    "id": row.recording_id,
                    "state": row.state,
                    "created": _iso(row.created_at),
                    "closed": _iso(row.closed_at),
                    "expires": _iso(row.expires_at),
                    "retention_class": row.retention_class,
                    "legal_hold": row.legal_hold,
                    "caller": store.masked_caller(row, role=args.role),
                }
                for row in rows
            ]
        if args.json:
            json.dump(docs, stdout(), indent=2)
            stdout().write("\n")
        else:
            for doc in docs:
                hold = " HOLD" if doc["legal_hold"] else ""
                stdout().write(f"{doc['id']}  {doc['state']:<10} {doc['created']}  "
                               f"expires {doc['expires']}  {doc['caller']}{hold}\n")
        return 0

    def export_handler(args: argparse.Namespace, data_dir: Path) -> int:
        with store_for(data_dir) as store:
            result = export_wav(store, args.recording_id, Path(args.output), actor=args.actor,
                                hooks=hooks, authorize=authorize)
        note = "" if result.complete else " (unfinished recording: up to its last sealed chunk)"
        stdout().write(f"{result.path}: {result.seconds:.2f} s, {result.chunks} chunks{note}\n")
        return 0

    def verify_handler(args: argparse.Namespace, data_dir: Path) -> int:
        with store_for(data_dir) as store:
            recover_unfinished(store, recordings_dir(data_dir))
            if args.recording_id:
                checks = [verify_recording(store, args.recording_id, actor=args.actor,
                                           hooks=hooks, authorize=authorize)]
                denied: list[str] = []
            else:
                report = verify_all(store, actor=args.actor, hooks=hooks, authorize=authorize)
                checks, denied = report.checks, report.denied
        failed = 0
        for check in checks:
            r = check.report
            status = "ok" if check.passed else "FAILED"
            extra = "" if r.final_chunk else " (no final chunk)"
            stdout().write(f"{check.recording_id}  {status}  {r.chunks_ok} chunks ok, "
                           f"{r.chunks_bad} bad{extra}\n")
            for problem in r.problems:
                stdout().write(f"    {problem.message}\n")
            failed += not check.passed
        for rid in denied:
            stdout().write(f"{rid}  DENIED\n")
        stdout().write(f"{len(checks)} checked, {failed} failed, {len(denied)} denied\n")
        return 1 if failed or denied else 0

    def rotate_handler(args: argparse.Namespace, data_dir: Path) -> int:
        with store_for(data_dir) as store:
            kek = store.kek
            rotate = getattr(kek, "rotate", None)
            if rotate is None:
                stdout().write("this KEK provider cannot rotate from here\n")
                return 2
            new_id = rotate()
            stdout().write(f"new key-encryption key: {new_id}\n")
            if args.rewrap:
                count = store.rewrap()
                stdout().write(f"re-wrapped {count} data key(s); audio files untouched\n")
                if args.retire:
                    in_use = store.kek_ids_in_use()
                    for key_id in list(getattr(kek, "key_ids", list)()):
                        if key_id != kek.key_id and key_id not in in_use:
                            kek.retire(key_id)  # type: ignore[attr-defined]
                            stdout().write(f"retired {key_id}\n")
        return 0

    recordings = subparsers.add_parser("recordings", help="list, export and verify recordings")
    rsub = recordings.add_subparsers(dest="recordings_command", required=True)

    p = rsub.add_parser("list", help="list indexed recordings (caller numbers masked)")
    p.add_argument("--all", action="store_true", help="include shredded recordings")
    p.add_argument("--json", action="store_true")
    p.add_argument("--role", default="admin", help="role the caller numbers are masked for")
    p.set_defaults(handler=_guard(list_handler, out))

    p = rsub.add_parser("export", help="decrypt one recording to a stereo WAV")
    p.add_argument("recording_id")
    p.add_argument("-o", "--output", required=True, help="WAV file to write (created 0600)")
    p.set_defaults(handler=_guard(export_handler, out))

    p = rsub.add_parser("verify", help="check every tag; exit 1 if any recording fails")
    p.add_argument("recording_id", nargs="?", help="default: every recording")
    p.set_defaults(handler=_guard(verify_handler, out))

    for sub in (rsub.choices["list"], rsub.choices["export"], rsub.choices["verify"]):
        sub.add_argument("--actor", default=_default_actor(), help="who is asking (audited)")

    keys = subparsers.add_parser("keys", help="key-encryption key management")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    p = ksub.add_parser("rotate", help="new KEK for new recordings")
    p.add_argument("--rewrap", action="store_true", help="re-wrap existing data keys now")
    p.add_argument("--retire", action="store_true",
                   help="with --rewrap: destroy old KEKs no data key needs any more")
    p.set_defaults(handler=_guard(rotate_handler, out))


def _guard(handler: Handler, out: TextIO | None) -> Handler:
    """Turn expected failures into a message on stderr and exit status 1."""

    def run(args: argparse.Namespace, data_dir: Path) -> int:
        try:
            return handler(args, data_dir)
        except RecordingError as exc:
            (out or sys.stderr).write(f"error: {exc}\n")
            return 1

    return run
