"""Accounts, argon2id password hashes and the login decision.

Invariants:
- Passwords are stored only as argon2id hashes (argon2-cffi); hashes made with older parameters
  are upgraded at the next successful login.
- Supervisors, admins and auditors must present a valid TOTP code at every login; any account
  must present one again when it logs in from a network it was not seen on (anomaly rules).
- Every failure answers the same public message in about the same time, whether the account
  exists or not (no enumeration): unknown names are checked against a dummy hash.
- Repeated password failures are throttled per (account, source) and per account with growing
  waits (throttle.py, NIST SP 800-63B §5.2.2); they never lock the account and never revoke a
  live session, so nobody can log a user out by guessing. Only the anomaly rules and an
  administrator lock accounts (a lock revokes its sessions).
- A throttled attempt is not checked at all (no hash): it answers `throttled` with the wait,
  the same for unknown and known accounts.
- Every attempt is audited. The name of a failed attempt that matches no account is passed as
  `Unverified` (people type passwords into the user field): the log keeps a keyed hash. A login
  whose audit record could not be written does not happen (fail closed: `unavailable`).
- `now` is passed in. The store is in memory; persistence is the caller's (HTTP API) concern.
"""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..hooks.registry import HookPoint, HookRegistry
from .anomaly import AnomalyDetector
from .audit import Unverified
from .mfa import TotpVerifier
from .rbac import MFA_ROLES, Role
from .sessions import SessionStore
from .throttle import CredentialThrottle

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


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginResult:
    ok: bool
    token: str | None = None
    reason: str = ""
    """For the audit log only; clients get `public_message`."""
    second_factor_required: bool = False
    unavailable: bool = False
    """The attempt could not be audited, so it was refused whatever the credentials."""
    retry_after: float = 0.0
    """Throttled: seconds before another attempt from this source is considered (may be inf)."""

    @property
    def throttled(self) -> bool:
        return self.retry_after > 0.0

    @property
    def public_message(self) -> str:
        if self.ok:
            return "ok"
        if self.unavailable:
            return "login unavailable: the audit log cannot be written"
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
            # As bytes: a lone surrogate (a JSON "\ud800") is a wrong password, not a crash.
            self.hasher.verify(stored, password.encode("utf-8", "surrogatepass"))
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
        throttle: CredentialThrottle | None = None,
    ) -> None:
        self.users = users
        self.sessions = sessions
        self.totp = totp or TotpVerifier()
        self.anomaly = anomaly
        self.hooks = hooks
        self.throttle = throttle or CredentialThrottle()
        if anomaly is not None and anomaly.on_lock is None:
            anomaly.on_lock = lambda account, now: self.lock(account, now, float("inf"))

    def login(self, name: str, password: str, otp: str | None, *, source_ip: str,
              now: float, password_ok: bool | None = None) -> LoginResult:
        """`password_ok`: the result of `users.check_password(name, password)` when the caller
        ran that argon2 check elsewhere (the admin API runs it off the event loop)."""
        result = self._login(name, password, otp, source_ip, now, password_ok)
        if self.hooks is not None:
            failures = self.hooks.essential_errors
            known = self.users.get(name) is not None
            self.hooks.notify(HookPoint.LOGIN, {
                "actor": name if known else Unverified(name),
                "action": "login" if result.ok else "login.failed",
                "target": "admin-api",
                "details": {"source_ip": source_ip, "reason": result.reason or "ok"}})
            if self.hooks.essential_errors != failures and result.ok:
                assert result.token is not None
                self.sessions.revoke(result.token)
                return LoginResult(ok=False, reason="audit log unavailable", unavailable=True)
        return result

    def _login(self, name: str, password: str, otp: str | None, source_ip: str,
               now: float, password_ok: bool | None = None) -> LoginResult:
        wait = self.throttle.check(name, source_ip, now)
        if wait > 0.0:  # before any hashing: the same fast answer for every account name
            return LoginResult(ok=False, reason="throttled", retry_after=wait)
        if password_ok is None:
            password_ok = self.users.check_password(name, password)  # always hashed: no leak
        user = self.users.get(name)
        if user is None:
            self.throttle.failed(name, source_ip, now)  # unknown names count alike
            return LoginResult(ok=False, reason="unknown user")
        if user.locked_until is not None:
            if now < user.locked_until:
                return LoginResult(ok=False, reason="account locked")
            user.locked_until = None
        if not password_ok:
            self.throttle.failed(name, source_ip, now)
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
                self.throttle.failed(name, source_ip, now)
                return LoginResult(ok=False, reason="bad second factor")
        self.throttle.succeeded(name, source_ip, now)
        if self.anomaly is not None:
            self.anomaly.remember_network(name, source_ip)
        token = self.sessions.create(name, user.role.value, now, mfa=need_mfa)
        return LoginResult(ok=True, token=token)

    def lock(self, name: str, now: float, until: float) -> None:
        user = self.users.get(name)
        if user is None:
            return
        user.locked_until = until
        self.sessions.revoke_user(name)
        if self.hooks is not None:
            self.hooks.notify(HookPoint.USER_CHANGE, {
                "actor": "system", "action": "account.lock", "target": name,
                "details": {"until": until if until != float("inf") else "admin unlock"}})

    def unlock(self, name: str, *, by: str) -> None:
        user = self.users.get(name)
        if user is not None:
            user.locked_until = None
        self.throttle.reset(name)
        if self.anomaly is not None:
            self.anomaly.unlock(name)
        if self.hooks is not None:
            self.hooks.notify(HookPoint.USER_CHANGE, {
                "actor": by, "action": "account.unlock", "target": name})
