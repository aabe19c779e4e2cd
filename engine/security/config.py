"""The `security:` section of the YAML config, typed once at load time.

  security:
    hooks:      {enabled: [maskers], budget_ms: 5, max_strikes: 5}
    masking:    {roles: {admin: {resident_id: [6, 4], card: [6, 4]}, supervisor: {phone: clear}}}
    audit:      {dir: var/audit, sink: var/audit-checkpoints.jsonl, syslog: null,
                 checkpoint_every: 1000, checkpoint_interval: 300, min_retention_days: 180,
                 key_path: null}
    access:     {roles: {supervisor: [calls.handle, ...]}}     # rows replace the default row
    sessions:   {lifetime_seconds: 28800, idle_seconds: 900}
    anomaly:    {downloads: {max: 500, window_seconds: 600, lock: true},
                 new_network: {ipv4_prefix: 24, ipv6_prefix: 64, alert_on_first_login: false}}
    floodguard: {rate: 50, burst: 200, ban_seconds: 300, trusted: ["127.0.0.1/32"], ...}

Every key is optional; errors raise ValueError naming the path (security.audit.dir ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..hooks.maskers import MaskPolicy, policies_from_dict
from .anomaly import AnomalyConfig
from .floodguard import FloodGuardConfig
from .rbac import AccessPolicy


@dataclass(frozen=True, slots=True, kw_only=True)
class HooksConfig:
    enabled: tuple[str, ...] = ("maskers",)
    """Plug-in names, built-in or from entry-point group vaultpbx.hooks, in call order."""
    budget_ms: float = 5.0
    """A plug-in call slower than this is a strike."""
    max_strikes: int = 5
    """Strikes (errors or slow calls) before a plug-in is disabled."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    dir: str = "var/audit"
    """Log directory (records, local checkpoints, key)."""
    sink: str | None = "var/audit-checkpoints.jsonl"
    """Outside copy of the checkpoints: put it on another disk or a WORM mount."""
    syslog: str | None = None
    """Also send checkpoints to syslog: "/dev/log" or "host:port" (UDP)."""
    checkpoint_every: int = 1000
    checkpoint_interval: float = 300.0
    min_retention_days: float = 180.0
    key_path: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionsConfig:
    lifetime_seconds: float = 8 * 3600.0
    idle_seconds: float = 900.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    hooks: HooksConfig = field(default_factory=HooksConfig)
    masking: Mapping[str, MaskPolicy] = field(default_factory=lambda: policies_from_dict({}))
    audit: AuditConfig = field(default_factory=AuditConfig)
    access: AccessPolicy = field(default_factory=AccessPolicy.from_dict)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    floodguard: FloodGuardConfig = field(default_factory=FloodGuardConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SecurityConfig:
        data = dict(data or {})
        _no_unknown(data, {"hooks", "masking", "audit", "access", "sessions", "anomaly",
                           "floodguard"}, "security")
        try:
            masking = dict(data.get("masking") or {})
            _no_unknown(masking, {"roles"}, "security.masking")
            access = dict(data.get("access") or {})
            _no_unknown(access, {"roles"}, "security.access")
            return cls(
                hooks=_simple(HooksConfig, data.get("hooks"), "security.hooks"),
                masking=policies_from_dict(masking.get("roles") or {}),
                audit=_simple(AuditConfig, data.get("audit"), "security.audit"),
                access=AccessPolicy.from_dict(access.get("roles") or {}),
                sessions=_simple(SessionsConfig, data.get("sessions"), "security.sessions"),
                anomaly=AnomalyConfig.from_dict(data.get("anomaly")),
                floodguard=FloodGuardConfig.from_dict(data.get("floodguard")),
            )
        except ValueError as exc:
            message = str(exc)
            if not message.startswith("security."):
                message = "security." + message
            raise ValueError(message) from None


def _no_unknown(data: Mapping[str, Any], known: set[str], path: str) -> None:
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}")


def _simple(kind: Any, data: Mapping[str, Any] | None, path: str) -> Any:
    data = dict(data or {})
    _no_unknown(data, set(kind.__dataclass_fields__), path)
    if "enabled" in data:
        data["enabled"] = tuple(data["enabled"])
    return kind(**data)
