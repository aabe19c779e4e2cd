"""The per-packet media relay of one worker process (asyncio datagram protocols, on uvloop).

A `MediaSession` joins two legs, A (index 0) and B (index 1). Each `Leg` owns one local UDP
socket (RTP, and RTCP too when rtcp-mux is negotiated, RFC 5761) and, only when its peer does not
multiplex, a second socket on port+1 for RTCP. A packet received on leg X is sent out of leg Y's
socket to Y's peer, so every peer sends to and receives from the same address (symmetric RTP).

Per packet (`Leg.datagram_received`): source check → SRTP unprotect (receiver keyed with what X
gave us) → hold check → `RtpStreamRewriter` of Y (SSRC/sequence/timestamp continuity across
re-INVITEs) → X's recording buffer, if recorded → SRTP protect (sender keyed with what we gave
Y) → sendto.
No task, no await, no logging, no allocation beyond what the SRTP layer and the rewriter need.
Bad packets never raise: they are counted on the leg and dropped.

Recording costs two list appends per packet here: a recorded leg's `recording` is a list that
receives the plain packet and its arrival time; the recorder drains it from its own timer
(recording/live.py), so there is no per-packet call into the recorder.

The fast path calls libsrtp through `SrtpSession.rtp_unprotector()`/`rtp_protector()` (kept on the
leg as `unprotect_in`/`protect_out`, next to the `SrtpSession` they belong to) and catches their
exceptions:
a refused packet is rare, so its classification, counting and the fallback key live on the slow
path (`_unprotect_failed`). The rewriter passes packets through untouched until a source change
gives it offsets to apply (rtp.py).

Invariants:
- A packet from the address we send to is on the fast path. A packet from any other address is
  a latching candidate (comedia): before the first packet since the leg's SDP named its peer, any
  source latches; after that, `latch` decides ("host": a new port on the same host, "any": any
  host, "off": nobody) and the current source must have been silent for `relatch_idle` seconds.
  On an SRTP leg a candidate latches only if its packet authenticates. Refused candidates are
  counted in `unexpected_source`.
- Changing a leg's SRTP receive key keeps the previous receiver for a few seconds as a fallback,
  so packets in flight across a re-INVITE still authenticate. An unchanged key keeps its session
  (libsrtp's replay state and rollover counter survive; an SRTP sender is never re-created with
  the same key, which could repeat keystream).
- RTCP is relayed (and re-protected as SRTCP) even while on hold (RFC 3264 §5.1), with SSRCs
  and numbering translated where a source change made the rewriters shift a stream (rtcp.py),
  so reports name the stream each endpoint actually received; RTP is relayed
  from X to Y only when we receive from X and send to Y (a=sendonly/recvonly/inactive).
- RFC 4733 telephone-events are RTP like any other payload type: they pass through unchanged
  apart from the rewriter's continuity offsets.
- Legs reference each other; `MediaSession.close()` breaks the cycle so the garbage collector
  never has to find it.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable
from typing import Any

from .ports import PortPool, PortPoolExhausted
from .rtcp import translate_rtcp
from .rtp import RtpStreamRewriter
from .srtp import SRTP_ERRORS, SrtpFailure, SrtpSession

__all__ = [
    "COUNTERS",
    "KEY_FALLBACK_SECONDS",
    "Leg",
    "MediaSession",
    "Relay",
    "RelayError",
]

Address = tuple[str, int]
#: SrtpSession.rtp_protector() / rtp_unprotector(): raise one of SRTP_ERRORS on refusal.
SrtpTransform = Callable[[bytes], bytes]

COUNTERS = (
    "packets_in",
    "bytes_in",
    "packets_out",
    "bytes_out",
    "malformed",
    "srtp_auth_failures",
    "srtp_replays",
    "unexpected_source",
    "dropped_hold",
    "send_failures",
)
KEY_FALLBACK_SECONDS = 5.0  # how long an old receive key is still tried after a re-key
_BIND_ATTEMPTS = 16
_monotonic = time.monotonic


class RelayError(Exception):
    """A control-plane error (unknown session, no ports): reported to the controller."""


class _RtcpSocket(asyncio.DatagramProtocol):
    """The separate RTCP socket (port+1) of a leg whose peer does not multiplex."""

    __slots__ = ("leg",)

    def __init__(self, leg: Leg) -> None:
        self.leg = leg

    def datagram_received(self, data: bytes, addr: Address) -> None:  # type: ignore[override]
        leg = self.leg
        remote = leg.rtcp_remote
        if addr != remote:
            # RTCP latches loosely: same host as the RTP source is enough.
            if remote is not None and leg.remote is not None and addr[0] != leg.remote[0]:
                leg.unexpected_source += 1
                return
            leg.rtcp_remote = addr
        leg.rtcp_received(data)

    def error_received(self, exc: Exception) -> None:
        self.leg.send_failures += 1


class Leg(asyncio.DatagramProtocol):
    __slots__ = (
        "owner",
        "session_id",
        "index",
        "port",
        "peer",
        "transport",
        "rtcp_transport",
        "remote",
        "sdp_remote",
        "rtcp_remote",
        "rtcp_mux",
        "send",
        "receive",
        "forward",
        "srtp_in",
        "srtp_in_key",
        "srtp_in_previous",
        "srtp_out",
        "srtp_out_key",
        "unprotect_in",
        "protect_out",
        "keys_changed_at",
        "rewriter",
        "updated_at",
        "last_rx",
        "recording",
        *COUNTERS,
    )

    def __init__(self, owner: Relay, session_id: str, index: int, port: int) -> None:
        self.owner = owner
        self.session_id = session_id
        self.index = index
        self.port = port
        self.peer: Leg | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.rtcp_transport: asyncio.DatagramTransport | None = None
        self.remote: Address | None = None  # where we send RTP (latched or from SDP)
        self.sdp_remote: Address | None = None
        self.rtcp_remote: Address | None = None
        self.rtcp_mux = True
        self.send = True  # we may send media to this leg's peer
        self.receive = True  # we accept media from this leg's peer
        self.forward = False  # receive here and send on the peer leg: RTP flows this way
        self.srtp_in: SrtpSession | None = None
        self.srtp_in_key: tuple[str, bytes] | None = None
        self.srtp_in_previous: SrtpSession | None = None
        self.srtp_out: SrtpSession | None = None
        self.srtp_out_key: tuple[str, bytes] | None = None
        self.unprotect_in: SrtpTransform | None = None  # srtp_in.rtp_unprotector()
        self.protect_out: SrtpTransform | None = None  # srtp_out.rtp_protector()
        self.keys_changed_at = 0.0
        self.rewriter = RtpStreamRewriter()  # the stream we send to this leg's peer
        self.updated_at = _monotonic()
        self.last_rx = 0.0
        # Recorded: packets from this leg's peer go here, alternating with their arrival time.
        self.recording: list[bytes | float] | None = None
        for name in COUNTERS:
            setattr(self, name, 0)

    # --- the packet path --------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:  # type: ignore[override]
        if addr != self.remote:
            self._from_new_source(data, addr)
            return
        now = _monotonic()
        self.last_rx = now
        self.packets_in += 1
        self.bytes_in += len(data)
        if len(data) < 8:
            self.malformed += 1
            return
        if 192 <= data[1] <= 223:  # RTCP on the multiplexed port, RFC 5761 §4
            self.rtcp_received(data)
            return
        unprotect = self.unprotect_in
        if unprotect is not None:
            try:
                plain = unprotect(data)
            except SRTP_ERRORS as error:
                refused = self._unprotect_failed(data, error)
                if refused is None:
                    return
                plain = refused
        else:
            plain = data
        if not self.forward:
            self.dropped_hold += 1
            return
        peer: Leg = self.peer  # type: ignore[assignment]
        out = peer.rewriter.rewrite(plain, now)
        if out is None:
            self.malformed += 1
            return
        recording = self.recording
        if recording is not None:
            recording.append(out)
            recording.append(now)
        protect = peer.protect_out
        if protect is not None:
            try:
                out = protect(out)
            except SRTP_ERRORS as error:
                peer.srtp_out.count_refusal(error)  # type: ignore[union-attr]
                peer.send_failures += 1
                return
        peer.transport.sendto(out, peer.remote)  # type: ignore[union-attr]
        peer.packets_out += 1
        peer.bytes_out += len(out)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: counted, never raised.
        self.send_failures += 1

    def _forward(self, plain: bytes, now: float) -> None:
        """The tail of the fast path, for packets that took a slow path first."""
        if not self.forward:
            self.dropped_hold += 1
            return
        peer: Leg = self.peer  # type: ignore[assignment]
        out = peer.rewriter.rewrite(plain, now)
        if out is None:
            self.malformed += 1
            return
        recording = self.recording
        if recording is not None:
            recording.append(out)
            recording.append(now)
        if peer.srtp_out is not None:
            out = peer.srtp_out.protect(out)
            if out is None:
                peer.send_failures += 1
                return
        peer.transport.sendto(out, peer.remote)  # type: ignore[union-attr]
        peer.packets_out += 1
        peer.bytes_out += len(out)

    def _unprotect_failed(self, data: bytes, error: Exception) -> bytes | None:
        """The current receive key refused `data`: try the previous key, else count why."""
        srtp: SrtpSession = self.srtp_in  # type: ignore[assignment]
        failure = srtp.count_refusal(error)
        previous = self.srtp_in_previous
        if previous is not None:
            plain = previous.unprotect(data)
            if plain is not None:
                return plain
        if failure is SrtpFailure.AUTH:
            self.srtp_auth_failures += 1
        elif failure is SrtpFailure.REPLAY:
            self.srtp_replays += 1
        else:
            self.malformed += 1
        return None

    def _from_new_source(self, data: bytes, addr: Address) -> None:
        now = _monotonic()
        remote = self.remote
        if remote is not None and self.last_rx >= self.updated_at:
            # Latched already: may this source take over?
            mode = self.owner.latch
            if (
                mode == "off"
                or (mode == "host" and addr[0] != remote[0])
                or now - self.last_rx < self.owner.relatch_idle
            ):
                self.unexpected_source += 1
                return
        if len(data) < 12 or 192 <= data[1] <= 223:
            self.unexpected_source += 1  # only RTP latches
            return
        plain = data
        if self.srtp_in is not None:
            plain = self.srtp_in.unprotect(data)
            if plain is None and self.srtp_in_previous is not None:
                plain = self.srtp_in_previous.unprotect(data)
            if plain is None:
                self.unexpected_source += 1
                return
        self.remote = addr
        self.last_rx = now
        self.packets_in += 1
        self.bytes_in += len(data)
        self.owner.refresh(self)
        self._forward(plain, now)

    def rtcp_received(self, data: bytes) -> None:
        srtp = self.srtp_in
        if srtp is not None:
            plain = srtp.unprotect_rtcp(data)
            if plain is None and self.srtp_in_previous is not None:
                plain = self.srtp_in_previous.unprotect_rtcp(data)
            if plain is None:
                if srtp.last_failure is SrtpFailure.AUTH:
                    self.srtp_auth_failures += 1
                elif srtp.last_failure is SrtpFailure.REPLAY:
                    self.srtp_replays += 1
                else:
                    self.malformed += 1
                return
            data = plain
        peer: Leg = self.peer  # type: ignore[assignment]
        # Our SSRC and numbering, where a source change made us rewrite either stream.
        data = translate_rtcp(data, peer.rewriter.translation(), self.rewriter.translation())
        if peer.srtp_out is not None:
            out = peer.srtp_out.protect_rtcp(data)
            if out is None:
                peer.send_failures += 1
                return
            data = out
        if peer.rtcp_mux:
            transport, remote = peer.transport, peer.remote
        else:
            transport, remote = peer.rtcp_transport, peer.rtcp_remote
        if transport is None or remote is None:
            peer.send_failures += 1
            return
        transport.sendto(data, remote)
        peer.packets_out += 1
        peer.bytes_out += len(data)

    # --- control ----------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}

    def close(self) -> None:
        for transport in (self.transport, self.rtcp_transport):
            if transport is not None:
                transport.close()
        self.transport = self.rtcp_transport = None
        self.peer = None
        self.forward = False


class MediaSession:
    __slots__ = ("session_id", "call_id", "legs", "created", "timed_out")

    def __init__(self, session_id: str, call_id: str, legs: tuple[Leg, Leg]) -> None:
        self.session_id = session_id
        self.call_id = call_id
        self.legs = legs
        self.created = _monotonic()
        self.timed_out = False

    def counters(self) -> dict[str, Any]:
        return {"call-id": self.call_id, "legs": [leg.counters() for leg in self.legs]}

    def close(self) -> None:
        for leg in self.legs:
            leg.close()


class Relay:
    """All media sessions of one worker: sockets from this worker's port slice."""

    def __init__(
        self,
        *,
        address: str,
        pool: PortPool,
        timeout: float = 60.0,
        hold_timeout: float = 3600.0,
        latch: str = "host",
        relatch_idle: float = 0.25,
        on_timeout: Callable[[MediaSession, float], None] | None = None,
    ) -> None:
        self.address = address
        self.pool = pool
        self.timeout = timeout
        self.hold_timeout = hold_timeout
        self.latch = latch
        self.relatch_idle = relatch_idle
        self.on_timeout = on_timeout
        self.sessions: dict[str, MediaSession] = {}
        self.retired = dict.fromkeys(COUNTERS, 0)
        self.sessions_opened = 0
        self.timeouts_reported = 0

    # --- sockets ----------------------------------------------------------------------------

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.address, port))
        except OSError:
            sock.close()
            raise
        return sock

    def _bind_pair_start(self) -> tuple[int, socket.socket]:
        for _ in range(_BIND_ATTEMPTS):
            try:
                port = self.pool.allocate()
            except PortPoolExhausted as error:
                raise RelayError(str(error)) from None
            try:
                return port, self._bind(port)
            except OSError as error:
                self.pool.bind_failed(port)
                if error.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise RelayError(f"cannot bind {self.address}:{port}: {error}") from None
        raise RelayError(f"no bindable media port after {_BIND_ATTEMPTS} attempts")

    async def open_session(self, session_id: str, call_id: str) -> tuple[int, int]:
        if session_id in self.sessions:
            raise RelayError(f"session {session_id} exists")
        loop = asyncio.get_running_loop()
        legs: list[Leg] = []
        try:
            for index in (0, 1):
                port, sock = self._bind_pair_start()
                leg = Leg(self, session_id, index, port)
                legs.append(leg)
                transport, _ = await loop.create_datagram_endpoint(lambda leg=leg: leg, sock=sock)
                leg.transport = transport
        except BaseException:
            for leg in legs:
                leg.close()
                self.pool.release(leg.port)
            raise
        a, b = legs
        a.peer, b.peer = b, a
        self.sessions[session_id] = MediaSession(session_id, call_id, (a, b))
        self.sessions_opened += 1
        return a.port, b.port

    async def update_leg(
        self,
        session_id: str,
        index: int,
        *,
        remote: Address | None,
        rtcp_remote: Address | None = None,
        rtcp_mux: bool = True,
        send: bool = True,
        receive: bool = True,
        srtp_in: tuple[str, bytes] | None = None,
        srtp_out: tuple[str, bytes] | None = None,
        new_source: bool = False,
    ) -> None:
        """Apply what an offer/answer negotiated for one leg (its peer's address and keys)."""
        session = self._session(session_id)
        leg = session.legs[index]
        now = _monotonic()
        if not rtcp_mux and leg.rtcp_transport is None:
            sock = self._bind_rtcp(leg.port + 1)
            loop = asyncio.get_running_loop()
            leg.rtcp_transport, _ = await loop.create_datagram_endpoint(
                lambda: _RtcpSocket(leg), sock=sock
            )
        leg.rtcp_mux = rtcp_mux
        if remote != leg.sdp_remote:
            leg.sdp_remote = leg.remote = remote
            leg.updated_at = now  # the next packet from anywhere may latch (comedia)
        leg.rtcp_remote = rtcp_remote if not rtcp_mux else None
        leg.send = send
        leg.receive = receive
        if srtp_in != leg.srtp_in_key:
            leg.srtp_in_previous = leg.srtp_in
            leg.srtp_in = SrtpSession.receiver(*srtp_in) if srtp_in is not None else None
            leg.unprotect_in = leg.srtp_in.rtp_unprotector() if leg.srtp_in is not None else None
            leg.srtp_in_key = srtp_in
            leg.keys_changed_at = now
        if srtp_out != leg.srtp_out_key:
            leg.srtp_out = SrtpSession.sender(*srtp_out) if srtp_out is not None else None
            leg.protect_out = leg.srtp_out.rtp_protector() if leg.srtp_out is not None else None
            leg.srtp_out_key = srtp_out
        if new_source and leg.peer is not None:
            leg.peer.rewriter.source_changed()
        self.refresh(leg)

    def _bind_rtcp(self, port: int) -> socket.socket:
        try:
            return self._bind(port)
        except OSError as error:
            raise RelayError(f"cannot bind RTCP port {self.address}:{port}: {error}") from None

    def refresh(self, leg: Leg) -> None:
        """Recompute which directions flow after a leg's direction or address changed."""
        peer = leg.peer
        if peer is None:
            return
        for source, target in ((leg, peer), (peer, leg)):
            source.forward = (
                source.receive
                and target.send
                and target.remote is not None
                and target.transport is not None
            )

    def delete_session(self, session_id: str) -> dict[str, Any]:
        session = self.sessions.pop(session_id, None)
        if session is None:
            raise RelayError(f"no session {session_id}")
        counters = session.counters()
        for leg in session.legs:
            for name in COUNTERS:
                self.retired[name] += getattr(leg, name)
            self.pool.release(leg.port)
        session.close()
        return counters

    def query(self, session_id: str) -> dict[str, Any]:
        return self._session(session_id).counters()

    def totals(self) -> dict[str, int]:
        totals = dict(self.retired)
        for session in self.sessions.values():
            for leg in session.legs:
                for name in COUNTERS:
                    totals[name] += getattr(leg, name)
        return totals

    def _session(self, session_id: str) -> MediaSession:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise RelayError(f"no session {session_id}") from None

    def check_timeouts(self, now: float) -> None:
        """Report sessions with no media for `timeout` (or `hold_timeout` when on hold)."""
        on_timeout = self.on_timeout
        for session in self.sessions.values():
            a, b = session.legs
            last = max(a.last_rx, b.last_rx, a.updated_at, b.updated_at, session.created)
            for leg in session.legs:
                if leg.srtp_in_previous is not None and now - leg.keys_changed_at > (
                    KEY_FALLBACK_SECONDS
                ):
                    leg.srtp_in_previous = None
            held = not (a.forward or b.forward)
            idle = now - last
            if idle > (self.hold_timeout if held else self.timeout):
                if not session.timed_out:
                    session.timed_out = True
                    self.timeouts_reported += 1
                    if on_timeout is not None:
                        on_timeout(session, idle)
            else:
                session.timed_out = False

    def close(self) -> None:
        for session_id in list(self.sessions):
            self.delete_session(session_id)
