"""`vaultpbx audit ...` commands. The main CLI calls `add_audit_commands(subparsers)`.

Each sub-command sets `func(args) -> int` (the exit status) on the parsed namespace.
`audit verify` with no argument checks the log the configuration (`-c`, default
configs/default.yaml) names: `security.audit.dir` and its outside copy `security.audit.sink`, with
`var/...` meaning the config's `data_dir` as in the engine. Without a configuration file it checks
var/audit against var/audit-checkpoints.jsonl when that exists. `--dir`, `--sink` and
`--public-key` override.

`audit_paths` / `open_audit_log` are the engine's mapping from the configuration to the log, for
the other commands that write it while the engine runs (the recording and key commands).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit import AuditLog, FileSink, verify
from .config import AuditConfig, SecurityConfig

DEFAULT_DIR = "var/audit"
DEFAULT_SINK = "var/audit-checkpoints.jsonl"
DEFAULT_CONFIG = "configs/default.yaml"


# -- where the log lives (the engine's rule: `var/...` in the YAML is under data_dir) ---------


def data_path(data_dir: str | Path, configured: str) -> Path:
    path = Path(configured)
    if not path.is_absolute() and path.parts[:1] == ("var",):
        return Path(data_dir).joinpath(*path.parts[1:])
    return path


@dataclass(frozen=True, slots=True)
class AuditPaths:
    directory: Path
    sink: Path | None
    key_path: Path | None


def _audit_config(security: SecurityConfig | AuditConfig | Mapping[str, Any] | None) -> AuditConfig:
    if isinstance(security, AuditConfig):
        return security
    if isinstance(security, SecurityConfig):
        return security.audit
    return SecurityConfig.from_dict(security or {}).audit


def audit_paths(
    data_dir: str | Path, security: SecurityConfig | AuditConfig | Mapping[str, Any] | None = None
) -> AuditPaths:
    """The audit directory, outside sink and key file for a data dir and `security:` section."""
    audit = _audit_config(security)
    return AuditPaths(
        directory=data_path(data_dir, audit.dir),
        sink=data_path(data_dir, audit.sink) if audit.sink else None,
        key_path=data_path(data_dir, audit.key_path) if audit.key_path else None,
    )


def open_audit_log(
    data_dir: str | Path,
    security: SecurityConfig | AuditConfig | Mapping[str, Any] | None = None,
    **options: Any,
) -> AuditLog:
    """Open the audit log as the engine does (safe while the engine has it open too)."""
    audit = _audit_config(security)
    paths = audit_paths(data_dir, audit)
    return AuditLog(
        paths.directory,
        sinks=[FileSink(paths.sink)] if paths.sink else [],
        key_path=paths.key_path,
        checkpoint_every=audit.checkpoint_every,
        checkpoint_interval=audit.checkpoint_interval,
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
        description="Exit 0 when intact; otherwise print and exit 1 naming the first bad record.",
    )
    check.add_argument("-c", "--config", default=argparse.SUPPRESS,
                       help=f"YAML configuration naming the log (default {DEFAULT_CONFIG})")
    check.add_argument("--dir", dest="audit_dir", default=None,
                       help="audit log directory (default: the configuration's, else "
                            f"{DEFAULT_DIR})")
    check.add_argument("--sink", dest="audit_sink", default=None,
                       help="outside checkpoint file (default: the configuration's, else "
                            f"{DEFAULT_SINK} if present)")
    check.add_argument("--public-key", dest="audit_public_key", default=None,
                       help="pinned Ed25519 public key (hex) to trust")
    check.set_defaults(func=run_verify, handler=run_verify)  # runtime/cli.py calls `handler`
    return audit


def _configured_paths(args: argparse.Namespace) -> AuditPaths | None | int:
    """The paths the configuration names; None without one; 2 (exit status) if it is bad."""
    config = getattr(args, "config", None)
    if config is None or (config == DEFAULT_CONFIG and not Path(config).exists()):
        return None
    from ..runtime.config import ConfigError, load_config

    try:
        loaded = load_config(config).config
        return audit_paths(loaded.data_dir, loaded.security)
    except (ConfigError, ValueError) as exc:
        print(f"vaultpbx: configuration error: {exc}", file=sys.stderr)
        return 2


def run_verify(args: argparse.Namespace) -> int:
    directory_arg = getattr(args, "audit_dir", None)
    sink = getattr(args, "audit_sink", None)
    configured = None
    if directory_arg is None:
        configured = _configured_paths(args)
        if isinstance(configured, int):
            return configured
    if directory_arg is not None:
        directory = Path(directory_arg)
    else:
        directory = configured.directory if configured is not None else Path(DEFAULT_DIR)
    if sink is None:
        if configured is not None:
            if configured.sink is not None and configured.sink.exists():
                sink = str(configured.sink)
        elif Path(DEFAULT_SINK).exists():
            sink = DEFAULT_SINK
    if not directory.is_dir():
        print(f"audit log directory {directory} does not exist", file=sys.stderr)
        return 2
    report = verify(directory, sink, public_key=getattr(args, "audit_public_key", None))
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
