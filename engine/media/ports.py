"""Media port pool: even RTP ports from a configured range, each with its odd RTCP neighbour.

Invariants:
- The range lies below 32768 (the kernel hands out ephemeral ports from 32768 up, which would
  collide with our binds) and every port handed out is even; port+1 is reserved with it for RTCP
  (RFC 3550 §11), whether or not the leg ends up multiplexing RTCP (RFC 5761).
- `PortRange.slice(index, count)` cuts the range into disjoint contiguous slices, one per media
  worker, so workers never compete for a port and need no coordination.
- Ports are reused oldest-released first (FIFO), so a late packet for an ended call is unlikely to
  land on a new call's socket. A port that fails to bind is sent to the back of the queue.
- No I/O: the caller binds the sockets and tells the pool what happened.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["EPHEMERAL_PORT_START", "PortPool", "PortPoolExhausted", "PortRange"]

EPHEMERAL_PORT_START = 32768  # /proc/sys/net/ipv4/ip_local_port_range starts here on Linux


class PortPoolExhausted(Exception):
    """Every pair in the slice is in use (the caller answers 503 for the call)."""


@dataclass(frozen=True, slots=True)
class PortRange:
    low: int  # first port, inclusive
    high: int  # last port, inclusive

    def __post_init__(self) -> None:
        if not 1024 <= self.low <= self.high < EPHEMERAL_PORT_START:
            raise ValueError(
                f"media port range {self.low}-{self.high} must lie within 1024-"
                f"{EPHEMERAL_PORT_START - 1} (ephemeral ports start at {EPHEMERAL_PORT_START})"
            )
        if self.pairs == 0:
            raise ValueError(f"media port range {self.low}-{self.high} holds no even/odd pair")

    @property
    def first_even(self) -> int:
        return self.low + (self.low & 1)

    @property
    def pairs(self) -> int:
        return max(0, (self.high - self.first_even + 1) // 2)

    def even_ports(self) -> range:
        return range(self.first_even, self.first_even + 2 * self.pairs, 2)

    def slice(self, index: int, count: int) -> PortRange:
        """The `index`-th of `count` disjoint slices (worker `index` of `count`)."""
        if not 0 <= index < count:
            raise ValueError(f"slice {index} of {count}")
        per_slice = self.pairs // count
        if per_slice == 0:
            raise ValueError(f"media port range {self.low}-{self.high} too small for {count}")
        start = self.first_even + 2 * per_slice * index
        return PortRange(start, start + 2 * per_slice - 1)


class PortPool:
    """The even ports of one worker's slice; `allocate()` hands out an even port (and port+1)."""

    __slots__ = ("range", "_free", "_used")

    def __init__(self, port_range: PortRange) -> None:
        self.range = port_range
        self._free: deque[int] = deque(port_range.even_ports())
        self._used: set[int] = set()

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return len(self._used)

    def allocate(self) -> int:
        if not self._free:
            raise PortPoolExhausted(
                f"no free media port pair in {self.range.low}-{self.range.high}"
            )
        port = self._free.popleft()
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        if port in self._used:
            self._used.remove(port)
            self._free.append(port)

    def bind_failed(self, port: int) -> None:
        """The port could not be bound (someone else holds it): try it again last."""
        self.release(port)
