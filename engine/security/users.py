"""Accounts, argon2id password hashes and the login decision.

Invariants:
- Passwords are stored only as argon2id hashes (argon2-cffi); hashes made with older parameters
  are upgraded at the next successful login.
- Supervisors, admins and auditors must present a valid TOTP code at every login; any account
  must present one again when it logs in from a network it was not seen on (anomaly rules).
- Every failure answers the same public message in about the same time, whether the account
  exists or not (no enumeration): unknown names are checked against a dummy hash.
- Repeated password failures lock the account for a while; a lock revokes its sessions.
- `now` is passed in. The store is in memory; persistence is the caller's (HTTP API) concern.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..hooks.registry import HookPoint, HookRegistry
from .anomaly import AnomalyDetector
from .mfa import TotpVerifier
from .rbac import MFA_ROLES, Role
from .sessions import SessionStore

PUBLIC_FAILURE = "invalid credentials"


def make_password_hasher(
    *, time_cost: int = 3, memory_cost: int = 64 * 1024, parallelism: int = 4
) -> PasswordHasher:
    """argon2id; the defaults are RFC 9106's second recommended option (64 MiB, t=3)."""
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost,
                          parallelism=parallelism, type=Type.ID)


@dataclass(slots=True, kw_only=True)
class User:
    name: str
    role: Role
    password_hash: str
    totp_secret: str | None = None
    extension: str | None = None
    """The agent (extension) this account is: an agent may change only its own presence."""
    locked_until: float | None = None
    """None: not locked. float('inf'): locked until an admin unlocks."""
    failures: deque[float] = field(default_factory=deque)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginResult:
    ok: bool
    token: str | None = None
    reason: str = ""
    """For the audit log only; clients get `public_message`."""
    second_factor_required: bool = False

    @property
    def public_message(self) -> str:
        if self.ok:
            return "ok"
        return "second factor required" if self.second_factor_required else PUBLIC_FAILURE


class UserStore:
    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or make_password_hasher()
        self._users: dict[str, User] = {}
        self._dummy_hash = self.hasher.hash("not-a-real-password")

    def add(self, name: str, role: str, password: str, *, totp_secret: str | None = None,
            extension: str | None = None) -> User:
        if name in self._users:
            raise ValueError(f"user {name} exists")
        role_ = Role(role)
        if role_ in MFA_ROLES and not totp_secret:
            raise ValueError(f"role {role_} requires a TOTP secret")
        user = User(name=name, role=role_, password_hash=self.hasher.hash(password),
                    totp_secret=totp_secret, extension=extension)
        self._users[name] = user
        return user

    def add_hashed(self, name: str, role: str, password_hash: str, *,
                   totp_secret: str | None = None, extension: str | None = None) -> User:
        """An account whose argon2id hash was made elsewhere (the YAML `security.users` list).

        Hashes with weaker parameters than this store's are upgraded at the next good login."""
        if name in self._users:
            raise ValueError(f"user {name} exists")
        role_ = Role(role)
        if role_ in MFA_ROLES and not totp_secret:
            raise ValueError(f"role {role_} requires a TOTP secret")
        if not password_hash.startswith("$argon2id$"):
            raise ValueError(f"user {name}: only argon2id hashes are accepted")
        user = User(name=name, role=role_, password_hash=password_hash, totp_secret=totp_secret,
                    extension=extension)
        self._users[name] = user
        return user

    def get(self, name: str) -> User | None:
        return self._users.get(name)

    def set_password(self, name: str, password: str) -> None:
        self._users[name].password_hash = self.hasher.hash(password)

    def check_password(self, name: str, password: str) -> bool:
        user = self._users.get(name)
        stored = user.password_hash if user is not None else self._dummy_hash
        try:
            self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if user is None:
            return False
        if self.hasher.check_needs_rehash(stored):
            user.password_hash = self.hasher.hash(password)
        return True


class Authenticator:
    """password (+ TOTP when required) → session token; every attempt notified for the audit."""

    def __init__(
        self,
        users: UserStore,
        sessions: SessionStore,
        *,
        totp: TotpVerifier | None = None,
        anomaly: AnomalyDetector | None = None,
        hooks: HookRegistry | None = None,
        max_failures: int = 5,
        failure_window: float = 900.0,
        lockout: float = 900.0,
    ) -> None:
        self.users = users
        self.sessions = sessions
        self.totp = totp or TotpVerifier()
        self.anomaly = anomaly
        self.hooks = hooks
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.lockout = lockout
        if anomaly is not None and anomaly.on_lock is None:
            anomaly.on_lock = lambda account, now: self.lock(account, now, float("inf"))

    def login(self, name: str, password: str, otp: str | None, *, source_ip: str,
              now: float, password_ok: bool | None = None) -> LoginResult:
        """`password_ok`: the result of `users.check_password(name, password)` when the caller
        ran that argon2 check elsewhere (the admin API runs it off the event loop)."""
        result = self._login(name, password, otp, source_ip, now, password_ok)
        if self.hooks is not None:
            self.hooks.notify(HookPoint.LOGIN, {
                "actor": name, "action": "login" if result.ok else "login.failed",
                "target": "admin-api",
                "details": {"source_ip": source_ip, "reason": result.reason or "ok"}})
        return result

    def _login(self, name: str, password: str, otp: str | None, source_ip: str,
               now: float, password_ok: bool | None = None) -> LoginResult:
        if password_ok is None:
            password_ok = self.users.check_password(name, password)  # always hashed: no leak
        user = self.users.get(name)
        if user is None:
            return LoginResult(ok=False, reason="unknown user")
        if user.locked_until is not None:
            if now < user.locked_until:
                return LoginResult(ok=False, reason="account locked")
            user.locked_until = None
        if not password_ok:
            self._count_failure(user, now)
            return LoginResult(ok=False, reason="bad password")
        need_mfa = user.role in MFA_ROLES
        if self.anomaly is not None:
            if name in self.anomaly.locked:
                return LoginResult(ok=False, reason="account locked by anomaly rule")
            need_mfa = self.anomaly.check_login(name, source_ip, now).new_network or need_mfa
        if need_mfa:
            if user.totp_secret is None:
                return LoginResult(ok=False, reason="second factor required but not enrolled")
            if not otp:
                return LoginResult(ok=False, reason="second factor missing",
                                   second_factor_required=True)
            if not self.totp.verify(name, user.totp_secret, otp, now):
                self._count_failure(user, now)
                return LoginResult(ok=False, reason="bad second factor")
        user.failures.clear()
        if self.anomaly is not None:
            self.anomaly.remember_network(name, source_ip)
        token = self.sessions.create(name, user.role.value, now, mfa=need_mfa)
        return LoginResult(ok=True, token=token)

    def _count_failure(self, user: User, now: float) -> None:
        failures = user.failures
        failures.append(now)
        while failures and now - failures[0] > self.failure_window:
            failures.popleft()
        if len(failures) >= self.max_failures:
            self.lock(user.name, now, now + self.lockout)

    def lock(self, name: str, now: float, until: float) -> None:
        user = self.users.get(name)
        if user is None:
            return
        user.locked_until = until
        user.failures.clear()
        self.sessions.revoke_user(name)
        if self.hooks is not None:
            self.hooks.notify(HookPoint.USER_CHANGE, {
                "actor": "system", "action": "account.lock", "target": name,
                "details": {"until": until if until != float("inf") else "admin unlock"}})

    def unlock(self, name: str, *, by: str) -> None:
        user = self.users.get(name)
        if user is not None:
            user.locked_until = None
        if self.anomaly is not None:
            self.anomaly.unlock(name)
        if self.hooks is not None:
            self.hooks.notify(HookPoint.USER_CHANGE, {
                "actor": by, "action": "account.unlock", "target": name})
