"""The four transaction state machines of RFC 3261 §17, with the RFC 6026 "Accepted" state.

Each machine is a table {(state, input): (action, next_state)} with the section that defines the
transition beside it; a pair missing from the table means the input is absorbed (the RFC says
"discarded" or the transaction simply does not react). A test walks every pair.

Invariants:
- A transaction never touches a socket or a clock. It asks its `TransactionLayer` to send bytes,
  to arm a timer at an absolute time, and to tell the transaction user (TU) what happened.
- A transaction holds at most two timers: a retransmission timer (A, E or G) and one timeout
  (B, D, F, H, I, J, K, L or M). Re-arming replaces; the layer discards stale heap entries.
- Once in a lingering state (Completed/Confirmed/Accepted) a transaction keeps only what it still
  has to resend (final response or ACK bytes): the request object is dropped, so memory held for
  Timer J/K/D/L is small and proportional to the call rate.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

from .message import Request, Response
from .timers import TimerConfig

if TYPE_CHECKING:
    from .endpoint import Flow, TransactionLayer


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(enum.Enum):
    # from the network
    REQUEST_RETRANSMIT = "request retransmission"
    ACK = "ACK"
    RESPONSE_1XX = "1xx"
    RESPONSE_2XX = "2xx"
    RESPONSE_FINAL_ERROR = "300-699"
    # from the TU (server transactions)
    SEND_1XX = "TU 1xx"
    SEND_2XX = "TU 2xx"
    SEND_FINAL_ERROR = "TU 300-699"
    # timers
    TIMER_RETRANSMIT = "Timer A/E/G"
    TIMER_TIMEOUT = "Timer B/D/F/H/I/J/K/L/M"
    TRANSPORT_ERROR = "transport error"


S, I = State, Input  # noqa: E741 - table readability

# Client INVITE transaction, RFC 3261 §17.1.1 (Figure 5) with RFC 6026 §7.2 (Figure 5 fixed).
ICT_TABLE: dict[tuple[State, Input], tuple[str, State]] = {
    (S.CALLING, I.TIMER_RETRANSMIT): ("retransmit_request", S.CALLING),  # §17.1.1.2 Timer A
    (S.CALLING, I.TIMER_TIMEOUT): ("report_timeout", S.TERMINATED),  # §17.1.1.2 Timer B
    (S.CALLING, I.RESPONSE_1XX): ("pass_provisional", S.PROCEEDING),  # §17.1.1.2
    (S.CALLING, I.RESPONSE_2XX): ("pass_2xx_accept", S.ACCEPTED),  # RFC 6026 §7.2
    (S.CALLING, I.RESPONSE_FINAL_ERROR): ("ack_and_pass_final", S.COMPLETED),  # §17.1.1.2
    (S.CALLING, I.TRANSPORT_ERROR): ("report_transport_error", S.TERMINATED),  # §17.1.1.2
    (S.PROCEEDING, I.RESPONSE_1XX): ("pass_provisional", S.PROCEEDING),  # §17.1.1.2
    (S.PROCEEDING, I.RESPONSE_2XX): ("pass_2xx_accept", S.ACCEPTED),  # RFC 6026 §7.2
    (S.PROCEEDING, I.RESPONSE_FINAL_ERROR): ("ack_and_pass_final", S.COMPLETED),  # §17.1.1.2
    # No Timer B in Proceeding (§17.1.1.2); the TU arms 64*T1 after a CANCEL (§9.1).
    (S.PROCEEDING, I.TIMER_TIMEOUT): ("report_timeout", S.TERMINATED),
    (S.COMPLETED, I.RESPONSE_FINAL_ERROR): ("resend_ack", S.COMPLETED),  # §17.1.1.2
    (S.COMPLETED, I.TIMER_TIMEOUT): ("terminate", S.TERMINATED),  # §17.1.1.2 Timer D
    (S.COMPLETED, I.TRANSPORT_ERROR): ("report_transport_error", S.TERMINATED),  # §17.1.1.2
    (S.ACCEPTED, I.RESPONSE_2XX): ("pass_2xx", S.ACCEPTED),  # RFC 6026 §7.2
    (S.ACCEPTED, I.TIMER_TIMEOUT): ("terminate", S.TERMINATED),  # RFC 6026 §7.2 Timer M
}

# Client non-INVITE transaction, RFC 3261 §17.1.2 (Figure 6).
NICT_TABLE: dict[tuple[State, Input], tuple[str, State]] = {
    (S.TRYING, I.TIMER_RETRANSMIT): ("retransmit_request", S.TRYING),  # §17.1.2.2 Timer E
    (S.TRYING, I.TIMER_TIMEOUT): ("report_timeout", S.TERMINATED),  # §17.1.2.2 Timer F
    (S.TRYING, I.RESPONSE_1XX): ("pass_provisional", S.PROCEEDING),  # §17.1.2.2
    (S.TRYING, I.RESPONSE_2XX): ("pass_final", S.COMPLETED),  # §17.1.2.2
    (S.TRYING, I.RESPONSE_FINAL_ERROR): ("pass_final", S.COMPLETED),  # §17.1.2.2
    (S.TRYING, I.TRANSPORT_ERROR): ("report_transport_error", S.TERMINATED),  # §17.1.2.2
    (S.PROCEEDING, I.TIMER_RETRANSMIT): ("retransmit_request", S.PROCEEDING),  # Timer E = T2
    (S.PROCEEDING, I.TIMER_TIMEOUT): ("report_timeout", S.TERMINATED),  # §17.1.2.2 Timer F
    (S.PROCEEDING, I.RESPONSE_1XX): ("pass_provisional", S.PROCEEDING),  # §17.1.2.2
    (S.PROCEEDING, I.RESPONSE_2XX): ("pass_final", S.COMPLETED),  # §17.1.2.2
    (S.PROCEEDING, I.RESPONSE_FINAL_ERROR): ("pass_final", S.COMPLETED),  # §17.1.2.2
    (S.PROCEEDING, I.TRANSPORT_ERROR): ("report_transport_error", S.TERMINATED),
    (S.COMPLETED, I.TIMER_TIMEOUT): ("terminate", S.TERMINATED),  # §17.1.2.2 Timer K
}

# Server INVITE transaction, RFC 3261 §17.2.1 (Figure 7) with RFC 6026 §7.1 (Accepted).
IST_TABLE: dict[tuple[State, Input], tuple[str, State]] = {
    (S.PROCEEDING, I.REQUEST_RETRANSMIT): ("resend_provisional", S.PROCEEDING),  # §17.2.1
    (S.PROCEEDING, I.SEND_1XX): ("send_provisional", S.PROCEEDING),  # §17.2.1
    (S.PROCEEDING, I.SEND_2XX): ("send_2xx", S.ACCEPTED),  # RFC 6026 §7.1
    (S.PROCEEDING, I.SEND_FINAL_ERROR): ("send_final_error", S.COMPLETED),  # §17.2.1
    (S.PROCEEDING, I.TRANSPORT_ERROR): ("report_transport_error", S.TERMINATED),  # §17.2.1
    (S.COMPLETED, I.REQUEST_RETRANSMIT): ("resend_final", S.COMPLETED),  # §17.2.1
    (S.COMPLETED, I.TIMER_RETRANSMIT): ("retransmit_final", S.COMPLETED),  # §17.2.1 Timer G
    (S.COMPLETED, I.TIMER_TIMEOUT): ("report_no_ack", S.TERMINATED),  # §17.2.1 Timer H
    (S.COMPLETED, I.ACK): ("confirm", S.CONFIRMED),  # §17.2.1
    (S.COMPLETED, I.TRANSPORT_ERROR): ("report_transport_error", S.TERMINATED),  # §17.2.1
    (S.CONFIRMED, I.TIMER_TIMEOUT): ("terminate", S.TERMINATED),  # §17.2.1 Timer I
    (S.ACCEPTED, I.SEND_2XX): ("send_2xx", S.ACCEPTED),  # RFC 6026 §7.1: TU retransmits 2xx
    (S.ACCEPTED, I.TIMER_TIMEOUT): ("terminate", S.TERMINATED),  # RFC 6026 §7.1 Timer L
}

# Server non-INVITE transaction, RFC 3261 §17.2.2 (Figure 8).
NIST_TABLE: dict[tuple[State, Input], tuple[str, State]] = {
    (S.TRYING, I.SEND_1XX): ("send_provisional", S.PROCEEDING),  # §17.2.2
    (S.TRYING, I.SEND_2XX): ("send_final", S.COMPLETED),  # §17.2.2
    (S.TRYING, I.SEND_FINAL_ERROR): ("send_final", S.COMPLETED),  # §17.2.2
    (S.PROCEEDING, I.REQUEST_RETRANSMIT): ("resend_provisional", S.PROCEEDING),  # §17.2.2
    (S.PROCEEDING, I.SEND_1XX): ("send_provisional", S.PROCEEDING),  # §17.2.2
    (S.PROCEEDING, I.SEND_2XX): ("send_final", S.COMPLETED),  # §17.2.2
    (S.PROCEEDING, I.SEND_FINAL_ERROR): ("send_final", S.COMPLETED),  # §17.2.2
    (S.PROCEEDING, I.TRANSPORT_ERROR): ("report_transport_error", S.TERMINATED),  # §17.2.2
    (S.COMPLETED, I.REQUEST_RETRANSMIT): ("resend_final", S.COMPLETED),  # §17.2.2
    (S.COMPLETED, I.TIMER_TIMEOUT): ("terminate", S.TERMINATED),  # §17.2.2 Timer J
    (S.COMPLETED, I.TRANSPORT_ERROR): ("report_transport_error", S.TERMINATED),  # §17.2.2
}
del S, I


def response_input(status: int) -> Input:
    if status < 200:
        return Input.RESPONSE_1XX
    if status < 300:
        return Input.RESPONSE_2XX
    return Input.RESPONSE_FINAL_ERROR


def send_input(status: int) -> Input:
    if status < 200:
        return Input.SEND_1XX
    if status < 300:
        return Input.SEND_2XX
    return Input.SEND_FINAL_ERROR


class Transaction:
    """Common state of all four machines. Subclasses name their table and initial state."""

    __slots__ = (
        "key", "layer", "flow", "state", "owner", "request", "method",
        "retransmit_at", "retransmit_interval", "timeout_at", "last_bytes", "fired_at",
    )
    TABLE: dict[tuple[State, Input], tuple[str, State]] = {}
    IS_INVITE = False
    IS_CLIENT = False

    def __init__(self, key: object, layer: TransactionLayer, flow: Flow, request: Request) -> None:
        self.key = key
        self.layer = layer
        self.flow = flow
        self.state = State.TRYING
        # The TU object that receives this transaction's reports (a call leg, the registrar...).
        self.owner: object | None = None
        self.request: Request | None = request
        self.method = request.method
        self.retransmit_at: float | None = None
        self.retransmit_interval = 0.0
        self.timeout_at: float | None = None
        self.last_bytes: bytes | None = None  # what a retransmission resends
        # The deadline of the retransmission timer that just fired: the next one is armed from
        # it, not from the (later) time the loop woke up, so intervals do not drift.
        self.fired_at = 0.0

    @property
    def timers(self) -> TimerConfig:
        return self.layer.timers

    def fire(self, event: Input, now: float, message: Response | None = None) -> bool:
        """Apply one input. Returns False when the table has no entry (input absorbed)."""
        entry = self.TABLE.get((self.state, event))
        if entry is None:
            return False
        action, next_state = entry
        self.state = next_state
        getattr(self, action)(now, message)
        if next_state is State.TERMINATED:
            self.layer.remove(self)
        return True

    # -- timers ----------------------------------------------------------------------------
    def arm_retransmit(self, now: float, interval: float) -> None:
        self.retransmit_interval = interval
        self.retransmit_at = at = now + interval
        self.layer.schedule(self, at)

    def arm_timeout(self, now: float, after: float) -> None:
        self.timeout_at = at = now + after
        self.layer.schedule(self, at)

    def on_timer(self, now: float) -> None:
        if self.retransmit_at is not None and now >= self.retransmit_at:
            self.fired_at = self.retransmit_at
            self.retransmit_at = None
            self.fire(Input.TIMER_RETRANSMIT, now)
        if self.timeout_at is not None and now >= self.timeout_at:
            self.timeout_at = None
            self.fire(Input.TIMER_TIMEOUT, now)

    def next_deadline(self) -> float | None:
        r, t = self.retransmit_at, self.timeout_at
        if r is None:
            return t
        if t is None:
            return r
        return r if r < t else t

    def terminate(self, now: float, message: Response | None = None) -> None:
        self.retransmit_at = self.timeout_at = None
        self.request = None
        self.last_bytes = None

    def report_timeout(self, now: float, message: Response | None = None) -> None:
        self.terminate(now)
        self.layer.tu.on_transaction_timeout(self, now)

    def report_transport_error(self, now: float, message: Response | None = None) -> None:
        self.terminate(now)
        self.layer.tu.on_transport_error(self, now)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.state.value}>"


class ClientTransaction(Transaction):
    __slots__ = ("on_response",)
    IS_CLIENT = True

    def __init__(self, key: object, layer: TransactionLayer, flow: Flow, request: Request) -> None:
        super().__init__(key, layer, flow, request)
        # Optional direct callback; when None, responses go to `layer.tu.on_response`.
        self.on_response: Callable[[ClientTransaction, Response, float], None] | None = None

    def start(self, data: bytes, now: float) -> None:
        self.last_bytes = data
        self.layer.send(data, self.flow)
        timers = self.timers
        if not self.flow.reliable:
            self.arm_retransmit(now, timers.t1)  # Timer A / Timer E start at T1
        self.timeout_at = now + (timers.timer_b if self.IS_INVITE else timers.timer_f)
        self.layer.schedule(self, self.timeout_at)

    def deliver(self, response: Response, now: float) -> None:
        callback = self.on_response
        if callback is not None:
            callback(self, response, now)
        else:
            self.layer.tu.on_response(self, response, now)

    def retransmit_request(self, now: float, message: Response | None = None) -> None:
        if self.last_bytes is not None:
            self.layer.send(self.last_bytes, self.flow, retransmission=True)
        interval = self.retransmit_interval * 2
        if not self.IS_INVITE or self.state is State.PROCEEDING:
            interval = min(interval, self.timers.t2)  # §17.1.2.2: E doubles up to T2
        if not self.IS_INVITE and self.state is State.PROCEEDING:
            interval = self.timers.t2  # §17.1.2.2: in Proceeding, E fires every T2
        self.arm_retransmit(self.fired_at, interval)

    def pass_provisional(self, now: float, message: Response | None = None) -> None:
        if self.IS_INVITE and self.state is State.PROCEEDING:
            self.retransmit_at = None  # §17.1.1.2: Proceeding stops retransmissions and Timer B
            self.timeout_at = None
        assert message is not None
        self.deliver(message, now)

    def pass_final(self, now: float, message: Response | None = None) -> None:
        assert message is not None
        self.retransmit_at = None
        self.request = None
        self.last_bytes = None
        self.deliver(message, now)
        # §17.1.2.2 Timer K: T4 for unreliable transports, zero for reliable ones.
        self.arm_timeout(now, 0.0 if self.flow.reliable else self.timers.timer_k)


class ClientInviteTransaction(ClientTransaction):
    __slots__ = ()
    TABLE = ICT_TABLE
    IS_INVITE = True

    def __init__(self, key: object, layer: TransactionLayer, flow: Flow, request: Request) -> None:
        super().__init__(key, layer, flow, request)
        self.state = State.CALLING

    def pass_2xx_accept(self, now: float, message: Response | None = None) -> None:
        assert message is not None
        self.retransmit_at = None
        self.request = None
        self.last_bytes = None
        self.arm_timeout(now, self.timers.timer_m)
        self.deliver(message, now)

    def pass_2xx(self, now: float, message: Response | None = None) -> None:
        assert message is not None
        self.deliver(message, now)  # the TU re-sends its ACK for a retransmitted 2xx (§13.2.2.4)

    def ack_and_pass_final(self, now: float, message: Response | None = None) -> None:
        assert message is not None and self.request is not None
        self.retransmit_at = None
        self.last_bytes = build_ack_for_error(self.request, message).serialize()
        self.layer.send(self.last_bytes, self.flow)
        self.request = None
        self.arm_timeout(now, 0.0 if self.flow.reliable else self.timers.timer_d)
        self.deliver(message, now)

    def resend_ack(self, now: float, message: Response | None = None) -> None:
        if self.last_bytes is not None:
            self.layer.send(self.last_bytes, self.flow, retransmission=True)


class ClientNonInviteTransaction(ClientTransaction):
    __slots__ = ()
    TABLE = NICT_TABLE


class ServerTransaction(Transaction):
    __slots__ = ("provisional_bytes", "to_tag")

    def __init__(self, key: object, layer: TransactionLayer, flow: Flow, request: Request) -> None:
        super().__init__(key, layer, flow, request)
        self.provisional_bytes: bytes | None = None
        self.to_tag: str | None = None  # the tag this UAS puts in its responses

    def respond(self, response: Response, now: float) -> None:
        """The TU sends `response` through this transaction."""
        self.fire(send_input(response.status), now, response)

    def _send(self, response: Response) -> bytes:
        data = response.serialize()
        self.layer.send(data, self.flow)
        return data

    def send_provisional(self, now: float, message: Response | None = None) -> None:
        assert message is not None
        self.provisional_bytes = self._send(message)

    def resend_provisional(self, now: float, message: Response | None = None) -> None:
        if self.provisional_bytes is not None:
            self.layer.send(self.provisional_bytes, self.flow, retransmission=True)

    def resend_final(self, now: float, message: Response | None = None) -> None:
        if self.last_bytes is not None:
            self.layer.send(self.last_bytes, self.flow, retransmission=True)


class ServerInviteTransaction(ServerTransaction):
    __slots__ = ()
    TABLE = IST_TABLE
    IS_INVITE = True

    def __init__(self, key: object, layer: TransactionLayer, flow: Flow, request: Request) -> None:
        super().__init__(key, layer, flow, request)
        self.state = State.PROCEEDING

    def send_2xx(self, now: float, message: Response | None = None) -> None:
        assert message is not None
        self._send(message)
        if self.timeout_at is None:
            self.request = None
            self.provisional_bytes = None
            self.arm_timeout(now, self.timers.timer_l)

    def send_final_error(self, now: float, message: Response | None = None) -> None:
        assert message is not None
        self.last_bytes = self._send(message)
        self.provisional_bytes = None
        if not self.flow.reliable:
            self.arm_retransmit(now, self.timers.t1)  # §17.2.1 Timer G
        self.timeout_at = now + self.timers.timer_h
        self.layer.schedule(self, self.timeout_at)

    def retransmit_final(self, now: float, message: Response | None = None) -> None:
        self.resend_final(now)
        self.arm_retransmit(self.fired_at, min(self.retransmit_interval * 2, self.timers.t2))

    def report_no_ack(self, now: float, message: Response | None = None) -> None:
        self.terminate(now)
        self.layer.tu.on_transaction_timeout(self, now)

    def confirm(self, now: float, message: Response | None = None) -> None:
        self.retransmit_at = None
        self.last_bytes = None
        self.request = None
        self.arm_timeout(now, 0.0 if self.flow.reliable else self.timers.timer_i)


class ServerNonInviteTransaction(ServerTransaction):
    __slots__ = ()
    TABLE = NIST_TABLE

    def send_final(self, now: float, message: Response | None = None) -> None:
        assert message is not None
        self.last_bytes = self._send(message)
        self.provisional_bytes = None
        self.request = None
        self.arm_timeout(now, 0.0 if self.flow.reliable else self.timers.timer_j)


def build_ack_for_error(invite: Request, response: Response) -> Request:
    """ACK for a non-2xx final response, RFC 3261 §17.1.1.3: same Request-URI, Call-ID, From,
    top Via and Route as the INVITE, To from the response, CSeq method ACK."""
    headers: dict[str, list[str]] = {}
    src = invite.headers
    headers["via"] = [src["via"][0]]
    if "route" in src:
        headers["route"] = list(src["route"])
    headers["max-forwards"] = ["70"]
    headers["from"] = [src["from"][0]]
    headers["to"] = [response.headers["to"][0]]
    headers["call-id"] = [src["call-id"][0]]
    headers["cseq"] = [f"{invite.cseq.number} ACK"]
    return Request("ACK", invite.uri, headers)
