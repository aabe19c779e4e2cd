"""The `vaultpbx` command: run, check-config, version (and the recording/audit commands)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .. import __version__
from ..recording.errors import RecordingError
from .config import ConfigError, load_config

DEFAULT_CONFIG = "configs/default.yaml"


def _run(args: argparse.Namespace) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        uvloop = None
    from ..recording.keystore import KeystoreSchemaError
    from .app import serve
    from .cdr import CdrSchemaError

    try:
        if uvloop is not None:
            return uvloop.run(serve(args.config))
        return asyncio.run(serve(args.config))
    except ConfigError as exc:
        print(f"vaultpbx: configuration error: {exc}", file=sys.stderr)
        return 2
    except (OSError, KeystoreSchemaError, CdrSchemaError) as exc:
        print(f"vaultpbx: cannot start: {exc}", file=sys.stderr)
        return 1
    except RecordingError as exc:  # a missing KEK: the message says what to restore
        print(f"vaultpbx: cannot start: {exc}", file=sys.stderr)
        return 1


def _check_config(args: argparse.Namespace) -> int:
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"vaultpbx: configuration error: {exc}", file=sys.stderr)
        return 2
    config = loaded.config
    from ..recording.config import RecordingConfig, kek_warnings

    for warning in kek_warnings(RecordingConfig.from_dict(config.recording), config.data_dir):
        line = loaded.lines.line_of(warning.split(":", 1)[0])
        print(f"warning: {args.config}:{f'line {line}: ' if line else ''}{warning}",
              file=sys.stderr)
    print(f"{args.config}: OK ({len(config.extensions)} extensions, {len(config.trunks)} trunks,"
          f" {len(config.dialplan)} dialplan rules, {len(config.queues)} queues)")
    return 0


def _version(args: argparse.Namespace) -> int:
    print(f"vaultpbx {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaultpbx", description=__doc__)
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"YAML configuration (default {DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, handler, text in (
        ("run", _run, "run the engine"),
        ("check-config", _check_config, "validate the configuration and exit"),
        ("version", _version, "print the version"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("-c", "--config", default=argparse.SUPPRESS,
                       help=f"YAML configuration (default {DEFAULT_CONFIG})")
        p.set_defaults(handler=handler)
    from ..recording.cli import add_recording_commands
    from ..security.cli import add_audit_commands

    before = set(sub.choices)
    add_recording_commands(sub)
    for name in set(sub.choices) - before:
        # Recording commands take the data directory the configuration names.
        _with_data_dir(sub.choices[name])
    add_audit_commands(sub)
    from .cdr_export import add_cdr_commands

    add_cdr_commands(sub)
    _with_data_dir(sub.choices["cdr"])
    from .backup_cli import add_backup_commands

    add_backup_commands(sub)
    return parser


def _with_data_dir(command: argparse.ArgumentParser) -> None:
    subcommands = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
    targets = [p for action in subcommands for p in action.choices.values()] or [command]
    for target in targets:
        handler = target.get_default("handler")
        if handler is None:
            continue
        try:
            target.add_argument("-c", "--config", default=argparse.SUPPRESS,
                                help=f"YAML configuration (default {DEFAULT_CONFIG})")
        except argparse.ArgumentError:
            pass  # the command defines its own -c

        def with_dir(args: argparse.Namespace, _handler=handler) -> int:  # type: ignore[no-untyped-def]
            try:
                config = load_config(args.config).config
            except ConfigError as exc:
                print(f"vaultpbx: configuration error: {exc}", file=sys.stderr)
                return 2
            from pathlib import Path

            args.engine_config = config  # the commands audit where security.audit says
            result: int = _handler(args, Path(config.data_dir))
            return result

        target.set_defaults(handler=with_dir)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.handler is not _run:
        # Commands other than `run` (which sets up its own) log through the same maskers: a
        # standard-library warning from the audit or key code must not print clear numbers.
        from ..hooks.registry import HookRegistry
        from .logs import configure_logging

        configure_logging("warning", HookRegistry())
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
