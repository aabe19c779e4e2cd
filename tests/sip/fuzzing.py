"""Fuzz targets over the SIP input path, shared by the bounded Hypothesis tests in the suite
(tests/sip/test_fuzz_targets.py) and the long runs of scripts/fuzz_sip.py.

A target feeds bytes through what a packet from the network meets: `parse_message`,
`check_request`, the stream framer (cut at chosen points, as TCP segments are), the
transaction layer and the B2BUA behind it (registrar, digest, dialplan), in memory. It raises
`Escape` when any of the promises of issue 17 breaks:

- nothing but `SipParseError` comes out of the parser, nothing at all out of `check_request`,
  the framer (other than `SipFramingError`) or the transaction layer;
- no input makes an internal error (an exception caught around the TU, answered 500);
- everything the engine sends parses, and every response to a request goes back to the flow
  that request came from (issue 17 item 19: never to someone else's);
- after the input, the engine still answers an OPTIONS probe on the same flow.

Seeds are the RFC 4475 torture messages, the RFC 5118 IPv6 messages and a few requests of our
own (REGISTER with credentials, INVITE with SDP, CANCEL, BYE, responses).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vaultpbx.runtime.config import Config, parse_config
from vaultpbx.sip.endpoint import Flow
from vaultpbx.sip.errors import SipFramingError, SipParseError
from vaultpbx.sip.message import Request, Response, SipMessage
from vaultpbx.sip.parser import KeepAlivePing, StreamFramer, parse_message
from vaultpbx.sip.validate import check_request

from .inmemory import CONFIG, InMemoryEngine

ROOT = Path(__file__).resolve().parents[2]
SEED_DIRS = (ROOT / "tests" / "data" / "rfc4475", ROOT / "tests" / "data" / "rfc5118")
UDP = Flow("udp", "127.0.0.1", 5070)
TCP = Flow("tcp", "127.0.0.1", 40001, 1)
OTHER = Flow("udp", "127.0.0.66", 5070)

_SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
        b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd\r\n")


def _request(method: str, uri: str, extra: str = "", body: bytes = b"", *,
             branch: str = "z9hG4bKseed", to_tag: str = "") -> bytes:
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Caller" <sip:1002@vaultpbx.test>;tag=f1\r\n'
        f"To: <sip:1001@vaultpbx.test>{to_tag}\r\n"
        f"Call-ID: seed-{method.lower()}@127.0.0.1\r\nCSeq: 1 {method}\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


OWN_SEEDS: tuple[bytes, ...] = (
    _request("OPTIONS", "sip:1001@vaultpbx.test", "Accept: application/sdp\r\n"),
    _request("REGISTER", "sip:vaultpbx.test",
             "Contact: <sip:1001@127.0.0.1:5070;transport=udp>;expires=60;q=0.5\r\n"
             'Authorization: Digest username="1001", realm="vaultpbx.test", nonce="abc",\r\n'
             ' uri="sip:vaultpbx.test", response="0123456789abcdef0123456789abcdef",\r\n'
             " algorithm=MD5, qop=auth, nc=00000001, cnonce=\"x\"\r\nExpires: 60\r\n"),
    _request("INVITE", "sip:user@vaultpbx.test",
             "Contact: <sip:1002@127.0.0.1:5070>\r\nContent-Type: application/sdp\r\n"
             "Supported: timer\r\nSession-Expires: 1800\r\n", _SDP),
    _request("CANCEL", "sip:user@vaultpbx.test"),
    _request("BYE", "sip:1002@127.0.0.1:5070", to_tag=";tag=t9"),
    _request("ACK", "sip:1002@127.0.0.1:5070", to_tag=";tag=t9"),
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKb000001\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r\r\nCSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n",
)

# Tokens a mutation inserts: the separators and keywords the parsers branch on, and the shapes
# of issue 17's findings.
TOKENS: tuple[bytes, ...] = (
    b" ", b"\t", b",", b";", b":", b"=", b"<", b">", b'"', b"\\", b"@", b"[", b"]", b"%",
    b"?", b"/", b"\r\n", b"\n", b"\r", b"\r\n ", b"\r\n\r\n", b"\x00", b"\xff", b"\xc2\xb2",
    b"sip:", b"sips:", b"tel:", b"SIP/2.0", b"SIP/2.0/TCP ", b"z9hG4bK", b"branch=", b"tag=",
    b"Via: ,\r\n", b"v: ", b"l: ", b"Content-Length: ", b"9" * 20, b"-1", b"0", b"4294967296",
    b"Digest ", b'realm="', b"qop=auth", b"*", b"expires=", b"Require: x\r\n",
    b"Max-Forwards: ", b"CSeq: ", b"Contact: ", b"To: ", b"From: ", b"[::1]", b"%00",
    b"v=0\r\n", b"m=audio ", b"a=crypto:", b"2^",
)


def seed_messages() -> list[bytes]:
    seeds = [path.read_bytes() for folder in SEED_DIRS for path in sorted(folder.glob("*.dat"))]
    return seeds + list(OWN_SEEDS)


def mutate(data: bytes, rng: random.Random, rounds: int | None = None) -> bytes:
    """A few random edits: insert a token (sometimes repeated into a long run), delete,
    duplicate or overwrite a range, or truncate. Deterministic for a given `rng`."""
    out = bytearray(data)
    for _ in range(rounds if rounds is not None else rng.randint(1, 4)):
        at = rng.randint(0, len(out))
        kind = rng.randrange(6)
        if kind == 0:
            token = rng.choice(TOKENS)
            repeat = rng.choice((1, 1, 1, 2, 3, 50, 1000, 10000))
            out[at:at] = token * repeat
        elif kind == 1:
            del out[at:at + rng.randint(1, 16)]
        elif kind == 2:
            size = rng.randint(1, 64)
            out[at:at] = out[at:at + size]
        elif kind == 3 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif kind == 4:
            del out[at:]
        else:
            token = rng.choice(TOKENS)
            out[at:at + len(token)] = token
    return bytes(out[:65535])


class Escape(AssertionError):
    """An input broke one of the promises in the module docstring."""


_CONFIG: Config | None = None


def _config() -> Config:
    global _CONFIG
    if _CONFIG is None:
        _CONFIG = parse_config(CONFIG).config
    return _CONFIG


PROBE = _request("OPTIONS", "sip:1001@vaultpbx.test", branch="z9hG4bKprobe")


@dataclass
class Target:
    """One engine in memory. `fresh()` between inputs keeps every input independent (what
    Hypothesis needs to replay and shrink); a long run may reuse one for speed."""

    engine: InMemoryEngine = field(default_factory=lambda: InMemoryEngine(config=_config()))
    executions: int = 0

    def fresh(self) -> None:
        self.engine = InMemoryEngine(config=_config())

    # -- the targets --------------------------------------------------------------------------
    def parse(self, data: bytes) -> None:
        """parse_message + check_request only (datagram and stream rules)."""
        self.executions += 1
        for datagram in (True, False):
            message = _parse(data, datagram)
            if isinstance(message, Request):
                try:
                    check_request(message)
                except Exception as exc:
                    raise Escape(f"check_request raised {exc!r}") from exc

    def datagram(self, data: bytes, flow: Flow = UDP) -> None:
        """One UDP datagram through the whole engine, then the probe on the same flow."""
        self.executions += 1
        self._deliver(data, flow)
        self._probe(flow)

    def stream(self, data: bytes, cuts: Sequence[int] = ()) -> None:
        """One TCP connection: `data` arrives in segments cut at `cuts`, then the probe on the
        same connection unless the stream could not be framed (the connection then closes)."""
        self.executions += 1
        framer = StreamFramer()
        bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
        for start, end in zip(bounds, bounds[1:], strict=False):
            if not self._feed(framer, data[start:end]):
                return
        if framer.pending:
            return  # a frame still waiting for its end: the probe would only extend it
        self._feed(framer, PROBE, probe=True)

    def two_sources(self, data: bytes) -> None:
        """The same bytes from two sources, then again from the first (a retransmission):
        every response must go to the flow whose request it answers (item 19)."""
        self.executions += 1
        self._deliver(data, UDP)
        self._deliver(data, OTHER)
        self._deliver(data, UDP)

    # -- helpers ---------------------------------------------------------------------------------
    def _feed(self, framer: StreamFramer, segment: bytes, *, probe: bool = False) -> bool:
        try:
            frames = framer.feed(segment)
        except SipFramingError:
            frames = []
        except Exception as exc:
            raise Escape(f"StreamFramer.feed raised {exc!r}") from exc
        for frame in frames:
            if isinstance(frame, KeepAlivePing):
                continue
            out = self._deliver(frame, TCP)
            if probe:
                _expect_probe_answer(out)
        if framer.error is not None:
            layer = self.engine.layer
            try:
                layer.reject_unframable(framer.error_head, framer.error, TCP)
            except Exception as exc:
                raise Escape(f"reject_unframable raised {exc!r}") from exc
            _check_sent(list(layer.outbox), TCP, request=True)
            layer.outbox.clear()
            return False
        return True

    def _deliver(self, data: bytes, flow: Flow) -> list[tuple[bytes, Flow]]:
        layer = self.engine.layer
        before = layer.counters.internal_errors
        message = _parse(data, not flow.reliable)
        try:
            out = self.engine.receive(data, flow)
        except Exception as exc:
            raise Escape(f"TransactionLayer.receive raised {exc!r}") from exc
        if layer.counters.internal_errors != before:
            raise Escape("an internal error (an exception inside the engine, answered 500)")
        is_request = message is None or isinstance(message, Request)
        _check_sent(out, flow, request=is_request)
        return out

    def _probe(self, flow: Flow) -> None:
        _expect_probe_answer(self._deliver(PROBE, flow))


def _parse(data: bytes, datagram: bool) -> SipMessage | None:
    try:
        return parse_message(data, datagram=datagram)
    except SipParseError:
        return None
    except Exception as exc:
        raise Escape(f"parse_message raised {exc!r}") from exc


def _check_sent(out: list[tuple[bytes, Flow]], flow: Flow, *, request: bool) -> None:
    for sent, to in out:
        try:
            message = parse_message(sent, datagram=not to.reliable)
        except SipParseError as exc:
            raise Escape(f"the engine sent something it cannot parse itself: {exc}") from exc
        if isinstance(message, Response):
            if message.status == 500 and message.reason == "Server Internal Error":
                raise Escape("500 Server Internal Error")
            if request and to != flow:
                raise Escape(f"a response to a request from {flow} was sent to {to}")


def _expect_probe_answer(out: list[tuple[bytes, Flow]]) -> None:
    answers = [parse_message(d, datagram=not f.reliable) for d, f in out]
    if not any(isinstance(m, Response) and m.status == 200 for m in answers):
        raise Escape(f"the OPTIONS probe after the input was not answered 200: {answers}")
