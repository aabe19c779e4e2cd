"""RFC 4475 torture messages through the real SIP core and B2BUA, in memory, as a table."""

from __future__ import annotations

import re

import pytest
from vaultpbx.sip.endpoint import Flow
from vaultpbx.sip.errors import SipParseError
from vaultpbx.sip.parser import parse_message

from tests.conftest import DATA
from tests.sip.inmemory import InMemoryEngine, responses
from tests.sip.torture_table import EXPECTED

TORTURE = DATA / "rfc4475"
OPTIONS = (
    b"OPTIONS sip:vaultpbx@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-after-torture\r\n"
    b"From: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:vaultpbx@127.0.0.1>\r\n"
    b"Call-ID: after-torture\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


def test_every_archived_message_has_an_expectation() -> None:
    files = {p.name for p in TORTURE.glob("*.dat")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_torture_message_answer(name: str, trusted: bool) -> None:
    engine = InMemoryEngine()
    source = Flow("udp", "127.0.0.9" if trusted else "127.0.0.1", 5099)
    out = engine.receive((TORTURE / name).read_bytes(), source)
    expected = EXPECTED[name][0 if trusted else 1]
    answers = responses(out)
    if expected is None:
        assert answers == []
        counters = engine.layer.counters
        assert counters.parse_errors + counters.dropped_responses == 1
    else:
        assert answers, f"{name}: no answer"
        assert answers[0].status == expected, f"{name}: {answers[0].status} {answers[0].reason}"
        assert all(flow == source for _, flow in out if _.startswith(b"SIP/"))
    # Whatever came before, the element still answers OPTIONS.
    after = responses(engine.receive(OPTIONS, source))
    assert [r.status for r in after] == [200]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_valid_messages_parse_and_invalid_ones_name_their_status(name: str) -> None:
    data = (TORTURE / name).read_bytes()
    try:
        message = parse_message(data)
    except SipParseError as exc:
        assert 400 <= exc.status < 600
        return
    assert message.serialize()  # what parses serializes


def test_dblreq_ignores_trailing_octets() -> None:
    message = parse_message((TORTURE / "dblreq.dat").read_bytes())
    assert message.body == b""
    assert message.get("call-id") is not None


def test_esc02_is_not_register_and_has_two_contacts() -> None:
    message = parse_message((TORTURE / "esc02.dat").read_bytes())
    assert getattr(message, "method", "") == "RE%47IST%45R"
    assert len(message.values("contact")) == 2


def test_semiuri_user_part_keeps_its_semicolon() -> None:
    message = parse_message((TORTURE / "semiuri.dat").read_bytes())
    uri = message.request_uri  # type: ignore[attr-defined]
    assert uri.user == "user;par=u%40example.net"
    assert uri.host == "example.com"


def test_mpart01_body_framed_by_length_with_nuls() -> None:
    message = parse_message((TORTURE / "mpart01.dat").read_bytes())
    assert len(message.body) == int(message.get("content-length") or 0)
    assert b"\x00" in message.body


def test_wsinv_folding_and_compact_forms() -> None:
    message = parse_message((TORTURE / "wsinv.dat").read_bytes())
    assert message.to.tag == "1918181833n"
    assert message.from_.tag == "98asjd8"
    assert message.cseq.number == 9 and message.cseq.method == "INVITE"
    assert len(message.values("via")) == 3
    assert message.via.transport == "UDP"
    assert message.get("newfangledheader") == "newfangled value continued newfangled value"
    assert len(message.values("contact")) == 1


@pytest.mark.parametrize("name", sorted(p.name for p in (DATA / "rfc5118").iterdir()))
def test_rfc5118_ipv6_messages(name: str) -> None:
    data = _fix_content_length((DATA / "rfc5118" / name).read_bytes())
    if name == "ipv6-bad":
        with pytest.raises(SipParseError):
            message = parse_message(data)
            message.request_uri  # type: ignore[attr-defined]  # noqa: B018
            message.via  # noqa: B018
            for contact in message.contacts():
                contact.uri  # noqa: B018
        return
    message = parse_message(data)
    if hasattr(message, "request_uri"):
        uri = message.request_uri
        if name == "port-ambiguous":
            assert uri.port is None and uri.host == "[2001:db8::10:5070]"
        if name == "port-unambiguous":
            assert uri.port == 5070
    message.via  # noqa: B018


def _fix_content_length(data: bytes) -> bytes:
    """The archived RFC 5118 copies with SDP bodies lost their Content-Length agreement when
    their line endings were converted; these messages test IPv6 parsing, not framing."""
    head, sep, body = data.partition(b"\r\n\r\n")
    return re.sub(rb"Content-Length: *\d+", b"Content-Length: %d" % len(body), head) + sep + body


def test_an_exception_in_the_b2bua_answers_500_and_is_counted() -> None:
    engine = InMemoryEngine()
    register = (
        b"REGISTER sip:vaultpbx.test SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-q\r\n"
        b"From: <sip:1001@vaultpbx.test>;tag=q1\r\nTo: <sip:1001@vaultpbx.test>\r\n"
        b"Call-ID: q@x\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
        b"Contact: <sip:1001@127.0.0.1:5099>;q=notanumber\r\nContent-Length: 0\r\n\r\n"
    )

    def explode(*args: object) -> None:
        raise RuntimeError("boom")

    engine.b2bua._on_register = explode  # type: ignore[method-assign]
    answers = responses(engine.receive(register, Flow("udp", "127.0.0.1", 5099)))
    assert [r.status for r in answers] == [500]
    assert engine.layer.counters.internal_errors == 1
    after = responses(engine.receive(OPTIONS, Flow("udp", "127.0.0.1", 5099)))
    assert [r.status for r in after] == [200]
