"""Connection budgets: per listener (total and per source) and one descriptor reserve per process.

The process may hold a fixed number of descriptors (RLIMIT_NOFILE: 20,000 here, and `ulimit -n`
cannot raise it). Inbound stream connections are the only descriptors a stranger can make us
open, so they are the ones budgeted:

- `DescriptorBudget`: every inbound stream connection of every listener (SIP TCP, SIP TLS, the
  admin API) takes one unit; together they never take more than `limit - reserve`. The reserve
  stays for what must always work: the UDP socket, outbound trunk connections, media-worker
  control, the stores, logs and audit files.
- `ListenerBudget`: one listener's own ceiling (`max_connections`) and a ceiling per source
  address (`max_per_source`; sources for which `exempt(host)` is true, the trusted networks,
  have none), so that a flood on one listener cannot use up another's share, and one source
  cannot use up a listener's.
- `RefusalLog`: a refused or timed-out connection is counted every time but logged once per
  source per `interval` (with the count since the last line), never once per connection.

Invariants: no I/O, no clock (`now` is passed in); `admit` either takes one unit of every
budget it checked or none; `release` gives back exactly what `admit` took (callers release
once per admitted connection). Tables are bounded by the connections they count.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimitsConfig:
    max_connections: int = 5000
    """Inbound connections this listener holds at once (each TCP/TLS listener has its own)."""
    max_per_source: int = 100
    """Inbound connections one source address may hold on this listener; trusted networks
    (security.floodguard.trusted) have no per-source ceiling. Raise it for many phones behind
    one NAT address."""
    header_timeout: float = 10.0
    """Seconds an inbound connection has to finish its TLS handshake and first SIP message, and
    any later message from its first byte to its last; slower ones are closed (slowloris)."""

    def validate(self) -> None:
        if self.max_connections < 1 or self.max_per_source < 1:
            raise ValueError("max_connections and max_per_source must be at least 1")
        if not self.header_timeout > 0:
            raise ValueError("header_timeout must be positive")


class Refusal(enum.Enum):
    """Why a connection was refused (also its metric and log label)."""

    SOURCE = "source_limit"  # the source holds max_per_source connections on this listener
    LISTENER = "listener_limit"  # the listener holds max_connections
    DESCRIPTORS = "descriptor_reserve"  # only the process's reserve is left
    HEADER_TIMEOUT = "header_timeout"  # not a refusal at accept: closed as slowloris


class DescriptorBudget:
    """Process-wide: inbound stream connections of all listeners together."""

    __slots__ = ("limit", "reserve", "in_use", "refused")

    def __init__(self, limit: int, reserve: int) -> None:
        if reserve >= limit:
            raise ValueError(f"descriptor reserve {reserve} leaves nothing of the limit {limit}")
        self.limit = limit
        self.reserve = reserve
        self.in_use = 0
        self.refused = 0

    @property
    def capacity(self) -> int:
        return self.limit - self.reserve

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit - self.reserve:
            self.refused += 1
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


class ListenerBudget:
    """One listener's connections: at most `max_connections`, `max_per_source` per source."""

    __slots__ = ("name", "max_connections", "own_max", "max_per_source", "descriptors",
                 "exempt", "total", "per_source", "refused")

    def __init__(self, name: str, config: ConnectionLimitsConfig, descriptors: DescriptorBudget,
                 exempt: Callable[[str], bool] = lambda host: False) -> None:
        self.name = name
        self.max_connections = config.max_connections
        self.own_max: int | None = None  # the listener's own setting, kept across reloads
        self.max_per_source = config.max_per_source
        self.descriptors = descriptors
        self.exempt = exempt
        self.total = 0
        self.per_source: dict[str, int] = {}
        self.refused = {reason: 0 for reason in Refusal}

    def admit(self, source: str) -> Refusal | None:
        """None: admitted (one unit of each budget taken). Otherwise why not (nothing taken)."""
        held = self.per_source.get(source, 0)
        if held >= self.max_per_source and not self.exempt(source):
            return self._refuse(Refusal.SOURCE)
        if self.total >= self.max_connections:
            return self._refuse(Refusal.LISTENER)
        if not self.descriptors.try_acquire():
            return self._refuse(Refusal.DESCRIPTORS)
        self.total += 1
        self.per_source[source] = held + 1
        return None

    def _refuse(self, reason: Refusal) -> Refusal:
        self.refused[reason] += 1
        return reason

    def release(self, source: str) -> None:
        self.total -= 1
        self.descriptors.release()
        held = self.per_source.get(source, 0) - 1
        if held > 0:
            self.per_source[source] = held
        else:
            self.per_source.pop(source, None)


class RefusalLog:
    """Decides when a refusal is worth a log line: the first from a source, then at most one
    per `interval` per source, carrying how many happened since the previous line."""

    __slots__ = ("interval", "max_sources", "_sources")

    def __init__(self, interval: float = 60.0, max_sources: int = 10_000) -> None:
        self.interval = interval
        self.max_sources = max_sources
        self._sources: OrderedDict[tuple[str, Refusal], list[float]] = OrderedDict()

    def note(self, source: str, reason: Refusal, now: float) -> int:
        """Count one; return how many to report now (0: stay quiet)."""
        key = (source, reason)
        entry = self._sources.get(key)
        if entry is None:
            if len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)
            self._sources[key] = [now, 0.0]
            return 1
        entry[1] += 1
        if now - entry[0] < self.interval:
            return 0
        count = int(entry[1])
        entry[0], entry[1] = now, 0.0
        self._sources.move_to_end(key)
        return count

    def sweep(self, now: float) -> list[tuple[str, Refusal, int]]:
        """Lines still owed (counts since the last line) for sources quiet for `interval`;
        those sources are forgotten."""
        owed: list[tuple[str, Refusal, int]] = []
        for key in [k for k, (last, _) in self._sources.items() if now - last >= self.interval]:
            count = int(self._sources.pop(key)[1])
            if count:
                owed.append((key[0], key[1], count))
        return owed
