"""Every regular expression and loop of the SIP core that reads untrusted input costs linear
time in it (issue 17, item 14 and the audit after it).

Each test grows one adversarial shape (a run of blanks, of separators, of escapes, a header
trickled one byte per segment...) from n to 8n, all within the 65,535-octet maximum message,
and checks that the cost grows about 8 times, not 64 (see growth.py: medians, never a
wall-clock limit). The shapes are the ones an audit of engine/sip found worth a look: nested or
overlapping quantifiers, `.sub` over whitespace, splitting and re-joining, rescanning buffers.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from vaultpbx.sip.digest import parse_digest_params
from vaultpbx.sip.endpoint import Flow, salvage_request
from vaultpbx.sip.headers import parse_name_addr, parse_params, parse_via, split_list
from vaultpbx.sip.message import Request
from vaultpbx.sip.parser import StreamFramer, parse_message
from vaultpbx.sip.uri import _parse_uri
from vaultpbx.sip.validate import check_request

from .growth import assert_linear
from .inmemory import InMemoryEngine

N = 2000  # 8n = 16,000: several runs of that size fit in one 65,535-octet message


def request(extra: str = "", *, method: str = "OPTIONS", uri: str = "sip:1001@vaultpbx.test",
            body: bytes = b"") -> bytes:
    return (
        f"{method} {uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKgrow\r\n"
        "From: <sip:1002@vaultpbx.test>;tag=f1\r\nTo: <sip:1001@vaultpbx.test>\r\n"
        f"Call-ID: grow\r\nCSeq: 1 {method}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode("utf-8", "surrogateescape") + body


def calls(function: Callable[[str], object], shape: Callable[[int], str]
          ) -> Callable[[int], Callable[[], object]]:
    """Size -> the call to time: the input is built before the clock starts."""

    def build(n: int) -> Callable[[], object]:
        text = shape(n)
        return lambda: _swallow(function, text)

    return build


def _swallow(function: Callable[[str], object], text: str) -> object:
    try:
        return function(text)
    except ValueError:  # SipParseError and friends: rejecting is fine, slowly is not
        return None


# -- digest (item 14: `_FOLD.sub` was quadratic on runs of blanks) -----------------------------
DIGEST_SHAPES = {
    "blanks": lambda n: "Digest " + " " * n + "x",
    "tabs-then-fold": lambda n: "Digest realm=a" + " \t" * (n // 2) + "\r\n b",
    "many-folds": lambda n: "Digest " + "a=b,\r\n " * (n // 7) + "x",
    "quoted-escapes": lambda n: 'Digest a="' + "\\\\" * (n // 2) + "x",
    "unterminated-quote": lambda n: 'Digest a="' + "\\\"" * (n // 2),
    "many-params": lambda n: "Digest " + ",".join(f"p{i}=v" for i in range(n // 6)),
    "blanks-around-equals": lambda n: "Digest a" + " " * n + "=" + " " * n,
}


@pytest.mark.parametrize("shape", DIGEST_SHAPES.values(), ids=DIGEST_SHAPES.keys())
def test_digest_params_parse_in_linear_time(shape: Callable[[int], str]) -> None:
    assert_linear(calls(parse_digest_params, shape), N)


def test_the_reported_packet_is_linear_through_the_whole_engine() -> None:
    """The packet of item 14 (REGISTER, `Authorization: Digest ` + blanks + `x`) through the
    parser, the §8.2 checks, the transaction layer and the registrar."""
    engine = InMemoryEngine()
    flow = Flow("udp", "127.0.0.1", 5070)

    def build(n: int) -> Callable[[], object]:
        data = request("Contact: <sip:1001@127.0.0.1:5070>\r\nAuthorization: Digest "
                       + " " * n + "x\r\n", method="REGISTER", uri="sip:vaultpbx.test")

        def run() -> None:
            engine.layer.receive(data, flow, engine.now)
            assert engine.layer.outbox, "the REGISTER was not answered"
            engine.layer.outbox.clear()
            engine.layer.server_transactions.clear()  # the next run is a new transaction

        return run

    assert_linear(build, N)


# -- the message parser ---------------------------------------------------------------------
MESSAGE_SHAPES: dict[str, Callable[[int], bytes]] = {
    "folded-header": lambda n: request("Subject: a" + "\r\n b" * (n // 4) + "\r\n"),
    "blank-runs-in-value": lambda n: request("Subject:" + " " * n + "x" + "\t" * n + "\r\n"),
    "many-headers": lambda n: request("".join(f"X-H{i}: v\r\n" for i in range(n // 10))),
    "repeated-header": lambda n: request("Route: <sip:a>\r\n" * (n // 16)),
    "long-header-name": lambda n: request("X" * n + ": v\r\n"),
    "bad-header-name": lambda n: request("X" * n + " Y: v\r\n"),
    "line-without-colon": lambda n: request("X" * n + "\r\n"),
    "content-length-blanks": lambda n: request().replace(b"Length: 0",
                                                         b"Length:" + b" " * n + b"0"),
    "content-length-zeros": lambda n: request().replace(b"Length: 0", b"Length: " + b"0" * n),
    "lf-only": lambda n: request("Subject: x\r\n" * (n // 12)).replace(b"\r\n", b"\n"),
    "leading-crlf": lambda n: b"\r\n" * (n // 2) + request(),
    "no-blank-line": lambda n: request("Subject: " + "a" * n + "\r\n")[:-4],
    "request-uri-blanks": lambda n: b"OPTIONS sip:a@b" + b" " * n + b" SIP/2.0\r\n\r\n",
}


@pytest.mark.parametrize("shape", MESSAGE_SHAPES.values(), ids=MESSAGE_SHAPES.keys())
def test_parse_message_in_linear_time(shape: Callable[[int], bytes]) -> None:
    def build(n: int) -> Callable[[], object]:
        data = shape(n)
        assert len(data) <= 65535

        def run() -> object:
            try:
                return parse_message(data)
            except ValueError:
                return None

        return run

    assert_linear(build, N)


# -- header values ----------------------------------------------------------------------------
HEADER_SHAPES: dict[str, tuple[Callable[[str], object], Callable[[int], str]]] = {
    "split-commas": (split_list, lambda n: "," * n),
    "split-quoted-escapes": (split_list, lambda n: 'a,"' + "\\," * (n // 2)),
    "split-angles": (split_list, lambda n: "<" * n + ",x"),
    "params-semicolons": (parse_params, lambda n: ";a" * (n // 2)),
    "params-blanks": (parse_params, lambda n: ";" + " " * n + "a" + " " * n + "=" + " " * n),
    "name-addr-display-escapes": (parse_name_addr, lambda n: '"' + "\\a" * (n // 2) + " <"),
    "name-addr-display-quotes": (parse_name_addr, lambda n: '"' + '\\"' * (n // 2) + "x"),
    "name-addr-angles": (parse_name_addr, lambda n: "<" * n),
    "name-addr-tokens": (parse_name_addr, lambda n: "a " * (n // 2) + "<sip:a@b>"),
    "name-addr-params": (parse_name_addr, lambda n: "<sip:a@b>" + ";t=1" * (n // 4)),
    "via-blanks": (parse_via, lambda n: "SIP" + " " * n + "/" + " " * n + "2.0 /UDP x"),
    "via-host": (parse_via, lambda n: "SIP/2.0/UDP " + "a" * n + "!"),
    "via-host-dots": (parse_via, lambda n: "SIP/2.0/UDP " + "a." * (n // 2) + " :"),
    "via-params": (parse_via, lambda n: "SIP/2.0/UDP a" + ";b=c" * (n // 4)),
    "via-version": (parse_via, lambda n: "SIP/" + "2" * n + "/"),
    "uri-ats": (_parse_uri, lambda n: "sip:" + "@" * n),
    "uri-colons": (_parse_uri, lambda n: "sip:" + "a:" * (n // 2)),
    "uri-host": (_parse_uri, lambda n: "sip:" + "a" * n + "!"),
    "uri-semicolons": (_parse_uri, lambda n: "sip:a@b" + ";" * n + "?"),
    "uri-user-semicolons": (_parse_uri, lambda n: "sip:" + "a;" * (n // 2) + "@b"),
    "uri-ipv6": (_parse_uri, lambda n: "sip:[" + ":" * n),
}


@pytest.mark.parametrize("case", HEADER_SHAPES.values(), ids=HEADER_SHAPES.keys())
def test_header_parsers_in_linear_time(
    case: tuple[Callable[[str], object], Callable[[int], str]],
) -> None:
    function, shape = case
    assert_linear(calls(function, shape), N)


# -- §8.2 checks over many list elements --------------------------------------------------------
CHECK_SHAPES = {
    "many-contacts": lambda n: request("Contact: " + ",".join(["<sip:a@b>"] * (n // 10)) + "\r\n",
                                       method="REGISTER"),
    "many-requires": lambda n: request("Require: " + ",".join(["x"] * (n // 2)) + "\r\n"),
    "many-accepts": lambda n: request("Accept: " + ",".join(["a/b"] * (n // 4)) + "\r\n",
                                      method="INVITE"),
    "many-vias": lambda n: request("Via: " + ",".join(["SIP/2.0/UDP a"] * (n // 14)) + "\r\n"),
}


@pytest.mark.parametrize("shape", CHECK_SHAPES.values(), ids=CHECK_SHAPES.keys())
def test_check_request_in_linear_time(shape: Callable[[int], bytes]) -> None:
    def build(n: int) -> Callable[[], object]:
        data = shape(n)

        def run() -> object:
            message = parse_message(data)
            assert isinstance(message, Request)
            return check_request(message)

        return run

    assert_linear(build, N)


def test_salvaging_an_unparseable_request_is_linear() -> None:
    def build(n: int) -> Callable[[], object]:
        data = request("Bad Header\r\n" + "X: y\r\n" * (n // 6))
        return lambda: salvage_request(data)

    assert_linear(build, N)


# -- the stream framer --------------------------------------------------------------------------
def test_framer_reads_a_trickled_header_block_once() -> None:
    """One byte per TCP segment: the old framer searched the whole buffer for the blank line
    on every segment, n**2/2 byte comparisons for an n-byte header block."""

    def build(n: int) -> Callable[[], object]:
        data = request("Subject: " + "a" * n + "\r\n")

        def run() -> None:
            framer = StreamFramer()
            frames = [frame for i in range(len(data)) for frame in framer.feed(data[i:i + 1])]
            assert len(frames) == 1

        return run

    assert_linear(build, N)


def test_framer_reads_a_trickled_body_once() -> None:
    """Once the head is read, waiting for the body does not re-read the head per segment."""

    def build(n: int) -> Callable[[], object]:
        head = request("Subject: " + "a" * n + "\r\n", body=b"x" * n)
        split = head.index(b"\r\n\r\n") + 4
        chunks = [head[:split]] + [head[i:i + 4] for i in range(split, len(head), 4)]

        def run() -> None:
            framer = StreamFramer()
            assert sum(len(framer.feed(chunk)) for chunk in chunks) == 1

        return run

    assert_linear(build, N)


def test_framer_many_pings_and_crlfs_are_linear() -> None:
    def build(n: int) -> Callable[[], object]:
        data = b"\r\n\r\n" * (n // 4) + b"\r\n" + request()
        return lambda: StreamFramer().feed(data)

    assert_linear(build, N)
