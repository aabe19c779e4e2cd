"""The ACD bridge in memory: the real router, transaction layer and B2BUA, a manual clock and
phones that register, ring and answer. Every test moves time by hand, so none can hang."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vaultpbx.api.messages import HttpRequest
from vaultpbx.b2bua.acd import AcdBridge
from vaultpbx.hooks.registry import HookPoint
from vaultpbx.routing import (
    AgentState,
    AgentStateChanged,
    CallOverflowed,
    CallRelaxed,
    RoutingDecision,
    RoutingError,
)
from vaultpbx.sip.message import Request

from tests.b2bua.harness import Harness, Phone, requests

CONFIG = """
sip:
  domain: vaultpbx.test
  keepalive_probe_interval: 0
  ring_timeout: 60
extensions:
  "1001": {password: "pw1"}
  "1002": {password: "pw2"}
  "1003": {password: "pw3"}
  "2001": {password: "pa1"}
  "2002": {password: "pa2"}
  "2003": {password: "pa3"}
dialplan:
  - {match: '1\\d{3}|2\\d{3}', extension: '\\g<0>'}
  - {match: '700', queue: support}
  - {match: '701', queue: spanish}
  - {match: '702', queue: short}
  - {match: '703', queue: dead_end}
  - {match: '704', queue: expert}
  - {match: '705', queue: first_line}
routing:
  skills: [english, spanish]
  agents:
    "2001": {skills: {english: 5}}
    "2002": {skills: {english: 2, spanish: 4}}
    "2003": {skills: {english: 3}}
  queues:
    support: {skills: {english: 1}, ring_timeout: 10, wrap_up: 20}
    spanish: {skills: {spanish: 3}, ring_timeout: 10, wrap_up: 5}
    short:
      skills: {english: 1}
      max_wait: 30
      overflow: {destination: "1003"}
    dead_end: {skills: {english: 1}, max_wait: 30}
    expert:
      skills: {english: 5}
      relaxation: [{after: 10, min_proficiency: 3}]
    first_line:
      skills: {spanish: 5}
      max_wait: 20
      overflow: {queue: support}
"""

PASSWORDS = {"1001": "pw1", "1002": "pw2", "1003": "pw3", "2001": "pa1", "2002": "pa2",
             "2003": "pa3"}
PORTS = {"1001": 6001, "1002": 6002, "1003": 6003, "2001": 7001, "2002": 7002, "2003": 7003}


class Acd:
    """A harness, its bridge, the routing hook events, and phones by extension."""

    def __init__(self, state_path: Path | None = None, config: str = CONFIG) -> None:
        self.h = Harness(config)
        self.events: list[object] = []
        self.h.b2bua.hooks.add_observer(HookPoint.ROUTING_DECISION,
                                        lambda point, event: self.events.append(event),
                                        name="test")
        self.bridge = AcdBridge(self.h.b2bua, self.h.config.routing, self.h.now,
                                state_path=state_path, clock=lambda: self.h.now,
                                flush=self.h._collect)
        self.h.b2bua.queue_router = self.bridge
        self.phones = {ext: Phone(self.h, PORTS[ext], ext, PASSWORDS[ext]) for ext in PORTS}

    def agent(self, ext: str, *, login: bool = True) -> Phone:
        phone = self.phones[ext]
        assert phone.register().status == 200
        if login:
            self.bridge.login(ext, self.h.now)
        return phone

    def state(self, agent: str) -> AgentState:
        return self.bridge.router.agent_state(agent)

    def queue(self, name: str) -> dict:
        return self.bridge.stats(self.h.now)["queues"][name]


def offers(phone: Phone) -> list[Request]:
    """Distinct INVITEs a phone got (UDP retransmissions folded)."""
    seen: dict[str, Request] = {}
    for invite in requests(phone.messages(), "INVITE"):
        seen.setdefault(invite.via.branch or "", invite)
    return list(seen.values())


def answer(acd: Acd, agent: Phone, invite: Request, caller: Phone, call_id: str) -> None:
    agent.answer(invite, 180)
    agent.answer(invite, 200, body=b"v=0\r\nagent\r\n")
    ok = [r for r in caller.responses() if r.status == 200 and r.cseq.method == "INVITE"][-1]
    caller.ack_2xx(ok, call_id)
    acd.ok = ok  # type: ignore[attr-defined]


def hang_up(caller: Phone, call_id: str, ok) -> None:  # type: ignore[no-untyped-def]
    caller.in_dialog("BYE", ok.values("contact")[0].strip("<>"), ok.to.uri, ok.to.tag or "",
                     call_id)


def cancel(caller: Phone, invite: bytes) -> None:
    data = invite.split(b"\r\n\r\n")[0].replace(b"INVITE sip", b"CANCEL sip", 1)
    data = data.replace(b" INVITE\r\n", b" CANCEL\r\n").split(b"Content-Type")[0]
    caller.send(data.rstrip(b"\r\n") + b"\r\nContent-Length: 0\r\n\r\n")


# -- routing by skill ---------------------------------------------------------------------------
def test_the_agent_with_the_skill_rings_and_answers() -> None:
    acd = Acd()
    english = acd.agent("2001")
    spanish = acd.agent("2002")
    caller = acd.phones["1001"]
    caller.invite("701", "sp1")
    assert 180 in [r.status for r in caller.responses()]  # queued: the caller hears ringing
    assert offers(english) == []
    [invite] = offers(spanish)
    assert invite.request_uri.user == "2002"
    assert acd.state("2002") is AgentState.RESERVED
    answer(acd, spanish, invite, caller, "sp1")
    assert acd.state("2002") is AgentState.ON_CALL
    stats = acd.queue("spanish")
    assert stats["answered"] == 1 and stats["answered_in_target"] == 1
    decisions = [e for e in acd.events if isinstance(e, RoutingDecision)]
    assert [(d.call_id, d.agent_id, d.queue) for d in decisions] == [
        (next(iter(acd.h.b2bua.calls)), "2002", "spanish")]
    assert any(isinstance(e, AgentStateChanged) and e.new is AgentState.ON_CALL
               for e in acd.events)
    hang_up(caller, "sp1", acd.ok)  # type: ignore[attr-defined]
    assert acd.h.b2bua.calls == {}
    assert acd.state("2002") is AgentState.WRAP_UP
    acd.h.advance(5.5)
    assert acd.state("2002") is AgentState.AVAILABLE
    assert acd.queue("spanish")["average_handle_time"] == pytest.approx(5.0, abs=0.3)


def test_a_call_waits_until_an_agent_with_the_skill_logs_in() -> None:
    acd = Acd()
    english = acd.agent("2001")
    spanish = acd.agent("2002", login=False)
    caller = acd.phones["1001"]
    caller.invite("701", "sp2")
    acd.h.advance(5)
    assert offers(english) == [] and offers(spanish) == []
    assert acd.queue("spanish")["waiting"] == 1
    assert acd.queue("spanish")["longest_wait"] == pytest.approx(5.0)
    acd.bridge.login("2002", acd.h.now)  # the flush callback sends the INVITE at once
    assert len(offers(spanish)) == 1


# -- no answer ----------------------------------------------------------------------------------
def test_no_answer_moves_on_and_the_agent_stops_getting_offers() -> None:
    acd = Acd()
    first = acd.agent("2001")  # logged in first: longest idle, offered first
    acd.h.advance(1)
    second = acd.agent("2002")
    caller = acd.phones["1001"]
    caller.invite("700", "na")
    [ring] = offers(first)
    first.answer(ring, 180)
    assert offers(second) == []
    acd.h.advance(10.5)  # the queue's ring timeout
    cancels = requests(first.messages(), "CANCEL")
    assert cancels and cancels[0].via.branch == ring.via.branch
    first.answer(ring, 487)
    assert acd.state("2001") is AgentState.NOT_RESPONDING
    [next_ring] = offers(second)
    answer(acd, second, next_ring, caller, "na")
    assert acd.bridge.stats(acd.h.now)["agents"]["2001"]["missed"] == 1
    # A not-responding agent gets nothing until ready again.
    acd.phones["1002"].invite("700", "na2")
    acd.h.advance(2)
    assert offers(first) == []
    acd.bridge.ready("2001", acd.h.now)
    assert len(offers(first)) == 1


def test_an_agent_who_rejects_is_a_no_answer_at_once() -> None:
    acd = Acd()
    first = acd.agent("2001")
    acd.h.advance(1)
    second = acd.agent("2003")
    caller = acd.phones["1001"]
    caller.invite("700", "rej")
    [ring] = offers(first)
    first.answer(ring, 486)
    assert acd.state("2001") is AgentState.NOT_RESPONDING
    assert len(offers(second)) == 1


def test_an_unregistered_agent_is_skipped_at_once() -> None:
    acd = Acd()
    acd.bridge.login("2001", acd.h.now)  # logged in, but no phone registered
    acd.h.advance(1)
    second = acd.agent("2003")
    acd.phones["1001"].invite("700", "unreg")
    assert acd.state("2001") is AgentState.NOT_RESPONDING
    assert len(offers(second)) == 1
    assert acd.bridge.counters["offers_failed"] == 1


# -- wrap-up ------------------------------------------------------------------------------------
def test_wrap_up_delays_the_next_offer_to_that_agent() -> None:
    acd = Acd()
    agent = acd.agent("2001")
    caller = acd.phones["1001"]
    caller.invite("700", "w1")
    [ring] = offers(agent)
    answer(acd, agent, ring, caller, "w1")
    acd.h.advance(3)
    hang_up(caller, "w1", acd.ok)  # type: ignore[attr-defined]
    ended_at = acd.h.now
    assert acd.state("2001") is AgentState.WRAP_UP
    acd.phones["1002"].invite("700", "w2")
    acd.h.advance(19.5)
    assert offers(agent) == [] and acd.queue("support")["waiting"] == 1
    acd.h.advance(1)
    [second] = offers(agent)
    assert second.request_uri.user == "2001"
    assert acd.h.now - ended_at >= 20
    # Handle time = 3 s talk + 20 s wrap-up.
    assert acd.queue("support")["average_handle_time"] == pytest.approx(23.0, abs=0.3)


# -- abandonment --------------------------------------------------------------------------------
def test_caller_hang_up_while_queued_is_abandoned() -> None:
    acd = Acd()
    caller = acd.phones["1001"]
    invite = caller.invite("700", "ab")
    acd.h.advance(4)
    assert acd.queue("support")["waiting"] == 1
    cancel(caller, invite)
    statuses = [r.status for r in caller.responses()]
    assert 200 in statuses and 487 in statuses
    stats = acd.queue("support")
    assert stats["abandoned"] == 1 and stats["waiting"] == 0
    assert acd.h.b2bua.calls == {} and acd.bridge.calls == {}
    samples = {(s[0], tuple((s[4] if len(s) > 4 else {}).items())): s[2]
               for s in acd.bridge.metric_samples(acd.h.now)}
    assert samples[("vaultpbx_queue_abandoned", (("queue", "support"),))] == 1
    assert samples[("vaultpbx_acd_abandoned", ())] == 1
    assert samples[("vaultpbx_queue_service_level", (("queue", "support"),))] == 0.0


def test_caller_hang_up_while_an_agent_rings_withdraws_the_offer() -> None:
    acd = Acd()
    agent = acd.agent("2001")
    caller = acd.phones["1001"]
    invite = caller.invite("700", "ab2")
    [ring] = offers(agent)
    agent.answer(ring, 180)
    cancel(caller, invite)
    assert requests(agent.messages(), "CANCEL")
    assert acd.queue("support")["abandoned"] == 1
    assert acd.state("2001") is AgentState.AVAILABLE  # not the agent's fault


# -- overflow -----------------------------------------------------------------------------------
def test_overflow_after_max_wait_rings_the_destination() -> None:
    acd = Acd()
    desk = acd.phones["1003"]
    desk.register()
    caller = acd.phones["1001"]
    caller.invite("702", "ov")
    acd.h.advance(29.5)
    assert offers(desk) == []
    acd.h.advance(1)
    [ring] = offers(desk)
    assert ring.request_uri.user == "1003"
    assert acd.queue("short")["overflowed"] == 1
    overflowed = [e for e in acd.events if isinstance(e, CallOverflowed)]
    assert overflowed and overflowed[0].destination == "1003"
    desk.answer(ring, 200, body=b"v=0\r\n")
    assert caller.responses()[-1].status == 200
    assert acd.queue("short")["abandoned"] == 0  # left the router: not counted again


def test_overflow_into_another_queue_keeps_routing_the_call() -> None:
    acd = Acd()
    caller = acd.phones["1001"]
    invite = caller.invite("705", "ovq")
    agent = acd.agent("2003")  # English only: cannot take first_line's calls
    acd.h.advance(19.5)
    assert offers(agent) == []
    acd.h.advance(1)
    [ring] = offers(agent)  # now in support, where English 1 is enough
    assert acd.bridge.calls[next(iter(acd.h.b2bua.calls))].queue == "support"
    agent.answer(ring, 180)
    cancel(caller, invite)
    assert acd.queue("first_line")["overflowed"] == 1
    assert acd.queue("support")["abandoned"] == 1


def test_relaxation_on_the_router_timer_reaches_a_less_skilled_agent() -> None:
    acd = Acd()
    agent = acd.agent("2003")  # English 3: below the expert queue's 5 at first
    acd.phones["1001"].invite("704", "rx")
    acd.h.advance(9.5)
    assert offers(agent) == []
    acd.h.advance(1)  # nothing but the router's own timer happens here
    assert len(offers(agent)) == 1
    relaxed = [e for e in acd.events if isinstance(e, CallRelaxed)]
    assert [(r.stage, r.required) for r in relaxed] == [(1, (("english", 3),))]


def test_max_wait_without_overflow_ends_the_call_480() -> None:
    acd = Acd()
    caller = acd.phones["1001"]
    caller.invite("703", "dead")
    acd.h.advance(31)
    assert caller.responses()[-1].status == 480
    assert acd.h.b2bua.finished_records[-1].cause == "max_wait"
    stats = acd.queue("dead_end")
    assert stats["overflowed"] == 1 and stats["abandoned"] == 0


# -- agent state across a restart ---------------------------------------------------------------
def test_agent_presence_survives_a_new_bridge_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "acd.db"
    acd = Acd(path)
    acd.bridge.login("2001", acd.h.now)
    acd.bridge.login("2002", acd.h.now)
    acd.bridge.pause("2002", "lunch", acd.h.now)
    acd.bridge.login("2003", acd.h.now)
    acd.bridge.logout("2003", acd.h.now)
    acd.bridge.close()

    again = Acd(path)
    agents = again.bridge.stats(again.h.now)["agents"]
    assert agents["2001"]["state"] == "available"
    assert (agents["2002"]["state"], agents["2002"]["break_reason"]) == ("break", "lunch")
    assert agents["2003"]["state"] == "offline"
    # And the restored agent takes calls.
    phone = again.agent("2001", login=False)
    again.phones["1001"].invite("700", "after")
    assert len(offers(phone)) == 1
    again.bridge.close()


def test_not_responding_is_restored_as_a_break(tmp_path: Path) -> None:
    path = tmp_path / "acd.db"
    acd = Acd(path)
    acd.bridge.login("2001", acd.h.now)  # unregistered: the first offer fails at once
    acd.phones["1001"].invite("700", "nr")
    assert acd.state("2001") is AgentState.NOT_RESPONDING
    acd.bridge.close()
    again = Acd(path)
    agent = again.bridge.stats(again.h.now)["agents"]["2001"]
    assert (agent["state"], agent["break_reason"]) == ("break", "not-responding")
    again.bridge.close()


# -- control, reload, admin API ------------------------------------------------------------------
def test_control_refusals_change_nothing() -> None:
    acd = Acd()
    with pytest.raises(RoutingError):
        acd.bridge.ready("2001", acd.h.now)  # offline: must log in first
    with pytest.raises(RoutingError):
        acd.bridge.login("9999", acd.h.now)
    assert acd.bridge.presence == {}


def test_reload_keeps_queued_calls_and_applies_new_agents() -> None:
    acd = Acd()
    caller = acd.phones["1001"]
    caller.invite("701", "rl")
    acd.h.advance(2)
    assert acd.queue("spanish")["waiting"] == 1
    routing = dict(acd.h.config.routing)
    routing["agents"] = {**routing["agents"], "2003": {"skills": {"english": 3, "spanish": 5}}}
    acd.bridge.apply_config(routing, acd.h.now)
    assert acd.queue("spanish")["waiting"] == 1
    phone = acd.agent("2003")
    assert len(offers(phone)) == 1
    with pytest.raises(ValueError, match="routing.queues.bad.skills"):
        acd.bridge.apply_config({**routing, "queues": {"bad": {"skills": {"klingon": 1}}}},
                                acd.h.now)
    assert acd.bridge.handles("spanish")


def http(acd: Acd, method: str, path: str, body: object = None) -> tuple[int, dict]:
    handler = acd.bridge.admin_routes()[(method, path)]
    raw = json.dumps(body).encode() if body is not None else b""
    response = handler(HttpRequest(method=method, path=path, query={}, headers={}, body=raw,
                                   peer="127.0.0.1"))
    return response.status, json.loads(response.body)


def test_admin_routes() -> None:
    acd = Acd()
    phone = acd.phones["2001"]
    phone.register()
    status, body = http(acd, "POST", "/agents/login", {"agent": "2001"})
    assert status == 200 and body["state"] == "available"
    assert http(acd, "POST", "/agents/login", {"agent": "2001"})[0] == 409
    assert http(acd, "POST", "/agents/login", {"agent": "4242"})[0] == 404
    assert http(acd, "POST", "/agents/pause", {"agent": "2001", "reason": 5})[0] == 400
    assert http(acd, "POST", "/agents/pause", {"nope": 1})[0] == 400
    status, body = http(acd, "POST", "/agents/pause", {"agent": "2001", "reason": "coffee"})
    assert (status, body["state"], body["break_reason"]) == (200, "break", "coffee")
    acd.phones["1001"].invite("700", "api")
    assert offers(phone) == []
    status, body = http(acd, "POST", "/agents/ready", {"agent": "2001"})
    assert status == 200 and body["state"] == "reserved"
    assert len(offers(phone)) == 1  # rung from the HTTP handler: the flush sent it
    status, body = http(acd, "GET", "/queues")
    assert status == 200 and body["queues"]["support"]["ringing"] == 1
    status, body = http(acd, "GET", "/agents")
    assert status == 200 and body["agents"]["2001"]["offered"] == 1
    assert http(acd, "POST", "/agents/logout", {"agent": "2002"})[0] == 409


# -- random call centre: the router's view and the B2BUA's never drift apart -----------------------
RANDOM_CONFIG = """
sip:
  domain: vaultpbx.test
  keepalive_probe_interval: 0
  ring_timeout: 60
extensions:
  "1001": {password: "pw1"}
  "2001": {password: "pa1"}
  "2002": {password: "pa2"}
  "2003": {password: "pa3"}
dialplan:
  - {match: '2\\d{3}', extension: '\\g<0>'}
  - {match: '700', queue: support}
  - {match: '701', queue: spanish}
routing:
  skills: [english, spanish]
  agents:
    "2001": {skills: {english: 5}}
    "2002": {skills: {english: 2, spanish: 4}}
    "2003": {skills: {english: 3, spanish: 3}}
  queues:
    support: {skills: {english: 1}, ring_timeout: 6, wrap_up: 3}
    spanish: {skills: {spanish: 3}, ring_timeout: 6, wrap_up: 2}
"""

AGENTS = ("2001", "2002", "2003")
action = st.one_of(
    st.tuples(st.just("call"), st.sampled_from(["700", "701"])),
    # An agent whose phone rings (the k-th of them) rings on, answers or rejects.
    st.tuples(st.just("agent"), st.integers(0, 2), st.sampled_from([180, 200, 200, 486])),
    st.tuples(st.just("agent"), st.integers(0, 2), st.just(200)),
    st.tuples(st.just("cancel"), st.integers(0, 7)),
    st.tuples(st.just("hangup"), st.integers(0, 7)),
    st.tuples(st.just("advance"), st.floats(0.25, 8.0)),
    st.tuples(st.just("presence"), st.sampled_from(AGENTS)),
)


class CallCentre:
    def __init__(self) -> None:
        self.acd = Acd(config=RANDOM_CONFIG)
        self.agents = {ext: self.acd.agent(ext) for ext in AGENTS}
        self.ringing: dict[str, Request] = {}  # agent -> the INVITE ringing there
        self.callers: list[dict] = []
        self.answered = 0

    def pump(self) -> None:
        """Let every phone react to what it received, as a well-behaved phone would."""
        for _ in range(5):
            busy = False
            for ext, phone in self.agents.items():
                for m in phone.messages():
                    busy = True
                    if not isinstance(m, Request):
                        continue
                    if m.method == "INVITE" and m.to.tag is None:
                        self.ringing[ext] = m
                    elif m.method == "CANCEL":
                        phone.answer(m, 200)
                        invite = self.ringing.pop(ext, None)
                        if invite is not None and invite.call_id == m.call_id:
                            phone.answer(invite, 487)
                    elif m.method == "BYE":
                        phone.answer(m, 200)
            for c in self.callers:
                for m in c["phone"].messages():
                    busy = True
                    if isinstance(m, Request):
                        if m.method == "BYE":
                            c["phone"].answer(m, 200)
                            c["done"] = True
                        continue
                    if m.cseq.method != "INVITE" or m.status < 200 or m.status == 407:
                        continue
                    if m.status == 200 and not c["done"]:
                        if c["ok"] is None:
                            c["ok"] = m
                        c["phone"].ack_2xx(m, c["id"])
                    elif m.status >= 300:
                        c["done"] = True
            if not busy:
                return

    def step(self, act: tuple) -> None:
        kind = act[0]
        live = [c for c in self.callers if not c["done"]]
        if kind == "call":
            n = len(self.callers)
            phone = Phone(self.acd.h, 8000 + n, "1001", "pw1")
            c = {"phone": phone, "id": f"r{n}", "ok": None, "done": False}
            self.callers.append(c)
            c["invite"] = phone.invite(act[1], c["id"])
        elif kind == "agent":
            if self.ringing:
                ext = sorted(self.ringing)[act[1] % len(self.ringing)]
                status = act[2]
                invite = self.ringing[ext]
                self.agents[ext].answer(invite, status,
                                        body=b"v=0\r\n" if status == 200 else b"")
                if status >= 200:
                    del self.ringing[ext]
        elif kind == "cancel":
            waiting = [c for c in live if c["ok"] is None]
            if waiting:
                cancel(waiting[act[1] % len(waiting)]["phone"],
                       waiting[act[1] % len(waiting)]["invite"])
        elif kind == "hangup":
            talking = [c for c in live if c["ok"] is not None]
            if talking:
                c = talking[act[1] % len(talking)]
                hang_up(c["phone"], c["id"], c["ok"])
                c["done"] = True
        elif kind == "advance":
            self.acd.h.advance(act[1])
        else:
            bridge, now = self.acd.bridge, self.acd.h.now
            state = self.acd.state(act[1])
            if state in (AgentState.BREAK, AgentState.NOT_RESPONDING):
                bridge.ready(act[1], now)
            elif state is AgentState.AVAILABLE:
                bridge.pause(act[1], "random", now)
        self.pump()
        self.check()

    def check(self) -> None:
        b2bua, bridge, router = self.acd.h.b2bua, self.acd.bridge, self.acd.bridge.router
        assert set(bridge.calls) <= set(b2bua.calls)
        seats: dict[str, int] = {}
        for call_id, call in b2bua.calls.items():
            if call.acd_queue is None:
                continue
            assert call_id in bridge.calls
            # The agent the B2BUA rings or connected is the one the router reserved.
            assert router.call_agent(call_id) == call.agent, (call_id, call.state)
            if call.agent is not None:
                seats[call.agent] = seats.get(call.agent, 0) + 1
        assert all(count == 1 for count in seats.values()), seats  # capacity 1 each


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(action, min_size=1, max_size=40))
def test_random_call_centre_keeps_router_and_b2bua_in_step(actions: list[tuple]) -> None:
    centre = CallCentre()
    for act in actions:
        centre.step(act)
    # Wind down: every agent ready, callers waiting get answered or hang up, talks end.
    for ext in AGENTS:
        if centre.acd.state(ext) in (AgentState.BREAK, AgentState.NOT_RESPONDING):
            centre.acd.bridge.ready(ext, centre.acd.h.now)
    centre.pump()
    for c in centre.callers:
        if not c["done"] and c["ok"] is None:
            cancel(c["phone"], c["invite"])
        elif not c["done"]:
            hang_up(c["phone"], c["id"], c["ok"])
        c["done"] = True
        centre.pump()
        centre.check()
    centre.acd.h.advance(40)
    centre.pump()
    acd = centre.acd
    assert acd.h.b2bua.calls == {} and acd.bridge.calls == {}
    assert acd.bridge.router.waiting_call_ids() == []
    for name in ("support", "spanish"):
        q = acd.queue(name)
        assert q["entered"] == q["answered"] + q["abandoned"], q
    assert all(acd.state(ext) is AgentState.AVAILABLE for ext in AGENTS)
    assert acd.bridge.counters["errors"] == 0
