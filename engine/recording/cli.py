"""`vaultpbx recordings list|export|verify|expire|erase` and `vaultpbx keys rotate|retire|status`.

The main CLI resolves the data directory from the config and calls `args.handler(args, data_dir)`
(each parser sets `handler`). Layout under the data directory: recordings/, keystore.db; the KEK
is where `recording.kek` says (`var/kek.key` by default). Handlers return the process exit
status; they print results, never keys or unmasked numbers.

No command creates a key-encryption key except `keys rotate` (and the first use of an empty
keystore): `recordings list` opens no KEK at all, export and verify only read, so a KEK file that
was moved away is reported ("restore ..."), never silently replaced (docs/keys.md).

Every command leaves audit records in the engine's audit log (`<data_dir>/audit` and the outside
copy `audit-outside/checkpoints.jsonl`, or what `security.audit` in the configuration says when
the main CLI put it on `args.engine_config`), also while the engine runs: a listing is one
`recording.list`, each export or verification a `recording.export` / `recording.verify`, a
rotation `key.rotate` (and `key.rewrap`, `key.retire`), a shred `recording.shred`; the actor is
`cli:<OS user>` or `--actor`. A command whose audit log cannot be opened does nothing (exit 1),
and one whose records could not all be written exits 1 saying so.

`recordings expire` shreds what is past its retention now (the engine does it every
`recording.expire_every` seconds). `recordings erase` erases one caller's recordings and call
records (docs/retention-and-erasure.md): the number is read from standard input with `-` (so it
stays out of the shell history and the process list), and is never printed; with
`security.privacy.erasure_needs_approval` it makes a request that another person approves with
`--approve ID`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ..hooks.maskers import TextMasker
from ..hooks.phones import DEFAULT_COUNTRY
from ..hooks.registry import AUDITED_POINTS, HookPoint, HookRegistry
from ..security.audit import AuditLog
from ..security.config import SecurityConfig
from ..security.observer import AuditObserver
from .config import RecordingConfig
from .erasure import ErasureError, ErasureService
from .errors import AccessDeniedError, KekInUseError, RecordingError
from .export import Authorize, allow_all, check_access, export_wav, verify_all, verify_recording
from .kek import KekProvider, LocalFileKek, NoKek, open_kek
from .keystore import Keystore
from .recorder import FILE_SUFFIX, recover_if_idle
from .retention import RetentionManager
from .shredlog import ShredLog

Handler = Callable[[argparse.Namespace, Path], int]
AuditOpener = Callable[[argparse.Namespace, Path], AuditLog]

RETIRE_WAIT = 15.0  # seconds `--retire` waits for running engines to follow a rotation


def recordings_dir(data_dir: Path) -> Path:
    return data_dir / "recordings"


def open_store(
    data_dir: Path, *, kek: KekProvider | None = None, hooks: HookRegistry | None = None,
    country: str = DEFAULT_COUNTRY,
) -> Keystore:
    return Keystore(data_dir / "keystore.db", kek or LocalFileKek(data_dir / "kek.key"),
                    hooks=hooks, country=country)


def _shred_log(args: argparse.Namespace | None, data_dir: Path) -> ShredLog | None:
    """The shred log kept apart that the configuration names (docs/backup-and-restore.md)."""
    config = getattr(args, "engine_config", None) if args is not None else None
    if config is None:
        return None
    path = RecordingConfig.from_dict(config.recording).shred_log_path(data_dir)
    return None if path is None else ShredLog(path)


def _security(args: argparse.Namespace) -> SecurityConfig:
    """The `security:` section of the engine's configuration (defaults without one)."""
    config = getattr(args, "engine_config", None)
    return SecurityConfig.from_dict(getattr(config, "security", None))


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def open_cli_audit(args: argparse.Namespace, data_dir: Path) -> AuditLog:
    """The engine's audit log for this data dir (and `args.engine_config.security`, if set)."""
    from ..security.cli import open_audit_log

    config = getattr(args, "engine_config", None)
    return open_audit_log(data_dir, getattr(config, "security", None))


class _AuditSlot:
    """The audit observer of one command run: registered once, pointed at the log per run.

    Failures are counted here as well as by the registry (which swallows them), so the command
    can say that its records are incomplete.
    """

    __slots__ = ("observer", "failures")

    def __init__(self) -> None:
        self.observer: AuditObserver | None = None
        self.failures: list[str] = []

    def __call__(self, point: HookPoint, event: object) -> None:
        if self.observer is None:
            return
        try:
            self.observer(point, event)
        except Exception as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
            raise

    def attach(self, registry: HookRegistry) -> None:
        for point in AUDITED_POINTS:
            registry.add_observer(point, self, name="audit", essential=True)


def _iso(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_recording_commands(
    subparsers: Any,
    *,
    kek_factory: Callable[[Path], KekProvider] | None = None,
    hooks: HookRegistry | None = None,
    authorize: Authorize = allow_all,
    out: TextIO | None = None,
    audit: AuditOpener | None = open_cli_audit,
) -> None:
    """Add `recordings` and `keys` to an argparse sub-command set.

    `kek_factory(data_dir)` picks the KEK provider (default: the local key file); `hooks` and
    `authorize` are what every list/export/verify goes through. `audit(args, data_dir)` opens the
    audit log each command writes to (None: no audit log, for tests of other things).
    """
    hooks = hooks if hooks is not None else HookRegistry()
    slot = _AuditSlot()
    if audit is not None:
        slot.attach(hooks)

    running: list[argparse.Namespace] = []  # the command being run: its -c config picks the KEK

    def guard(handler: Handler) -> Handler:
        def remember(args: argparse.Namespace, data_dir: Path) -> int:
            running[:] = [args]
            return handler(args, data_dir)

        return _audited(_guard(remember, out), audit, slot)

    def kek_for(data_dir: Path) -> KekProvider:
        if kek_factory is not None:
            return kek_factory(data_dir)
        config = getattr(running[0], "engine_config", None) if running else None
        if config is not None:  # what the engine uses: `recording.kek` of the same YAML
            return open_kek(RecordingConfig.from_dict(config.recording).kek, data_dir)
        return LocalFileKek(data_dir / "kek.key")

    @contextmanager
    def store_for(data_dir: Path, args: argparse.Namespace | None = None, *,
                  keyless: bool = False) -> Iterator[Keystore]:
        kek: KekProvider = NoKek() if keyless else kek_for(data_dir)
        country = _security(args).privacy.default_country if args else DEFAULT_COUNTRY
        try:
            with open_store(data_dir, kek=kek, hooks=hooks, country=country) as store:
                store.outside_log = _shred_log(args, data_dir)
                yield store
        finally:
            kek.close()

    @contextmanager
    def list_store(data_dir: Path, args: argparse.Namespace) -> Iterator[Keystore]:
        """The index with the KEK when it opens, to show callers as the role may see them;
        without it when it does not (a moved file, no PIN at hand): listing never needs a KEK,
        and no provider ever makes one (callers are then shown as sealed)."""
        try:
            kek_for(data_dir).close()
        except (RecordingError, OSError):
            keyless = True
        else:
            keyless = False
        with store_for(data_dir, args, keyless=keyless) as store:
            yield store

    def stdout() -> TextIO:
        return out or sys.stdout

    def list_handler(args: argparse.Namespace, data_dir: Path) -> int:
        security = _security(args)
        masker = TextMasker(security.masking, country=security.privacy.default_country)
        with list_store(data_dir, args) as store:
            recover_if_idle(store, recordings_dir(data_dir))
            rows = store.rows(states=None if args.all else ("recording", "closed", "incomplete"))
            # One listing, one audit record (as the admin API does), not one per row.
            quiet = HookRegistry()
            listing = {"count": len(rows), "role": args.role, "all": bool(args.all),
                       "via": "cli"}
            try:
                for row in rows:
                    check_access(store, actor=args.actor, action="list",
                                 recording_id=row.recording_id, hooks=quiet, authorize=authorize)
            except AccessDeniedError as exc:
                hooks.notify(HookPoint.RECORDING_ACCESSED, {
                    "actor": args.actor, "action": "recording.list", "target": exc.recording_id,
                    "details": {**listing, "allowed": False}})
                raise
            hooks.notify(HookPoint.RECORDING_ACCESSED, {
                "actor": args.actor, "action": "recording.list", "target": "*",
                "details": {**listing, "allowed": True}})
            docs = [
                {
                    "id": row.recording_id,
                    "state": row.state,
                    "created": _iso(row.created_at),
                    "closed": _iso(row.closed_at),
                    "expires": _iso(row.expires_at),
                    "retention_class": row.retention_class,
                    "legal_hold": row.legal_hold,
                    "caller": store.masked_caller(row, role=args.role, masker=masker),
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
            store.keys.ensure(create=False)  # a missing KEK: say what to restore
            result = export_wav(store, args.recording_id, Path(args.output), actor=args.actor,
                                hooks=hooks, authorize=authorize)
        note = "" if result.complete else " (unfinished recording: up to its last sealed chunk)"
        stdout().write(f"{result.path}: {result.seconds:.2f} s, {result.chunks} chunks{note}\n")
        return 0

    def verify_handler(args: argparse.Namespace, data_dir: Path) -> int:
        with store_for(data_dir) as store:
            store.keys.ensure(create=False)
            recover_if_idle(store, recordings_dir(data_dir))
            if args.recording_id:
                checks = [verify_recording(store, args.recording_id, actor=args.actor,
                                           hooks=hooks, authorize=authorize)]
                denied: list[str] = []
                strays: list[Path] = []
            else:
                report = verify_all(store, actor=args.actor, hooks=hooks, authorize=authorize)
                checks, denied = report.checks, report.denied
                indexed = {row.recording_id for row in store.rows()}
                # A sealed file the index does not know has no key: it cannot be checked, and
                # nothing the engine wrote looks like that (the row comes before the file).
                strays = [path for path in sorted(recordings_dir(data_dir).glob(
                    f"*{FILE_SUFFIX}")) if path.stem not in indexed]
        failed = 0
        for path in strays:
            stdout().write(f"{path.name}  FAILED  not in the index (no key to verify it)\n")
            failed += 1
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

    def rotation_audit(args: argparse.Namespace, store: Keystore
                       ) -> Callable[..., None]:
        provider = type(store.kek).__name__

        def rotation(action: str, target: str, **details: object) -> None:
            hooks.notify(HookPoint.KEY_ROTATION, {
                "actor": args.actor, "action": action, "target": target,
                "details": {"provider": provider, "via": "cli", **details}})

        return rotation

    def retire_old(args: argparse.Namespace, store: Keystore, only: str | None = None) -> int:
        """Retire every old KEK nothing needs (or `only`); wait a little for running engines to
        follow a rotation that just happened. 1 if one was refused."""
        rotation = rotation_audit(args, store)
        current = store.current_kek_id()
        candidates = [only] if only else store.keys.retirable()
        deadline = time.monotonic() + args.wait
        status = 0
        for key_id in candidates:
            while True:
                try:
                    store.retire_kek(key_id)
                except KekInUseError as exc:
                    if exc.engines and time.monotonic() < deadline:
                        time.sleep(0.2)  # engines follow at their next housekeeping tick
                        continue
                    if only is None and not exc.engines and "data key" in exc.reason:
                        stdout().write(f"kept {key_id}: {exc.reason}\n")
                        break  # still needed by data keys (reported above): kept
                    rotation("key.retire_refused", key_id, current=current, reason=exc.reason)
                    (out or sys.stderr).write(f"error: {exc}\n")
                    status = 1
                    break
                rotation("key.retire", key_id, current=current)
                stdout().write(f"retired {key_id}\n")
                break
        return status

    def rotate_handler(args: argparse.Namespace, data_dir: Path) -> int:
        if args.retire and not args.rewrap:
            (out or sys.stderr).write("error: --retire needs --rewrap (or use `keys retire`)\n")
            return 2
        with store_for(data_dir) as store:
            rotation = rotation_audit(args, store)
            previous, new_id = store.rotate_kek()
            rotation("key.rotate", new_id, previous=previous)
            stdout().write(f"new key-encryption key: {new_id}\n")
            status = 0
            if args.rewrap:
                report = store.rewrap()
                rotation("key.rewrap", new_id, data_keys=report.rewrapped,
                         caller_keys=report.caller_keys, failed=len(report.failed))
                stdout().write(f"re-wrapped {report.rewrapped} data key(s) and "
                               f"{report.caller_keys} caller key(s); audio files untouched\n")
                for rid, kek_id, why in report.failed:
                    (out or sys.stderr).write(f"error: {rid}: not re-wrapped ({kek_id}): {why}\n")
                    status = 1
                if args.retire:
                    status = retire_old(args, store) or status
        return status

    def retire_handler(args: argparse.Namespace, data_dir: Path) -> int:
        with store_for(data_dir) as store:
            store.keys.ensure(create=False)
            return retire_old(args, store, args.kek_id)

    def status_handler(args: argparse.Namespace, data_dir: Path) -> int:
        with store_for(data_dir) as store:
            store.keys.provider.refresh()
            held = set(store.keys.provider.key_ids())
            in_use = store.keys.in_use()
            where = store.kek.where
            keks: list[dict[str, object]] = [
                {"id": kek_id, "state": state, "data_keys": in_use.get(kek_id, 0),
                 "held": kek_id in held}
                for kek_id, state in store.keys.states().items()]
            engines: list[dict[str, object]] = [
                {"pid": e.pid, "host": e.host, "kek": e.kek_id}
                for e in store.keys.live_engines()]
        if args.json:
            json.dump({"where": where, "keks": keks, "engines": engines}, stdout(), indent=2)
            stdout().write("\n")
            return 0
        stdout().write(f"{where}\n")
        for kek in keks:
            missing = "" if kek["held"] or kek["state"] == "retired" else "  MISSING"
            stdout().write(f"{kek['id']}  {kek['state']:<8} {kek['data_keys']} data key(s)"
                           f"{missing}\n")
        for engine in engines:
            stdout().write(f"engine pid {engine['pid']} on {engine['host']} wraps under "
                           f"{engine['kek']}\n")
        return 0

    def expire_handler(args: argparse.Namespace, data_dir: Path) -> int:
        with store_for(data_dir, args) as store:
            recover_if_idle(store, recordings_dir(data_dir))
            shredded = RetentionManager(store, job_actor=args.actor).expire(time.time())
        for record in shredded:
            stdout().write(f"{record.recording_id}  shredded (expired)\n")
        stdout().write(f"{len(shredded)} recording(s) past their retention shredded\n")
        return 0

    def erase_handler(args: argparse.Namespace, data_dir: Path) -> int:
        from ..runtime.cdr import CdrSchemaError, CdrStore

        security = _security(args)
        with store_for(data_dir, args) as store:
            try:
                cdr = CdrStore(data_dir / "cdr.db", store.subjects)
            except CdrSchemaError as exc:
                stdout().write(f"error: {exc}\n")
                return 1
            try:
                service = ErasureService(
                    store, [RetentionManager(store), cdr], hooks=hooks,
                    needs_approval=security.privacy.erasure_needs_approval)
                return _erase(service, args, stdout())
            except ErasureError as exc:
                stdout().write(f"error: {exc}\n")
                return 1
            finally:
                cdr.close()

    recordings = subparsers.add_parser(
        "recordings", help="list, export, verify, expire and erase recordings")
    rsub = recordings.add_subparsers(dest="recordings_command", required=True)

    p = rsub.add_parser("list", help="list indexed recordings (caller numbers masked)")
    p.add_argument("--all", action="store_true", help="include shredded recordings")
    p.add_argument("--json", action="store_true")
    p.add_argument("--role", default="admin", help="role the caller numbers are masked for")
    p.set_defaults(handler=guard(list_handler))

    p = rsub.add_parser("export", help="decrypt one recording to a stereo WAV")
    p.add_argument("recording_id")
    p.add_argument("-o", "--output", required=True, help="WAV file to write (created 0600)")
    p.set_defaults(handler=guard(export_handler))

    p = rsub.add_parser("verify", help="check every tag; exit 1 if any recording fails")
    p.add_argument("recording_id", nargs="?", help="default: every recording")
    p.set_defaults(handler=guard(verify_handler))

    p = rsub.add_parser("expire", help="shred every recording past its retention now")
    p.set_defaults(handler=guard(expire_handler))

    p = rsub.add_parser(
        "erase", help="erase one caller's recordings and call records (data-subject request)")
    p.add_argument("number", nargs="?",
                   help="the caller's number in any format; '-' reads it from standard input")
    p.add_argument("--find", action="store_true", help="only count what would be erased")
    p.add_argument("--pending", action="store_true", help="list pending erasure requests")
    p.add_argument("--approve", metavar="REQUEST", help="approve (and run) a pending request")
    p.set_defaults(handler=guard(erase_handler))

    for sub in (rsub.choices["list"], rsub.choices["export"], rsub.choices["verify"],
                rsub.choices["expire"], rsub.choices["erase"]):
        sub.add_argument("--actor", default=_default_actor(), help="who is asking (audited)")

    keys = subparsers.add_parser("keys", help="key-encryption key management")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    p = ksub.add_parser("rotate", help="new KEK for new recordings (running engines follow)")
    p.add_argument("--rewrap", action="store_true", help="re-wrap existing data keys now")
    p.add_argument("--retire", action="store_true",
                   help="with --rewrap: destroy old KEKs no data key or running engine needs")
    p.set_defaults(handler=guard(rotate_handler))
    p = ksub.add_parser("retire", help="destroy old KEKs no data key or running engine needs")
    p.add_argument("kek_id", nargs="?", help="default: every old KEK nothing needs")
    p.set_defaults(handler=guard(retire_handler))
    for sub in (ksub.choices["rotate"], ksub.choices["retire"]):
        sub.add_argument("--wait", type=float, default=RETIRE_WAIT,
                         help="seconds to wait for running engines to follow a rotation")
        sub.add_argument("--actor", default=_default_actor(), help="who is asking (audited)")
    p = ksub.add_parser("status", help="KEKs, how many data keys each wraps, running engines")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=guard(status_handler))


def _erase(service: ErasureService, args: argparse.Namespace, out: TextIO) -> int:
    """The `recordings erase` modes; prints counts and request ids, never the number."""
    now = time.time()
    if args.pending:
        for request in service.pending():
            out.write(f"{request.id}  requested by {request.requested_by} at "
                      f"{_iso(request.requested_at)}\n")
        return 0
    if args.approve:
        report = service.approve(args.approve, actor=args.actor, now=now)
        out.write(json.dumps(report.as_dict()) + "\n")
        return 0
    number = sys.stdin.readline().strip() if args.number == "-" else (args.number or "")
    if not number:
        out.write("error: give the caller's number (or '-' to read it from standard input)\n")
        return 2
    if args.find:
        out.write(json.dumps(service.find(number)) + "\n")
        return 0
    if service.needs_approval:
        request = service.request(number, actor=args.actor, now=now)
        out.write(f"erasure request {request.id} pending (found {json.dumps(request.found)}); "
                  f"another person approves it: vaultpbx recordings erase --approve "
                  f"{request.id}\n")
        return 0
    out.write(json.dumps(service.erase(number, actor=args.actor, now=now).as_dict()) + "\n")
    return 0


def _audited(handler: Handler, audit: AuditOpener | None, slot: _AuditSlot) -> Handler:
    """Run `handler` with the audit log open (and a checkpoint over its records at the end)."""
    if audit is None:
        return handler

    def run(args: argparse.Namespace, data_dir: Path) -> int:
        try:
            log = audit(args, data_dir)
        except Exception as exc:
            print(f"error: cannot open the audit log, nothing done: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return 1
        slot.observer, slot.failures = AuditObserver(log, time.time), []
        try:
            status = handler(args, data_dir)
        finally:
            slot.observer = None
            try:
                log.close(now=time.time())
            except Exception as exc:
                slot.failures.append(f"closing checkpoint: {type(exc).__name__}: {exc}")
        if slot.failures:
            print(f"error: {len(slot.failures)} audit record(s) not written: {slot.failures[0]}",
                  file=sys.stderr)
            return status or 1
        return status

    return run


def _guard(handler: Handler, out: TextIO | None) -> Handler:
    """Turn expected failures into a message on stderr and exit status 1."""

    def run(args: argparse.Namespace, data_dir: Path) -> int:
        try:
            return handler(args, data_dir)
        except RecordingError as exc:
            (out or sys.stderr).write(f"error: {exc}\n")
            return 1

    return run
