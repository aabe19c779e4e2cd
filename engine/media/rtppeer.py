"""A plain Python RTP/SRTP endpoint on a UDP socket, for end-to-end tests and benches.

It plays a phone on one side of a relayed call: writes its SDP offer or answer (with an SDES key
of its own), learns where to send and which key to decrypt with from the other side's SDP, sends
numbered payloads and collects what arrives. Sockets are non-blocking; `receive` is a coroutine
that polls, so a test's event loop (and its controller) keeps running while it waits.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

from ..sdp import parse_sdp
from .srtp import SRTP_SUITES, SrtpSession, encode_inline_key

__all__ = ["RtpPeer", "numbered_payload", "payload_number"]

_HEADER = struct.Struct("!BBHII")


def numbered_payload(number: int, size: int = 160) -> bytes:
    """A G.711-sized payload that says which packet it is (and is not all one value)."""
    stamp = b"%010d" % number
    return (stamp * (size // len(stamp) + 1))[:size]


def payload_number(payload: bytes) -> int:
    return int(payload[:10])


class RtpPeer:
    def __init__(
        self,
        *,
        ssrc: int,
        suite: str | None = None,
        address: str = "127.0.0.1",
        first_sequence: int = 1000,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.bind((address, 0))
        self.sock.setblocking(False)
        self.address = address
        self.port: int = self.sock.getsockname()[1]
        self.ssrc = ssrc
        self.sequence = first_sequence
        self.timestamp = 0
        self.suite = suite
        self.key = os.urandom(SRTP_SUITES[suite].key_material_length) if suite else b""
        self.tx: SrtpSession | None = SrtpSession.sender(suite, self.key) if suite else None
        self.rx: SrtpSession | None = None
        self.target: tuple[str, int] | None = None
        self.raw: list[bytes] = []  # every datagram received, as it came off the wire
        self.failures = 0  # received packets that did not unprotect

    def close(self) -> None:
        self.sock.close()

    def rebind(self) -> None:
        """Move to a new local port (NAT rebinding): latching must follow."""
        self.sock.close()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.address, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def rekey(self) -> None:
        """New SDES key for what we send (as a re-INVITE would carry)."""
        assert self.suite is not None
        self.key = os.urandom(SRTP_SUITES[self.suite].key_material_length)
        self.tx = SrtpSession.sender(self.suite, self.key)

    # --- SDP --------------------------------------------------------------------------------

    def sdp(
        self,
        *,
        direction: str = "sendrecv",
        rtcp_mux: bool = True,
        tag: int = 1,
        payload_types: tuple[int, ...] = (0, 101),
    ) -> bytes:
        proto = "RTP/SAVP" if self.suite else "RTP/AVP"
        formats = " ".join(str(pt) for pt in payload_types)
        lines = [
            "v=0",
            f"o=peer {self.ssrc} {int(time.time())} IN IP4 {self.address}",
            "s=-",
            f"c=IN IP4 {self.address}",
            "t=0 0",
            f"m=audio {self.port} {proto} {formats}",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
        ]
        if self.suite:
            lines.append(f"a=crypto:{tag} {self.suite} inline:{encode_inline_key(self.key)}")
        if rtcp_mux:
            lines.append("a=rtcp-mux")
        lines.append(f"a={direction}")
        return ("\r\n".join(lines) + "\r\n").encode()

    def answer_to(self, offer: bytes, **kwargs: object) -> bytes:
        """Answer an offer: pick its first crypto suite (re-keyed to that suite), learn it."""
        description = parse_sdp(offer)
        cryptos = description.media[0].cryptos()
        tag = 1
        if self.suite is not None and cryptos:
            chosen = cryptos[0]
            tag = chosen.tag
            if chosen.suite != self.suite:
                self.suite = chosen.suite
                self.rekey()
        elif self.suite is not None:
            raise AssertionError("offer has no a=crypto for an SRTP peer")
        self.learn(offer)
        return self.sdp(tag=tag, **kwargs)  # type: ignore[arg-type]

    def learn(self, sdp: bytes) -> None:
        """Where to send and which key decrypts what the other side sends us."""
        description = parse_sdp(sdp)
        media = description.media[0]
        connection = description.connection_for(0)
        assert connection is not None
        self.target = (connection.address, media.port)
        cryptos = media.cryptos()
        if self.suite is not None and cryptos:
            ours = [c for c in cryptos if c.suite == self.suite] or list(cryptos)
            self.rx = SrtpSession.receiver(ours[0].suite, ours[0].key_material)
        else:
            self.rx = None

    # --- media ------------------------------------------------------------------------------

    def packet(self, number: int, *, payload_type: int = 0, marker: bool = False) -> bytes:
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + 160) & 0xFFFFFFFF
        second = payload_type | (0x80 if marker else 0)
        header = _HEADER.pack(0x80, second, self.sequence, self.timestamp, self.ssrc)
        return header + numbered_payload(number)

    def send(self, number: int, **kwargs: object) -> bytes:
        plain = self.packet(number, **kwargs)  # type: ignore[arg-type]
        self.send_raw(self.tx.protect(plain) if self.tx is not None else plain)
        return plain

    def send_raw(self, data: bytes) -> None:
        assert self.target is not None
        self.sock.sendto(data, self.target)

    def drain(self) -> list[bytes]:
        """Plain packets received so far (decrypted when SRTP), without waiting."""
        out = []
        while True:
            try:
                data, _ = self.sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return out
            self.raw.append(data)
            if self.rx is not None:
                plain = self.rx.unprotect(data)
                if plain is None:
                    self.failures += 1
                    continue
                data = plain
            out.append(data)

    async def receive(self, count: int, timeout: float = 2.0) -> list[bytes]:
        """Wait until `count` packets have arrived (or `timeout`), return them in arrival order."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            got += self.drain()
            if len(got) < count:
                await asyncio.sleep(0.002)
        return got

    async def quiet(self, seconds: float) -> list[bytes]:
        """Everything that arrives in the next `seconds` (to show that nothing does)."""
        await asyncio.sleep(seconds)
        return self.drain()
