"""Password-guessing throttle, per (account, source) and per account (NIST SP 800-63B §5.2.2).

Used by the admin API login and by the SIP digest gate. Both ask `check` before they believe a
password, and report the outcome with `failed` or `succeeded`.

Invariants:
- No I/O, no clock: `now` is passed in. Accounts and sources are opaque strings (the name as
  typed, existing or not, so unknown and known accounts are throttled alike: no enumeration).
- Per (account, source): after `delay_after` consecutive failures, each further failure makes
  that source wait `base_delay * 2**k` seconds (k = failures past the threshold), capped at
  `max_delay`, before its next attempt for that account is considered. An attacker's failures
  from one source never hold back the account from another source on this level.
- Per account: consecutive failures from every source together. Past `account_delay_after`,
  sources where the account has not logged in within `remember_sources` seconds wait too
  (doubling up to `account_max_delay`); past `account_max_failures` they are refused until the
  account logs in from a remembered source or an administrator resets it. So at most
  `account_max_failures` consecutive guesses reach an account from new sources (NIST: ≤ 100),
  while its owner, from where they logged in before, keeps only their own per-source limit.
- Trusted sources get no exemption: the throttle knows nothing of trust.
- A throttled attempt is not a failure: it changes no counter (except the `throttled` metric),
  so waiting out a delay is always enough. A failure never ends a session: callers must not
  revoke anything because of this module.
- The tables are bounded (`max_entries` each); the least recently failed entries go first.
  `sweep(now)` forgets pairs and accounts whose delays ended `forget_after` seconds ago.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeVar

_K = TypeVar("_K")
MAX_REMEMBERED_SOURCES = 16  # per account: the owner's usual places (office, home, phone, VPN)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleConfig:
    delay_after: int = 5
    """Consecutive failures of one account from one source after which that source waits before
    its next attempt for that account."""
    base_delay: float = 2.0
    """The first wait, seconds; it doubles with every further failure."""
    max_delay: float = 900.0
    """The longest wait of one (account, source), seconds."""
    account_delay_after: int = 20
    """Consecutive failures of one account from all sources together after which sources where
    it has not logged in recently wait too."""
    account_max_delay: float = 3600.0
    """The longest account-wide wait, seconds."""
    account_max_failures: int = 100
    """Consecutive failures after which sources where the account has not logged in recently
    are refused until it logs in from a remembered source or an administrator resets it
    (NIST SP 800-63B §5.2.2: no more than 100)."""
    remember_sources: float = 30 * 86400.0
    """Seconds a source where the account logged in stays exempt from the account-wide wait."""
    forget_after: float = 86400.0
    """Seconds after its last wait ended that an entry is forgotten (consecutive count reset),
    unless the account reached `account_max_failures`."""
    max_entries: int = 100_000
    """Entries kept per table (pairs, accounts); the least recently failed go first."""

    def validate(self) -> None:
        if self.delay_after < 1 or self.account_delay_after < 1:
            raise ValueError("delay_after and account_delay_after must be at least 1")
        if not 1 <= self.account_max_failures <= 100:
            raise ValueError("account_max_failures must be from 1 to 100 (NIST SP 800-63B)")
        for name in ("base_delay", "max_delay", "account_max_delay", "remember_sources",
                     "forget_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if self.base_delay > self.max_delay:
            raise ValueError("base_delay must not exceed max_delay")
        if self.max_entries < 1:
            raise ValueError("max_entries must be at least 1")


def backoff(failures: int, after: int, base: float, cap: float) -> float:
    """The wait after `failures` consecutive failures: 0 below `after`, then base·2^k, capped."""
    if failures < after:
        return 0.0
    return min(base * 2.0 ** min(failures - after, 64), cap)


class _Entry:
    __slots__ = ("failures", "until")

    def __init__(self) -> None:
        self.failures = 0
        self.until = 0.0  # no attempt is considered before this time


class CredentialThrottle:
    __slots__ = ("config", "_pairs", "_accounts", "_proven", "throttled_source",
                 "throttled_account", "failures", "evicted")

    def __init__(self, config: ThrottleConfig | None = None) -> None:
        self.config = config or ThrottleConfig()
        self._pairs: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._accounts: OrderedDict[str, _Entry] = OrderedDict()
        self._proven: dict[str, dict[str, float]] = {}  # account -> source -> last login
        self.throttled_source = 0
        self.throttled_account = 0
        self.failures = 0
        self.evicted = 0

    # -- the decision ---------------------------------------------------------------------------

    def check(self, account: str, source: str, now: float, *, count: bool = True) -> float:
        """Seconds before an attempt for `account` from `source` is considered: 0.0 means now;
        math.inf means not until the owner logs in from a remembered source or an admin resets
        the account. A refused attempt is counted here (unless `count` is False: a look ahead
        by a caller that will ask again) and must not be verified or reported."""
        pair = self._pairs.get((account, source))
        if pair is not None and now < pair.until:
            self.throttled_source += count
            return pair.until - now
        entry = self._accounts.get(account)
        if entry is not None and entry.failures >= self.config.account_delay_after and (
                not self._is_proven(account, source, now)):
            if entry.failures >= self.config.account_max_failures:
                self.throttled_account += count
                return math.inf
            if now < entry.until:
                self.throttled_account += count
                return entry.until - now
        return 0.0

    def failed(self, account: str, source: str, now: float) -> None:
        """A verified attempt had the wrong password (or second factor)."""
        config = self.config
        self.failures += 1
        pair = self._touch(self._pairs, (account, source))
        pair.failures += 1
        pair.until = now + backoff(pair.failures, config.delay_after, config.base_delay,
                                   config.max_delay)
        entry = self._touch(self._accounts, account)
        entry.failures += 1
        entry.until = now + backoff(entry.failures, config.account_delay_after,
                                    config.base_delay, config.account_max_delay)

    def succeeded(self, account: str, source: str, now: float) -> None:
        """The right credentials from `source`: its count and the account's start again, and the
        source is remembered as the owner's. Other sources' counts for the account stay."""
        self._pairs.pop((account, source), None)
        self._accounts.pop(account, None)
        proven = self._proven.setdefault(account, {})
        proven.pop(source, None)
        proven[source] = now
        while len(proven) > MAX_REMEMBERED_SOURCES:
            del proven[next(iter(proven))]

    def reset(self, account: str) -> None:
        """An administrator lifted the account's limits (every source's)."""
        self._accounts.pop(account, None)
        for key in [key for key in self._pairs if key[0] == account]:
            del self._pairs[key]

    def _is_proven(self, account: str, source: str, now: float) -> bool:
        seen = self._proven.get(account, {}).get(source)
        return seen is not None and now - seen <= self.config.remember_sources

    def _touch(self, table: OrderedDict[_K, _Entry], key: _K) -> _Entry:
        entry = table.get(key)
        if entry is None:
            if len(table) >= self.config.max_entries:
                table.popitem(last=False)
                self.evicted += 1
            entry = table[key] = _Entry()
        else:
            table.move_to_end(key)
        return entry

    # -- housekeeping ---------------------------------------------------------------------------

    def sweep(self, now: float) -> int:
        """Forget entries whose wait ended `forget_after` ago (and stale remembered sources)."""
        config = self.config
        horizon = now - config.forget_after
        stale_pairs = [key for key, e in self._pairs.items() if e.until <= horizon]
        for key in stale_pairs:
            del self._pairs[key]
        stale_accounts = [name for name, e in self._accounts.items()
                          if e.until <= horizon and e.failures < config.account_max_failures]
        for name in stale_accounts:
            del self._accounts[name]
        for account in list(self._proven):
            sources = self._proven[account]
            for source in [s for s, seen in sources.items()
                           if now - seen > config.remember_sources]:
                del sources[source]
            if not sources:
                del self._proven[account]
        return len(stale_pairs) + len(stale_accounts)

    def counters(self, prefix: str) -> dict[str, int]:
        return {
            f"{prefix}_throttled_source_total": self.throttled_source,
            f"{prefix}_throttled_account_total": self.throttled_account,
            f"{prefix}_failures_total": self.failures,
            f"{prefix}_evicted_total": self.evicted,
            f"{prefix}_pairs": len(self._pairs),
            f"{prefix}_accounts": len(self._accounts),
        }
