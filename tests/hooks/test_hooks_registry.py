"""Hook registry: named plug-ins, isolation of failing and slow plug-ins, counters."""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint

import pytest
from vaultpbx.hooks import maskers, registry
from vaultpbx.hooks.registry import HOOK_POINTS, HookPoint, HookRegistry, PluginNotFound


class FakeClock:
    def __init__(self) -> None:
        self.ns = 0
        self.step = 1000

    def __call__(self) -> int:
        self.ns += self.step
        return self.ns


def test_identity_without_plugins() -> None:
    reg = HookRegistry()
    assert reg.mask("phone", "13812345678", "agent") == "13812345678"
    reg.notify(HookPoint.LOGIN, {"actor": "x"})
    assert reg.counters() == {"hooks_errors_total": 0}


def test_points_marked_modifying_or_read_only() -> None:
    assert HOOK_POINTS[HookPoint.LOG_RECORD].may_modify
    assert not HOOK_POINTS[HookPoint.LOGIN].may_modify
    assert set(HOOK_POINTS) == set(HookPoint)


def test_builtin_masker_plugin_enabled_by_name() -> None:
    reg = HookRegistry()
    reg.register_builtin("maskers", maskers.setup)
    assert reg.mask("uri", "sip:13812345678@h", "agent") == "sip:13812345678@h"
    reg.enable(["maskers"])
    assert reg.mask("uri", "sip:13812345678@h", "agent") == "sip:138****5678@h"
    assert reg.counters()["hooks_maskers_calls"] == 2 - 1


def test_unknown_plugin_is_a_config_error() -> None:
    with pytest.raises(PluginNotFound, match="nope"):
        HookRegistry().enable(["nope"])


def plugin_upper(reg: HookRegistry) -> None:
    reg.add_masker(lambda kind, value, role: value.upper())


def test_entry_point_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(
        name="upper", value=f"{__name__}:plugin_upper", group=registry.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep])
    reg = HookRegistry()
    assert reg.available() == {"upper": f"{__name__}:plugin_upper"}
    reg.enable(["upper"])
    assert reg.mask("text", "abc") == "ABC"
    assert reg.counters()["hooks_upper_calls"] == 1


def test_plugin_whose_setup_raises_is_disabled_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    reg = HookRegistry()

    def broken(_: HookRegistry) -> None:
        raise RuntimeError("boom")

    reg.register_builtin("broken", broken)
    with caplog.at_level(logging.WARNING, "vaultpbx.hooks"):
        reg.enable(["broken"])
    assert reg.counters()["hooks_broken_disabled"] == 1
    assert "broken disabled" in caplog.text


def test_raising_plugin_isolated_counted_then_disabled(caplog: pytest.LogCaptureFixture) -> None:
    reg = HookRegistry(max_strikes=3)
    seen: list[object] = []

    def bad_masker(kind: str, value: str, role: str) -> str:
        raise ValueError("bad")

    def bad_observer(point: HookPoint, event: object) -> None:
        raise ValueError("bad")

    reg.add_masker(bad_masker, name="bad")
    reg.add_observer(HookPoint.LOGIN, bad_observer, name="bad_obs")
    reg.add_observer(HookPoint.LOGIN, lambda p, e: seen.append(e), name="good")
    with caplog.at_level(logging.WARNING, "vaultpbx.hooks"):
        for i in range(5):
            assert reg.mask("text", "v") == "v"
            reg.notify(HookPoint.LOGIN, i)
    assert seen == [0, 1, 2, 3, 4]
    counters = reg.counters()
    assert counters["hooks_bad_errors"] == 3 and counters["hooks_bad_disabled"] == 1
    assert counters["hooks_bad_obs_errors"] == 3 and counters["hooks_good_errors"] == 0
    assert counters["hooks_errors_total"] == 6
    assert caplog.text.count("disabled") == 2


def test_masker_returning_non_string_is_ignored() -> None:
    reg = HookRegistry()
    reg.add_masker(lambda k, v, r: None, name="none")  # type: ignore[arg-type, return-value]
    assert reg.mask("text", "v") == "v"
    assert reg.counters()["hooks_none_errors"] == 1


def test_slow_plugin_gets_strikes_then_disabled() -> None:
    clock = FakeClock()
    reg = HookRegistry(budget_seconds=0.001, max_strikes=2, clock_ns=clock)
    reg.add_observer(HookPoint.LOGIN, lambda p, e: None, name="slow")
    clock.step = 2_000_000  # every call appears to take 2 ms
    for _ in range(4):
        reg.notify(HookPoint.LOGIN, None)
    stats = reg.stats("slow")
    assert stats.slow == 2 and stats.disabled and stats.calls == 2


def test_register_builtins() -> None:
    from vaultpbx.hooks.builtins import register_builtins

    reg = register_builtins(HookRegistry())
    assert reg.available()["maskers"] == "builtin"
    reg.enable(["maskers"])
    assert reg.mask("text", "card 4111111111111111", "qa") == "card 4111********1111"


def test_registry_log_processor_always_masks_and_runs_plugins_once() -> None:
    from vaultpbx.hooks.builtins import register_builtins

    reg = register_builtins(HookRegistry())
    out = reg.log_processor(None, "info", {"event": "from 13812345678", "password": "x"})
    assert out == {"event": "from 138****5678", "password": "[redacted]"}
    reg.enable(["maskers"])
    reg.add_masker(lambda k, v, r: v.replace("from", "FROM"), name="shout")
    out = reg.log_processor(None, "info", {"event": "from 13812345678"})
    assert out == {"event": "FROM 138****5678"}
    assert reg.counters()["hooks_maskers_calls"] == 0  # built-in not applied twice
