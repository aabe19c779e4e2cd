"""CSV exports of call records and queue events, for the CLI (`vaultpbx cdr export`) and the
admin API (`GET /cdr.csv`, `GET /queue-events.csv`). Columns and their meanings: docs/cdr.md.

Invariants:
- Personal data leaves only as the asking role may see it: every cell that can hold text from
  outside goes through the role's mask policy (the configured TextMasker), the party cells
  (caller, callee, transfers) also have every run of 7+ digits masked as a phone number (as
  the API's /calls does), then any plug-in maskers of the hook registry. Only cells the engine
  writes itself from times, numbers, its own ids and fixed vocabularies (`GENERATED`) skip the
  maskers. The store is read as it is; nothing is masked at write time.
- Every export leaves one audit record (who, which table, the range, the queue, the role, how
  many rows) *before* any row leaves: if the audit record cannot be written, nothing is
  exported.
- A cell a spreadsheet would run as a formula (=, @, tab, CR, or + / - not followed by a
  plain number) is prefixed with an apostrophe (OWASP "CSV injection"); numbers such as
  +8613800000000 are left as they are.
- Time ranges are half-open [from, to) in UTC Unix seconds; text times are ISO 8601, with a
  zone or offset, or in UTC when they have none.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import io
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..hooks.maskers import DEFAULT_MASKER, ROLES, TextMasker, mask_phone_number
from ..hooks.registry import HookPoint, HookRegistry

KINDS = ("calls", "queue_events")

CALL_COLUMNS: tuple[str, ...] = (
    "call_id", "start_utc", "answer_utc", "end_utc", "timezone", "start_local", "queue",
    "queue_entered_utc", "wait_seconds", "agent", "talk_seconds", "hold_seconds",
    "wrap_up_seconds", "transfers", "recording_id", "disposition", "consent", "caller",
    "callee", "route_kind", "route_name", "cause", "status", "ended_by",
)
EVENT_COLUMNS: tuple[str, ...] = (
    "time", "time_utc", "call_id", "queue", "agent", "event", "data1", "data2", "data3",
    "data4", "data5",
)
PARTY_COLUMNS = frozenset({"caller", "callee", "transfers"})
# Cells made by the engine from times, numbers, its own random ids and fixed vocabularies: no
# personal data can be in them, so they skip the maskers (which were 2/3 of an export's time).
GENERATED = frozenset({
    "call_id", "start_utc", "answer_utc", "end_utc", "timezone", "start_local",
    "queue_entered_utc", "wait_seconds", "talk_seconds", "hold_seconds", "wrap_up_seconds",
    "recording_id", "disposition", "consent", "route_kind", "status", "ended_by", "time",
    "time_utc", "event",
})

_DIGIT_RUN = re.compile(r"\+?\d{7,}")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
_FORMULA_START = ("=", "@", "\t", "\r", "+", "-")


API_MAX_ROWS = 10_000
"""Most rows one API export may hold. The admin API still runs on the signalling process's
event loop, and reading, masking and rendering run at ~10k rows/s (bench/results/cdr.md): the
cap bounds that pause to about a second. The CLI, a process of its own, has no cap."""


class TooManyRows(ValueError):
    """The range holds more rows than the export may carry; nothing was exported."""


class CdrReportSource(Protocol):
    def calls_between(self, start: float, end: float, queue: str | None = None,
                      limit: int = -1) -> list[dict[str, object]]: ...

    def queue_events_between(self, start: float, end: float, queue: str | None = None,
                             limit: int = -1) -> list[dict[str, object]]: ...


# An audit writer: (actor, action, target, details) -> None; raises if it could not write.
AuditWriter = Callable[[str, str, str, Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Export:
    body: bytes
    rows: int


# -- times ---------------------------------------------------------------------------------------


def parse_instant(text: str) -> float:
    """ISO 8601 date or date-time to Unix seconds (no zone or offset: UTC)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_range(start: str, end: str) -> tuple[float, float]:
    low, high = parse_instant(start), parse_instant(end)
    if high <= low:
        raise ValueError("the end of the range must be after its start")
    return low, high


def iso_utc(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return ""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _zone(name: object) -> tzinfo:
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def iso_local(seconds: object, zone: object) -> str:
    if not isinstance(seconds, int | float):
        return ""
    return datetime.fromtimestamp(seconds, _zone(zone)).isoformat(timespec="milliseconds")


# -- rows ----------------------------------------------------------------------------------------


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def _seconds(value: object) -> str:
    """A duration with millisecond precision, as stored times are shown."""
    if not isinstance(value, int | float):
        return ""
    return f"{value:.3f}"


def call_cells(row: Mapping[str, object]) -> dict[str, str]:
    """A stored call row as the CSV shows it (times in UTC, and local in the row's zone)."""
    return {
        "call_id": _cell(row["call_id"]), "start_utc": iso_utc(row["started"]),
        "answer_utc": iso_utc(row["answered"]), "end_utc": iso_utc(row["ended"]),
        "timezone": _cell(row["timezone"]),
        "start_local": iso_local(row["started"], row["timezone"]),
        "queue": _cell(row["queue"]), "queue_entered_utc": iso_utc(row["queue_entered"]),
        "wait_seconds": _seconds(row["wait_seconds"]), "agent": _cell(row["agent"]),
        "talk_seconds": _seconds(row["talk_seconds"]),
        "hold_seconds": _seconds(row["hold_seconds"]),
        "wrap_up_seconds": _seconds(row["wrap_up_seconds"]),
        "transfers": _cell(row["transfers"]), "recording_id": _cell(row["recording_id"]),
        "disposition": _cell(row["disposition"]), "consent": _cell(row["consent"]),
        "caller": _cell(row["caller"]), "callee": _cell(row["callee"]),
        "route_kind": _cell(row["route_kind"]), "route_name": _cell(row["route_name"]),
        "cause": _cell(row["cause"]), "status": _cell(row["status"]),
        "ended_by": _cell(row["ended_by"]),
    }


def event_cells(row: Mapping[str, object]) -> dict[str, str]:
    moment = row["time"]
    return {
        # Asterisk's queue_log time is whole Unix seconds; the UTC column keeps milliseconds.
        "time": str(int(moment)) if isinstance(moment, int | float) else "",
        "time_utc": iso_utc(moment),
        **{name: _cell(row[name]) for name in EVENT_COLUMNS[2:]},
    }


class RowMasker:
    """What a role may see of an exported row (see the module's invariants)."""

    __slots__ = ("masker", "hooks")

    def __init__(self, masker: TextMasker, hooks: HookRegistry | None = None) -> None:
        self.masker = masker
        self.hooks = hooks

    def mask(self, cells: Mapping[str, str], role: str) -> dict[str, str]:
        policy = self.masker.policy_for(role)
        plugins = self.hooks is not None and self.hooks.has_masker_other_than(DEFAULT_MASKER)
        out: dict[str, str] = {}
        for key, value in cells.items():
            if value and key not in GENERATED:
                value = self.masker.mask_text(value, role)
                if key in PARTY_COLUMNS:
                    value = _DIGIT_RUN.sub(lambda m: mask_phone_number(m.group(0), policy),
                                           value)
                if plugins:
                    assert self.hooks is not None
                    value = self.hooks.mask("cdr", value, role, skip=DEFAULT_MASKER)
            out[key] = value
        return out


def _defuse(value: str) -> str:
    if value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def render_csv(columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_defuse(row[name]) for name in columns])
    return buffer.getvalue().encode("utf-8")


def export_csv(
    source: CdrReportSource, *, kind: str, start: float, end: float, queue: str | None,
    role: str, actor: str, via: str, masker: RowMasker, audit: AuditWriter,
    max_rows: int | None = None,
) -> Export:
    """The CSV of `kind` ("calls" or "queue_events") in [start, end), masked for `role`,
    audited as `actor` before it is returned. More than `max_rows` rows: `TooManyRows`."""
    limit = -1 if max_rows is None else max_rows + 1
    if kind == "calls":
        columns, read = CALL_COLUMNS, source.calls_between(start, end, queue, limit)
        cells = [call_cells(r) for r in read]
    elif kind == "queue_events":
        columns, read = EVENT_COLUMNS, source.queue_events_between(start, end, queue, limit)
        cells = [event_cells(r) for r in read]
    else:
        raise ValueError(f"unknown export {kind!r} (expected one of {', '.join(KINDS)})")
    if max_rows is not None and len(cells) > max_rows:
        raise TooManyRows(f"more than {max_rows} rows: narrow the range or the queue, or use "
                          "`vaultpbx cdr export`")
    body = render_csv(columns, [masker.mask(row, role) for row in cells])
    audit(actor, "cdr.export", kind, {
        "from": iso_utc(start), "to": iso_utc(end), "queue": queue, "rows": len(cells),
        "role": role, "via": via, "format": "csv"})
    return Export(body=body, rows=len(cells))


def hook_audit(hooks: HookRegistry) -> AuditWriter:
    """Audit through the DATA_EXPORT hook point (the engine's audit observer writes it). The
    registry isolates observer failures; a failure counted during this call raises here, so
    the export is refused rather than made without its trace."""
    def write(actor: str, action: str, target: str, details: Mapping[str, Any]) -> None:
        errors = hooks.errors
        hooks.notify(HookPoint.DATA_EXPORT, {"actor": actor, "action": action,
                                             "target": target, "details": dict(details)})
        if hooks.errors != errors:
            raise RuntimeError("the export's audit record could not be written")
    return write


# -- the `vaultpbx cdr export` command -----------------------------------------------------------


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def add_cdr_commands(subparsers: Any) -> None:
    """`vaultpbx cdr export --from T --to T [--queue Q] [--events] -o FILE [--role ROLE]`.
    The handler takes (args, data_dir) and reads `args.engine_config` (see runtime/cli.py)."""
    cdr = subparsers.add_parser("cdr", help="call records and queue events")
    commands = cdr.add_subparsers(dest="cdr_command", required=True)
    p = commands.add_parser(
        "export", help="write call records (or, with --events, queue events) as CSV",
        description="Rows in [--from, --to), masked for --role; one audit record per export.")
    p.add_argument("--from", dest="start", required=True,
                   help="ISO 8601 date or time (UTC unless it has a zone or offset)")
    p.add_argument("--to", dest="end", required=True, help="end of the range (excluded)")
    p.add_argument("--queue", default=None, help="only this queue")
    p.add_argument("--events", action="store_true",
                   help="queue events (queue_log) instead of call records")
    p.add_argument("-o", "--output", required=True, help="CSV file to write (created 0600)")
    p.add_argument("--role", default="admin", choices=[r for r in ROLES if r != "system"],
                   help="role the personal data is masked for (default admin)")
    p.add_argument("--actor", default=_default_actor(), help="who is asking (audited)")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace, data_dir: Path) -> int:
    from ..hooks.builtins import register_builtins
    from ..recording.cli import open_store
    from ..recording.config import RecordingConfig
    from ..recording.kek import open_kek
    from ..security.cli import open_audit_log
    from ..security.config import SecurityConfig
    from .cdr import CdrStore

    try:
        start, end = parse_range(args.start, args.end)
    except ValueError as exc:
        print(f"vaultpbx: {exc}", file=sys.stderr)
        return 2
    path = data_dir / "cdr.db"
    if not path.exists():
        print(f"vaultpbx: no call records at {path}", file=sys.stderr)
        return 1
    config = getattr(args, "engine_config", None)
    security = SecurityConfig.from_dict(getattr(config, "security", None) or {})
    hooks = HookRegistry()
    register_builtins(hooks)
    hooks.enable(security.hooks.enabled)
    try:
        log = open_audit_log(data_dir, security)
    except Exception as exc:
        print(f"vaultpbx: cannot open the audit log, nothing exported: {exc}", file=sys.stderr)
        return 1

    def audit(actor: str, action: str, target: str, details: Mapping[str, Any]) -> None:
        log.append(actor=actor, action=action, target=target, details=details, now=time.time())

    try:
        # The parties' numbers are sealed per caller under keys the KEK wraps: the export opens
        # the keystore with the KEK the engine uses (`recording.kek`), masks, then writes.
        kek = open_kek(RecordingConfig.from_dict(getattr(config, "recording", None) or {}).kek,
                       data_dir)
        keystore = open_store(data_dir, kek=kek, country=security.privacy.default_country)
    except Exception as exc:
        log.close(now=time.time())
        print(f"vaultpbx: cannot open the keystore, nothing exported: {exc}", file=sys.stderr)
        return 1
    store = CdrStore(path, keystore.subjects,
                     timezone=getattr(getattr(config, "cdr", None), "timezone", "UTC"))
    try:
        result = export_csv(store, kind="queue_events" if args.events else "calls",
                            start=start, end=end, queue=args.queue, role=args.role,
                            actor=args.actor, via="cli",
                            masker=RowMasker(TextMasker(
                                security.masking, country=security.privacy.default_country),
                                hooks),
                            audit=audit)
    except Exception as exc:
        print(f"vaultpbx: export failed, nothing written: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    finally:
        store.close()
        keystore.close()
        kek.close()
        log.close(now=time.time())
    try:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # also when the file existed with a wider mode
            out.write(result.body)
    except OSError as exc:
        print(f"vaultpbx: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"{args.output}: {result.rows} rows")
    return 0
