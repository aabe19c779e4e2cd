"""Short-lived session tokens for the admin API, with the time passed in.

Invariants:
- A token is 32 random bytes, URL-safe (secrets.token_urlsafe); only its SHA-256 is kept, so a
  dump of the store yields no usable token.
- A session ends at the first of: absolute lifetime, idle timeout, explicit revoke, or all of the
  user's sessions being revoked (account locked, password changed, role changed).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True, kw_only=True)
class Session:
    user: str
    role: str
    created: float
    expires: float
    last_seen: float
    mfa: bool
    """The second factor was checked when this session was created."""


class SessionStore:
    __slots__ = ("lifetime", "idle_timeout", "_token_factory", "_sessions")

    def __init__(
        self,
        *,
        lifetime: float = 8 * 3600.0,
        idle_timeout: float = 15 * 60.0,
        token_factory: Callable[[], str] = lambda: secrets.token_urlsafe(32),
    ) -> None:
        self.lifetime = lifetime
        self.idle_timeout = idle_timeout
        self._token_factory = token_factory
        self._sessions: dict[str, Session] = {}

    def create(self, user: str, role: str, now: float, *, mfa: bool) -> str:
        token = self._token_factory()
        self._sessions[_digest(token)] = Session(
            user=user, role=role, created=now, expires=now + self.lifetime, last_seen=now, mfa=mfa
        )
        return token

    def get(self, token: str, now: float) -> Session | None:
        """The live session for `token` (and touch it), or None."""
        key = _digest(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        if now >= session.expires or now - session.last_seen >= self.idle_timeout:
            del self._sessions[key]
            return None
        session.last_seen = now
        return session

    def revoke(self, token: str) -> bool:
        return self._sessions.pop(_digest(token), None) is not None

    def revoke_user(self, user: str) -> int:
        doomed = [k for k, s in self._sessions.items() if s.user == user]
        for key in doomed:
            del self._sessions[key]
        return len(doomed)

    def sweep(self, now: float) -> int:
        doomed = [k for k, s in self._sessions.items()
                  if now >= s.expires or now - s.last_seen >= self.idle_timeout]
        for key in doomed:
            del self._sessions[key]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._sessions)
