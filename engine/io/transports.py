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
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import Callable

from ..sip.endpoint import Flow
from ..sip.errors import SipFramingError
from ..sip.parser import KEEPALIVE_PONG, KeepAlivePing, StreamFramer

Deliver = Callable[[bytes, Flow], None]
# A stream frame that cannot be delimited: (its first bytes, the error with its status, flow).
Reject = Callable[[bytes, SipFramingError, Flow], None]
# Asked before anything is parsed: (source host, the datagram or frame, or None on connect).
Admit = Callable[[str, bytes | None], bool]


class TransportCounters:
    __slots__ = ("datagrams_in", "dropped_by_guard", "oversize", "framing_errors",
                 "connections_opened", "connections_closed", "send_errors", "keepalives")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


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
                 outbound: bool) -> None:
        self.manager = manager
        self.transport_name = transport_name
        self.id = conn_id
        self.outbound = outbound
        self.framer = StreamFramer(manager.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.flow: Flow | None = None
        self.pending: list[bytes] = []
        self.last_activity = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.flow = Flow(self.transport_name, peer[0], peer[1], self.id)
        self.last_activity = self.manager.loop.time()
        manager = self.manager
        if not self.outbound and not manager.admit(peer[0], None):
            manager.counters.dropped_by_guard += 1
            transport.abort()
            return
        manager.register(self)
        for data in self.pending:
            transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        manager = self.manager
        self.last_activity = manager.loop.time()
        flow = self.flow
        assert flow is not None
        try:
            frames = self.framer.feed(data)
        except SipFramingError:
            self._unframable(flow)
            return
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.manager.unregister(self)


class TransportManager:
    """Owns the listeners and connections; `send(data, flow)` is the core's way out."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Deliver, *,
                 admit: Admit | None = None, reject: Reject | None = None,
                 max_message_size: int = 65535,
                 idle_timeout: float = 600.0,
                 client_tls: ssl.SSLContext | None = None) -> None:
        self.loop = loop
        self.deliver = deliver
        self.admit: Admit = admit or (lambda host, data: True)
        self.reject: Reject = reject or (lambda head, error, flow: None)
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.client_tls = client_tls
        self.counters = TransportCounters()
        self.udp: UdpEndpoint | None = None
        self.servers: list[asyncio.base_events.Server] = []
        self.connections: dict[int, StreamConnection] = {}
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
            import socket

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
                            context: ssl.SSLContext | None = None) -> tuple[str, int]:
        server = await self.loop.create_server(
            lambda: StreamConnection(self, transport_name, next(self._ids), outbound=False),
            host, port, ssl=context, reuse_address=True, backlog=1024,
        )
        self.servers.append(server)
        bound = server.sockets[0].getsockname()[:2]
        self.bound[transport_name] = bound
        return bound

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

        task = self.loop.create_task(open_connection())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn

    def close_idle(self, now: float) -> int:
        closed = 0
        for conn in list(self.connections.values()):
            if now - conn.last_activity > self.idle_timeout and conn.transport is not None:
                conn.transport.close()
                closed += 1
        return closed

    def close(self) -> None:
        for server in self.servers:
            server.close()
        if self.udp is not None and self.udp.transport is not None:
            self.udp.transport.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
