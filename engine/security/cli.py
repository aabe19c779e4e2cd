"""`vaultpbx audit ...` commands. The main CLI calls `add_audit_commands(subparsers)`.

Each sub-command sets `func(args) -> int` (the exit status) on the parsed namespace.
`audit verify` with no argument checks var/audit against the outside checkpoint copy
var/audit-checkpoints.jsonl when it exists; `--dir`, `--sink` and `--public-key` override.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .audit import verify

DEFAULT_DIR = "var/audit"
DEFAULT_SINK = "var/audit-checkpoints.jsonl"


def add_audit_commands(subparsers: Any) -> argparse.ArgumentParser:
    audit = subparsers.add_parser("audit", help="audit log tools")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    check = commands.add_parser(
        "verify",
        help="check the audit log chain, Merkle roots and signed checkpoints",
        description="Exit 0 when intact; otherwise print and exit 1 naming the first bad record.",
    )
    check.add_argument("--dir", dest="audit_dir", default=DEFAULT_DIR)
    check.add_argument("--sink", dest="audit_sink", default=None,
                       help=f"outside checkpoint file (default {DEFAULT_SINK} if present)")
    check.add_argument("--public-key", dest="audit_public_key", default=None,
                       help="pinned Ed25519 public key (hex) to trust")
    check.set_defaults(func=run_verify, handler=run_verify)  # runtime/cli.py calls `handler`
    return audit


def run_verify(args: argparse.Namespace) -> int:
    directory = Path(getattr(args, "audit_dir", None) or DEFAULT_DIR)
    sink = getattr(args, "audit_sink", None)
    if sink is None and Path(DEFAULT_SINK).exists():
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
