"""Agent and seat state machines, as tables.

An agent's *presence* is what the agent (or the router, on a missed offer) said about taking new
calls. Each call an agent holds occupies one *seat*; an agent has `capacity` seats. The state a
supervisor sees (`AgentState`) is derived from both: any seat's state wins over presence, so an
agent who pauses mid-call shows on-call until the call and its wrap-up end, then shows break.

Invariants kept by the router with these tables:
- an agent is offered a call only while presence is READY and occupied seats < capacity;
- reserved + on-call + wrap-up seats never exceed capacity (so a single-seat agent never holds
  two reservations);
- a (state, input) pair missing from a table is a `RoutingError`, never a silent change.

Vocabulary follows contact-center practice (Genesys/Avaya ACD terms): reserved = the call is
ringing at the agent; not-responding = the agent let an offer ring out and gets no more offers
until they say ready again; wrap-up = after-call work, counted in handle time.
"""

from __future__ import annotations

import enum


class AgentState(enum.Enum):
    """What a supervisor sees for an agent (derived, see `derive_agent_state`)."""

    OFFLINE = "offline"
    AVAILABLE = "available"
    RESERVED = "reserved"
    ON_CALL = "on-call"
    WRAP_UP = "wrap-up"
    BREAK = "break"
    NOT_RESPONDING = "not-responding"


class Presence(enum.Enum):
    """What the agent said about taking new calls."""

    OFFLINE = "offline"
    READY = "ready"
    BREAK = "break"
    NOT_RESPONDING = "not-responding"


class PresenceInput(enum.Enum):
    LOGIN = "login"
    LOGOUT = "logout"
    PAUSE = "pause"
    READY = "ready"
    NO_ANSWER = "no-answer"


# (presence, input) -> (next presence, what it means). Missing pair: RoutingError.
PRESENCE_TRANSITIONS: dict[tuple[Presence, PresenceInput], tuple[Presence, str]] = {
    (Presence.OFFLINE, PresenceInput.LOGIN): (
        Presence.READY, "agent signs in and is offered calls at once"),
    (Presence.READY, PresenceInput.LOGOUT): (
        Presence.OFFLINE, "agent signs out; calls already held run to their end"),
    (Presence.BREAK, PresenceInput.LOGOUT): (
        Presence.OFFLINE, "agent signs out from a break"),
    (Presence.NOT_RESPONDING, PresenceInput.LOGOUT): (
        Presence.OFFLINE, "a supervisor signs out an agent who stopped answering"),
    (Presence.READY, PresenceInput.PAUSE): (
        Presence.BREAK, "agent takes a break (reason kept); held calls run to their end"),
    (Presence.BREAK, PresenceInput.PAUSE): (
        Presence.BREAK, "agent changes the break reason"),
    (Presence.NOT_RESPONDING, PresenceInput.PAUSE): (
        Presence.BREAK, "agent who missed an offer takes a break instead"),
    (Presence.READY, PresenceInput.READY): (
        Presence.READY, "repeated ready: nothing changes"),
    (Presence.BREAK, PresenceInput.READY): (
        Presence.READY, "agent ends the break and is offered calls again"),
    (Presence.NOT_RESPONDING, PresenceInput.READY): (
        Presence.READY, "agent confirms being back after a missed offer"),
    (Presence.READY, PresenceInput.NO_ANSWER): (
        Presence.NOT_RESPONDING, "offer rang out or was refused: no more offers until ready"),
    (Presence.BREAK, PresenceInput.NO_ANSWER): (
        Presence.BREAK, "agent paused while the offer rang: the break stands"),
    (Presence.NOT_RESPONDING, PresenceInput.NO_ANSWER): (
        Presence.NOT_RESPONDING, "a second seat's offer also rang out"),
    (Presence.OFFLINE, PresenceInput.NO_ANSWER): (
        Presence.OFFLINE, "agent signed out while the offer rang"),
}


class SeatState(enum.Enum):
    """One call held by an agent."""

    RESERVED = "reserved"
    ON_CALL = "on-call"
    WRAP_UP = "wrap-up"


class SeatInput(enum.Enum):
    ANSWERED = "answered"
    NO_ANSWER = "no-answer"
    CALLER_ABANDONED = "caller-abandoned"
    CALL_ENDED = "call-ended"
    WRAP_UP_DONE = "wrap-up-done"


# (seat, input) -> (next seat or None when the seat is freed, what it means).
SEAT_TRANSITIONS: dict[tuple[SeatState, SeatInput], tuple[SeatState | None, str]] = {
    (SeatState.RESERVED, SeatInput.ANSWERED): (
        SeatState.ON_CALL, "agent picked up the offered call"),
    (SeatState.RESERVED, SeatInput.NO_ANSWER): (
        None, "offer rang out or was refused: call goes back to the head of its queue"),
    (SeatState.RESERVED, SeatInput.CALLER_ABANDONED): (
        None, "caller hung up while the agent's phone rang: offer withdrawn"),
    (SeatState.ON_CALL, SeatInput.CALL_ENDED): (
        SeatState.WRAP_UP, "conversation over; after-call work for the queue's wrap-up time"),
    (SeatState.WRAP_UP, SeatInput.WRAP_UP_DONE): (
        None, "after-call work done: the seat is free"),
}

_PRESENCE_SHOWN = {
    Presence.OFFLINE: AgentState.OFFLINE,
    Presence.READY: AgentState.AVAILABLE,
    Presence.BREAK: AgentState.BREAK,
    Presence.NOT_RESPONDING: AgentState.NOT_RESPONDING,
}


def derive_agent_state(
    presence: Presence, reserved: int, on_call: int, wrap_up: int
) -> AgentState:
    """The shown state: a ringing seat first, then talking, then after-call work, then presence."""
    if reserved:
        return AgentState.RESERVED
    if on_call:
        return AgentState.ON_CALL
    if wrap_up:
        return AgentState.WRAP_UP
    return _PRESENCE_SHOWN[presence]
