"""The `security:` section of the YAML config, typed once at load time.

  security:
    hooks:      {enabled: [maskers], budget_ms: 5, max_strikes: 5}
    masking:    {roles: {admin: {resident_id: [6, 4], card: [6, 4]}, supervisor: {phone: clear}}}
    audit:      {dir: var/audit, sink: audit-outside/checkpoints.jsonl, syslog: null, http: null,
                 public_key: null, checkpoint_every: 100, checkpoint_interval: 60,
                 min_retention_days: 180, key_path: null, max_field_chars: 512}
    access:     {roles: {supervisor: [calls.handle, ...]}}     # rows replace the default row
    sessions:   {lifetime_seconds: 28800, idle_seconds: 900}
    anomaly:    {downloads: {max: 500, window_seconds: 600, lock: true},
                 new_network: {ipv4_prefix: 24, ipv6_prefix: 64, alert_on_first_login: false}}
    floodguard: {rate: 50, burst: 200, ban_seconds: 300, trusted: ["127.0.0.1/32"], ...}
    login_throttle: {delay_after: 5, base_delay: 2, max_delay: 900, account_delay_after: 20,
                     account_max_delay: 3600, account_max_failures: 100, ...}   # admin API
    users:      [{name: alice, role: admin, password_hash: "$argon2id$...", totp_secret: BASE32}]
    privacy:    {default_country: GB, erasure_needs_approval: true}

Every key is optional; errors raise ValueError naming the path (security.audit.dir ...).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..hooks.maskers import MaskPolicy, policies_from_dict
from ..hooks.phones import DEFAULT_COUNTRY, check_country
from ..runtime.typedyaml import LineMap, build
from .anomaly import AnomalyConfig
from .floodguard import FloodGuardConfig
from .rbac import MFA_ROLES, AccessPolicy, Role
from .throttle import ThrottleConfig


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
    """Log directory (records, local checkpoints, keys). `var/...` means under data_dir."""
    sink: str | None = "audit-outside/checkpoints.jsonl"
    """Outside copy of the signed checkpoints, a file `verify` reads. It must not be under
    data_dir: whoever can write the data can rewrite everything there. The default is a
    directory beside var/ (relative to the working directory, like data_dir); in production
    use another disk, a mount only the engine may append to, or a file with the append-only
    attribute (chattr +a), owned by another user."""
    syslog: str | None = None
    """Also send each checkpoint to syslog: a Unix datagram socket path ("/dev/log") or
    "host:port" (UDP). `verify` cannot read syslog back: export the collector's lines and pass
    them with `audit verify --checkpoints FILE`."""
    http: str | None = None
    """Also POST each checkpoint to this http(s) URL; the receiver keeps them and returns them
    (one per line) on GET of the same URL, which `verify` reads."""
    http_timeout: float = 5.0
    """Seconds for one POST (sent off the event loop, retried with backoff) or GET by verify."""
    public_key: str | None = None
    """The Ed25519 checkpoint public key (64 hex digits, `audit-ed25519.pub`) to trust: `verify`
    checks every checkpoint against it and the engine refuses to start with another signing
    key. Pin it: a key under data_dir can be replaced along with the log."""
    checkpoint_every: int = 100
    """Sign a checkpoint once this many records are not covered by one."""
    checkpoint_interval: float = 60.0
    """...or once the oldest uncovered record is this many seconds old (checked every second
    while the engine runs): the window in which records are protected by the chain only."""
    verify_grace: float = 10.0
    """`verify` reports an outside copy behind the log when a record older than
    checkpoint_interval + this many seconds is not covered by it."""
    min_retention_days: float = 180.0
    """Records younger than this are never pruned."""
    key_path: str | None = None
    """The Ed25519 signing key (default `<dir>/audit-ed25519.key`)."""
    names_key_path: str | None = None
    """HMAC key for user names no account matches (default `<dir>/audit-names.key`)."""
    max_field_chars: int = 512
    """Longest string kept in a record; longer ones are cut with a marker and their length."""

    def validate(self) -> None:
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every: must be at least 1")
        if not 0 < self.checkpoint_interval <= 86400:
            raise ValueError("checkpoint_interval: must be more than 0 and at most 86400 s")
        if self.verify_grace < 0 or self.http_timeout <= 0:
            raise ValueError("verify_grace must be >= 0 and http_timeout > 0")
        if not 64 <= self.max_field_chars <= 65536:
            raise ValueError("max_field_chars: must be from 64 to 65536")
        if self.public_key is not None and (
                len(self.public_key) != 64
                or any(c not in "0123456789abcdefABCDEF" for c in self.public_key)):
            raise ValueError("public_key: expected 64 hex digits (the audit-ed25519.pub file)")
        if self.http is not None and not self.http.startswith(("http://", "https://")):
            raise ValueError("http: expected an http:// or https:// URL")
        if self.syslog is not None:
            from .audit import parse_syslog_address

            parse_syslog_address(self.syslog)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyConfig:
    default_country: str = DEFAULT_COUNTRY
    """ISO 3166 code under which numbers in national format are read (`02079460000` is
    +442079460000 under GB): by the maskers, and to find one caller's data for erasure."""
    erasure_needs_approval: bool = True
    """Erasure of a data subject's personal data needs a second admin's approval (four eyes)."""

    def __post_init__(self) -> None:
        try:
            country = check_country(self.default_country)
        except ValueError as exc:
            raise ValueError(f"default_country: {exc}") from None
        object.__setattr__(self, "default_country", country)
        if not isinstance(self.erasure_needs_approval, bool):
            raise ValueError("erasure_needs_approval: expected true or false")


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
    login_throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    """Failed admin-API logins: waits per (account, source) and per account (throttle.py)."""
    users: tuple[UserEntry, ...] = ()
    """Admin-API accounts (loaded by vaultpbx.api.admin.load_users)."""
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    """Default country for phone numbers; four eyes for erasure (docs/retention-and-erasure.md)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SecurityConfig:
        data = dict(data or {})
        _no_unknown(data, {"hooks", "masking", "audit", "access", "sessions", "anomaly",
                           "floodguard", "login_throttle", "users", "privacy"}, "security")
        try:
            masking = dict(data.get("masking") or {})
            _no_unknown(masking, {"roles"}, "security.masking")
            access = dict(data.get("access") or {})
            _no_unknown(access, {"roles"}, "security.access")
            return cls(
                hooks=_simple(HooksConfig, data.get("hooks"), "security.hooks"),
                masking=policies_from_dict(masking.get("roles") or {}),
                audit=_audit(data.get("audit")),
                access=AccessPolicy.from_dict(access.get("roles") or {}),
                sessions=_simple(SessionsConfig, data.get("sessions"), "security.sessions"),
                anomaly=AnomalyConfig.from_dict(data.get("anomaly")),
                floodguard=FloodGuardConfig.from_dict(data.get("floodguard")),
                login_throttle=_throttle(data.get("login_throttle"), "security.login_throttle"),
                users=parse_users(data.get("users")),
                privacy=_privacy(data.get("privacy")),
            )
        except ValueError as exc:
            message = str(exc)
            if not message.startswith("security."):
                message = "security." + message
            raise ValueError(message) from None


def _privacy(data: Mapping[str, Any] | None) -> PrivacyConfig:
    try:
        config: PrivacyConfig = _simple(PrivacyConfig, data, "security.privacy")
    except ValueError as exc:
        message = str(exc)
        if not message.startswith("security."):
            message = f"security.privacy.{message}"
        # The typed builder names the section and the check names its field: one dotted path.
        message = re.sub(r"^security\.privacy: (\w+): ", r"security.privacy.\1: ", message)
        raise ValueError(message) from None
    return config


def _no_unknown(data: Mapping[str, Any], known: set[str], path: str) -> None:
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}")


def _audit(data: Any) -> AuditConfig:
    """Typed like the rest of the YAML (typedyaml): wrong types and unknown keys name their
    path; `AuditConfig.validate` checks the values."""
    from ..runtime.typedyaml import ConfigError, LineMap, build

    try:
        audit: AuditConfig = build(AuditConfig, data, LineMap(), "security.audit")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return audit


def _throttle(data: Mapping[str, Any] | None, path: str) -> ThrottleConfig:
    made: ThrottleConfig = _simple(ThrottleConfig, data, path)
    for name in ("delay_after", "account_delay_after", "account_max_failures", "max_entries"):
        value = getattr(made, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}.{name}: must be an integer, not {value!r}")
    try:
        made.validate()
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return made


def _simple(kind: Any, data: Mapping[str, Any] | None, path: str) -> Any:
    """Built by the YAML's typed builder: every value's type is checked against the field's
    (`lifetime_seconds: forever` is an error naming its path, not a string the sessions trip
    over later)."""
    if data is not None and not isinstance(data, Mapping):
        raise ValueError(f"{path}: must be a mapping, not {type(data).__name__}")
    _no_unknown(dict(data or {}), set(kind.__dataclass_fields__), path)
    return build(kind, dict(data or {}), LineMap(), path)
