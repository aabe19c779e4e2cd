"""A minimal UDP SIP client for integration tests: builds requests, answers digest challenges
with the project's client-side digest helper, and reads responses. Only 127.0.0.1."""

from __future__ import annotations

import itertools
import socket

from vaultpbx.sip.digest import build_authorization
from vaultpbx.sip.message import Response
from vaultpbx.sip.parser import parse_message

_counter = itertools.count(1)


class UdpClient:
    def __init__(self, server_port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.host = host
        self.server = ("127.0.0.1", server_port)
        self.cseq: dict[str, int] = {}  # per Call-ID: a registrar rejects a reused CSeq

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, uri: str, *, user: str, to_user: str | None = None,
                call_id: str | None = None, cseq: int = 1, extra: str = "",
                body: bytes = b"") -> bytes:
        n = next(_counter)
        to_user = to_user or user
        return (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK-t{n}-{cseq};rport\r\n"
            f"From: <sip:{user}@vaultpbx.test>;tag=f{n}\r\n"
            f"To: <sip:{to_user}@vaultpbx.test>\r\n"
            f"Call-ID: {call_id or f'c{n}@test'}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:{user}@{self.host}:{self.port}>\r\nMax-Forwards: 70\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def exchange(self, data: bytes, timeout: float = 2.0) -> Response:
        """Send and return the first final response (provisional ones are skipped)."""
        self.sock.settimeout(timeout)
        self.sock.sendto(data, self.server)
        while True:
            raw, _ = self.sock.recvfrom(65535)
            message = parse_message(raw)
            if isinstance(message, Response) and message.status >= 200:
                return message

    def register(self, user: str, password: str, expires: int = 300) -> Response:
        uri = "sip:vaultpbx.test"
        call_id = f"reg-{user}-{self.port}"
        cseq = self.cseq[call_id] = self.cseq.get(call_id, 0) + 1
        first = self.exchange(self.request("REGISTER", uri, user=user, call_id=call_id,
                                           cseq=cseq, extra=f"Expires: {expires}\r\n"))
        if first.status != 401:
            return first
        challenge = first.get("www-authenticate") or ""
        auth = build_authorization(challenge, "REGISTER", uri, user, password, "cn0nce", 1)
        cseq = self.cseq[call_id] = cseq + 1
        return self.exchange(self.request(
            "REGISTER", uri, user=user, call_id=call_id, cseq=cseq,
            extra=f"Expires: {expires}\r\nAuthorization: {auth}\r\n"))
