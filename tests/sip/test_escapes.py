"""Regression tests for SIP input that escaped error handling (issue 17, items 14-16 and 19),
in memory: the real parser, transaction layer and B2BUA, two peers and no sockets.

Every escape must end as the right 4xx sent back on the flow it came from, counted as a parse
error, with no internal error, and must leave the engine answering the next request on the same
flow (for TCP: the same connection). The wire-level twins are in
tests/integration/test_bad_input_wire.py.
"""

from __future__ import annotations

import pytest
from vaultpbx.sip.endpoint import Flow
from vaultpbx.sip.message import Response
from vaultpbx.sip.parser import KeepAlivePing, StreamFramer, parse_message

from .inmemory import InMemoryEngine, responses

UDP = Flow("udp", "127.0.0.1", 5070)
TCP = Flow("tcp", "127.0.0.1", 40001, 7)
FLOWS = pytest.mark.parametrize("flow", [UDP, TCP], ids=["udp", "tcp"])


def message(
    method: str = "OPTIONS",
    uri: str = "sip:1001@vaultpbx.test",
    *,
    branch: str = "z9hG4bKesc1",
    via: str | None = None,
    to: str = "<sip:1001@vaultpbx.test>",
    from_: str = "<sip:1002@vaultpbx.test>;tag=f1",
    call_id: str = "escape-1",
    extra: str = "",
    content_length: str = "0",
) -> bytes:
    via = via if via is not None else f"SIP/2.0/UDP 127.0.0.1:5070;branch={branch}"
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {from_}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def framed(engine: InMemoryEngine, framer: StreamFramer, data: bytes, flow: Flow
           ) -> list[tuple[bytes, Flow]]:
    """What the TCP transport does with a segment: frame it, deliver each frame, and hand a
    frame that cannot be delimited to `reject_unframable`."""
    out: list[tuple[bytes, Flow]] = []
    try:
        frames = framer.feed(data)
    except Exception:  # noqa: BLE001 - SipFramingError: handled like the transport does below
        frames = []
    for frame in frames:
        assert not isinstance(frame, KeepAlivePing)
        out += engine.receive(frame, flow)
    if framer.error is not None:
        engine.layer.reject_unframable(framer.error_head, framer.error, flow)
        out += list(engine.layer.outbox)
        engine.layer.outbox.clear()
    return out


def send(engine: InMemoryEngine, data: bytes, flow: Flow) -> list[tuple[bytes, Flow]]:
    if flow.reliable:
        return framed(engine, StreamFramer(), data, flow)
    return engine.receive(data, flow)


def only_response(out: list[tuple[bytes, Flow]], flow: Flow) -> Response:
    assert [f for _, f in out] == [flow], out
    (response,) = responses(out)
    return response


def assert_still_answers(engine: InMemoryEngine, flow: Flow, branch: str = "z9hG4bKprobe"
                         ) -> None:
    out = send(engine, message(branch=branch, call_id="probe"), flow)
    assert only_response(out, flow).status == 200


def assert_counted_once(engine: InMemoryEngine, before: dict[str, int]) -> None:
    after = engine.layer.counters.as_dict()
    assert after["parse_errors"] == before["parse_errors"] + 1
    assert after["internal_errors"] == 0


# -- item 15: a Request-URI that is not a URI -------------------------------------------------
@FLOWS
@pytest.mark.parametrize("uri", ["foo", "sip:a@[zz", "sip:a@b:99999", "sip:", "sips:@"])
def test_unparseable_request_uri_is_400_not_an_exception(uri: str, flow: Flow) -> None:
    engine = InMemoryEngine()
    before = engine.layer.counters.as_dict()
    response = only_response(send(engine, message(uri=uri), flow), flow)
    assert response.status == 400
    assert "Warning" in response.serialize().decode()
    assert_counted_once(engine, before)
    assert_still_answers(engine, flow)


# -- item 16: "Via: ,", a 5,000-digit Content-Length, a malformed To on REGISTER -------------
@FLOWS
@pytest.mark.parametrize("via", [",", " , ,", ",,,"])
def test_empty_via_element_is_400(via: str, flow: Flow) -> None:
    engine = InMemoryEngine()
    before = engine.layer.counters.as_dict()
    response = only_response(send(engine, message(via=via), flow), flow)
    assert response.status == 400
    assert_counted_once(engine, before)
    assert_still_answers(engine, flow)


def test_huge_content_length_on_udp_is_413() -> None:
    engine = InMemoryEngine()
    before = engine.layer.counters.as_dict()
    response = only_response(engine.receive(message(content_length="9" * 5000), UDP), UDP)
    assert response.status == 413
    assert_counted_once(engine, before)
    assert_still_answers(engine, UDP)


def test_leading_zeros_do_not_make_a_content_length_large() -> None:
    parsed = parse_message(message(content_length="0" * 5000 + "4") + b"abcd")
    assert parsed.body == b"abcd"


def test_huge_content_length_on_tcp_is_answered_413_before_the_close() -> None:
    """The stream cannot be framed past it (RFC 3261 §18.3), so the connection closes; but the
    sender first gets its 413, and the frames before it were served."""
    engine = InMemoryEngine()
    framer = StreamFramer()
    good = message(branch="z9hG4bKfirst", call_id="first")
    out = framed(engine, framer, good + message(content_length="7" * 5000), TCP)
    assert [r.status for r in responses(out)] == [200, 413]
    assert {f for _, f in out} == {TCP}
    assert framer.error is not None and framer.error.status == 413
    assert engine.layer.counters.parse_errors == 1
    assert engine.layer.counters.internal_errors == 0


def test_framer_error_for_a_huge_content_length_is_a_framing_error_not_valueerror() -> None:
    framer = StreamFramer()
    with pytest.raises(Exception) as caught:
        framer.feed(message(content_length="1" * 4400))
    assert type(caught.value).__name__ == "SipFramingError"
    assert framer.error_head.startswith(b"OPTIONS sip:1001@vaultpbx.test SIP/2.0")


@FLOWS
@pytest.mark.parametrize("to", ["<sip:1001@[zz>", "<sip:1001@vaultpbx.test:77777>",
                                "<sip:@>", "sip:1001@[::1"])
def test_register_with_malformed_to_uri_is_400_not_500(to: str, flow: Flow) -> None:
    engine = InMemoryEngine()
    before = engine.layer.counters.as_dict()
    out = send(engine, message("REGISTER", "sip:vaultpbx.test", to=to,
                               extra="Contact: <sip:1001@127.0.0.1:5070>\r\n"), flow)
    assert only_response(out, flow).status == 400
    assert_counted_once(engine, before)
    assert engine.b2bua.location.count() == 0
    assert_still_answers(engine, flow)


@FLOWS
def test_invite_with_malformed_from_uri_is_400(flow: Flow) -> None:
    engine = InMemoryEngine()
    before = engine.layer.counters.as_dict()
    out = send(engine, message("INVITE", from_="<sip:1002@[zz>;tag=f1"), flow)
    assert only_response(out, flow).status == 400
    assert_counted_once(engine, before)


def test_register_with_unroutable_contact_stores_no_binding() -> None:
    """A binding the registrar accepted would break the next call to that extension."""
    engine = InMemoryEngine()
    out = engine.receive(message("REGISTER", "sip:vaultpbx.test",
                                 extra="Contact: <sip:1001@[zz]x>\r\n"), UDP)
    assert only_response(out, UDP).status == 400
    assert engine.b2bua.location.count() == 0


# -- item 14: the Authorization header that froze the loop ------------------------------------
@FLOWS
def test_digest_with_a_long_run_of_blanks_is_answered(flow: Flow) -> None:
    """The cost side is in test_linear_cost.py; here: it is answered, and only once."""
    engine = InMemoryEngine()
    auth = "Authorization: Digest " + " " * 20_000 + "x\r\n"
    out = send(engine, message("REGISTER", "sip:vaultpbx.test",
                               extra="Contact: <sip:1001@127.0.0.1:5070>\r\n" + auth), flow)
    assert only_response(out, flow).status == 400  # credentials that cannot be read
    assert engine.layer.counters.internal_errors == 0
    assert_still_answers(engine, flow)


# -- item 19: a live branch reused from another transport or source ---------------------------
ATTACKER_UDP = Flow("udp", "127.0.0.66", 5070)
ATTACKER_TCP = Flow("tcp", "127.0.0.1", 40002, 8)


@pytest.mark.parametrize("other", [ATTACKER_UDP, ATTACKER_TCP, Flow("udp", "127.0.0.1", 5071)],
                         ids=["other-host", "other-transport", "other-port"])
def test_same_branch_from_another_source_is_its_own_transaction(other: Flow) -> None:
    engine = InMemoryEngine()
    first = message(branch="z9hG4bKshared", call_id="victim")
    assert only_response(engine.receive(first, UDP), UDP).status == 200
    # The same branch and sent-by (Via text anyone can copy), from elsewhere: a new transaction
    # answered to its own sender. The old code took it for a retransmission and resent the
    # victim's final response to the victim.
    out = send(engine, message(branch="z9hG4bKshared", call_id="victim"), other)
    assert only_response(out, other).status == 200
    assert engine.layer.counters.retransmissions_received == 0
    # The victim's own retransmission still matches its transaction (§17.2.3).
    out = engine.receive(first, UDP)
    assert only_response(out, UDP).status == 200
    assert engine.layer.counters.retransmissions_received == 1


def test_cancel_from_another_source_does_not_end_someone_elses_invite() -> None:
    """A CANCEL matches the INVITE's transaction (§9.2); copying its branch and Via from
    another address must get 481 and leave the call alone."""
    engine = InMemoryEngine()
    trusted = Flow("udp", "127.0.0.9", 5070)  # no auth for this source (see inmemory.CONFIG)
    invite_via = "SIP/2.0/UDP 127.0.0.9:5070;branch=z9hG4bKinv"
    invite = message("INVITE", "sip:user@vaultpbx.test", via=invite_via, call_id="call-x")
    out = engine.receive(invite, trusted)
    assert [r.status for r in responses(out) if r] == [100]
    assert [f for _, f in out if f != trusted]  # the INVITE went on to the trunk
    cancel = message("CANCEL", "sip:user@vaultpbx.test", via=invite_via, call_id="call-x")
    out = engine.receive(cancel, ATTACKER_UDP)
    assert only_response(out, ATTACKER_UDP).status == 481
    assert len(engine.b2bua.calls) == 1
    # The real caller's CANCEL still works.
    out = engine.receive(cancel, trusted)
    to_caller = [parse_message(d) for d, f in out if f == trusted]
    assert sorted(r.status for r in to_caller if isinstance(r, Response)) == [200, 487]


# -- found by the long fuzz run (bench/results/fuzz.md) -----------------------------------------
@FLOWS
@pytest.mark.parametrize("extra", ["Max-Forwards: 7\x1d\r\n", "Expires: \x1e0\r\n"],
                         ids=["max-forwards", "expires"])
def test_scalar_with_a_control_character_is_400(extra: str, flow: Flow) -> None:
    """`\\s` matched \\x1c-\\x1f, which int() refuses: check_request raised ValueError."""
    engine = InMemoryEngine()
    before = engine.layer.counters.as_dict()
    data = message("REGISTER", "sip:vaultpbx.test", extra=extra).replace(
        b"Max-Forwards: 70\r\n", b"" if extra.startswith("Max") else b"Max-Forwards: 70\r\n")
    assert only_response(send(engine, data, flow), flow).status == 400
    assert_counted_once(engine, before)
    assert_still_answers(engine, flow)


def test_ack_copied_from_another_source_does_not_confirm_someone_elses_invite() -> None:
    """ACK matches the INVITE's server transaction (§17.2.3) only from the INVITE's source: a
    copied ACK from elsewhere must not stop Timer G retransmitting the final response to the
    real caller, and the real caller's ACK still confirms it."""
    engine = InMemoryEngine()
    invite = message("INVITE", "sip:1001@vaultpbx.test", branch="z9hG4bKack", call_id="ack-1")
    out = engine.receive(invite, UDP)
    # From the trunk's address, so no challenge; 1001 is not registered: 480, a final error.
    assert [r.status for r in responses(out)] == [100, 480]
    assert {f for _, f in out} == {UDP}
    (txn,) = engine.layer.server_transactions.values()
    assert txn.state.value == "Completed"
    ack = message("ACK", "sip:1001@vaultpbx.test", branch="z9hG4bKack", call_id="ack-1")
    assert engine.receive(ack, ATTACKER_UDP) == []
    assert txn.state.value == "Completed"
    retransmitted = engine.advance(0.6)  # Timer G (T1) fires: the 407 again, to the caller
    assert [f for _, f in retransmitted] == [UDP]
    assert engine.receive(ack, UDP) == []
    assert txn.state.value == "Confirmed"
