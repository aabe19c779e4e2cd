"""The state tables, walked pair by pair, and the no-I/O rule of the routing core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from vaultpbx.routing import AgentState, Router, RouterConfig, RoutingError
from vaultpbx.routing.states import (
    PRESENCE_TRANSITIONS,
    SEAT_TRANSITIONS,
    Presence,
    PresenceInput,
    SeatInput,
    SeatState,
    derive_agent_state,
)

ROUTING = Path(__file__).resolve().parents[2] / "routing"


def test_every_transition_says_what_it_means() -> None:
    for table in (PRESENCE_TRANSITIONS, SEAT_TRANSITIONS):
        for pair, (_, meaning) in table.items():  # type: ignore[attr-defined]
            assert len(meaning) > 10, pair


def _router_in(presence: Presence) -> Router:
    r = Router(RouterConfig.from_dict({"skills": ["s"], "agents": {"a": {"skills": ["s"]}},
                                       "queues": {"q": {"skills": ["s"]}}}), 0)
    if presence is Presence.OFFLINE:
        return r
    r.agent_login(agent_id="a", now=0)
    if presence is Presence.BREAK:
        r.agent_pause(agent_id="a", reason="x", now=0)
    elif presence is Presence.NOT_RESPONDING:
        r.enqueue_call(call_id="c", queue="q", now=0)
        r.agent_no_answer(call_id="c", agent_id="a", now=1)
    return r


APIS = {
    PresenceInput.LOGIN: "agent_login",
    PresenceInput.LOGOUT: "agent_logout",
    PresenceInput.READY: "agent_ready",
}

SHOWN = {Presence.OFFLINE: AgentState.OFFLINE, Presence.READY: AgentState.AVAILABLE,
         Presence.BREAK: AgentState.BREAK, Presence.NOT_RESPONDING: AgentState.NOT_RESPONDING}


@pytest.mark.parametrize("presence", list(Presence))
@pytest.mark.parametrize("event", [PresenceInput.LOGIN, PresenceInput.LOGOUT,
                                   PresenceInput.READY, PresenceInput.PAUSE])
def test_presence_table_drives_the_router(presence: Presence, event: PresenceInput) -> None:
    r = _router_in(presence)
    assert r.agent_state("a") is SHOWN[presence]
    transition = PRESENCE_TRANSITIONS.get((presence, event))
    if event is PresenceInput.PAUSE:
        call = lambda: r.agent_pause(agent_id="a", reason="y", now=5)  # noqa: E731
    else:
        call = lambda: getattr(r, APIS[event])(agent_id="a", now=5)  # noqa: E731
    if transition is None:
        with pytest.raises(RoutingError, match=f"cannot {event.value} while {presence.value}"):
            call()
        assert r.agent_state("a") is SHOWN[presence]  # unchanged
    else:
        call()
        expected = SHOWN[transition[0]]
        if expected is AgentState.AVAILABLE and presence is Presence.NOT_RESPONDING:
            expected = AgentState.RESERVED  # the call that rang out is offered again
        assert r.agent_state("a") is expected


def test_no_answer_row_for_every_presence() -> None:
    for presence in Presence:
        assert (presence, PresenceInput.NO_ANSWER) in PRESENCE_TRANSITIONS


def test_seat_table_covers_exactly_the_lifecycle() -> None:
    assert set(SEAT_TRANSITIONS) == {
        (SeatState.RESERVED, SeatInput.ANSWERED),
        (SeatState.RESERVED, SeatInput.NO_ANSWER),
        (SeatState.RESERVED, SeatInput.CALLER_ABANDONED),
        (SeatState.ON_CALL, SeatInput.CALL_ENDED),
        (SeatState.WRAP_UP, SeatInput.WRAP_UP_DONE),
    }


def test_seat_misuse_is_refused_without_change() -> None:
    r = _router_in(Presence.READY)
    r.enqueue_call(call_id="c", queue="q", now=0)
    with pytest.raises(RoutingError, match="never answered"):
        r.call_ended(call_id="c", now=1)
    with pytest.raises(RoutingError, match="not ringing at agent 'b'"):
        r.agent_answered(call_id="c", agent_id="b", now=1)
    assert r.agent_state("a") is AgentState.RESERVED
    r.agent_answered(call_id="c", agent_id="a", now=1)
    with pytest.raises(RoutingError, match="not ringing"):
        r.agent_no_answer(call_id="c", agent_id="a", now=2)
    assert r.agent_state("a") is AgentState.ON_CALL


def test_seats_outrank_presence_in_the_shown_state() -> None:
    for presence in Presence:
        assert derive_agent_state(presence, 1, 1, 1) is AgentState.RESERVED
        assert derive_agent_state(presence, 0, 1, 1) is AgentState.ON_CALL
        assert derive_agent_state(presence, 0, 0, 1) is AgentState.WRAP_UP
        assert derive_agent_state(presence, 0, 0, 0) is SHOWN[presence]


FORBIDDEN = {"asyncio", "socket", "ssl", "time", "random", "selectors", "threading",
             "subprocess", "os"}


def test_routing_core_does_no_io() -> None:
    files = sorted(ROUTING.glob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
