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
    users:      [{name: alice, role: admin, password_hash: "$argon2id$...", totp_secret: BASE32}]

Every key is optional; errors raise ValueError naming the path (security.audit.dir ...).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..hooks.maskers import MaskPolicy, policies_from_dict
from ..runtime.typedyaml import LineMap, build
from .anomaly import AnomalyConfig
from .floodguard import FloodGuardConfig
from .rbac import MFA_ROLES, AccessPolicy, Role


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
class UserEntry:
    """One admin-API account. The file holds only the argon2id hash, never a password; it does
    hold the TOTP secret, so keep the config file readable by the engine's user only."""

    name: str
    role: Role
    password_hash: str
    """argon2id PHC string ("$argon2id$v=19$m=...,t=...,p=...$salt$hash")."""
    totp_secret: str | None = None
    """Base32 TOTP secret; required for supervisor, admin and auditor."""
    extension: str | None = None
    """The ACD agent (extension) this account is. Without `queue.manage` (supervisors have
    it) an account may log in, pause, ready and log out only this agent."""

    def __repr__(self) -> str:  # never print the hash or the secret
        return f"UserEntry(name={self.name!r}, role={self.role.value!r})"


def parse_users(data: object, path: str = "security.users") -> tuple[UserEntry, ...]:
    """Validate the `users:` list; errors name the entry and field but never echo a secret."""
    if data is None:
        return ()
    if not isinstance(data, list | tuple):
        raise ValueError(f"{path}: expected a list of users")
    users: list[UserEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        at = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{at}: expected a mapping with name, role, password_hash")
        _no_unknown(item, {"name", "role", "password_hash", "totp_secret", "extension"}, at)
        name = item.get("name")
        if not isinstance(name, str) or not name or len(name) > 64 or not name.isprintable():
            raise ValueError(f"{at}.name: expected a printable name of 1 to 64 characters")
        if name in seen:
            raise ValueError(f"{at}.name: duplicate user {name!r}")
        seen.add(name)
        try:
            role = Role(item.get("role"))
        except ValueError:
            raise ValueError(f"{at}.role: expected one of {', '.join(Role)}") from None
        password_hash = item.get("password_hash")
        if not isinstance(password_hash, str) or not password_hash.startswith("$argon2id$"):
            raise ValueError(f"{at}.password_hash: expected an argon2id hash ($argon2id$...)")
        secret = item.get("totp_secret")
        if secret is not None:
            if not isinstance(secret, str) or not _is_base32(secret):
                raise ValueError(f"{at}.totp_secret: expected a base32 secret of 128 bits or more")
        elif role in MFA_ROLES:
            raise ValueError(f"{at}.totp_secret: role {role.value} requires a TOTP secret")
        extension = item.get("extension")
        if extension is not None:
            if isinstance(extension, int) and not isinstance(extension, bool):
                extension = str(extension)  # `extension: 2001` in YAML is an int
            if not isinstance(extension, str) or not extension or len(extension) > 32 or (
                    not extension.isprintable()):
                raise ValueError(f"{at}.extension: expected an extension such as \"2001\"")
        users.append(UserEntry(name=name, role=role, password_hash=password_hash,
                               totp_secret=secret, extension=extension))
    return tuple(users)


def _is_base32(secret: str) -> bool:
    text = secret.replace(" ", "").upper()
    if len(text) < 26:  # 128 bits, the minimum of RFC 4226 §4 (R6); pyotp makes 160
        return False
    try:
        base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    hooks: HooksConfig = field(default_factory=HooksConfig)
    masking: Mapping[str, MaskPolicy] = field(default_factory=lambda: policies_from_dict({}))
    audit: AuditConfig = field(default_factory=AuditConfig)
    access: AccessPolicy = field(default_factory=AccessPolicy.from_dict)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    floodguard: FloodGuardConfig = field(default_factory=FloodGuardConfig)
    users: tuple[UserEntry, ...] = ()
    """Admin-API accounts (loaded by vaultpbx.api.admin.load_users)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SecurityConfig:
        data = dict(data or {})
        _no_unknown(data, {"hooks", "masking", "audit", "access", "sessions", "anomaly",
                           "floodguard", "users"}, "security")
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
                users=parse_users(data.get("users")),
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
    """Built by the YAML's typed builder: every value's type is checked against the field's
    (`lifetime_seconds: forever` is an error naming its path, not a string the sessions trip
    over later)."""
    if data is not None and not isinstance(data, Mapping):
        raise ValueError(f"{path}: must be a mapping, not {type(data).__name__}")
    _no_unknown(dict(data or {}), set(kind.__dataclass_fields__), path)
    return build(kind, dict(data or {}), LineMap(), path)
