"""Router behaviour, one rule per test; time moves by hand."""

from __future__ import annotations

from typing import Any

import pytest
from vaultpbx.routing import (
    AgentState,
    AgentStateChanged,
    CallOverflowed,
    CallRelaxed,
    CancelOffer,
    DecisionTrigger,
    OfferCall,
    OfferEndReason,
    Router,
    RouterConfig,
    RouterEvent,
    RoutingDecision,
    RoutingError,
)


def make(agents: dict[str, Any], queues: dict[str, Any], skills: list[str] | None = None,
         now: float = 0.0) -> Router:
    catalogue = skills or ["sales", "support", "es", "en"]
    return Router(RouterConfig.from_dict(
        {"skills": catalogue, "agents": agents, "queues": queues}), now)


def offers(events: list[RouterEvent]) -> list[tuple[str, str]]:
    return [(e.call_id, e.agent_id) for e in events if isinstance(e, OfferCall)]


def login_all(r: Router, *agent_ids: str, now: float = 0.0) -> None:
    for a in agent_ids:
        r.agent_login(agent_id=a, now=now)


def complete(r: Router, call_id: str, agent_id: str, now: float) -> list[RouterEvent]:
    r.agent_answered(call_id=call_id, agent_id=agent_id, now=now)
    return r.call_ended(call_id=call_id, now=now)


# --- strategies ------------------------------------------------------------------------------

def test_longest_idle_picks_the_agent_free_longest() -> None:
    r = make({"a": {"skills": ["sales"]}, "b": {"skills": ["sales"]}, "c": {"skills": ["sales"]}},
             {"q": {"skills": ["sales"], "strategy": "longest-idle"}})
    r.agent_login(agent_id="b", now=1)
    r.agent_login(agent_id="a", now=2)
    r.agent_login(agent_id="c", now=3)
    assert offers(r.enqueue_call(call_id="1", queue="q", now=10)) == [("1", "b")]
    assert offers(r.enqueue_call(call_id="2", queue="q", now=11)) == [("2", "a")]
    complete(r, "1", "b", now=12)  # b idle again from 12, after c (3)
    assert offers(r.enqueue_call(call_id="3", queue="q", now=13)) == [("3", "c")]
    assert offers(r.enqueue_call(call_id="4", queue="q", now=14)) == [("4", "b")]


def test_most_skilled_first_sums_proficiency_over_required_skills() -> None:
    r = make({"novice": {"skills": {"sales": 2, "en": 4}},
              "expert": {"skills": {"sales": 5, "en": 3}},
              "solid": {"skills": {"sales": 4, "en": 3}}},
             {"q": {"skills": {"sales": 1, "en": 1}, "strategy": "most-skilled-first"}})
    login_all(r, "novice", "solid", "expert")
    assert offers(r.enqueue_call(call_id="1", queue="q", now=1)) == [("1", "expert")]
    assert offers(r.enqueue_call(call_id="2", queue="q", now=2)) == [("2", "solid")]  # 7 vs 6
    assert offers(r.enqueue_call(call_id="3", queue="q", now=3)) == [("3", "novice")]


def test_least_occupied_prefers_free_seats_then_low_occupancy() -> None:
    r = make({"a": {"skills": ["sales"], "capacity": 2}, "b": {"skills": ["sales"]},
              "c": {"skills": ["sales"]}},
             {"q": {"skills": ["sales"], "strategy": "least-occupied"}})
    login_all(r, "a", "b", "c")
    # b works 0..50; c idles: at 100, b's occupancy is 0.5, c's 0, a's 0.
    r.agent_pause(agent_id="a", reason="lunch", now=0)
    assert offers(r.enqueue_call(call_id="1", queue="q", now=0)) == [("1", "b")]
    complete(r, "1", "b", now=50)
    r.agent_ready(agent_id="a", now=60)
    # a and c: no busy seat, occupancy 0; c has been idle longer. b: occupancy 0.5.
    assert offers(r.enqueue_call(call_id="2", queue="q", now=100)) == [("2", "c")]
    assert offers(r.enqueue_call(call_id="3", queue="q", now=101)) == [("3", "a")]
    # a now has 1 of 2 seats busy; b none (but occupancy 0.5): a free seat share wins first
    assert offers(r.enqueue_call(call_id="4", queue="q", now=102)) == [("4", "b")]
    assert offers(r.enqueue_call(call_id="5", queue="q", now=103)) == [("5", "a")]


def test_round_robin_cycles_in_configuration_order() -> None:
    r = make({"a": {"skills": ["sales"], "capacity": 9}, "b": {"skills": ["sales"], "capacity": 9},
              "c": {"skills": ["sales"], "capacity": 9}},
             {"q": {"skills": ["sales"], "strategy": "round-robin"}})
    login_all(r, "c", "b", "a")
    picked = [offers(r.enqueue_call(call_id=str(i), queue="q", now=i))[0][1] for i in range(7)]
    assert picked == ["a", "b", "c", "a", "b", "c", "a"]
    r.agent_pause(agent_id="b", reason="x", now=8)
    picked = [offers(r.enqueue_call(call_id=f"x{i}", queue="q", now=9))[0][1] for i in range(2)]
    assert picked == ["c", "a"]


# --- requirements, priority, FIFO ------------------------------------------------------------

def test_agent_below_minimum_proficiency_is_never_offered() -> None:
    r = make({"weak": {"skills": {"sales": 2}}}, {"q": {"skills": {"sales": 3}}})
    login_all(r, "weak")
    assert r.enqueue_call(call_id="1", queue="q", now=0) == []
    assert r.get_timer() is None


def test_caller_skills_add_to_the_queue_requirement() -> None:
    r = make({"en": {"skills": {"sales": 5, "en": 5}}, "es": {"skills": {"sales": 3, "es": 4}}},
             {"q": {"skills": {"sales": 3}}})
    login_all(r, "en", "es")
    ev = r.enqueue_call(call_id="1", queue="q", now=1, required_skills={"es": 2},
                        attributes={"language": "es"})
    assert offers(ev) == [("1", "es")]
    decision = next(e for e in ev if isinstance(e, RoutingDecision))
    assert decision.required == (("es", 2), ("sales", 3))
    with pytest.raises(RoutingError, match="unknown skill 'fr'"):
        r.enqueue_call(call_id="2", queue="q", now=1, required_skills={"fr": 2})


def test_freed_agent_takes_highest_priority_then_oldest_across_queues() -> None:
    r = make({"a": {"skills": ["sales", "support"]}},
             {"low": {"skills": ["sales"]}, "high": {"skills": ["support"], "priority": 10}})
    login_all(r, "a")
    assert offers(r.enqueue_call(call_id="first", queue="low", now=0)) == [("first", "a")]
    r.enqueue_call(call_id="old-low", queue="low", now=1)
    r.enqueue_call(call_id="vip-low", queue="low", now=2, priority=20)
    r.enqueue_call(call_id="high1", queue="high", now=3)
    r.enqueue_call(call_id="high2", queue="high", now=4)
    order = []
    call, agent = "first", "a"
    for t in range(10, 15):
        ev = complete(r, call, agent, now=t)
        if not offers(ev):
            break
        call, agent = offers(ev)[0]
        order.append(call)
    assert order == ["vip-low", "high1", "high2", "old-low"]


def test_decision_is_recorded_with_trigger() -> None:
    r = make({"a": {"skills": ["sales"]}}, {"q": {"skills": ["sales"]}})
    r.enqueue_call(call_id="1", queue="q", now=0, priority=3)
    ev = r.agent_login(agent_id="a", now=5)
    decision = next(e for e in ev if isinstance(e, RoutingDecision))
    assert decision.trigger is DecisionTrigger.AGENT_FREED
    assert (decision.call_id, decision.agent_id, decision.waited, decision.priority) == (
        "1", "a", 5, 3)
    assert ev.index(decision) < ev.index(next(e for e in ev if isinstance(e, OfferCall)))


# --- offer / answer lifecycle ----------------------------------------------------------------

def test_no_answer_puts_call_back_at_head_and_agent_not_responding() -> None:
    r = make({"a": {"skills": ["sales"]}, "b": {"skills": ["sales"]}},
             {"q": {"skills": ["sales"]}})
    login_all(r, "a")
    r.enqueue_call(call_id="1", queue="q", now=0)
    r.enqueue_call(call_id="2", queue="q", now=1)
    ev = r.agent_no_answer(call_id="1", agent_id="a", now=5)
    assert r.agent_state("a") is AgentState.NOT_RESPONDING
    assert AgentStateChanged(agent_id="a", old=AgentState.RESERVED,
                             new=AgentState.NOT_RESPONDING, reason=None, at=5) in ev
    assert r.waiting_call_ids() == ["1", "2"]
    assert offers(r.agent_login(agent_id="b", now=6)) == [("1", "b")]  # head, not "2"
    assert offers(r.agent_ready(agent_id="a", now=7)) == [("2", "a")]
    assert r.agent_stats("a", 7).missed == 1


def test_ring_timeout_is_a_timer_that_cancels_and_requeues() -> None:
    r = make({"a": {"skills": ["sales"]}, "b": {"skills": ["sales"]}},
             {"q": {"skills": ["sales"], "ring_timeout": 12}})
    login_all(r, "a", "b")
    r.agent_pause(agent_id="b", reason="coffee", now=0)
    r.enqueue_call(call_id="1", queue="q", now=0)
    assert r.get_timer() == 12
    assert r.handle_timer(11.9) == []
    r.agent_ready(agent_id="b", now=11.95)
    ev = r.handle_timer(12)
    assert ev[0] == CancelOffer(call_id="1", agent_id="a", reason=OfferEndReason.RING_TIMEOUT)
    assert offers(ev) == [("1", "b")]
    assert r.agent_state("a") is AgentState.NOT_RESPONDING
    with pytest.raises(RoutingError, match="not ringing at agent 'a'"):
        r.agent_answered(call_id="1", agent_id="a", now=12.5)


def test_answer_and_end_go_through_wrap_up_to_available() -> None:
    r = make({"a": {"skills": ["sales"]}}, {"q": {"skills": ["sales"], "wrap_up": 30}})
    login_all(r, "a")
    r.enqueue_call(call_id="1", queue="q", now=0)
    r.enqueue_call(call_id="2", queue="q", now=1)
    assert r.agent_state("a") is AgentState.RESERVED
    r.agent_answered(call_id="1", agent_id="a", now=2)
    assert r.agent_state("a") is AgentState.ON_CALL
    assert r.call_ended(call_id="1", now=62)[-1].new is AgentState.WRAP_UP  # type: ignore[union-attr]
    assert r.get_timer() == 92
    assert offers(r.handle_timer(91)) == []
    assert offers(r.handle_timer(92)) == [("2", "a")]
    stats = r.queue_stats("q", 92)
    assert stats.average_handle_time == 90.0  # 60 s talk + 30 s wrap-up
    with pytest.raises(RoutingError, match="unknown call '1'"):
        r.call_ended(call_id="1", now=93)


def test_caller_abandons_while_waiting_and_while_ringing() -> None:
    r = make({"a": {"skills": ["sales"]}}, {"q": {"skills": ["sales"]}})
    login_all(r, "a")
    r.enqueue_call(call_id="1", queue="q", now=0)
    r.enqueue_call(call_id="2", queue="q", now=1)
    r.enqueue_call(call_id="3", queue="q", now=2)
    assert r.caller_abandoned(call_id="2", now=3) == []
    ev = r.caller_abandoned(call_id="1", now=4)
    assert ev[0] == CancelOffer(call_id="1", agent_id="a",
                                reason=OfferEndReason.CALLER_ABANDONED)
    assert offers(ev) == [("3", "a")]
    assert r.queue_stats("q", 4).abandoned == 2
    r.agent_answered(call_id="3", agent_id="a", now=5)
    with pytest.raises(RoutingError, match="connected: use call_ended"):
        r.caller_abandoned(call_id="3", now=6)


def test_single_seat_agent_never_holds_two_calls() -> None:
    r = make({"a": {"skills": ["sales"]}}, {"q": {"skills": ["sales"]}})
    login_all(r, "a")
    assert offers(r.enqueue_call(call_id="1", queue="q", now=0)) == [("1", "a")]
    assert offers(r.enqueue_call(call_id="2", queue="q", now=0)) == []
    r.agent_answered(call_id="1", agent_id="a", now=1)
    assert offers(r.enqueue_call(call_id="3", queue="q", now=2)) == []
    assert offers(r.call_ended(call_id="1", now=3)) == [("2", "a")]  # no wrap-up configured


def test_multi_seat_agent_fills_up_to_capacity() -> None:
    r = make({"a": {"skills": ["sales"], "capacity": 3}}, {"q": {"skills": ["sales"]}})
    for i in range(5):
        r.enqueue_call(call_id=str(i), queue="q", now=i)
    assert offers(r.agent_login(agent_id="a", now=10)) == [("0", "a"), ("1", "a"), ("2", "a")]
    assert not r.can_take_call("a")
    r.agent_answered(call_id="0", agent_id="a", now=11)
    assert offers(r.call_ended(call_id="0", now=12)) == [("3", "a")]
    assert r.agent_stats("a", 12).busy_seats == 3


def test_pause_during_call_takes_effect_after_it() -> None:
    r = make({"a": {"skills": ["sales"]}}, {"q": {"skills": ["sales"], "wrap_up": 5}})
    login_all(r, "a")
    r.enqueue_call(call_id="1", queue="q", now=0)
    r.agent_answered(call_id="1", agent_id="a", now=1)
    r.agent_pause(agent_id="a", reason="training", now=2)
    assert r.agent_state("a") is AgentState.ON_CALL
    r.enqueue_call(call_id="2", queue="q", now=3)
    r.call_ended(call_id="1", now=4)
    ev = r.handle_timer(9)
    assert ev == [AgentStateChanged(agent_id="a", old=AgentState.WRAP_UP, new=AgentState.BREAK,
                                    reason="training", at=9)]
    assert r.agent_stats("a", 9).break_reason == "training"
    assert offers(r.agent_ready(agent_id="a", now=20)) == [("2", "a")]


def test_logout_and_presence_errors() -> None:
    r = make({"a": {"skills": ["sales"]}}, {"q": {"skills": ["sales"]}})
    with pytest.raises(RoutingError, match="cannot ready while offline"):
        r.agent_ready(agent_id="a", now=0)
    login_all(r, "a")
    with pytest.raises(RoutingError, match="cannot login while ready"):
        r.agent_login(agent_id="a", now=0)
    r.agent_logout(agent_id="a", now=1)
    assert r.agent_state("a") is AgentState.OFFLINE
    assert r.enqueue_call(call_id="1", queue="q", now=2) == []
    with pytest.raises(RoutingError, match="unknown agent 'zed'"):
        r.agent_login(agent_id="zed", now=0)
    with pytest.raises(RoutingError, match="unknown queue 'nope'"):
        r.enqueue_call(call_id="2", queue="nope", now=0)
    with pytest.raises(RoutingError, match="already in the router"):
        r.enqueue_call(call_id="1", queue="q", now=3)


# --- relaxation and overflow -----------------------------------------------------------------

RELAXING = {
    "skills": {"sales": 4, "es": 3},
    "relaxation": [{"after": 30, "min_proficiency": 2}, {"after": 60, "drop_skills": ["es"]}],
}


def test_relaxation_lowers_then_drops_at_configured_times() -> None:
    r = make({"mid": {"skills": {"sales": 2, "es": 2}}, "mono": {"skills": {"sales": 3}}},
             {"q": RELAXING})
    login_all(r, "mono")
    r.enqueue_call(call_id="1", queue="q", now=100)
    assert r.waiting_requirement("1") == ("q", (("es", 3), ("sales", 4)), 0)
    assert r.get_timer() == 130
    ev = r.handle_timer(130)
    assert ev == [CallRelaxed(call_id="1", queue="q", stage=1, required=(("es", 2), ("sales", 2)))]
    assert r.get_timer() == 160
    ev = r.handle_timer(160)
    assert ev[0] == CallRelaxed(call_id="1", queue="q", stage=2, required=(("sales", 2),))
    assert offers(ev) == [("1", "mono")]
    decision = next(e for e in ev if isinstance(e, RoutingDecision))
    assert decision.trigger is DecisionTrigger.REQUIREMENTS_RELAXED
    assert decision.relaxation_stage == 2


def test_late_timer_call_applies_every_due_step_in_order() -> None:
    r = make({}, {"q": RELAXING})
    r.enqueue_call(call_id="1", queue="q", now=0)
    ev = r.handle_timer(500)
    assert [e.stage for e in ev if isinstance(e, CallRelaxed)] == [1, 2]
    assert r.get_timer() is None


def test_requeued_call_keeps_its_relaxation_clock() -> None:
    r = make({"a": {"skills": {"sales": 5, "es": 5}}}, {"q": RELAXING})
    login_all(r, "a")
    r.enqueue_call(call_id="1", queue="q", now=0)
    ev = r.agent_no_answer(call_id="1", agent_id="a", now=40)
    assert CallRelaxed(call_id="1", queue="q", stage=1,
                       required=(("es", 2), ("sales", 2))) in ev
    assert r.get_timer() == 60


def test_max_wait_overflows_into_another_queue_keeping_arrival_order() -> None:
    r = make({"s": {"skills": ["support"]}},
             {"sales": {"skills": ["sales"], "max_wait": 50, "overflow": {"queue": "support"}},
              "support": {"skills": ["support"]}})
    login_all(r, "s")
    r.agent_pause(agent_id="s", reason="x", now=0)
    r.enqueue_call(call_id="early", queue="sales", now=0)
    r.enqueue_call(call_id="later", queue="support", now=10)
    ev = r.handle_timer(50)
    assert ev == [CallOverflowed(call_id="early", from_queue="sales", to_queue="support",
                                 destination=None, waited=50)]
    assert offers(r.agent_ready(agent_id="s", now=60)) == [("early", "s")]
    assert r.queue_stats("sales", 60).overflowed == 1
    assert r.queue_stats("support", 60).entered == 2


def test_max_wait_overflow_to_destination_leaves_the_router() -> None:
    r = make({}, {"q": {"skills": ["sales"], "max_wait": 20,
                        "overflow": {"destination": "sip:vm@pbx"}}})
    r.enqueue_call(call_id="1", queue="q", now=0)
    assert r.handle_timer(20) == [CallOverflowed(call_id="1", from_queue="q", to_queue=None,
                                                 destination="sip:vm@pbx", waited=20)]
    assert r.waiting_call_ids() == []
    assert r.get_timer() is None


# --- statistics ------------------------------------------------------------------------------

def test_queue_statistics() -> None:
    r = make({"a": {"skills": ["sales"]}},
             {"q": {"skills": ["sales"], "service_level": {"answer_within": 20}}})
    r.enqueue_call(call_id="1", queue="q", now=0)
    r.enqueue_call(call_id="2", queue="q", now=5)
    r.enqueue_call(call_id="3", queue="q", now=6)
    stats = r.queue_stats("q", 30)
    assert (stats.waiting, stats.longest_wait, stats.service_level) == (3, 30, None)
    login_all(r, "a", now=10)
    r.agent_answered(call_id="1", agent_id="a", now=15)  # 15 s: in target
    assert r.queue_stats("q", 15).longest_wait == 10
    r.call_ended(call_id="1", now=25)
    r.agent_answered(call_id="2", agent_id="a", now=40)  # 35 s: late
    r.caller_abandoned(call_id="3", now=41)
    stats = r.queue_stats("q", 50)
    assert (stats.answered, stats.answered_in_target, stats.abandoned) == (2, 1, 1)
    assert stats.service_level == pytest.approx(1 / 3)
    assert stats.average_handle_time == 10.0
    assert stats.waiting == 0 and stats.longest_wait == 0


def test_agent_occupancy_counts_busy_over_busy_plus_idle() -> None:
    r = make({"a": {"skills": ["sales"]}}, {"q": {"skills": ["sales"], "wrap_up": 10}})
    login_all(r, "a", now=0)
    r.enqueue_call(call_id="1", queue="q", now=20)
    r.agent_answered(call_id="1", agent_id="a", now=22)
    r.call_ended(call_id="1", now=50)
    r.handle_timer(60)
    r.agent_pause(agent_id="a", reason="lunch", now=80)
    stats = r.agent_stats("a", 1000)  # breaks count in neither
    assert stats.occupancy == pytest.approx(40 / 80)
    assert stats.average_handle_time == 38.0
    assert stats.state is AgentState.BREAK


# --- configuration changes -------------------------------------------------------------------

def test_apply_config_keeps_calls_and_routes_with_new_rules() -> None:
    base = {"skills": ["sales", "es"], "agents": {"a": {"skills": {"sales": 2}}},
            "queues": {"q": {"skills": {"sales": 4}}, "old": {"skills": {"sales": 5}}}}
    r = Router(RouterConfig.from_dict(base), 0)
    r.agent_login(agent_id="a", now=0)
    r.enqueue_call(call_id="1", queue="q", now=0)
    r.enqueue_call(call_id="2", queue="old", now=1)
    new = {"skills": ["sales", "es"],
           "agents": {"a": {"skills": {"sales": 2}}, "b": {"skills": {"sales": 5}}},
           "queues": {"q": {"skills": {"sales": 2}}}}
    ev = r.apply_config(RouterConfig.from_dict(new), 10)
    assert offers(ev) == [("1", "a")]
    assert next(e for e in ev if isinstance(e, RoutingDecision)).trigger is \
        DecisionTrigger.CONFIG_APPLIED
    assert r.waiting_call_ids() == ["2"]  # the removed queue's call is still routed
    with pytest.raises(RoutingError, match="unknown queue 'old'"):
        r.enqueue_call(call_id="3", queue="old", now=11)
    assert offers(r.agent_login(agent_id="b", now=12)) == [("2", "b")]


def test_apply_config_removing_an_agent_lets_held_calls_finish() -> None:
    cfg = {"skills": ["sales"], "agents": {"a": {"skills": ["sales"]}},
           "queues": {"q": {"skills": ["sales"], "wrap_up": 5}}}
    r = Router(RouterConfig.from_dict(cfg), 0)
    r.agent_login(agent_id="a", now=0)
    r.enqueue_call(call_id="1", queue="q", now=0)
    r.agent_answered(call_id="1", agent_id="a", now=1)
    r.apply_config(RouterConfig.from_dict({**cfg, "agents": {}}), 2)
    r.enqueue_call(call_id="2", queue="q", now=3)
    assert r.call_agent("1") == "a"
    r.call_ended(call_id="1", now=4)
    assert offers(r.handle_timer(9)) == []
    with pytest.raises(RoutingError, match="unknown agent 'a'"):
        r.agent_login(agent_id="a", now=10)
    r.apply_config(RouterConfig.from_dict(cfg), 11)
    assert offers(r.agent_login(agent_id="a", now=12)) == [("2", "a")]


def test_apply_config_retimes_relaxation_of_waiting_calls() -> None:
    cfg: dict[str, Any] = {"skills": ["sales"], "agents": {},
                           "queues": {"q": {"skills": {"sales": 5}}}}
    r = Router(RouterConfig.from_dict(cfg), 0)
    r.enqueue_call(call_id="1", queue="q", now=0)
    assert r.get_timer() is None
    cfg["queues"]["q"]["relaxation"] = [{"after": 30, "min_proficiency": 3}]
    r.apply_config(RouterConfig.from_dict(cfg), 10)
    assert r.get_timer() == 30
