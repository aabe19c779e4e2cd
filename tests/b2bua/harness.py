"""In-memory peers for B2BUA tests: real bytes through the real transaction layer and B2BUA,
a manual clock, and user agents that are just message builders on their own ports."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from vaultpbx.b2bua.b2bua import B2BUA
from vaultpbx.hooks.registry import HookRegistry
from vaultpbx.runtime.config import Config, parse_config
from vaultpbx.sip.digest import build_authorization
from vaultpbx.sip.endpoint import Flow, TransactionLayer
from vaultpbx.sip.message import Request, Response, SipMessage, build_response
from vaultpbx.sip.parser import parse_message

_n = itertools.count(1)


class Harness:
    def __init__(self, config_yaml: str) -> None:
        self.config: Config = parse_config(config_yaml).config
        counter = itertools.count(1)
        self.b2bua = B2BUA(self.config, token=lambda: f"t{next(counter)}", hooks=HookRegistry(),
                           digest_secret=b"k" * 32)
        self.layer = TransactionLayer(
            self.b2bua, timers=self.config.sip.timers,
            local_addresses={"udp": ("127.0.0.1", 5060), "tcp": ("127.0.0.1", 5060)},
            token=lambda: f"b{next(counter)}")
        self.b2bua.attach(self.layer)
        self.now = 100.0
        self.inbox: dict[int, list[SipMessage]] = {}

    def deliver(self, data: bytes, source: Flow) -> None:
        self.layer.receive(data, source, self.now)
        self._collect()

    def advance(self, seconds: float, step: float = 0.25) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            self.layer.handle_timer(self.now)
            self._collect()

    def _collect(self) -> None:
        for data, flow in self.layer.outbox:
            self.inbox.setdefault(flow.port, []).append(parse_message(data))
        self.layer.outbox.clear()

    def take(self, port: int) -> list[SipMessage]:
        return self.inbox.pop(port, [])


@dataclass
class Phone:
    """A UA on 127.0.0.1:<port> that registers, calls and answers."""

    h: Harness
    port: int
    user: str
    password: str = ""
    tag: str = field(default_factory=lambda: f"ua{next(_n)}")
    cseq: int = 0

    @property
    def flow(self) -> Flow:
        return Flow("udp", "127.0.0.1", self.port)

    def request(self, method: str, uri: str, *, to: str, call_id: str, extra: str = "",
                body: bytes = b"", to_tag: str | None = None, branch: str | None = None,
                cseq: int | None = None) -> bytes:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        to_header = f"<{to}>" + (f";tag={to_tag}" if to_tag else "")
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch or f'z9hG4bK{next(_n)}'}\r\n"
            f"From: <sip:{self.user}@vaultpbx.test>;tag={self.tag}\r\nTo: {to_header}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>\r\n{extra}{ctype}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def send(self, data: bytes) -> None:
        self.h.deliver(data, self.flow)

    def responses(self) -> list[Response]:
        return [m for m in self.h.take(self.port) if isinstance(m, Response)]

    def messages(self) -> list[SipMessage]:
        return self.h.take(self.port)

    def register(self, expires: int = 300, contact_port: int | None = None) -> Response:
        call_id = f"reg-{self.user}-{self.port}"
        uri = "sip:vaultpbx.test"
        aor = f"sip:{self.user}@vaultpbx.test"
        self.send(self.request("REGISTER", uri, to=aor, call_id=call_id,
                               extra=f"Expires: {expires}\r\n"))
        challenge = self.responses()[-1]
        if challenge.status != 401:
            return challenge
        auth = build_authorization(challenge.get("www-authenticate") or "", "REGISTER", uri,
                                   self.user, self.password, "cn", 1)
        self.send(self.request("REGISTER", uri, to=aor, call_id=call_id,
                               extra=f"Expires: {expires}\r\nAuthorization: {auth}\r\n"))
        return self.responses()[-1]

    def invite(self, number: str, call_id: str, body: bytes = b"v=0\r\n",
               extra: str = "") -> bytes:
        """Send an INVITE, answering a 407 once with credentials; return the last INVITE."""
        uri = f"sip:{number}@vaultpbx.test"
        invite = self.request("INVITE", uri, to=uri, call_id=call_id, body=body, extra=extra)
        self.send(invite)
        answers = self.responses()
        if answers and answers[-1].status == 407:
            self.ack_error(invite, answers[-1])
            auth = build_authorization(answers[-1].get("proxy-authenticate") or "", "INVITE",
                                       uri, self.user, self.password, "cn", 1)
            invite = self.request("INVITE", uri, to=uri, call_id=call_id, body=body,
                                  extra=extra + f"Proxy-Authorization: {auth}\r\n")
            self.send(invite)
        return invite

    def ack_error(self, invite: bytes, response: Response) -> None:
        request = parse_message(invite)
        assert isinstance(request, Request)
        ack = invite.split(b"\r\n\r\n")[0].decode()
        ack = ack.replace("INVITE sip", "ACK sip", 1).replace(
            f"{request.cseq.number} INVITE", f"{request.cseq.number} ACK")
        ack = ack.replace(f"To: {request.headers['to'][0]}", f"To: {response.headers['to'][0]}")
        ack = ack.split("Content-Type")[0].rstrip("\r\n")
        self.send((ack + "\r\nContent-Length: 0\r\n\r\n").encode())

    def answer(self, invite: Request, status: int, body: bytes = b"",
               to_tag: str | None = None) -> None:
        response = build_response(invite, status, to_tag=to_tag or self.tag, extra=[
            ("contact", f"<sip:{self.user}@127.0.0.1:{self.port}>")] + (
            [("content-type", "application/sdp")] if body else []), body=body)
        self.send(response.serialize())

    def ack_2xx(self, ok: Response, call_id: str) -> None:
        self.send(self.request("ACK", ok.values("contact")[0].strip("<>"),
                               to=parse_to_uri(ok), to_tag=ok.to.tag, call_id=call_id,
                               cseq=ok.cseq.number))

    def in_dialog(self, method: str, target: str, to_uri: str, to_tag: str, call_id: str,
                  body: bytes = b"", extra: str = "") -> bytes:
        data = self.request(method, target, to=to_uri, to_tag=to_tag, call_id=call_id,
                            body=body, extra=extra)
        self.send(data)
        return data


def parse_to_uri(message: SipMessage) -> str:
    return message.to.uri


def requests(messages: list[SipMessage], method: str) -> list[Request]:
    return [m for m in messages if isinstance(m, Request) and m.method == method]
