"""`vaultpbx audit ...` commands. The main CLI calls `add_audit_commands(subparsers)`.

Each sub-command sets `func(args) -> int` (the exit status) on the parsed namespace.
`audit verify` with no argument checks the log the configuration (`-c`, default
configs/default.yaml; its built-in defaults when that file is missing) names:
`security.audit.dir`, checked against the outside copies of the checkpoints the configuration
sends them to (the `sink` file, the `http` receiver), under the pinned `public_key`, with
`var/...` meaning the config's `data_dir` as in the engine. `--sink`, `--http` and
`--checkpoints` (lines exported from syslog) name the outside copies instead; `--dir` and
`--public-key` override. Without any outside copy it refuses (exit 1) unless `--local-only`:
a log checked only against itself tells nothing about someone who can write the directory.

`audit_paths` / `open_audit_log` are the engine's mapping from the configuration to the log
(the engine and the commands that write it while the engine runs use the same one).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit import (
    AuditLog,
    CheckpointSink,
    FileSink,
    HttpSink,
    OutsideCopy,
    SyslogSink,
    VerifyReport,
    read_exported_copy,
    read_file_copy,
    read_http_copy,
    verify,
)
from .config import AuditConfig, SecurityConfig

DEFAULT_CONFIG = "configs/default.yaml"
DEFAULT_DATA_DIR = "var"


# -- where the log lives (the engine's rule: `var/...` in the YAML is under data_dir) ---------


def data_path(data_dir: str | Path, configured: str) -> Path:
    path = Path(configured)
    if not path.is_absolute() and path.parts[:1] == ("var",):
        return Path(data_dir).joinpath(*path.parts[1:])
    return path


class OutsideSinkInDataDir(ValueError):
    """An "outside" checkpoint file configured where the data it protects lives."""


@dataclass(frozen=True, slots=True)
class AuditPaths:
    directory: Path
    sink: Path | None
    key_path: Path | None
    names_key_path: Path | None
    config: AuditConfig


def _audit_config(security: SecurityConfig | AuditConfig | Mapping[str, Any] | None) -> AuditConfig:
    if isinstance(security, AuditConfig):
        return security
    if isinstance(security, SecurityConfig):
        return security.audit
    return SecurityConfig.from_dict(security or {}).audit


def _inside(path: Path, directory: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(directory)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def audit_paths(
    data_dir: str | Path, security: SecurityConfig | AuditConfig | Mapping[str, Any] | None = None
) -> AuditPaths:
    """The audit directory, outside sink and key files for a data dir and `security:` section.

    Raises OutsideSinkInDataDir when the sink file is under data_dir or the audit directory:
    whoever can rewrite the log there can rewrite that copy too, so it would vouch for nothing.
    """
    audit = _audit_config(security)
    directory = data_path(data_dir, audit.dir)
    sink = data_path(data_dir, audit.sink) if audit.sink else None
    if sink is not None:
        for protected in (Path(data_dir), directory):
            if _inside(sink, protected):
                raise OutsideSinkInDataDir(
                    f"security.audit.sink: {sink} is inside {protected}: an outside copy of the "
                    f"checkpoints must live where whoever can write the data directory cannot "
                    f"(another disk, an append-only mount, a directory beside data_dir)")
    return AuditPaths(
        directory=directory,
        sink=sink,
        key_path=data_path(data_dir, audit.key_path) if audit.key_path else None,
        names_key_path=data_path(data_dir, audit.names_key_path) if audit.names_key_path
        else None,
        config=audit,
    )


def build_sinks(paths: AuditPaths) -> list[CheckpointSink]:
    audit = paths.config
    sinks: list[CheckpointSink] = []
    if paths.sink is not None:
        sinks.append(FileSink(paths.sink))
    if audit.syslog:
        sinks.append(SyslogSink(audit.syslog))
    if audit.http:
        sinks.append(HttpSink(audit.http, timeout=audit.http_timeout))
    return sinks


def open_audit_log(
    data_dir: str | Path,
    security: SecurityConfig | AuditConfig | Mapping[str, Any] | None = None,
    **options: Any,
) -> AuditLog:
    """Open the audit log as the engine does (safe while the engine has it open too)."""
    paths = audit_paths(data_dir, security)
    audit = paths.config
    return AuditLog(
        paths.directory,
        sinks=build_sinks(paths),
        key_path=paths.key_path,
        public_key=audit.public_key,
        names_key_path=paths.names_key_path,
        checkpoint_every=audit.checkpoint_every,
        checkpoint_interval=audit.checkpoint_interval,
        max_field_chars=audit.max_field_chars,
        min_retention=audit.min_retention_days * 86400,
        **options,
    )


# -- audit verify -----------------------------------------------------------------------------


def add_audit_commands(subparsers: Any) -> argparse.ArgumentParser:
    audit = subparsers.add_parser("audit", help="audit log tools")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    check = commands.add_parser(
        "verify",
        help="check the audit log chain, Merkle roots and signed checkpoints",
        description="Exit 0 when intact; otherwise print and exit 1 naming the first bad record "
                    "or checkpoint. The checkpoints that count are the outside copies.",
    )
    check.add_argument("-c", "--config", default=argparse.SUPPRESS,
                       help=f"YAML configuration naming the log (default {DEFAULT_CONFIG})")
    check.add_argument("--dir", dest="audit_dir", default=None,
                       help="audit log directory (default: the configuration's)")
    check.add_argument("--sink", dest="audit_sinks", action="append", default=None,
                       metavar="FILE", help="an outside checkpoint file (repeatable; default: "
                                            "the configuration's security.audit.sink)")
    check.add_argument("--http", dest="audit_http", action="append", default=None,
                       metavar="URL", help="an HTTP receiver's stored checkpoints (default: "
                                           "the configuration's security.audit.http)")
    check.add_argument("--checkpoints", dest="audit_exported", action="append", default=None,
                       metavar="FILE", help="checkpoint lines exported from a syslog store")
    check.add_argument("--public-key", dest="audit_public_key", default=None,
                       help="pinned Ed25519 public key (hex) to trust (default: the "
                            "configuration's security.audit.public_key)")
    check.add_argument("--max-lag", dest="audit_max_lag", type=float, default=None,
                       metavar="SECONDS",
                       help="a record older than this that an outside copy does not cover is "
                            "a failure (default: checkpoint_interval + verify_grace; 0 for a "
                            "stopped engine, whose last checkpoint covers everything)")
    check.add_argument("--local-only", dest="audit_local_only", action="store_true",
                       help="check without any outside copy (proves nothing against someone "
                            "who can write the log directory)")
    check.set_defaults(func=run_verify, handler=run_verify)  # runtime/cli.py calls `handler`
    return audit


def _configured_paths(args: argparse.Namespace) -> AuditPaths | int:
    """The paths the configuration (or, without a file, the defaults) names; 2 if it is bad."""
    config = getattr(args, "config", None)
    try:
        if config is None or (config == DEFAULT_CONFIG and not Path(config).exists()):
            return audit_paths(DEFAULT_DATA_DIR, AuditConfig())
        from ..runtime.config import ConfigError, load_config

        try:
            loaded = load_config(config).config
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return audit_paths(loaded.data_dir, loaded.security)
    except ValueError as exc:
        print(f"vaultpbx: configuration error: {exc}", file=sys.stderr)
        return 2


def _outside_copies(args: argparse.Namespace, paths: AuditPaths) -> list[OutsideCopy] | str:
    """The outside copies to check against, or why there are none."""
    audit = paths.config
    sinks = getattr(args, "audit_sinks", None) or []
    urls = getattr(args, "audit_http", None) or []
    exported = getattr(args, "audit_exported", None) or []
    copies: list[OutsideCopy] = []
    if sinks or urls or exported:
        copies += [read_file_copy(path) for path in sinks]
        copies += [read_http_copy(url, timeout=audit.http_timeout) for url in urls]
        copies += [read_exported_copy(path) for path in exported]
        return copies
    return configured_copies(audit, paths.sink)


def configured_copies(audit: AuditConfig, sink: Path | None) -> list[OutsideCopy] | str:
    """The outside copies the configuration names (file sink, HTTP receiver), read now; or why
    there is none to check against."""
    copies: list[OutsideCopy] = []
    if sink is not None:
        copies.append(read_file_copy(sink))
    if audit.http:
        copies.append(read_http_copy(audit.http, timeout=audit.http_timeout))
    if copies:
        return copies
    if audit.syslog:
        return (f"the checkpoints go to syslog only ({audit.syslog}), which cannot be read "
                f"back: export the collector's lines and pass them with --checkpoints FILE")
    return ("no outside copy of the checkpoints is configured (security.audit.sink or .http) "
            "or given (--sink, --http, --checkpoints): a log checked against itself proves "
            "nothing against whoever can write its directory (--local-only to do it anyway)")


def verify_configured(directory: Path, audit: AuditConfig, sink: Path | None, *,
                      now: float) -> VerifyReport | str:
    """What `vaultpbx audit verify` checks with no overriding options: the log against the
    configured outside copies, the pinned key and the allowed lag; or why it cannot be verified
    (no outside copy). The admin API's `GET /audit/verify` answers with this."""
    copies = configured_copies(audit, sink)
    if isinstance(copies, str):
        return copies
    return verify(directory, public_key=audit.public_key, outside=copies, now=now,
                  max_lag=audit.checkpoint_interval + audit.verify_grace)


def run_verify(args: argparse.Namespace) -> int:
    paths = _configured_paths(args)
    if isinstance(paths, int):
        return paths
    directory_arg = getattr(args, "audit_dir", None)
    directory = Path(directory_arg) if directory_arg is not None else paths.directory
    copies = _outside_copies(args, paths)
    if isinstance(copies, str):
        if not getattr(args, "audit_local_only", False):
            print(f"audit log NOT verified: {copies}", file=sys.stderr)
            return 1
        copies = []
    if not directory.is_dir() and not any(c.error is None and c.lines for c in copies):
        print(f"audit log directory {directory} does not exist", file=sys.stderr)
        return 2
    audit = paths.config
    max_lag = getattr(args, "audit_max_lag", None)
    if max_lag is None:
        max_lag = audit.checkpoint_interval + audit.verify_grace
    public_key = getattr(args, "audit_public_key", None) or audit.public_key
    report = verify(directory, public_key=public_key, outside=copies, now=time.time(),
                    max_lag=max_lag)
    if report.ok:
        print(report.summary())
        return 0
    print(report.summary(), file=sys.stderr)
    others = [p for p in report.problems if p is not report.first_bad]
    for problem in others[:10]:
        print(f"  also: {problem}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vaultpbx")
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
