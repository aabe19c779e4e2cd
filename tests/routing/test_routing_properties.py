"""Hypothesis: random agents, skills, queues and event orders, checked after every step.

Each example drives two routers in lockstep: the indexed `Router` and the benchmark's
`NaiveRouter` (same semantics, decisions by scanning everything); their events must be equal.
A ledger kept from the events alone checks, after every step and every decision:
- an agent is only ever offered a call whose (relaxed) requirement it meets, in a queue it may
  serve, and the requirement is the one the configuration prescribes at that moment;
- no agent holds more calls (reserved + on-call) than its capacity;
- the offered call is the best (priority, then first arrival) among the waiting calls the agent
  meets: priority then FIFO;
- relaxation steps happen exactly at entry time + `after`;
- no (available agent, waiting call it meets) pair is ever left after a step.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vaultpbx.routing import (
    AgentState,
    CallOverflowed,
    CallRelaxed,
    CancelOffer,
    OfferCall,
    OfferEndReason,
    Router,
    RouterConfig,
    RouterEvent,
    RoutingDecision,
    RoutingError,
)
from vaultpbx.routing.config import QueueConfig, relaxed_requirement

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "routing_sim.py"
_spec = importlib.util.spec_from_file_location("routing_sim_for_tests", _BENCH)
assert _spec is not None and _spec.loader is not None
routing_sim = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = routing_sim
_spec.loader.exec_module(routing_sim)
NaiveRouter: type[Router] = routing_sim.NaiveRouter

SKILLS = ["k0", "k1", "k2", "k3"]
STRATEGIES = ["longest-idle", "most-skilled-first", "least-occupied", "round-robin"]


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    n_skills = draw(st.integers(1, 4))
    skills = SKILLS[:n_skills]
    n_queues = draw(st.integers(1, 3))
    names = [f"q{i}" for i in range(n_queues)]
    levels = st.integers(1, 5)
    queues: dict[str, Any] = {}
    for name in names:
        q: dict[str, Any] = {
            "skills": draw(st.dictionaries(st.sampled_from(skills),
                                           st.sampled_from([1, 1, 2, 3, 4]), max_size=2)),
            "priority": draw(st.integers(0, 2)),
            "strategy": draw(st.sampled_from(STRATEGIES)),
            "wrap_up": draw(st.sampled_from([0, 0, 5])),
            "ring_timeout": draw(st.sampled_from([10, 30])),
        }
        afters = sorted(draw(st.sets(st.sampled_from([10, 30, 50, 80]), max_size=2)))
        steps = []
        for after in afters:
            if draw(st.booleans()):
                steps.append({"after": after, "min_proficiency": draw(levels)})
            else:
                steps.append({"after": after, "drop_skills": [draw(st.sampled_from(skills))]})
        q["relaxation"] = steps
        if draw(st.integers(0, 3)) == 0:
            q["max_wait"] = draw(st.sampled_from([60, 120]))
            others = [n for n in names if n != name]
            if others and draw(st.booleans()):
                q["overflow"] = {"queue": draw(st.sampled_from(others))}
            elif draw(st.booleans()):
                q["overflow"] = {"destination": "sip:vm@pbx"}
        queues[name] = q
    agents: dict[str, Any] = {}
    for i in range(draw(st.sampled_from([1, 2, 3, 4, 6]))):
        a: dict[str, Any] = {
            "skills": draw(st.dictionaries(st.sampled_from(skills),
                                           st.sampled_from([1, 2, 3, 4, 5, 5]), min_size=1)),
            "capacity": draw(st.sampled_from([1, 1, 1, 2])),
        }
        if draw(st.integers(0, 4)) == 0:
            a["queues"] = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
        agents[f"a{i}"] = a
    return {"skills": skills, "agents": agents, "queues": queues}


STEADY_OPS = st.one_of(
    st.tuples(st.just("enqueue"), st.integers(0, 2), st.sampled_from([0, 0, 0, 1, 5]),
              st.one_of(st.none(), st.none(),
                        st.tuples(st.sampled_from(SKILLS), st.integers(1, 3)))),
    st.tuples(st.sampled_from(["login", "login", "ready", "ready", "logout", "pause"]),
              st.integers(0, 5)),
    st.tuples(st.sampled_from(["answer", "answer", "no_answer", "end", "end", "abandon"]),
              st.integers(0, 7)),
    st.tuples(st.sampled_from(["answer", "answer", "no_answer", "end", "end", "abandon"]),
              st.integers(0, 7)),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1, 5, 10, 20, 45, 100])),
)
OPS = st.one_of(STEADY_OPS, st.tuples(st.just("reconfig"), st.integers(0, 9)))
"""A reconfiguration is only applied when its number is 0: about one op in 40."""


@dataclass
class LedgerCall:
    call_id: str
    queue: str
    own: dict[str, int]
    own_priority: int
    first_enqueued: float
    seq: int
    entered: float
    stage: int = 0
    rearmed_at: float = 0.0
    """When the router last re-armed the call's timers (ring-out, config change)."""
    state: str = "waiting"
    agent: str | None = None


@dataclass
class Drive:
    """Two routers in lockstep plus a ledger built only from what they emitted."""

    config: RouterConfig
    now: float = 0.0
    routers: list[Router] = field(default_factory=list)
    queue_cfg: dict[str, QueueConfig] = field(default_factory=dict)
    calls: dict[str, LedgerCall] = field(default_factory=dict)
    next_call: int = 0
    decisions: int = 0
    reconfiguring: bool = False
    shrunk: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.routers = [Router(self.config, 0.0), NaiveRouter(self.config, 0.0)]
        self.queue_cfg = dict(self.config.queues)

    # --- driving -----------------------------------------------------------------------------

    def both(self, method: str, before_absorb: Any = None, **kwargs: Any) -> None:
        results: list[list[RouterEvent] | str] = []
        for r in self.routers:
            try:
                results.append(getattr(r, method)(**kwargs))
            except RoutingError as e:
                results.append(f"error: {e}")
        fast, naive = results
        if isinstance(fast, str) or isinstance(naive, str):
            assert fast == naive
            return
        assert [_comparable(e) for e in fast] == [_comparable(e) for e in naive]
        if before_absorb is not None:
            before_absorb()
        self.absorb(fast)
        self.check_quiescent()

    def step(self, op: tuple[Any, ...], raw_config: dict[str, Any],
             alt_config: dict[str, Any]) -> None:
        kind = op[0]
        agents = list(self.routers[0].config.agents)
        if kind == "enqueue":
            queues = list(self.routers[0].config.queues)
            queue = queues[op[1] % len(queues)]
            call_id = f"c{self.next_call}"
            self.next_call += 1
            own = {op[3][0]: op[3][1]} if op[3] and op[3][0] in raw_config["skills"] else {}
            self.calls[call_id] = LedgerCall(call_id, queue, own, op[2], self.now,
                                             self.next_call, self.now)
            self.both("enqueue_call", call_id=call_id, queue=queue, now=self.now,
                      priority=op[2], required_skills=own)
        elif kind in ("login", "logout", "ready"):
            self.both(f"agent_{kind}", agent_id=agents[op[1] % len(agents)], now=self.now)
        elif kind == "pause":
            self.both("agent_pause", agent_id=agents[op[1] % len(agents)], reason="r",
                      now=self.now)
        elif kind in ("answer", "no_answer"):
            ringing = sorted((c for c in self.calls.values() if c.state == "ringing"),
                             key=_by_seq)
            if ringing:
                c = ringing[op[1] % len(ringing)]
                if kind == "no_answer":
                    self.both("agent_no_answer", before_absorb=lambda: self.requeue(c),
                              call_id=c.call_id, agent_id=c.agent, now=self.now)
                else:
                    self.both("agent_answered", call_id=c.call_id, agent_id=c.agent,
                              now=self.now)
        elif kind == "end":
            connected = sorted((c for c in self.calls.values() if c.state == "connected"),
                               key=_by_seq)
            if connected:
                c = connected[op[1] % len(connected)]
                self.both("call_ended", before_absorb=lambda: self.forget(c), call_id=c.call_id,
                          now=self.now)
        elif kind == "abandon":
            live = sorted((c for c in self.calls.values() if c.state in ("waiting", "ringing")),
                          key=_by_seq)
            if live:
                c = live[op[1] % len(live)]
                self.both("caller_abandoned", before_absorb=lambda: self.forget(c),
                          call_id=c.call_id, now=self.now)
        elif kind == "advance":
            target = self.now + op[1]
            while True:
                timers = {r.get_timer() for r in self.routers}
                assert len(timers) == 1
                when = timers.pop()
                if when is None or when > target:
                    break
                assert when >= self.now
                self.now = when
                self.both("handle_timer", now=when)
            self.now = target
            self.check_quiescent()
        elif kind == "reconfig" and op[1] == 0:
            new = RouterConfig.from_dict(alt_config)
            for name, qc in new.queues.items():
                self.queue_cfg[name] = qc

            def restage() -> None:
                # Waiting calls of changed queues take the new relaxation clock at once.
                self.reconfiguring = True
                for c in self.calls.values():
                    if c.state == "waiting":
                        c.stage = self.expected_stage(c)
                        c.rearmed_at = self.now
                # A lowered capacity leaves held calls alone; only new offers must respect it.
                self.shrunk.update(a for a, agent in self.routers[0]._agents.items()
                                   if agent.busy_seats > agent.config.capacity)

            self.both("apply_config", before_absorb=restage, new_config=new, now=self.now)
            self.reconfiguring = False

    # --- the ledger --------------------------------------------------------------------------

    def forget(self, c: LedgerCall) -> None:
        """The call left the router (ended or abandoned) before the events that follow."""
        self.calls.pop(c.call_id, None)

    def requeue(self, c: LedgerCall) -> None:
        """An offer rang out: the call is waiting again with its clocks unchanged."""
        c.state, c.agent, c.rearmed_at = "waiting", None, self.now
        c.stage = self.expected_stage(c)

    def expected_stage(self, c: LedgerCall) -> int:
        steps = self.queue_cfg[c.queue].relaxation
        return sum(1 for s in steps if c.entered + s.after <= self.now)

    def requirement(self, c: LedgerCall, stage: int) -> tuple[tuple[str, int], ...]:
        qc = self.queue_cfg[c.queue]
        base = dict(qc.skills)
        for skill, level in c.own.items():
            base[skill] = max(level, base.get(skill, 0))
        return relaxed_requirement(base, qc.relaxation, stage)

    def agent_config_skills(self, agent_id: str) -> tuple[dict[str, int], frozenset[str] | None]:
        agent = self.routers[0]._agents[agent_id]
        return dict(agent.config.skills), agent.config.queues

    def absorb(self, events: list[RouterEvent]) -> None:
        for e in events:
            if isinstance(e, RoutingDecision):
                self.check_decision(e)
            elif isinstance(e, OfferCall):
                c = self.calls[e.call_id]
                assert c.state == "waiting"
                c.state, c.agent = "ringing", e.agent_id
                held = sum(1 for x in self.calls.values()
                           if x.agent == e.agent_id and x.state in ("ringing", "connected"))
                assert held <= self.routers[0]._agents[e.agent_id].config.capacity
            elif isinstance(e, CancelOffer):
                if e.reason is OfferEndReason.RING_TIMEOUT:
                    c = self.calls[e.call_id]
                    assert c.state == "ringing" and c.agent == e.agent_id
                    self.requeue(c)
                else:
                    assert e.call_id not in self.calls  # the caller hung up
            elif isinstance(e, CallRelaxed):
                c = self.calls[e.call_id]
                assert e.stage == self.expected_stage(c), "relaxed at the wrong time"
                assert e.stage >= c.stage or self.reconfiguring
                c.stage = e.stage
                assert e.required == self.requirement(c, c.stage)
            elif isinstance(e, CallOverflowed):
                c = self.calls[e.call_id]
                assert c.state == "waiting"
                limit = self.queue_cfg[c.queue].max_wait
                assert limit is not None and self.now == max(c.entered + limit, c.rearmed_at)
                if e.to_queue is None:
                    del self.calls[e.call_id]
                else:
                    c.queue, c.entered, c.stage = e.to_queue, self.now, 0
        # Inputs whose effect shows only as state: bring the ledger up to date.
        for c in list(self.calls.values()):
            state = self._router_call_state(c.call_id)
            if state is None:
                del self.calls[c.call_id]
            elif state == "waiting" and c.state != "waiting":
                c.state, c.agent = "waiting", None  # rang out: back in the queue
                c.stage = self.expected_stage(c)
            elif state == "connected":
                c.state = "connected"

    def _router_call_state(self, call_id: str) -> str | None:
        call = self.routers[0]._calls.get(call_id)
        return None if call is None else call.state.value

    def check_decision(self, d: RoutingDecision) -> None:
        self.decisions += 1
        c = self.calls[d.call_id]
        assert c.state == "waiting"
        skills, allowed = self.agent_config_skills(d.agent_id)
        required = self.requirement(c, c.stage)
        assert d.required == required and d.relaxation_stage == c.stage
        assert all(skills.get(s, 0) >= level for s, level in required), "agent lacks skill"
        assert allowed is None or c.queue in allowed
        # Priority, then first arrival, among all waiting calls this agent meets.
        def key(x: LedgerCall) -> tuple[int, float, int]:
            return (-(self.queue_cfg[x.queue].priority + x.own_priority), x.first_enqueued,
                    x.seq)
        rivals = [x for x in self.calls.values() if x.state == "waiting"
                  and (allowed is None or x.queue in allowed)
                  and all(skills.get(s, 0) >= lv for s, lv in self.requirement(x, x.stage))]
        assert min(rivals, key=key) is c, "a better waiting call was passed over"

    def check_quiescent(self) -> None:
        router = self.routers[0]
        held: dict[str, int] = {}
        for c in self.calls.values():
            if c.state in ("ringing", "connected"):
                assert c.agent is not None
                held[c.agent] = held.get(c.agent, 0) + 1
        waiting = [c for c in self.calls.values() if c.state == "waiting"]
        assert sorted(router.waiting_call_ids()) == sorted(c.call_id for c in waiting)
        for c in waiting:
            assert c.stage == self.expected_stage(c), "relaxation late or early"
            assert router.waiting_requirement(c.call_id) == (
                c.queue, self.requirement(c, c.stage), c.stage)
        for agent_id, agent in router._agents.items():
            capacity = agent.config.capacity
            if agent.busy_seats <= capacity:
                self.shrunk.discard(agent_id)
            elif agent_id not in self.shrunk:
                raise AssertionError(f"{agent_id} holds more calls than its capacity")
            if agent_id not in self.shrunk:
                assert held.get(agent_id, 0) <= capacity
                if capacity == 1:
                    assert agent.reserved <= 1
            if agent.retired or not router.can_take_call(agent_id):
                continue
            assert router.agent_state(agent_id) in (
                AgentState.AVAILABLE, AgentState.RESERVED, AgentState.ON_CALL, AgentState.WRAP_UP)
            skills, allowed = dict(agent.config.skills), agent.config.queues
            for c in waiting:
                meets = all(skills.get(s, 0) >= lv for s, lv in self.requirement(c, c.stage))
                assert not (meets and (allowed is None or c.queue in allowed)), (
                    f"{agent_id} is free and meets waiting call {c.call_id}")


def _comparable(e: RouterEvent) -> RouterEvent:
    return dataclasses.replace(e, considered=0) if isinstance(e, RoutingDecision) else e


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=configs(), alt=configs(), ops=st.lists(OPS, min_size=20, max_size=80),
       logged_in=st.booleans())
def test_router_invariants_under_random_operation(
        raw: dict[str, Any], alt: dict[str, Any], ops: list[tuple[Any, ...]],
        logged_in: bool) -> None:
    alt = {**alt, "skills": raw["skills"] if len(raw["skills"]) > len(alt["skills"])
           else alt["skills"]}
    try:
        alt_config = RouterConfig.from_dict(alt)
    except ValueError:
        alt_config = None
    drive = Drive(RouterConfig.from_dict(raw))
    if logged_in:
        ops = [("login", i) for i in range(len(raw["agents"]))] + ops
    for op in ops:
        if op[0] == "reconfig" and alt_config is None:
            continue
        drive.step(op, raw, alt)
    drive.step(("advance", 1000), raw, alt)


@settings(max_examples=100, deadline=None)
@given(raw=configs(),
       ops=st.lists(STEADY_OPS, min_size=10, max_size=40))
def test_everyone_logged_in_and_answering_serves_every_caller(
        raw: dict[str, Any], ops: list[tuple[Any, ...]]) -> None:
    """With all agents ready and answering, every call an agent could ever take is taken."""
    drive = Drive(RouterConfig.from_dict(raw))
    for op in ops:
        drive.step(op, raw, raw)
    for agent_id in drive.routers[0].config.agents:
        drive.step(("login", list(drive.routers[0].config.agents).index(agent_id)), raw, raw)
        drive.step(("ready", list(drive.routers[0].config.agents).index(agent_id)), raw, raw)
    for _ in range(200):
        ringing = [c for c in drive.calls.values() if c.state == "ringing"]
        connected = [c for c in drive.calls.values() if c.state == "connected"]
        if ringing:
            drive.step(("answer", 0), raw, raw)
        elif connected:
            drive.step(("end", 0), raw, raw)
        else:
            drive.step(("advance", 10), raw, raw)
        if not drive.calls:
            break
    router = drive.routers[0]
    for c in drive.calls.values():
        # Whatever still waits can be served by nobody (even fully relaxed), ever.
        qc = drive.queue_cfg[c.queue]
        loosest = drive.requirement(c, len(qc.relaxation))
        for agent in router._agents.values():
            if agent.config.queues is None or c.queue in agent.config.queues:
                assert not all(agent.config.skills.get(s, 0) >= lv for s, lv in loosest)


def _by_seq(c: LedgerCall) -> int:
    return c.seq
