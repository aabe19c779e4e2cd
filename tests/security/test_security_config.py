"""The security: config section parses into typed values and names bad paths."""

from __future__ import annotations

import pytest
from vaultpbx.security.config import SecurityConfig


def test_defaults() -> None:
    cfg = SecurityConfig.from_dict(None)
    assert cfg.hooks.enabled == ("maskers",)
    assert cfg.audit.min_retention_days == 180
    assert cfg.anomaly.download_max == 500
    assert not cfg.access.allows("agent", "recording.export")


def test_full_section() -> None:
    cfg = SecurityConfig.from_dict({
        "hooks": {"enabled": ["maskers", "crm"], "budget_ms": 2},
        "masking": {"roles": {"admin": {"card": [6, 4]}}},
        "audit": {"dir": "/srv/audit", "sink": "/mnt/worm/cp.jsonl"},
        "access": {"roles": {"supervisor": ["calls.monitor"]}},
        "anomaly": {"downloads": {"max": 100, "window_seconds": 60}},
        "floodguard": {"rate": 20, "trusted": ["127.0.0.1/32"]},
    })
    assert cfg.hooks.enabled == ("maskers", "crm") and cfg.audit.dir == "/srv/audit"
    assert cfg.masking["admin"].card == (6, 4)
    assert cfg.anomaly.download_max == 100 and cfg.floodguard.trusted == ("127.0.0.1/32",)


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"audti": {}}, "security: unknown"),
        ({"audit": {"dirr": "x"}}, "security.audit.dirr: unknown"),
        ({"masking": {"roles": {"qa": {"card": "clear"}}}}, "security.masking.roles.qa"),
        ({"access": {"roles": {"agent": ["recording.export"]}}}, "security.access.roles.agent"),
        ({"floodguard": {"rat": 1}}, "security.floodguard"),
    ],
)
def test_errors_name_the_path(data: dict[str, object], path: str) -> None:
    with pytest.raises(ValueError) as info:
        SecurityConfig.from_dict(data)
    assert str(info.value).startswith(path), str(info.value)
