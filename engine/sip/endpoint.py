"""The transaction layer (RFC 3261 §17): bytes in, transactions matched, bytes and reports out.

Invariants:
- No sockets, no clock: `receive(data, flow, now)` and `handle_timer(now)` are the only inputs;
  what must be sent is appended to `outbox` as (bytes, Flow) for the I/O layer to drain.
- Every request that fails parsing or the §8.2 checks and can be answered gets its 4xx/5xx here,
  statelessly, and is counted; a broken response is dropped and counted. Nothing else changes.
- `receive` never raises: an exception from a parser or the TU is counted as an internal error,
  reported once through `on_internal_error`, and the message is answered when it can be. An
  exception must never reach the I/O layer, where it would kill a TCP connection.
- Server transactions are matched by (branch, sent-by, method) when the branch has the RFC 3261
  magic cookie (§17.2.3), and by the RFC 2543 fields otherwise; client transactions by
  (branch, CSeq method) (§17.1.3). A server transaction's key also holds the transport and
  source address it was created from: a request that copies a live branch and sent-by from
  another transport or source (sent-by is text any sender can write) is a transaction of its
  own, so nobody can draw a retransmitted answer, or a CANCEL's effect, onto someone else's
  transaction. ACK matches the INVITE's transaction; CANCEL is its own (§9.2).
- The transaction user (the B2BUA, the registrar) receives reports through direct method calls:
  on the per-message path a call costs less than building an event object nobody keeps.
- One timer heap serves transactions and the TU: anything with `on_timer(now)` may be scheduled.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from .errors import SipParseError
from .message import Request, Response, SipMessage, build_response
from .parser import parse_message
from .timers import TimerConfig
from .transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
    Input,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    State,
    Transaction,
    response_input,
)
from .validate import check_request, warning_header

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7


class Flow(NamedTuple):
    """Where a message came from or goes to. `connection` names a TCP/TLS connection (0: any)."""

    transport: str  # "udp", "tcp" or "tls"
    host: str
    port: int
    connection: int = 0

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


class TimerTarget(Protocol):
    def on_timer(self, now: float) -> None: ...


class TransactionUser(Protocol):
    def on_request(
        self, txn: ServerTransaction | None, request: Request, flow: Flow, now: float
    ) -> None: ...

    def on_cancel(
        self, invite_txn: ServerInviteTransaction, cancel: Request, now: float
    ) -> None: ...

    def on_response(self, txn: ClientTransaction, response: Response, now: float) -> None: ...

    def on_stray_response(self, response: Response, flow: Flow, now: float) -> bool: ...

    def on_transaction_timeout(self, txn: Transaction, now: float) -> None: ...

    def on_transport_error(self, txn: Transaction, now: float) -> None: ...


@dataclass(slots=True)
class LayerCounters:
    messages_in: int = 0
    messages_out: int = 0
    parse_errors: int = 0  # unparseable messages, and requests rejected 400 as malformed
    rejected_requests: int = 0  # requests answered 4xx/5xx by §8.2 checks (malformed or not)
    dropped_responses: int = 0
    retransmissions_sent: int = 0
    retransmissions_received: int = 0
    transactions_created: int = 0
    transaction_timeouts: int = 0
    internal_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class TransactionLayer:
    def __init__(
        self,
        tu: TransactionUser,
        *,
        timers: TimerConfig,
        local_addresses: dict[str, tuple[str, int]],
        token: Callable[[], str],
        user_agent: str = "vaultpbx",
    ) -> None:
        self.tu = tu
        self.timers = timers
        self.local_addresses = local_addresses
        self.token = token  # a fresh random token for branches and tags (injected randomness)
        self.user_agent = user_agent
        self.server_transactions: dict[object, ServerTransaction] = {}
        self.client_transactions: dict[object, ClientTransaction] = {}
        self.outbox: list[tuple[bytes, Flow]] = []
        self.counters = LayerCounters()
        self._heap: list[tuple[float, int, TimerTarget]] = []
        self._seq = itertools.count()
        self.on_rejected: Callable[[Request | None, int, Flow, str], None] | None = None
        # Told about an exception raised by the TU while handling a message (for the log).
        self.on_internal_error: Callable[[BaseException, SipMessage | bytes], None] | None = None

    # -- output ----------------------------------------------------------------------------
    def send(self, data: bytes, flow: Flow, *, retransmission: bool = False) -> None:
        self.outbox.append((data, flow))
        self.counters.messages_out += 1
        if retransmission:
            self.counters.retransmissions_sent += 1

    def send_message(self, message: SipMessage, flow: Flow) -> None:
        """Send outside any transaction (ACK for 2xx, 2xx retransmissions, stateless answers)."""
        self.send(message.serialize(), flow)

    # -- timers ----------------------------------------------------------------------------
    def schedule(self, target: TimerTarget, at: float) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), target))

    def get_timer(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, target = heapq.heappop(heap)
            target.on_timer(now)

    # -- transactions ------------------------------------------------------------------------
    def remove(self, txn: Transaction) -> None:
        table: dict[object, ServerTransaction] | dict[object, ClientTransaction]
        table = self.client_transactions if txn.IS_CLIENT else self.server_transactions
        if table.get(txn.key) is txn:
            del table[txn.key]

    def via_for(self, flow: Flow, branch: str) -> str:
        host, port = self.local_addresses[flow.transport]
        return f"SIP/2.0/{flow.transport.upper()} {host}:{port};branch={branch};rport"

    def new_branch(self) -> str:
        return MAGIC_COOKIE + self.token()

    def start_client_transaction(
        self, request: Request, flow: Flow, now: float, owner: object | None = None
    ) -> ClientTransaction:
        """Add our Via, create the matching client transaction and send the request."""
        branch = self.new_branch()
        request.add("via", self.via_for(flow, branch), first=True)
        method = request.method
        key = (branch, method)
        cls = ClientInviteTransaction if method == "INVITE" else ClientNonInviteTransaction
        txn = cls(key, self, flow, request)
        txn.owner = owner
        self.client_transactions[key] = txn
        self.counters.transactions_created += 1
        txn.start(request.serialize(), now)
        return txn

    def flow_failed(self, flow: Flow, now: float) -> int:
        """The transport could not carry `flow` (an outbound TCP/TLS connection was refused):
        every client transaction sending on it gets a transport error (RFC 3261 §17.1.1.2,
        §17.1.2.2) and its TU hears it at once. Returns how many there were."""
        peer = (flow.transport, flow.host, flow.port)
        failed = [txn for txn in self.client_transactions.values()
                  if (txn.flow.transport, txn.flow.host, txn.flow.port) == peer]
        for txn in failed:
            txn.fire(Input.TRANSPORT_ERROR, now)
        return len(failed)

    # -- input -----------------------------------------------------------------------------
    def receive(self, data: bytes, flow: Flow, now: float) -> None:
        self.counters.messages_in += 1
        try:
            message = parse_message(data, datagram=not flow.reliable)
        except SipParseError as exc:
            self.counters.parse_errors += 1
            self._answer_unparseable(data, exc, flow)
            return
        except Exception as exc:  # noqa: BLE001 - a parser bug: answer 400, never escape
            self.counters.parse_errors += 1
            self._internal_error(exc, data[:200])
            self._answer_unparseable(data, SipParseError(f"unreadable message ({exc!r:.80})"),
                                     flow)
            return
        try:
            self.receive_message(message, flow, now)
        except Exception as exc:  # noqa: BLE001 - the last guard: see the invariants
            self._internal_error(exc, message)

    def reject_unframable(self, head: bytes, exc: SipParseError, flow: Flow) -> None:
        """A stream frame the framer could not delimit (`StreamFramer.error_head`): counted as
        a parse error and answered with the error's status when it was a request; the caller
        closes the connection afterwards (RFC 3261 §18.3)."""
        self.counters.messages_in += 1
        self.counters.parse_errors += 1
        self._answer_unparseable(head, exc, flow)

    def receive_message(self, message: SipMessage, flow: Flow, now: float) -> None:
        if isinstance(message, Request):
            self._receive_request(message, flow, now)
        else:
            assert isinstance(message, Response)
            self._receive_response(message, flow, now)

    def _receive_request(self, request: Request, flow: Flow, now: float) -> None:
        try:
            error = check_request(request)
        except Exception as exc:  # noqa: BLE001 - check_request must not raise; if it does,
            self._internal_error(exc, request)  # the request is still answered, not dropped
            error = (400, "Bad Request", [])
        if error is not None:
            status, reason, extra = error
            self.counters.rejected_requests += 1
            if status == 400:
                self.counters.parse_errors += 1
            if request.method != "ACK" and "via" in request.headers:
                response = build_response(request, status, reason, to_tag=self.token(),
                                          extra=extra)
                self.send_message(response, flow)
            if self.on_rejected is not None:
                self.on_rejected(request, status, flow, reason)
            return
        method = request.method
        key = self._server_key(request, "INVITE" if method == "ACK" else method, flow)
        txn = self.server_transactions.get(key)
        if txn is not None:
            if method == "ACK":
                if not txn.fire(Input.ACK, now):
                    # ACK for a 2xx reuses no transaction (§17.1.1.3); a TU may still want it.
                    self.tu.on_request(None, request, flow, now)
            else:
                self.counters.retransmissions_received += 1
                txn.fire(Input.REQUEST_RETRANSMIT, now)
            return
        if method == "ACK":
            try:
                self.tu.on_request(None, request, flow, now)
            except Exception as exc:  # noqa: BLE001 - see below
                self._internal_error(exc, request)
            return
        if method == "CANCEL":
            self._receive_cancel(request, key, flow, now)
            return
        cls = ServerInviteTransaction if method == "INVITE" else ServerNonInviteTransaction
        txn = cls(key, self, flow, request)
        self.server_transactions[key] = txn
        self.counters.transactions_created += 1
        try:
            self.tu.on_request(txn, request, flow, now)
        except Exception as exc:  # noqa: BLE001 - one bad message must not escape the core
            self._internal_error(exc, request)
            if txn.state in (State.TRYING, State.PROCEEDING):
                txn.respond(build_response(request, 500, "Server Internal Error",
                                           to_tag=txn.to_tag or self.token()), now)

    def _internal_error(self, exc: BaseException, message: SipMessage | bytes) -> None:
        self.counters.internal_errors += 1
        if self.on_internal_error is not None:
            self.on_internal_error(exc, message)

    def _receive_cancel(self, cancel: Request, key: object, flow: Flow, now: float) -> None:
        """RFC 3261 §9.2: answer the CANCEL itself, then let the TU end the INVITE."""
        txn = ServerNonInviteTransaction(key, self, flow, cancel)
        self.server_transactions[key] = txn
        self.counters.transactions_created += 1
        invite = self.server_transactions.get(self._server_key(cancel, "INVITE", flow))
        if not isinstance(invite, ServerInviteTransaction) or invite.state is not (
            State.PROCEEDING
        ):
            txn.respond(build_response(cancel, 481, to_tag=self.token()), now)
            return
        txn.respond(build_response(cancel, 200, to_tag=invite.to_tag), now)
        self.tu.on_cancel(invite, cancel, now)

    def _server_key(self, request: Request, method: str, flow: Flow) -> object:
        via = request.via
        branch = via.branch
        # The connection id stays out: (host, port) already names a TCP peer's socket.
        source = (flow.transport, flow.host, flow.port)
        if branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > 7:
            return (branch, via.sent_by, method, source)
        # RFC 2543 matching (§17.2.3): Request-URI, To tag, From tag, Call-ID, CSeq, top Via.
        return (
            "rfc2543", request.uri, request.from_.tag, request.call_id,
            request.cseq.number, via.raw, method, source,
        )

    def _receive_response(self, response: Response, flow: Flow, now: float) -> None:
        try:
            via = response.via
            cseq = response.cseq
            response.to  # noqa: B018 - a response without a readable To is unusable
        except SipParseError:
            self.counters.dropped_responses += 1
            return
        branch = via.branch
        txn = self.client_transactions.get((branch, cseq.method)) if branch else None
        if txn is None:
            # A 2xx to INVITE may outlive its transaction (RFC 6026): the TU may claim it.
            if not (200 <= response.status < 300 and cseq.method == "INVITE"
                    and self.tu.on_stray_response(response, flow, now)):
                self.counters.dropped_responses += 1
            return
        try:
            if not txn.fire(response_input(response.status), now, response):
                self.counters.retransmissions_received += 1
        except Exception as exc:  # noqa: BLE001 - see _receive_request
            self._internal_error(exc, response)

    def _answer_unparseable(self, data: bytes, exc: SipParseError, flow: Flow) -> None:
        """Best effort 4xx for a request that did not parse (RFC 3261 §8.2, §16.3)."""
        salvaged = salvage_request(data)
        if salvaged is None:
            return
        response = build_response(salvaged, exc.status, exc.reason, to_tag=self.token(),
                                  extra=[warning_header(str(exc))])
        self.send_message(response, flow)
        if self.on_rejected is not None:
            self.on_rejected(None, exc.status, flow, str(exc))



_SALVAGE = {"via": "via", "v": "via", "from": "from", "f": "from", "to": "to", "t": "to",
            "call-id": "call-id", "i": "call-id", "cseq": "cseq"}


def salvage_request(data: bytes) -> Request | None:
    """The headers needed to answer a request that failed to parse, or None (responses, junk)."""
    text = data[:65536].decode("utf-8", "replace")
    lines = text.replace("\r\n", "\n").split("\n")
    first = lines[0].strip()
    if not first or first.startswith("SIP/") or " " not in first or first.startswith("\x00"):
        return None
    method = first.split(" ", 1)[0]
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line.strip():
            break
        name, colon, value = line.partition(":")
        canonical = _SALVAGE.get(name.strip().lower())
        if colon and canonical is not None and canonical not in headers:
            headers[canonical] = [value.strip()]
    if "via" not in headers or method == "ACK":
        return None
    for name in ("from", "to", "call-id", "cseq"):
        headers.setdefault(name, ["<unknown>"] if name != "cseq" else [f"0 {method}"])
    request = Request(method, "sip:invalid", headers)
    try:
        request.to  # noqa: B018
    except SipParseError:
        request.headers["to"] = ["<sip:invalid>"]
        request._to = None
    return request
