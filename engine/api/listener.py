"""The admin listener's socket: its own connection budget and timeouts, so that no admin load can
take the process's descriptors or event loop away from SIP.

The listener accepts connections itself (not asyncio.start_server) so that it sees each peer
before any TLS work: over its budget a connection is closed at once, holding no descriptor
beyond the accept. Admitted ones go through `loop.connect_accepted_socket` (TLS handshake
bounded by `header_timeout`) to the HTTP protocol (aiohttp's), wrapped in `_Connection`,
which watches the bytes of each request head.

Invariants:
- At most `max_connections` admitted connections at once, at most `max_per_source` from one
  address; a connection counts from its accept (TLS handshake included) to its close, and is
  released exactly once.
- At most `max_new_per_second` new connections are admitted per second in all, and
  `max_new_per_source_per_second` from one address (token buckets, bursts of two seconds'
  worth): a TLS handshake costs the event loop about a millisecond of CPU, so this bounds what a
  storm of short connections can take from SIP. When the total runs out, the listener stops
  accepting until the next token (the kernel queues the rest, at no cost to the loop); a
  source over its own rate is refused at accept.
- A connection with no request in progress and no bytes arriving is closed after
  `idle_timeout`; once a request head has begun it must be complete within `header_timeout`
  and within `max_head_size` bytes, or the connection is cut (slowloris, oversized heads).
  While a request is served (the server calls `request_started`/`request_finished`) neither
  clock runs: a long download is bounded by the client reading it, not by these timers.
- Every refusal and cut is counted in `counters`; none is logged per connection (a flood must
  not become a log flood).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from ..io.listening import open_listening_socket

HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerLimits:
    max_connections: int = 512
    max_per_source: int = 32
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_head_size: int = 16 * 1024
    max_new_per_second: float = 200.0
    max_new_per_source_per_second: float = 100.0


class _Bucket:
    """A token bucket: `rate` tokens a second, at most `burst` kept."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = 2.0 * rate
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class ConnectionBudget:
    """Admission bookkeeping, no I/O: how many connections are open and how fast new ones come,
    in all and per source. Time is an argument."""

    __slots__ = ("limits", "open", "by_source", "_rate", "_source_rates")

    SOURCES_KEPT = 10_000  # past this many source buckets, full ones are forgotten

    def __init__(self, limits: ListenerLimits, now: float = 0.0) -> None:
        self.limits = limits
        self.open = 0
        self.by_source: dict[str, int] = {}
        self._rate = _Bucket(limits.max_new_per_second, now)
        self._source_rates: dict[str, _Bucket] = {}

    def admit(self, source: str, now: float) -> str | None:
        """None when admitted (and counted), else the reason: "budget", "per_source", "rate"
        or "source_rate"."""
        if self.open >= self.limits.max_connections:
            return "budget"
        held = self.by_source.get(source, 0)
        if held >= self.limits.max_per_source:
            return "per_source"
        bucket = self._source_rates.get(source)
        if bucket is None:
            if len(self._source_rates) >= self.SOURCES_KEPT:
                self._source_rates = {k: b for k, b in self._source_rates.items()
                                      if not b.full(now)}
            bucket = self._source_rates[source] = _Bucket(
                self.limits.max_new_per_source_per_second, now)
        if not bucket.take(now):
            return "source_rate"
        if not self._rate.take(now):
            return "rate"
        self.open += 1
        self.by_source[source] = held + 1
        return None

    def release(self, source: str) -> None:
        self.open -= 1
        held = self.by_source[source] - 1
        if held:
            self.by_source[source] = held
        else:
            del self.by_source[source]


# Connection states: between requests, inside a request head, serving a request.
_IDLE, _HEAD, _ACTIVE = 0, 1, 2


class _Connection(asyncio.Protocol):
    """Wraps the HTTP protocol of one admitted connection; passes every call through."""

    __slots__ = ("listener", "inner", "source", "transport", "state", "head_bytes", "tail",
                 "timer", "made", "released")

    def __init__(self, listener: BudgetedListener, inner: asyncio.Protocol, source: str) -> None:
        self.listener = listener
        self.inner = inner
        self.source = source
        self.transport: asyncio.Transport | None = None
        self.state = _IDLE
        self.head_bytes = 0
        self.tail = b""
        self.timer: asyncio.TimerHandle | None = None
        self.made = False
        self.released = False

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        self.transport = transport  # type: ignore[assignment]
        self.listener.connections[self.inner] = self
        self._arm(self.listener.limits.idle_timeout, "idle_timeouts_total")
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.state != _ACTIVE:
            self._watch_head(data)
            if self.transport is None or self.transport.is_closing():
                return
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.listener.connections.pop(self.inner, None)
        self.transport = None
        try:
            self.inner.connection_lost(exc)
        finally:
            self.release()

    # -- request heads ---------------------------------------------------------------------------
    def _watch_head(self, data: bytes) -> None:
        limits = self.listener.limits
        if self.state == _IDLE:
            self.state = _HEAD
            self.head_bytes = 0
            self.tail = b""
            self._arm(limits.header_timeout, "header_timeouts_total")
        window = self.tail + data
        end = window.find(HEAD_END)
        if end >= 0:
            self.head_bytes += end + len(HEAD_END) - len(self.tail)
        else:
            self.head_bytes += len(data)
        if self.head_bytes > limits.max_head_size:
            self._cut("heads_too_large_total")
        elif end >= 0:
            self.request_started()
        else:
            self.tail = window[-3:]

    def request_started(self) -> None:
        self.state = _ACTIVE
        self._disarm()

    def request_finished(self) -> None:
        if self.transport is None:
            return
        self.state = _IDLE
        self._arm(self.listener.limits.idle_timeout, "idle_timeouts_total")

    # -- timers ----------------------------------------------------------------------------------
    def _arm(self, delay: float, counter: str) -> None:
        self._disarm()
        self.timer = self.listener.loop.call_later(delay, self._cut, counter)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _cut(self, counter: str) -> None:
        self.timer = None
        self.listener.counters[counter] += 1
        if self.transport is not None:
            self.transport.abort()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.listener.budget.release(self.source)


class BudgetedListener:
    """Accepts on one TCP socket under a ConnectionBudget; `protocol_factory` makes the HTTP
    protocol of each admitted connection."""

    ACCEPTS_PER_WAKE = 64  # bounded work per readiness event, so a connect flood shares the loop

    def __init__(self, protocol_factory: Callable[[], asyncio.Protocol], limits: ListenerLimits,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.protocol_factory = protocol_factory
        self.limits = limits
        self.loop = loop
        self.budget = ConnectionBudget(limits, loop.time())
        self.connections: dict[asyncio.Protocol, _Connection] = {}
        self.counters: dict[str, int] = {
            "connections_accepted_total": 0, "connections_refused_budget_total": 0,
            "connections_refused_per_source_total": 0, "connections_refused_rate_total": 0,
            "connections_refused_source_rate_total": 0, "tls_handshake_failures_total": 0,
            "header_timeouts_total": 0, "idle_timeouts_total": 0, "heads_too_large_total": 0,
            "accept_errors_total": 0,
        }
        self._sock: socket.socket | None = None
        self._context: ssl.SSLContext | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._paused: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, context: ssl.SSLContext | None = None
                    ) -> tuple[str, int]:
        sock = open_listening_socket(host, port)
        self._sock = sock
        self._context = context
        self.loop.add_reader(sock.fileno(), self._accept)
        bound = sock.getsockname()
        return bound[0], bound[1]

    @property
    def open_connections(self) -> int:
        return self.budget.open

    def _accept(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(self.ACCEPTS_PER_WAKE):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.counters["accept_errors_total"] += 1
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause(0.1)  # out of descriptors: wait instead of spinning
                return
            source = str(address[0])
            refused = self.budget.admit(source, self.loop.time())
            if refused is not None:
                self.counters[f"connections_refused_{refused}_total"] += 1
                conn.close()
                if refused == "rate":
                    # Out of tokens for everyone: stop accepting until the next one. What
                    # arrives meanwhile waits in the kernel's accept queue, at no cost here.
                    self._pause(1.0 / self.limits.max_new_per_second)
                    return
                continue
            self.counters["connections_accepted_total"] += 1
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self.loop.create_task(self._connect(conn, source))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _pause(self, seconds: float) -> None:
        if self._sock is not None and self._paused is None:
            self.loop.remove_reader(self._sock.fileno())
            self._paused = self.loop.call_later(seconds, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._paused = None
        if self._sock is not None:
            self.loop.add_reader(self._sock.fileno(), self._accept)

    async def _connect(self, conn: socket.socket, source: str) -> None:
        wrapper = _Connection(self, self.protocol_factory(), source)
        try:
            await self.loop.connect_accepted_socket(
                lambda: wrapper, conn, ssl=self._context,
                ssl_handshake_timeout=self.limits.header_timeout if self._context else None)
        except (TimeoutError, OSError, ssl.SSLError, asyncio.CancelledError) as exc:
            # The loop closed the socket with the failed transport: closing it here as well
            # could close a descriptor number already given to someone else.
            if self._context is not None and not isinstance(exc, asyncio.CancelledError):
                self.counters["tls_handshake_failures_total"] += 1
            if not wrapper.made:
                wrapper.release()
            if isinstance(exc, asyncio.CancelledError):
                raise

    def request_started(self, protocol: object) -> None:
        connection = self.connections.get(protocol)  # type: ignore[call-overload]
        if connection is not None:
            connection.request_started()

    def request_finished(self, protocol: object) -> None:
        connection = self.connections.get(protocol)  # type: ignore[call-overload]
        if connection is not None:
            connection.request_finished()

    def close(self) -> None:
        """Stop accepting and cut every connection (the HTTP layer finished what it could)."""
        if self._paused is not None:
            self._paused.cancel()
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for task in list(self._handshakes):
            task.cancel()
        for connection in list(self.connections.values()):
            if connection.transport is not None:
                connection.transport.abort()
