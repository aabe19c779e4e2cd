"""The flood guard: the first thing every datagram meets, before any parsing.

Invariants:
- `check(source_ip, now)` is O(1): one dict lookup for a banned source, two for an allowed one,
  and no allocation except a small list the first time a source is seen.
- Per-source token bucket (pike-like): `rate` datagrams/s sustained, `burst` at once. A source
  that empties its bucket is banned for `ban_seconds`; its packets are dropped unparsed.
- Trusted networks (SIP trunks, the load generator) are never limited or banned.
- Known scanner user agents (SIPVicious, friendly-scanner, sipcli...) are recognised on the raw
  bytes (one anchored search for the User-Agent line), without parsing; their source is banned.
- Too many authentication failures from one source within a window → ban (the SIP layer calls
  `auth_failed`; its answers to known and unknown users are identical, so there is no enumeration).
- Too many connection strikes from one source within a window → ban (the transports call
  `connection_abuse` when a source's connection is refused over its per-source ceiling or is
  closed for not finishing a message in time: slowloris). The caller closes the source's
  connections when this bans it.
- The tables are bounded (`max_sources`); under a spoofed-source flood the newest entries are
  evicted so established sources keep their state. `sweep(now)` drops idle state; call it from a
  timer every `sweep_interval` seconds.
- No I/O, no clock: `now` is passed in.
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Lower-case tokens looked for in the User-Agent value (and in From when there is no
# User-Agent: old SIPVicious puts its name in the From display name).
SCANNER_TOKENS = (
    b"friendly-scanner", b"sipvicious", b"sipcli/", b"vaxsipuseragent", b"sundayddr", b"iwar",
    b"sip-scan", b"sipscan", b"pplsip", b"voiper", b"sivus", b"nmap nse", b"siparmyknife",
    b"svcrack", b"svwar",
)
_TOKENS_RE = re.compile(b"|".join(re.escape(t) for t in SCANNER_TOKENS))
# Each starts with a literal newline so the regex engine skips from line to line quickly.
_USER_AGENT_RE = re.compile(rb"\nuser-agent[ \t]*:([^\r\n]*)", re.IGNORECASE)
_FROM_RE = re.compile(rb"\n(?:from|f)[ \t]*:([^\r\n]*)", re.IGNORECASE)

_TRUSTED: list[float] = [0.0, 0.0]  # the bucket of every trusted source, compared by identity


@dataclass(frozen=True, slots=True, kw_only=True)
class FloodGuardConfig:
    rate: float = 50.0
    """Datagrams per second allowed per source, sustained."""
    burst: float = 200.0
    """Datagrams a source may send at once (bucket size)."""
    ban_seconds: float = 300.0
    scanner_ban_seconds: float = 3600.0
    auth_failures: int = 10
    """Authentication failures from one source within `auth_window` → ban."""
    auth_window: float = 60.0
    auth_ban_seconds: float = 900.0
    connection_strikes: int = 20
    """Connections refused over the per-source ceiling, or closed as slowloris, from one
    source within `connection_window` → ban."""
    connection_window: float = 60.0
    connection_ban_seconds: float = 600.0
    max_sources: int = 100_000
    trusted: tuple[str, ...] = ()
    """Networks never limited, e.g. ("127.0.0.1/32", "10.20.0.0/16")."""
    sweep_interval: float = 30.0

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None) -> FloodGuardConfig:
        config = dict(config or {})
        names = set(cls.__dataclass_fields__)
        unknown = set(config) - names
        if unknown:
            raise ValueError(f"floodguard: unknown setting(s) {sorted(unknown)}")
        for name, value in config.items():
            if name in ("trusted",):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"floodguard.{name}: must be a number, not {value!r}")
        if "trusted" in config:
            if not isinstance(config["trusted"], list | tuple):
                raise ValueError("floodguard.trusted: must be a list of networks")
            config["trusted"] = tuple(config["trusted"])
            for i, net in enumerate(config["trusted"]):
                # ip_network() takes integers and bytes too: only text is a network here.
                if not isinstance(net, str):
                    raise ValueError(f"floodguard.trusted[{i}]: must be a network such as"
                                     f" \"10.0.0.0/8\", not {net!r}")
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError as exc:
                    raise ValueError(f"floodguard.trusted[{i}]: {exc}") from None
        made = cls(**config)
        if made.rate <= 0 or made.burst < 1 or made.max_sources < 1:
            raise ValueError("floodguard: rate > 0, burst >= 1 and max_sources >= 1 required")
        return made


class FloodGuard:
    __slots__ = (
        "config", "_rate", "_burst", "_ban_seconds", "_max_sources", "_trusted_nets",
        "_buckets", "_banned", "_auth", "_strikes", "allowed", "dropped_banned", "rate_limited",
        "scanners", "bans", "auth_bans", "connection_bans", "evicted",
    )

    def __init__(self, config: FloodGuardConfig | None = None) -> None:
        self.config = config = config or FloodGuardConfig()
        self._rate = config.rate
        self._burst = config.burst
        self._ban_seconds = config.ban_seconds
        self._max_sources = config.max_sources
        self._trusted_nets = tuple(ipaddress.ip_network(n, strict=False) for n in config.trusted)
        self._buckets: dict[str, list[float]] = {}
        self._banned: dict[str, float] = {}
        self._auth: dict[str, deque[float]] = {}
        self._strikes: dict[str, deque[float]] = {}
        self.allowed = 0
        self.dropped_banned = 0
        self.rate_limited = 0
        self.scanners = 0
        self.bans = 0
        self.auth_bans = 0
        self.connection_bans = 0
        self.evicted = 0

    # -- per datagram -------------------------------------------------------------------------

    def check(self, source_ip: str, now: float) -> bool:
        """True: let this datagram through. Call before anything else looks at it."""
        until = self._banned.get(source_ip)
        if until is not None:
            if now < until:
                self.dropped_banned += 1
                return False
            del self._banned[source_ip]
        bucket = self._buckets.get(source_ip)
        if bucket is None:
            return self._first_seen(source_ip, now)
        if bucket is _TRUSTED:
            self.allowed += 1
            return True
        tokens = bucket[0] + (now - bucket[1]) * self._rate
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = (tokens if tokens < self._burst else self._burst) - 1.0
            self.allowed += 1
            return True
        bucket[0] = tokens
        self.rate_limited += 1
        self.ban(source_ip, now + self._ban_seconds)
        return False

    def admit(self, source_ip: str, data: bytes, now: float) -> bool:
        """`check` plus scanner detection on the raw datagram; bans scanners."""
        if not self.check(source_ip, now):
            return False
        if is_scanner(data):
            self.scanners += 1
            if self._buckets.get(source_ip) is not _TRUSTED:
                self.ban(source_ip, now + self.config.scanner_ban_seconds)
            return False
        return True

    def _first_seen(self, source_ip: str, now: float) -> bool:
        buckets = self._buckets
        if len(buckets) >= self._max_sources:
            buckets.popitem()  # newest first: a spoofed flood cannot push out known sources
            self.evicted += 1
        if self._trusted_nets and _in_networks(source_ip, self._trusted_nets):
            buckets[source_ip] = _TRUSTED
        else:
            buckets[source_ip] = [self._burst - 1.0, now]
        self.allowed += 1
        return True

    # -- bans ---------------------------------------------------------------------------------

    def ban(self, source_ip: str, until: float) -> None:
        if self._buckets.get(source_ip) is _TRUSTED:
            return
        banned = self._banned
        if source_ip not in banned:
            if len(banned) >= self._max_sources:
                banned.popitem()
                self.evicted += 1
            self.bans += 1
        banned[source_ip] = max(until, banned.get(source_ip, until))
        self._buckets.pop(source_ip, None)

    def unban(self, source_ip: str) -> bool:
        return self._banned.pop(source_ip, None) is not None

    def is_banned(self, source_ip: str, now: float) -> bool:
        until = self._banned.get(source_ip)
        return until is not None and now < until

    def banned(self, now: float) -> dict[str, float]:
        return {ip: until for ip, until in self._banned.items() if now < until}

    # -- authentication failures ----------------------------------------------------------------

    def auth_failed(self, source_ip: str, now: float) -> bool:
        """Count a failed authentication; True when this failure got the source banned."""
        config = self.config
        if not self._strike(self._auth, source_ip, now, config.auth_window,
                            config.auth_failures):
            return False
        self.auth_bans += 1
        self.ban(source_ip, now + config.auth_ban_seconds)
        return True

    def connection_abuse(self, source_ip: str, now: float) -> bool:
        """Count a connection refused over the per-source ceiling or closed as slowloris; True
        when this strike got the source banned (close its connections then)."""
        config = self.config
        if not self._strike(self._strikes, source_ip, now, config.connection_window,
                            config.connection_strikes):
            return False
        self.connection_bans += 1
        self.ban(source_ip, now + config.connection_ban_seconds)
        return True

    def _strike(self, table: dict[str, deque[float]], source_ip: str, now: float,
                window_seconds: float, limit: int) -> bool:
        """One strike in a sliding window; True when it reached `limit` for an untrusted
        source (the window then starts again)."""
        window = table.get(source_ip)
        if window is None:
            if len(table) >= self._max_sources:
                table.popitem()
            window = table[source_ip] = deque()
        window.append(now)
        while window and now - window[0] > window_seconds:
            window.popleft()
        if len(window) < limit:
            return False
        del table[source_ip]
        return self._buckets.get(source_ip) is not _TRUSTED and not (
            self._trusted_nets and _in_networks(source_ip, self._trusted_nets))

    def is_trusted(self, source_ip: str) -> bool:
        """In a trusted network: never limited or banned (no per-source connection ceiling)."""
        return bool(self._trusted_nets) and _in_networks(source_ip, self._trusted_nets)

    def auth_succeeded(self, source_ip: str) -> None:
        self._auth.pop(source_ip, None)

    # -- housekeeping ---------------------------------------------------------------------------

    def sweep(self, now: float) -> int:
        """Drop expired bans and the buckets of sources idle long enough to be full again."""
        expired = [ip for ip, until in self._banned.items() if now >= until]
        for ip in expired:
            del self._banned[ip]
        refill = self._burst / self._rate
        idle = [ip for ip, b in self._buckets.items()
                if b is not _TRUSTED and now - b[1] >= refill]
        for ip in idle:
            del self._buckets[ip]
        window = self.config.auth_window
        stale = [ip for ip, w in self._auth.items() if not w or now - w[-1] > window]
        for ip in stale:
            del self._auth[ip]
        window = self.config.connection_window
        quiet = [ip for ip, w in self._strikes.items() if not w or now - w[-1] > window]
        for ip in quiet:
            del self._strikes[ip]
        return len(expired) + len(idle) + len(stale) + len(quiet)

    def counters(self) -> dict[str, int]:
        return {
            "floodguard_allowed_total": self.allowed,
            "floodguard_dropped_banned_total": self.dropped_banned,
            "floodguard_rate_limited_total": self.rate_limited,
            "floodguard_scanners_total": self.scanners,
            "floodguard_bans_total": self.bans,
            "floodguard_auth_bans_total": self.auth_bans,
            "floodguard_connection_bans_total": self.connection_bans,
            "floodguard_evicted_total": self.evicted,
            "floodguard_sources": len(self._buckets),
            "floodguard_banned_sources": len(self._banned),
        }


def is_scanner(data: bytes) -> bool:
    """True when the User-Agent (or, lacking one, the From) names a known SIP scanner."""
    m = _USER_AGENT_RE.search(data) or _FROM_RE.search(data)
    return m is not None and _TOKENS_RE.search(m.group(1).lower()) is not None


def _in_networks(source_ip: str, networks: Iterable[ipaddress.IPv4Network |
                                                    ipaddress.IPv6Network]) -> bool:
    try:
        addr = ipaddress.ip_address(source_ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)
