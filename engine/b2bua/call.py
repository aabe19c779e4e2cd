"""A call is two legs (or more B-side attempts while ringing); these are its values.

Invariants:
- `Leg.call` is the only back reference; `Call.finish` breaks it so that ended calls are freed by
  reference counting, never left for the cyclic garbage collector.
- `CallRecord` and `CallStateChanged` are frozen values handed to the CDR writer and to the hook
  registry. The numbers of a `CallStateChanged` (for plug-ins) have passed through the masking
  hook point; a `CallRecord` carries them as received, for the CDR store to seal (never to log
  or show unmasked).
- Times in a `CallRecord` are the engine's monotonic clock (the `now` the core runs on); only
  the CDR writer turns them into UTC, so durations never jump with the wall clock (docs/cdr.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..sip.dialog import Dialog
from ..sip.endpoint import Flow
from ..sip.message import Request, Response
from ..sip.transaction import ClientInviteTransaction, ServerInviteTransaction
from .timers import CallTimer


class CallState(enum.Enum):
    ROUTING = "routing"
    QUEUED = "queued"  # waiting in a router queue for an agent
    RINGING = "ringing"
    EARLY = "early"  # early media flowing
    ANSWERED = "answered"  # 2xx sent to the caller, waiting for its ACK
    ESTABLISHED = "established"
    ENDING = "ending"
    ENDED = "ended"


class Side(enum.Enum):
    A = "a"  # the caller's leg: we are its UAS
    B = "b"  # the callee's leg: we are its UAC


class Leg:
    __slots__ = (
        "call", "side", "dialog", "flow", "invite_server", "invite_client", "invite_request",
        "provisional_seen", "cancel_requested", "answered", "ack_bytes", "ended",
        "peer", "target_name", "offer_in_invite", "auth_attempted", "respond_by",
    )

    def __init__(self, call: Call, side: Side, dialog: Dialog, flow: Flow) -> None:
        self.call: Call | None = call
        self.side = side
        self.dialog = dialog
        self.flow = flow
        self.invite_server: ServerInviteTransaction | None = None
        self.invite_client: ClientInviteTransaction | None = None
        self.invite_request: Request | None = None  # kept until final, for CANCEL and retries
        self.provisional_seen = False
        self.cancel_requested = False
        self.answered = False
        self.ack_bytes: bytes | None = None  # our ACK for the B side's 2xx, resent on retransmits
        self.ended = False
        self.peer = f"{flow.host}:{flow.port}"
        self.target_name = ""  # extension or trunk name this leg reaches
        self.offer_in_invite = True
        self.auth_attempted = False
        # A registered contact must answer something (even 100) by then or its branch is
        # pruned as unreachable (sip.fork_response_timeout); None once it has answered.
        self.respond_by: float | None = None


class Call:
    __slots__ = (
        "id", "state", "a", "b", "attempts", "hunt", "route_kind", "route_name", "caller",
        "callee", "started", "answered_at", "ended_at", "cause", "status", "trunk",
        "ring_deadline", "ok_retransmit_at", "ok_interval", "ok_giveup_at", "ok_bytes",
        "probe_at", "session_deadline", "hard_end_at", "session_interval", "draining",
        "timer", "wheel_seconds", "acd_queue", "agent", "anchored", "b_sdp", "early_sdp",
        "srtp_policies", "best_final", "redirects",
        # reporting (issue 17, docs/cdr.md)
        "queue", "queue_entered_at", "held_by", "hold_started", "hold_seconds", "ended_by",
        "wrap_up_seconds",
    )

    def __init__(self, call_id: str, now: float) -> None:
        self.id = call_id
        self.state = CallState.ROUTING
        self.a: Leg | None = None
        self.b: Leg | None = None  # the answered B leg
        self.attempts: list[Leg] = []  # B legs ringing
        self.hunt: list[str] = []  # queue members still to try
        self.route_kind = ""
        self.route_name = ""
        self.caller = ""
        self.callee = ""
        self.started = now
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.cause = ""
        self.status = 0
        self.trunk: str | None = None
        self.ring_deadline: float | None = None
        self.ok_retransmit_at: float | None = None
        self.ok_interval = 0.0
        self.ok_giveup_at: float | None = None
        self.ok_bytes: bytes | None = None
        self.probe_at: float | None = None
        self.session_deadline: float | None = None
        self.hard_end_at: float | None = None
        self.session_interval = 0
        self.draining = False
        self.timer: CallTimer | None = None  # set by the B2BUA; disarmed when the call ends
        self.wheel_seconds: list[int] = []
        self.acd_queue: str | None = None  # queued with the skills-based router
        self.agent: str | None = None  # the agent extension being offered the call
        self.anchored = False  # media relayed by our workers (SDP rewritten per leg)
        self.b_sdp: bytes | None = None  # our offer for the callee legs, when anchored
        self.early_sdp: bytes | None = None  # our answer in the caller's 183 (music on hold)
        # (caller, callee) srtp policy, kept for a delayed offer: the callee's 2xx offers then.
        self.srtp_policies: tuple[str | None, str | None] = (None, None)
        # The best final answer of the branches that failed so far in this round of forks
        # (RFC 3261 §16.7.6) with its rank: sent to the caller when the last branch ends.
        self.best_final: tuple[tuple[int, int], Response] | None = None
        self.redirects = 0  # 3xx followed by the PBX for this call (sip.max_redirects)
        # Reporting: the first queue the call entered and when (it keeps them through an
        # overflow), time on hold (a re-INVITE/UPDATE offering sendonly or inactive media was
        # accepted), who hung up, and the after-call work the queue router scheduled.
        self.queue = ""
        self.queue_entered_at: float | None = None
        self.held_by: frozenset[Side] = frozenset()  # sides whose last accepted offer holds
        self.hold_started: float | None = None
        self.hold_seconds = 0.0
        self.ended_by = ""
        self.wrap_up_seconds: float | None = None  # set by the queue router at the call's end

    def legs(self) -> list[Leg]:
        out = [self.a] if self.a is not None else []
        if self.b is not None:
            out.append(self.b)
        out.extend(leg for leg in self.attempts if leg is not self.b)
        return out

    def finish(self) -> None:
        if self.timer is not None:
            self.timer.call = None
        for leg in self.legs():
            leg.call = None
            leg.invite_server = None
            if not leg.cancel_requested:  # a pending CANCEL still needs the INVITE
                leg.invite_client = None
                leg.invite_request = None
        self.attempts = []


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStateChanged:
    call_id: str
    state: str
    at: float
    caller: str
    callee: str
    cause: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    call_id: str
    caller: str
    callee: str
    route_kind: str
    route_name: str
    started: float
    answered: float | None
    ended: float
    cause: str
    status: int
    legs: str  # JSON list of {side, call_id, peer, transport, target}
    # Reporting fields (issue 17; columns and meanings in docs/cdr.md). Times as above: the
    # engine's monotonic clock.
    queue: str = ""
    """The first queue the call entered ("" when it never waited in one)."""
    queue_entered: float | None = None
    agent: str = ""
    """The agent (extension) who answered a queue call."""
    hold_seconds: float = 0.0
    wrap_up_seconds: float | None = None
    """After-call work of the answering agent; None when the call had none to do."""
    ended_by: str = ""
    """caller, callee or system (timers, errors, shutdown); "" when never connected."""
    disposition: str = ""
    transfers: str = "[]"
    """JSON list of the parties the call was transferred to, in order (no transfer yet: [])."""
    consent: str = "not_asked"

