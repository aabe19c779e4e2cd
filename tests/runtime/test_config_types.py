"""`check-config` type-checks every field of every section, including those kept as mappings by
the runtime and validated by their own packages (routing, recording, security, media).

The table is every leaf of configs/default.yaml (and of an example that sets every setting those
packages have): each test puts a wrong-typed value into one leaf and runs `vaultpbx check-config`,
which must exit 2 naming that YAML path and its line. A section whose values are taken without a
type check (`security.sessions.lifetime_seconds: forever` once passed) fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from vaultpbx.runtime.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "configs" / "default.yaml"
EVERY_SETTING = Path(__file__).with_name("every_setting.yaml")


def leaves(text: str) -> Iterator[tuple[str, yaml.ScalarNode]]:
    """(dotted YAML path, scalar node) for every scalar value; keys are not leaves."""

    def walk(node: yaml.Node, path: str) -> Iterator[tuple[str, yaml.ScalarNode]]:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                yield from walk(value, f"{path}.{key.value}" if path else key.value)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                yield from walk(item, f"{path}[{i}]")
        else:
            assert isinstance(node, yaml.ScalarNode)
            yield path, node

    yield from walk(yaml.compose(text), "")


def wrong_value(node: yaml.ScalarNode) -> str:
    """A value of the wrong type for what the leaf holds: a word for numbers and booleans,
    a mapping for strings (any scalar reads as a string)."""
    value = yaml.safe_load(yaml.serialize(node))
    if isinstance(value, bool | int | float):
        return '"forever"'
    return "{wrong: type}"


def cases(path: Path) -> list[pytest.param]:
    text = path.read_text()
    return [pytest.param(path, yaml_path, node.start_mark.index, node.end_mark.index,
                         node.start_mark.line + 1, wrong_value(node),
                         id=f"{path.stem}:{yaml_path}")
            for yaml_path, node in leaves(text)]


def test_the_table_covers_every_section() -> None:
    sections = {p.split(".")[0].split("[")[0] for p in [c.values[1] for c in cases(DEFAULT)]}
    assert {"sip", "extensions", "trunks", "queues", "routing", "dialplan", "media",
            "recording", "security", "admin", "logging"} <= sections
    every = {c.values[1] for c in cases(EVERY_SETTING)}
    for path in ("security.sessions.lifetime_seconds", "security.audit.checkpoint_every",
                 "security.anomaly.downloads.max", "security.hooks.budget_ms",
                 "security.floodguard.rate", "security.masking.roles.admin.card[0]",
                 "recording.fsync_every", "media.relatch_idle", "routing.queues.sales.priority",
                 "logging.sip_messages"):
        assert path in every, path


@pytest.mark.parametrize(("config", "yaml_path", "start", "end", "line", "value"),
                         cases(DEFAULT) + cases(EVERY_SETTING))
def test_a_wrong_type_in_any_leaf_is_refused_naming_its_path_and_line(
        config: Path, yaml_path: str, start: int, end: int, line: int, value: str,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = config.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text[:start] + value + text[end:])  # same lines, one value changed
    monkeypatch.chdir(ROOT)  # the shipped config's relative paths (music on hold) resolve
    assert main(["check-config", "-c", str(bad)]) == 2
    error = capsys.readouterr().err
    assert f"{bad}:line {line}: {yaml_path}:" in error, error


def test_the_files_themselves_pass_and_check_config_exits_non_zero_as_a_process(
        tmp_path: Path) -> None:
    for config in (DEFAULT, EVERY_SETTING):
        ok = subprocess.run([sys.executable, "-m", "vaultpbx.runtime.cli", "check-config",
                             "-c", str(config)], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
        assert ok.returncode == 0, ok.stderr
    text = DEFAULT.read_text()
    bad = tmp_path / "forever.yaml"
    forever = "security:\n  sessions: {lifetime_seconds: forever}\n"
    bad.write_text(text.replace("security:\n", forever, 1))
    result = subprocess.run([sys.executable, "-m", "vaultpbx.runtime.cli", "check-config",
                             "-c", str(bad)], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    line = text.splitlines().index("security:") + 2
    assert result.returncode == 2
    assert f"line {line}: security.sessions.lifetime_seconds:" in result.stderr, result.stderr


def test_every_setting_yaml_sets_every_setting_there_is() -> None:
    """A key added to a typed section without a line in every_setting.yaml would escape the
    wrong-type table above: this names it."""
    import dataclasses
    import typing

    from vaultpbx.media.config import MediaConfig
    from vaultpbx.recording.config import KekConfig, RecordingConfig
    from vaultpbx.routing import config as routing
    from vaultpbx.runtime.config import Config
    from vaultpbx.security.config import AuditConfig, HooksConfig, PrivacyConfig, SessionsConfig
    from vaultpbx.security.floodguard import FloodGuardConfig
    from vaultpbx.security.throttle import ThrottleConfig

    def keys(tp: object, path: str) -> typing.Iterator[str]:
        if not (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
            return
        hints = typing.get_type_hints(tp)
        for field in dataclasses.fields(tp):
            child = f"{path}.{field.name}" if path else field.name
            yield child
            hint = hints[field.name]
            args = typing.get_args(hint)
            if typing.get_origin(hint) is list and args:
                yield from keys(args[0], f"{child}[0]")
            elif typing.get_origin(hint) is dict and len(args) == 2:
                yield from keys(args[1], f"{child}.*")
            else:
                yield from keys(hint, child)

    present = set()  # every path and prefix in the file, list items as [0]
    for yaml_path, _ in leaves(EVERY_SETTING.read_text()):
        parts = re.sub(r"\[\d+\]", "[0]", yaml_path).replace("[", ".[").split(".")
        for end in range(1, len(parts) + 1):
            present.add(".".join(parts[:end]).replace(".[", "["))
    wanted = [k for k in keys(Config, "") if not k.startswith(
        ("media.", "recording.", "routing.", "security."))]
    wanted += [f"media.{f.name}" for f in dataclasses.fields(MediaConfig)] + ["media.anchor"]
    wanted += [f"recording.{f.name}" for f in dataclasses.fields(RecordingConfig)]
    wanted += [f"recording.kek.{f.name}" for f in dataclasses.fields(KekConfig)
               if f.name != "pkcs11"]  # a token's settings: a second file would set them
    for name, kind in (("hooks", HooksConfig), ("audit", AuditConfig),
                       ("sessions", SessionsConfig), ("floodguard", FloodGuardConfig),
                       ("login_throttle", ThrottleConfig), ("privacy", PrivacyConfig)):
        wanted += [f"security.{name}.{f.name}" for f in dataclasses.fields(kind)]
    wanted += [f"routing.{k}" for k in routing._ROUTER_KEYS]
    wanted += [f"routing.agents.*.{k}" for k in routing._AGENT_KEYS]
    wanted += [f"routing.queues.*.{k}" for k in routing._QUEUE_KEYS]
    wanted += [f"routing.queues.*.service_level.{k}" for k in routing._SERVICE_LEVEL_KEYS]
    wanted += [f"routing.queues.*.relaxation[0].{k}" for k in routing._STEP_KEYS]
    wanted += [f"routing.queues.*.overflow.{k}" for k in routing._OVERFLOW_KEYS]
    names = {"extensions": "1001", "trunks": "carrier", "queues": "hunt",
             "routing.agents": "1001"}
    missing = []
    for key in wanted:
        options = {key}
        for section, name in names.items():
            options |= {k.replace(f"{section}.*", f"{section}.{name}") for k in options}
        options |= {k.replace("routing.queues.*", f"routing.queues.{q}") for k in options
                    for q in ("sales", "spill")}
        if not options & present:
            missing.append(key)
    assert not missing, f"add to {EVERY_SETTING.name}: {missing}"
