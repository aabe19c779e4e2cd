"""Typed `media:` section of the YAML config (validated once at load time).

The core never sees the raw dict: `MediaConfig.from_dict(raw, path="media")` checks every field
and names the YAML path of the first bad one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from ..runtime.typedyaml import LineMap, build
from .ports import PortRange

__all__ = ["LatchMode", "MediaConfig"]

LatchMode = Literal["host", "any", "off"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaConfig:
    workers: int = 0
    """Media worker processes; 0 = one per CPU core."""
    address: str = "127.0.0.1"
    """Local address the RTP sockets bind to."""
    addresses: tuple[str, ...] = ()
    """More local addresses for RTP besides `address`, each with the whole port range. One
    address holds (port_max - port_min + 1) / 2 even/odd pairs, one per leg (~6,380, so ~3,190
    calls); a 10,000-call node needs four. Workers are spread over the addresses round-robin and
    the workers sharing an address split its range."""
    advertised_address: str = ""
    """Address written into SDP (c=); empty = `address`."""
    port_min: int = 20000
    """First RTP port (inclusive); the range is cut into one slice per worker."""
    port_max: int = 32767
    """Last RTP port (inclusive); must stay below 32768, where ephemeral ports start."""
    timeout: float = 60.0
    """Seconds without media (in either direction) after which the call is reported dead."""
    hold_timeout: float = 3600.0
    """The same while both legs are on hold (nobody is supposed to send)."""
    latch: LatchMode = "host"
    """After a leg has latched, who may take it over: a new port on the same host, any source,
    or nobody. Before the first packet any source may latch (comedia); SRTP legs only latch on a
    packet that authenticates."""
    relatch_idle: float = 0.25
    """Seconds the current source must have been silent before another source takes over."""
    music_on_hold: str = ""
    """8 kHz mono 16-bit WAV that callers waiting in a queue hear (a queue's own
    `music_on_hold` overrides it); empty: no music, callers hear ringing."""

    def __post_init__(self) -> None:
        PortRange(self.port_min, self.port_max)
        if self.workers < 0:
            raise ValueError("workers must be 0 (one per core) or more")
        if self.timeout <= 0 or self.hold_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.latch not in ("host", "any", "off"):
            raise ValueError("latch must be host, any or off")
        every = self.all_addresses
        if len(set(every)) != len(every):
            raise ValueError("addresses: each address may appear once (address included)")
        if len(every) > 1 and self.advertised_address:
            raise ValueError(
                "advertised_address works with one local address only: with several, the"
                " same port on two addresses would be advertised as one"
            )
        if self.workers and self.workers < len(every):
            raise ValueError(
                f"workers: {len(every)} media addresses need at least {len(every)} workers"
            )

    @property
    def all_addresses(self) -> tuple[str, ...]:
        return (self.address, *self.addresses)

    @property
    def worker_count(self) -> int:
        return self.workers or max(os.cpu_count() or 1, len(self.all_addresses))

    def worker_bindings(self) -> list[tuple[str, PortRange]]:
        """Worker i's local address and port slice: addresses round-robin, and the workers
        that share an address split its range, so no two workers ever bind the same port."""
        every = self.all_addresses
        count = self.worker_count
        bindings = []
        for index in range(count):
            slot = index % len(every)
            sharing = len(range(slot, count, len(every)))
            bindings.append((every[slot], self.port_range.slice(index // len(every), sharing)))
        return bindings

    @property
    def port_range(self) -> PortRange:
        return PortRange(self.port_min, self.port_max)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, *, path: str = "media") -> MediaConfig:
        """Checked by the same typed builder as the rest of the YAML: a bad field raises
        ValueError naming its dotted path (`media.<key>: ...`)."""
        config: MediaConfig = build(cls, raw or {}, LineMap(), path)
        return config
