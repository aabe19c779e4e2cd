"""The only SIP socket code: UDP, TCP and TLS listeners and connections around the SIP core.

Invariants:
- Every received datagram or stream frame goes to one callback, `deliver(data, flow)`; the
  callback drains the core's outbox through `send`. Nothing here parses SIP beyond framing.
- Stream connections are reused: a message for (transport, host, port) goes over a live
  connection to that peer when there is one (RFC 3261 §18.2.2, RFC 5923's intent), else a new
  one is opened and the message waits for it.
- CRLF keep-alive pings get their pong (RFC 5626 §3.5.1); a frame that cannot be delimited or
  exceeds the maximum size is handed to `reject` (which answers it, e.g. 413 or 400, when it is
  a request), is counted, and closes its connection after that answer; idle connections are
  closed.
- Inbound connections are admitted before any byte is read (and before a TLS handshake): by
  the flood guard, then by the listener's budget and the process's descriptor reserve
  (connlimits.py). Each admitted connection holds one unit until it is gone, released once.
  An inbound connection must finish its handshake and each message within `header_timeout`
  (slowloris); refusals and such closes are counted and reported through `on_limit`.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..sip.endpoint import Flow
from ..sip.errors import SipFramingError
from ..sip.parser import KEEPALIVE_PONG, KeepAlivePing, StreamFramer
from .connlimits import ConnectionLimitsConfig, DescriptorBudget, ListenerBudget, Refusal
from .listening import open_listening_socket

Deliver = Callable[[bytes, Flow], None]
# A stream frame that cannot be delimited: (its first bytes, the error with its status, flow).
Reject = Callable[[bytes, SipFramingError, Flow], None]
# Asked before anything is parsed: (source host, the datagram or frame, or None on connect).
Admit = Callable[[str, bytes | None], bool]
# Told when an inbound connection exceeded a limit: (source host, listener, why).
LimitExceeded = Callable[[str, str, Refusal], None]


class TransportCounters:
    __slots__ = ("datagrams_in", "dropped_by_guard", "oversize", "framing_errors",
                 "connections_opened", "connections_closed", "send_errors", "keepalives",
                 "refused_source_limit", "refused_listener_limit", "refused_descriptor_reserve",
                 "header_timeouts", "idle_timeouts", "tls_handshake_failures", "accept_errors")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


ACCEPT_BATCH = 64  # connections accepted per wake-up of a listener (then other work runs)
ACCEPT_RETRY_DELAY = 1.0  # seconds a listener pauses after the process ran out of descriptors
_REFUSAL_COUNTERS = {Refusal.SOURCE: "refused_source_limit",
                     Refusal.LISTENER: "refused_listener_limit",
                     Refusal.DESCRIPTORS: "refused_descriptor_reserve",
                     Refusal.HEADER_TIMEOUT: "header_timeouts"}


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, deliver: Deliver, admit: Admit, counters: TransportCounters,
                 max_size: int) -> None:
        self.deliver = deliver
        self.admit = admit
        self.counters = counters
        self.max_size = max_size
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport: no isinstance.
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        counters = self.counters
        counters.datagrams_in += 1
        host = addr[0]
        if not self.admit(host, data):
            counters.dropped_by_guard += 1
            return
        if len(data) > self.max_size:
            counters.oversize += 1
            return
        if data in (b"\r\n\r\n", b"\r\n"):  # UDP keep-alive (RFC 5626 §4.4.1 uses STUN; be kind)
            counters.keepalives += 1
            return
        self.deliver(data, Flow("udp", host, addr[1]))

    def error_received(self, exc: Exception) -> None:
        self.counters.send_errors += 1


class StreamConnection(asyncio.Protocol):
    def __init__(self, manager: TransportManager, transport_name: str, conn_id: int,
                 outbound: bool, *, budget: ListenerBudget | None = None,
                 source: str = "", accepted_at: float | None = None) -> None:
        self.manager = manager
        self.transport_name = transport_name
        self.id = conn_id
        self.outbound = outbound
        self.framer = StreamFramer(manager.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.flow: Flow | None = None
        self.pending: list[bytes] = []
        self.last_activity = 0.0
        # Inbound: since when a message (the first one: since the connection was accepted,
        # TLS handshake included) has been incomplete; None when nothing waits to be completed.
        self.partial_since = accepted_at
        # Inbound: the listener budget unit this connection holds for `source` until it is gone.
        self.budget = budget
        self.source = source
        self.doomed = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.doomed:  # its source was banned while the connection was being set up
            transport.abort()
            return
        peer = transport.get_extra_info("peername")
        self.flow = Flow(self.transport_name, peer[0], peer[1], self.id)
        self.last_activity = self.manager.loop.time()
        self.manager.register(self)
        for data in self.pending:
            transport.write(data)  # type: ignore[attr-defined]
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        manager = self.manager
        now = self.last_activity = manager.loop.time()
        flow = self.flow
        assert flow is not None
        try:
            frames = self.framer.feed(data)
        except SipFramingError:
            self._unframable(flow)
            return
        if not self.outbound:
            if self.framer.pending_bytes:
                if self.partial_since is None or frames:
                    self.partial_since = now  # a new message began
            else:
                self.partial_since = None
        for frame in frames:
            if isinstance(frame, KeepAlivePing):
                manager.counters.keepalives += 1
                if self.transport is not None:
                    self.transport.write(KEEPALIVE_PONG)
                continue
            if not self.outbound and not manager.admit(flow.host, frame):
                manager.counters.dropped_by_guard += 1
                continue
            manager.deliver(frame, flow)
        if self.framer.error is not None:
            self._unframable(flow)

    def _unframable(self, flow: Flow) -> None:
        """Answer the frame that broke the stream, then close (asyncio writes what is queued
        before it closes, so the answer goes out first)."""
        manager = self.manager
        manager.counters.framing_errors += 1
        error = self.framer.error
        if error is not None and not self.outbound:
            manager.reject(self.framer.error_head, error, flow)
        if self.transport is not None:
            self.transport.close()

    def write(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def _lost(self) -> None:
        """Once per connection, whichever way it ended (connection_lost, a failed handshake)."""
        if self.closed:
            return
        self.closed = True
        if self.budget is not None:
            self.budget.release(self.source)
            self.budget = None
        self.manager.unregister(self)


@dataclass(slots=True)
class _Listener:
    sock: socket.socket
    name: str
    context: ssl.SSLContext | None
    budget: ListenerBudget


class TransportManager:
    """Owns the listeners and connections; `send(data, flow)` is the core's way out."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Deliver, *,
                 admit: Admit | None = None, reject: Reject | None = None,
                 max_message_size: int = 65535,
                 idle_timeout: float = 600.0,
                 client_tls: ssl.SSLContext | None = None,
                 limits: ConnectionLimitsConfig | None = None,
                 descriptors: DescriptorBudget | None = None,
                 exempt: Callable[[str], bool] = lambda host: False,
                 on_limit: LimitExceeded | None = None) -> None:
        self.loop = loop
        self.deliver = deliver
        self.admit: Admit = admit or (lambda host, data: True)
        self.reject: Reject = reject or (lambda head, error, flow: None)
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.limits = limits or ConnectionLimitsConfig()
        self.descriptors = descriptors or DescriptorBudget(1 << 30, 0)
        self.exempt = exempt  # sources without a per-source ceiling (trusted networks)
        self.on_limit = on_limit
        # An outbound TCP/TLS connection could not be opened: the SIP layer fails the client
        # transactions waiting on that flow (RFC 3261 §17.1.1.2) instead of waiting for Timer B.
        self.on_connect_failed: Callable[[Flow], None] | None = None
        self.budgets: dict[str, ListenerBudget] = {}
        self.client_tls = client_tls
        self.counters = TransportCounters()
        self.udp: UdpEndpoint | None = None
        self.listeners: list[_Listener] = []
        self.connections: dict[int, StreamConnection] = {}
        # Accepted, not yet connected (a TLS handshake runs, or connection_made is due).
        self.accepting: dict[int, StreamConnection] = {}
        self.by_peer: dict[tuple[str, str, int], StreamConnection] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.bound: dict[str, tuple[str, int]] = {}

    async def listen_udp(self, host: str, port: int) -> tuple[str, int]:
        transport, protocol = await self.loop.create_datagram_endpoint(
            lambda: UdpEndpoint(self.deliver, self.admit, self.counters, self.max_message_size),
            local_addr=(host, port),
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
                except OSError:
                    pass
        self.udp = protocol
        bound = transport.get_extra_info("sockname")[:2]
        self.bound["udp"] = bound
        return bound

    async def listen_stream(self, transport_name: str, host: str, port: int,
                            context: ssl.SSLContext | None = None, *,
                            max_connections: int | None = None) -> tuple[str, int]:
        """Listen for SIP over TCP (or TLS with `context`). Connections are accepted here, not by
        loop.create_server, so that each is admitted (flood guard, budgets) on its address alone
        before a protocol, a read or a TLS handshake is spent on it."""
        sock = open_listening_socket(host, port)
        budget = self.budgets[transport_name] = ListenerBudget(
            transport_name, self.limits, self.descriptors, lambda source: self.exempt(source))
        if max_connections is not None:
            budget.max_connections = budget.own_max = max_connections
        listener = _Listener(sock, transport_name, context, budget)
        self.listeners.append(listener)
        self.loop.add_reader(sock.fileno(), self._accept, listener)
        bound = sock.getsockname()[:2]
        self.bound[transport_name] = bound
        return bound

    def _accept(self, listener: _Listener) -> None:
        now = self.loop.time()
        for _ in range(ACCEPT_BATCH):
            try:
                client, address = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # EMFILE/ENFILE/ENOBUFS: out of descriptors despite the reserve (something
                # else used them). Stop accepting for a moment instead of spinning on it.
                self.counters.accept_errors += 1
                self.loop.remove_reader(listener.sock.fileno())
                self.loop.call_later(ACCEPT_RETRY_DELAY, self._resume_accepting, listener)
                return
            source = address[0]
            if not self.admit(source, None):
                self.counters.dropped_by_guard += 1
                client.close()
                continue
            refusal = listener.budget.admit(source)
            if refusal is not None:
                client.close()
                self.limit_exceeded(source, listener.name, refusal)
                continue
            client.setblocking(False)
            conn = StreamConnection(self, listener.name, next(self._ids), outbound=False,
                                    budget=listener.budget, source=source, accepted_at=now)
            self.accepting[conn.id] = conn
            self.spawn(self._serve_accepted(conn, client, listener.context))

    def _resume_accepting(self, listener: _Listener) -> None:
        if listener.sock.fileno() >= 0:
            self.loop.add_reader(listener.sock.fileno(), self._accept, listener)

    async def _serve_accepted(self, conn: StreamConnection, client: socket.socket,
                              context: ssl.SSLContext | None) -> None:
        try:
            await self.loop.connect_accepted_socket(
                lambda: conn, client, ssl=context,
                ssl_handshake_timeout=self.limits.header_timeout if context else None)
        except Exception:  # any failed handshake (reset, timeout, bad TLS) ends it here
            if context is not None:
                self.counters.tls_handshake_failures += 1
                if self.loop.time() - (conn.partial_since or 0.0) >= self.limits.header_timeout:
                    self.limit_exceeded(conn.source, conn.transport_name,
                                        Refusal.HEADER_TIMEOUT)  # a silent TLS slowloris
            client.close()
            conn._lost()
        finally:
            self.accepting.pop(conn.id, None)

    def apply_limits(self, limits: ConnectionLimitsConfig) -> None:
        """New budgets and timeouts (SIGHUP); connections over a lowered budget stay."""
        self.limits = limits
        for budget in self.budgets.values():
            budget.max_connections = budget.own_max or limits.max_connections
            budget.max_per_source = limits.max_per_source

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def limit_exceeded(self, source: str, listener: str, reason: Refusal) -> None:
        name = _REFUSAL_COUNTERS[reason]
        setattr(self.counters, name, getattr(self.counters, name) + 1)
        if self.on_limit is not None:
            self.on_limit(source, listener, reason)

    def register(self, conn: StreamConnection) -> None:
        self.counters.connections_opened += 1
        self.connections[conn.id] = conn
        assert conn.flow is not None
        self.by_peer[(conn.transport_name, conn.flow.host, conn.flow.port)] = conn

    def unregister(self, conn: StreamConnection) -> None:
        if self.connections.pop(conn.id, None) is not None:
            self.counters.connections_closed += 1
        if conn.flow is not None:
            key = (conn.transport_name, conn.flow.host, conn.flow.port)
            if self.by_peer.get(key) is conn:
                del self.by_peer[key]

    def send(self, data: bytes, flow: Flow) -> None:
        if flow.transport == "udp":
            udp = self.udp
            if udp is None or udp.transport is None:
                self.counters.send_errors += 1
                return
            udp.transport.sendto(data, (flow.host, flow.port))
            return
        conn = self.connections.get(flow.connection) if flow.connection else None
        if conn is None or conn.closed:
            conn = self.by_peer.get((flow.transport, flow.host, flow.port))
        if conn is None or conn.closed:
            conn = self._connect(flow)
        conn.write(data)

    def _connect(self, flow: Flow) -> StreamConnection:
        conn = StreamConnection(self, flow.transport, next(self._ids), outbound=True)
        key = (flow.transport, flow.host, flow.port)
        self.by_peer[key] = conn
        context = self.client_tls if flow.transport == "tls" else None
        if flow.transport == "tls" and context is None:
            context = ssl.create_default_context()

        async def open_connection() -> None:
            try:
                await self.loop.create_connection(lambda: conn, flow.host, flow.port,
                                                  ssl=context)
            except OSError:
                self.counters.send_errors += 1
                conn.closed = True
                if self.by_peer.get(key) is conn:
                    del self.by_peer[key]
                if self.on_connect_failed is not None:
                    self.on_connect_failed(flow)

        self.spawn(open_connection())
        return conn

    def close_idle(self, now: float) -> int:
        """Close idle connections, and inbound ones whose handshake or message is overdue
        (slowloris: `limits.header_timeout`); the latter are reported like a refusal."""
        closed = 0
        header_timeout = self.limits.header_timeout
        idle_timeout = self.idle_timeout
        for conn in list(self.connections.values()):
            if conn.closed:
                continue
            since = conn.partial_since
            if since is not None and now - since > header_timeout:
                conn.close()
                closed += 1
                assert conn.flow is not None
                self.limit_exceeded(conn.flow.host, conn.transport_name, Refusal.HEADER_TIMEOUT)
            elif now - conn.last_activity > idle_timeout:
                conn.close()
                closed += 1
                self.counters.idle_timeouts += 1
        return closed

    def close_source(self, source: str) -> int:
        """Close every inbound connection of `source` (it was just banned)."""
        doomed = [conn for conn in self.connections.values()
                  if not conn.outbound and conn.flow is not None and conn.flow.host == source]
        for conn in doomed:
            conn.close()
        starting = [conn for conn in self.accepting.values()
                    if conn.source == source and conn.id not in self.connections]
        for conn in starting:
            conn.doomed = True  # closed as soon as its transport exists
        return len(doomed) + len(starting)

    def close(self) -> None:
        for listener in self.listeners:
            if listener.sock.fileno() >= 0:
                self.loop.remove_reader(listener.sock.fileno())
                listener.sock.close()
        if self.udp is not None and self.udp.transport is not None:
            self.udp.transport.close()
        for conn in list(self.connections.values()):
            conn.close()
