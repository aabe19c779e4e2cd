"""The CDR mapping: what a call did → the `CallRecord` the CDR writer stores (docs/cdr.md).

The B2BUA tells this module what happened to a call's media direction (`note_hold`) and how it
ended (`note_end`); `record_of` builds the frozen record once, when the call has ended.

Invariants:
- Reporting state lives on the `Call` (held_by, hold_started, hold_seconds, ended_by) and only
  this module writes it; the B2BUA never computes a reporting field itself.
- `record_of` is called exactly once per call, after `note_end`, so a hold still running at the
  end is counted and `ended_by` is set for every call that was connected.
- Numbers stay as received in the record (the CDR store seals them per data subject); the
  per-leg detail (Call-IDs, targets) passes through the masking hook before it is stored.
- The disposition is a function of what happened (answered, queued, cause), first row wins.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypedDict

from ..sdp.errors import SdpError
from ..sdp.model import Direction, parse_sdp
from .call import Call, CallRecord, Side

# Disposition of a call, from what happened (docs/cdr.md): the first matching row wins.
ABANDONED = "abandoned"
DISPOSITIONS = {
    "answered": "an agent or callee answered",
    ABANDONED: "a queue call the caller hung up before an agent answered",
    "exit_timeout": "a queue call that waited the queue's max_wait with nowhere to go",
    "busy": "the callee was busy or declined",
    "no_answer": "nobody answered in time",
    "cancelled": "a direct call the caller hung up before an answer",
    "failed": "anything else: unreachable, refused, media or network failure",
}


def disposition_of(*, answered: bool, queued: bool, cause: str) -> str:
    if answered:
        return "answered"
    if queued and cause == "cancelled":
        return ABANDONED
    if cause == "max_wait":
        return "exit_timeout"
    if cause in ("busy", "declined"):
        return "busy"
    if cause == "no_answer":
        return "no_answer"
    if cause == "cancelled":
        return "cancelled"
    return "failed"


def note_hold(call: Call, side: Side, offer: bytes, now: float) -> None:
    """An accepted re-INVITE/UPDATE offer from `side`: that side holds the call while every
    audio stream it offers is sendonly or inactive, or has the RFC 2543 hold address 0.0.0.0
    (RFC 6337 §5.3). The call is on hold while either side holds it, so the held party's own
    session refresh (sendrecv) does not end the other's hold. An offer without SDP (a delayed
    offer) or that does not parse changes nothing."""
    if not offer:
        return
    try:
        sdp = parse_sdp(offer)
    except SdpError:
        return
    audio = [i for i, m in enumerate(sdp.media) if m.media == "audio" and m.port != 0]
    if not audio:
        return
    held = all(
        sdp.direction_for(i) in (Direction.SENDONLY, Direction.INACTIVE)
        or ((c := sdp.connection_for(i)) is not None and c.is_hold_address)
        for i in audio)
    call.held_by = call.held_by | {side} if held else call.held_by - {side}
    if call.held_by and call.hold_started is None:
        call.hold_started = now
    elif not call.held_by and call.hold_started is not None:
        call.hold_seconds += now - call.hold_started
        call.hold_started = None


def note_end(call: Call, hung_up_by: Side | None, now: float) -> None:
    """The call ends now; `hung_up_by` is the side whose BYE ended it (None: the system —
    timers, errors, shutdown). Only a connected call has someone who hung up."""
    if call.answered_at is None:
        return
    call.ended_by = "system" if hung_up_by is None else (
        "caller" if hung_up_by is Side.A else "callee")
    if call.hold_started is not None:
        call.hold_seconds += now - call.hold_started
        call.hold_started = None


class ReportingFields(TypedDict):
    queue: str
    queue_entered: float | None
    agent: str
    hold_seconds: float
    wrap_up_seconds: float | None
    ended_by: str
    disposition: str


def reporting_fields(call: Call) -> ReportingFields:
    """The CallRecord's reporting fields (issue 17, docs/cdr.md) of an ended call."""
    agent = ""
    if call.queue and call.answered_at is not None:
        # A routed call's agent is the one the router offered it to; a hunt group's is the
        # member whose phone answered.
        agent = call.agent or (call.b.target_name if call.b is not None else "")
    return {
        "queue": call.queue, "queue_entered": call.queue_entered_at, "agent": agent,
        "hold_seconds": call.hold_seconds, "wrap_up_seconds": call.wrap_up_seconds,
        "ended_by": call.ended_by,
        "disposition": disposition_of(answered=call.answered_at is not None,
                                      queued=bool(call.queue), cause=call.cause),
    }


def record_of(call: Call, mask: Callable[[str, str], str]) -> CallRecord:
    """The record of an ended call; `mask(kind, value)` is the system role's masking hook."""
    legs = [
        {"side": leg.side.value, "call_id": mask("call_id", leg.dialog.call_id),
         "peer": leg.peer, "transport": leg.flow.transport,
         "target": mask("number", leg.target_name)}
        for leg in call.legs()
    ]
    return CallRecord(
        call_id=call.id, caller=call.caller, callee=call.callee,
        route_kind=call.route_kind, route_name=call.route_name, started=call.started,
        answered=call.answered_at, ended=call.ended_at or call.started, cause=call.cause,
        status=call.status, legs=json.dumps(legs, separators=(",", ":")),
        **reporting_fields(call),
    )
