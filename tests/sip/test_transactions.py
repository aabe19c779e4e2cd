"""The four RFC 3261 §17 transaction machines on a manual clock: every timer, lost and
duplicated messages, reliable and unreliable transports, and a walk over every table pair."""

from __future__ import annotations

import itertools

import pytest
from vaultpbx.sip.endpoint import Flow, TransactionLayer
from vaultpbx.sip.message import Request, Response, build_response
from vaultpbx.sip.parser import parse_message
from vaultpbx.sip.timers import TimerConfig
from vaultpbx.sip.transaction import (
    ICT_TABLE,
    IST_TABLE,
    NICT_TABLE,
    NIST_TABLE,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Input,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    Transaction,
)

UDP = Flow("udp", "127.0.0.1", 5070)
TCP = Flow("tcp", "127.0.0.1", 5070, 7)


class RecordingUser:
    """The transaction user: it only notes what the transaction layer reports."""

    def __init__(self) -> None:
        self.requests: list[tuple[object, Request]] = []
        self.responses: list[Response] = []
        self.timeouts: list[Transaction] = []
        self.cancels: list[Request] = []

    def on_request(self, txn, request, flow, now):  # type: ignore[no-untyped-def]
        self.requests.append((txn, request))

    def on_cancel(self, invite_txn, cancel, now):  # type: ignore[no-untyped-def]
        self.cancels.append(cancel)

    def on_response(self, txn, response, now):  # type: ignore[no-untyped-def]
        self.responses.append(response)

    def on_stray_response(self, response, flow, now):  # type: ignore[no-untyped-def]
        return False

    def on_transaction_timeout(self, txn, now):  # type: ignore[no-untyped-def]
        self.timeouts.append(txn)

    def on_transport_error(self, txn, now):  # type: ignore[no-untyped-def]
        self.timeouts.append(txn)


class Clocked:
    def __init__(self, timers: TimerConfig | None = None) -> None:
        counter = itertools.count(1)
        self.user = RecordingUser()
        self.layer = TransactionLayer(
            self.user, timers=timers or TimerConfig(),
            local_addresses={"udp": ("127.0.0.1", 5060), "tcp": ("127.0.0.1", 5060)},
            token=lambda: f"x{next(counter)}",
        )
        self.now = 0.0

    def run_until(self, until: float, step: float = 0.01) -> list[tuple[float, bytes]]:
        """Advance the clock; return (time, bytes) of everything sent meanwhile."""
        sent = []
        while self.now < until - 1e-9:
            self.now = round(self.now + step, 6)
            self.layer.handle_timer(self.now)
            for data, _ in self.layer.outbox:
                sent.append((self.now, data))
            self.layer.outbox.clear()
        return sent

    def take(self) -> list[bytes]:
        out = [data for data, _ in self.layer.outbox]
        self.layer.outbox.clear()
        return out

    def feed(self, data: bytes, flow: Flow = UDP) -> list[bytes]:
        self.layer.receive(data, flow, self.now)
        return self.take()


def request(method: str, branch: str = "z9hG4bKclient1", cseq: int = 1) -> Request:
    headers = {
        "max-forwards": ["70"],
        "from": ["<sip:a@127.0.0.1>;tag=fa"],
        "to": ["<sip:b@127.0.0.1>"],
        "call-id": ["call-1"],
        "cseq": [f"{cseq} {method}"],
    }
    return Request(method, "sip:b@127.0.0.1:5070", headers)


def wire_request(method: str, branch: str = "z9hG4bKpeer1") -> bytes:
    req = request(method)
    req.add("via", f"SIP/2.0/UDP 127.0.0.1:5070;branch={branch}", first=True)
    return req.serialize()


def answer(sent: bytes, status: int, to_tag: str = "tb") -> bytes:
    parsed = parse_message(sent)
    assert isinstance(parsed, Request)
    return build_response(parsed, status, to_tag=to_tag).serialize()


def times(sent: list[tuple[float, bytes]]) -> list[float]:
    return [round(t, 2) for t, _ in sent]


# -- client INVITE (§17.1.1) -----------------------------------------------------------------
def test_ict_timer_a_doubles_and_timer_b_times_out() -> None:
    c = Clocked()
    txn = c.layer.start_client_transaction(request("INVITE"), UDP, c.now)
    assert isinstance(txn, ClientInviteTransaction)
    assert len(c.take()) == 1
    sent = c.run_until(40)
    # Timer A: T1, then doubling with no cap (0.5, 1.5, 3.5, 7.5, 15.5, 31.5); B at 64*T1 = 32.
    assert times(sent) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert c.user.timeouts == [txn]
    assert txn.state is State.TERMINATED
    assert c.layer.client_transactions == {}


def test_ict_provisional_stops_retransmission_and_timer_b() -> None:
    c = Clocked()
    c.layer.start_client_transaction(request("INVITE"), UDP, c.now)
    invite = c.take()[0]
    c.run_until(0.2)
    c.feed(answer(invite, 180))
    assert [r.status for r in c.user.responses] == [180]
    assert c.run_until(70) == []  # Proceeding: no retransmission, no Timer B (§17.1.1.2)
    assert c.user.timeouts == []


def test_ict_error_response_is_acked_and_duplicates_reacked() -> None:
    c = Clocked()
    txn = c.layer.start_client_transaction(request("INVITE"), UDP, c.now)
    invite = c.take()[0]
    busy = answer(invite, 486)
    acks = c.feed(busy)
    assert len(acks) == 1
    ack = parse_message(acks[0])
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.via.branch == parse_message(invite).via.branch  # same transaction (§17.1.1.3)
    assert ack.to.tag == "tb"
    assert ack.cseq.number == 1 and ack.cseq.method == "ACK"
    assert [r.status for r in c.user.responses] == [486]
    # A lost ACK: the retransmitted 486 is absorbed and ACKed again, not passed up.
    assert c.feed(busy) == acks
    assert [r.status for r in c.user.responses] == [486]
    c.run_until(31.9)
    assert txn.state is State.COMPLETED
    c.run_until(32.1)  # Timer D: 32 s on UDP
    assert txn.state is State.TERMINATED


def test_ict_2xx_goes_to_accepted_and_passes_retransmissions() -> None:
    c = Clocked()
    txn = c.layer.start_client_transaction(request("INVITE"), UDP, c.now)
    invite = c.take()[0]
    ok = answer(invite, 200)
    assert c.feed(ok) == []  # no ACK from the transaction for a 2xx (§17.1.1.3)
    assert txn.state is State.ACCEPTED
    c.feed(ok)
    assert [r.status for r in c.user.responses] == [200, 200]  # RFC 6026: TU re-ACKs
    c.run_until(32.1)  # Timer M = 64*T1
    assert txn.state is State.TERMINATED


def test_ict_over_tcp_never_retransmits() -> None:
    c = Clocked()
    txn = c.layer.start_client_transaction(request("INVITE"), TCP, c.now)
    c.take()
    assert c.run_until(31.9) == []
    c.run_until(32.1)
    assert c.user.timeouts == [txn]


def test_ict_tcp_error_response_terminates_at_once() -> None:
    c = Clocked()
    txn = c.layer.start_client_transaction(request("INVITE"), TCP, c.now)
    invite = c.take()[0]
    c.feed(answer(invite, 603), TCP)
    c.run_until(0.02)
    assert txn.state is State.TERMINATED  # Timer D = 0 on reliable transports


# -- client non-INVITE (§17.1.2) ---------------------------------------------------------------
def test_nict_timer_e_caps_at_t2_and_timer_f_times_out() -> None:
    c = Clocked()
    txn = c.layer.start_client_transaction(request("OPTIONS"), UDP, c.now)
    assert isinstance(txn, ClientNonInviteTransaction)
    c.take()
    sent = c.run_until(33)
    intervals = [round(b - a, 2) for a, b in zip([0.0] + times(sent), times(sent), strict=False)]
    assert intervals[:4] == [0.5, 1.0, 2.0, 4.0]
    assert all(i == 4.0 for i in intervals[4:])
    assert c.user.timeouts == [txn]


def test_nict_proceeding_retransmits_every_t2() -> None:
    c = Clocked()
    c.layer.start_client_transaction(request("BYE"), UDP, c.now)
    bye = c.take()[0]
    c.feed(answer(bye, 100))
    c.run_until(0.6)  # the Timer E armed at 0.5 fires once more
    sent = c.run_until(13)
    gaps = {round(b - a, 2) for a, b in zip(times(sent), times(sent)[1:], strict=False)}
    assert gaps == {4.0}


def test_nict_final_response_then_timer_k_absorbs_duplicates() -> None:
    c = Clocked()
    txn = c.layer.start_client_transaction(request("BYE"), UDP, c.now)
    bye = c.take()[0]
    ok = answer(bye, 200)
    c.feed(ok)
    c.feed(ok)  # duplicate: absorbed
    assert [r.status for r in c.user.responses] == [200]
    assert c.layer.counters.retransmissions_received == 1
    c.run_until(4.9)
    assert txn.state is State.COMPLETED
    c.run_until(5.1)  # Timer K = T4
    assert txn.state is State.TERMINATED


# -- server INVITE (§17.2.1) ---------------------------------------------------------------------
def test_ist_retransmitted_invite_resends_last_provisional() -> None:
    c = Clocked()
    invite = wire_request("INVITE")
    c.feed(invite)
    txn, req = c.user.requests[0]
    assert isinstance(txn, ServerInviteTransaction)
    txn.respond(build_response(req, 180, to_tag="s1"), c.now)
    ringing = c.take()
    assert c.feed(invite) == ringing  # §17.2.1: resend the provisional
    assert len(c.user.requests) == 1  # the TU never sees the retransmission


def test_ist_error_response_timer_g_until_ack_then_timer_i() -> None:
    c = Clocked()
    c.feed(wire_request("INVITE"))
    txn, req = c.user.requests[0]
    txn.respond(build_response(req, 486, to_tag="s1"), c.now)
    c.take()
    sent = c.run_until(8.0)
    assert times(sent) == [0.5, 1.5, 3.5, 7.5]  # Timer G: T1 doubling, capped at T2
    sent = c.run_until(16.0)
    assert times(sent) == [11.5, 15.5]
    ack = (
        wire_request("INVITE").replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK")
    )
    ack = ack.replace(b"To: <sip:b@127.0.0.1>", b"To: <sip:b@127.0.0.1>;tag=s1")
    c.feed(ack)
    assert txn.state is State.CONFIRMED
    assert c.run_until(20.0) == []  # no more retransmissions
    assert txn.state is State.CONFIRMED
    c.run_until(21.1)  # Timer I = T4 after the ACK at 16
    assert txn.state is State.TERMINATED


def test_ist_lost_ack_times_out_with_timer_h() -> None:
    c = Clocked()
    c.feed(wire_request("INVITE"))
    txn, req = c.user.requests[0]
    txn.respond(build_response(req, 404, to_tag="s1"), c.now)
    c.take()
    c.run_until(31.9)
    assert c.user.timeouts == []
    c.run_until(32.1)
    assert c.user.timeouts == [txn]


def test_ist_2xx_accepted_absorbs_invite_retransmissions() -> None:
    c = Clocked()
    invite = wire_request("INVITE")
    c.feed(invite)
    txn, req = c.user.requests[0]
    txn.respond(build_response(req, 200, to_tag="s1"), c.now)
    c.take()
    assert txn.state is State.ACCEPTED
    assert c.feed(invite) == []  # RFC 6026 §7.1: absorbed; the TU retransmits its 2xx
    assert c.run_until(31.9) == []
    c.run_until(32.1)  # Timer L
    assert txn.state is State.TERMINATED


def test_ist_over_tcp_no_timer_g() -> None:
    c = Clocked()
    c.feed(wire_request("INVITE").replace(b"/UDP", b"/TCP"), TCP)
    txn, req = c.user.requests[0]
    txn.respond(build_response(req, 486, to_tag="s1"), c.now)
    c.take()
    assert c.run_until(31.9) == []


# -- server non-INVITE (§17.2.2) ---------------------------------------------------
def test_nist_trying_absorbs_then_completed_resends_final() -> None:
    c = Clocked()
    options = wire_request("OPTIONS")
    c.feed(options)
    txn, req = c.user.requests[0]
    assert isinstance(txn, ServerNonInviteTransaction)
    assert c.feed(options) == []  # Trying: retransmission absorbed
    txn.respond(build_response(req, 200, to_tag="s1"), c.now)
    final = c.take()
    assert c.feed(options) == final  # Completed: resend the final response
    c.run_until(31.9)
    assert txn.state is State.COMPLETED
    c.run_until(32.1)  # Timer J = 64*T1 on UDP
    assert txn.state is State.TERMINATED
    c.feed(options)  # after J it is a new request
    assert len(c.user.requests) == 2


def test_configured_timers_scale_everything() -> None:
    # Binary-exact values, so the manual clock lands on each deadline exactly.
    c = Clocked(TimerConfig(t1=0.125, t2=0.5, t4=1.0))
    c.layer.start_client_transaction(request("INVITE"), UDP, c.now)
    c.take()
    sent = c.run_until(9.0, step=0.0625)
    assert [t for t, _ in sent] == [0.125, 0.375, 0.875, 1.875, 3.875, 7.875]
    assert len(c.user.timeouts) == 1  # Timer B = 64 * T1 = 8 s


def test_cancel_matches_invite_and_gets_200_then_tu_told() -> None:
    c = Clocked()
    c.feed(wire_request("INVITE"))
    txn, req = c.user.requests[0]
    txn.respond(build_response(req, 180, to_tag="s1"), c.now)
    c.take()
    cancel = wire_request("INVITE").replace(b"INVITE sip", b"CANCEL sip")
    cancel = cancel.replace(b"1 INVITE", b"1 CANCEL")
    out = c.feed(cancel)
    status = parse_message(out[0])
    assert isinstance(status, Response) and status.status == 200
    assert len(c.user.cancels) == 1
    unknown = cancel.replace(b"z9hG4bKpeer1", b"z9hG4bKnone")
    out = c.feed(unknown)
    status = parse_message(out[0])
    assert isinstance(status, Response) and status.status == 481


# -- the tables themselves ---------------------------------------------------------
TABLES = {
    "ICT": (ICT_TABLE, ClientInviteTransaction),
    "NICT": (NICT_TABLE, ClientNonInviteTransaction),
    "IST": (IST_TABLE, ServerInviteTransaction),
    "NIST": (NIST_TABLE, ServerNonInviteTransaction),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_action_exists_and_terminated_is_final(name: str) -> None:
    table, cls = TABLES[name]
    for (state, _), (action, _) in table.items():
        assert callable(getattr(cls, action)), action
        assert state is not State.TERMINATED


@pytest.mark.parametrize("name", sorted(TABLES))
@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(Input))
def test_pairs_missing_from_the_table_are_absorbed(name: str, state: State,
                                                   event: Input) -> None:
    table, cls = TABLES[name]
    if (state, event) in table:
        return
    c = Clocked()
    txn = cls(("k", name), c.layer, UDP, request("INVITE" if "I" in name[:2] else "OPTIONS"))
    txn.state = state
    assert txn.fire(event, 0.0) is False
    assert txn.state is state
    assert c.take() == []
