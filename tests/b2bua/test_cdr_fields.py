"""Reporting fields of call records and the queue log, through the real ACD path: the router,
transaction layer and B2BUA in memory with a manual clock, phones that register, ring, answer,
hold and hang up. Every duration is checked against the seconds the test moved the clock.
(The store's UTC conversion and the CSV export are tested in tests/runtime/test_cdr_store.py.)"""

from __future__ import annotations

import pytest
from vaultpbx.b2bua.acd import QueueEvent
from vaultpbx.b2bua.call import CallRecord
from vaultpbx.routing import AgentState, AgentStateChanged
from vaultpbx.sip.message import Request

from tests.b2bua.harness import Phone, requests
from tests.b2bua.test_acd import Acd, answer, cancel, hang_up, offers


def sdp(version: int, address: str, direction: str = "") -> bytes:
    text = (f"v=0\r\no=agent 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {address}\r\n"
            f"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n" + (f"a={direction}\r\n" if direction else ""))
    return text.encode()


HOLD = sdp(2, "127.0.0.1", "sendonly")
RESUME = sdp(3, "127.0.0.1", "sendrecv")
OLD_HOLD = sdp(4, "0.0.0.0")  # RFC 2543 hold: no direction attribute


def record(acd: Acd) -> CallRecord:
    [rec] = acd.h.b2bua.finished_records
    return rec


def events(acd: Acd) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(event, queue, agent, data1..data3) of every call's queue event so far."""
    return [(e.event, e.queue, e.agent, (e.data1, e.data2, e.data3))
            for e in acd.bridge.queue_events if e.call_id != "NONE"]


def agent_events(acd: Acd) -> list[tuple[float, str, str, str]]:
    return [(e.at, e.agent, e.event, e.data1) for e in acd.bridge.queue_events
            if e.call_id == "NONE"]


def at(acd: Acd, name: str) -> QueueEvent:
    [event] = [e for e in acd.bridge.queue_events if e.event == name]
    return event


def agent_reinvite(agent: Phone, ring: Request, body: bytes) -> None:
    """The agent's phone sends a re-INVITE in the dialog of the offer it answered."""
    target = "sip:vaultpbx@127.0.0.1:5060"
    agent.in_dialog("INVITE", target, ring.from_.uri, ring.from_.tag or "", ring.call_id,
                    body=body)


def complete_reinvite(acd: Acd, agent: Phone, caller: Phone, call_id: str) -> None:
    """The caller's phone accepts the relayed re-INVITE; the agent gets the 200 and ACKs."""
    [relayed] = requests(caller.messages(), "INVITE")
    caller.answer(relayed, 200, body=b"v=0\r\nok\r\n")
    ok = [r for r in agent.responses() if r.cseq.method == "INVITE" and r.status == 200]
    assert ok, "the re-INVITE was not answered"


def test_answered_queue_call_has_wait_agent_talk_hold_and_wrap_up() -> None:
    acd = Acd()
    agent = acd.agent("2001")
    caller = acd.phones["1001"]
    entered = acd.h.now
    caller.invite("700", "rep1")
    [ring] = offers(agent)
    acd.h.advance(3)
    answer(acd, agent, ring, caller, "rep1")  # answered 3 s after entering the queue
    answered = acd.h.now
    acd.h.advance(10)
    agent_reinvite(agent, ring, HOLD)  # the agent puts the caller on hold...
    complete_reinvite(acd, agent, caller, "rep1")
    acd.h.advance(5)
    agent_reinvite(agent, ring, RESUME)  # ...for 5 s
    complete_reinvite(acd, agent, caller, "rep1")
    acd.h.advance(7)
    agent_reinvite(agent, ring, OLD_HOLD)  # RFC 2543 hold, until the caller hangs up 8 s on
    complete_reinvite(acd, agent, caller, "rep1")
    acd.h.advance(8)
    hang_up(caller, "rep1", acd.ok)  # type: ignore[attr-defined]
    ended = acd.h.now
    rec = record(acd)
    assert (rec.queue, rec.agent, rec.disposition, rec.ended_by) == (
        "support", "2001", "answered", "caller")
    assert rec.queue_entered == pytest.approx(entered)
    assert rec.answered == pytest.approx(answered) and answered - entered == pytest.approx(3)
    assert rec.ended - rec.answered == pytest.approx(30)  # talk, hold included
    assert rec.hold_seconds == pytest.approx(5 + 8)
    assert rec.wrap_up_seconds == 20  # the support queue's after-call work
    assert (rec.transfers, rec.consent) == ("[]", "not_asked")
    # The recorded wrap-up is the time the router keeps the agent in wrap-up.
    acd.events.clear()
    acd.h.advance(19.75)
    assert acd.state("2001") is AgentState.WRAP_UP
    acd.h.advance(0.5)
    [freed] = [e for e in acd.events if isinstance(e, AgentStateChanged)]
    assert (freed.old, freed.new) == (AgentState.WRAP_UP, AgentState.AVAILABLE)
    assert freed.at - ended == pytest.approx(rec.wrap_up_seconds, abs=0.25)
    # The queue log: entered (first in line), connected after 3 s having rung 3 s, completed
    # by the caller after 3 s waiting and 30 s talking.
    assert events(acd) == [
        ("ENTERQUEUE", "support", "NONE", ("", "", "1")),
        ("CONNECT", "support", "2001", ("3", ring.call_id, "3")),
        ("COMPLETECALLER", "support", "2001", ("3", "30", "1")),
    ]
    assert at(acd, "CONNECT").at == pytest.approx(answered)
    assert at(acd, "COMPLETECALLER").at == pytest.approx(ended)


def test_the_held_callers_own_refresh_does_not_end_the_agents_hold() -> None:
    acd = Acd()
    agent = acd.agent("2001")
    caller = acd.phones["1001"]
    caller.invite("700", "rep11")
    [ring] = offers(agent)
    answer(acd, agent, ring, caller, "rep11")
    ok = acd.ok  # type: ignore[attr-defined]
    acd.h.advance(2)
    agent_reinvite(agent, ring, HOLD)
    complete_reinvite(acd, agent, caller, "rep11")
    acd.h.advance(3)
    # The caller's phone refreshes the session offering sendrecv, as phones do.
    caller.in_dialog("INVITE", ok.values("contact")[0].strip("<>"), ok.to.uri,
                     ok.to.tag or "", "rep11", body=sdp(9, "127.0.0.1", "sendrecv"))
    [relayed] = requests(agent.messages(), "INVITE")
    agent.answer(relayed, 200, body=sdp(5, "127.0.0.1", "sendonly"))
    assert [r.status for r in caller.responses() if r.cseq.method == "INVITE"][-1] == 200
    acd.h.advance(4)
    agent_reinvite(agent, ring, RESUME)  # only the agent's resume ends it: 7 s on hold
    complete_reinvite(acd, agent, caller, "rep11")
    acd.h.advance(1)
    hang_up(caller, "rep11", ok)
    assert record(acd).hold_seconds == pytest.approx(7)


def test_the_agent_hanging_up_is_completeagent() -> None:
    acd = Acd()
    agent = acd.agent("2002")
    caller = acd.phones["1001"]
    caller.invite("701", "rep2")
    [ring] = offers(agent)
    answer(acd, agent, ring, caller, "rep2")
    acd.h.advance(12)
    target = "sip:vaultpbx@127.0.0.1:5060"
    agent.in_dialog("BYE", target, ring.from_.uri, ring.from_.tag or "", ring.call_id)
    rec = record(acd)
    assert (rec.ended_by, rec.hold_seconds, rec.wrap_up_seconds) == ("callee", 0.0, 5)
    assert [e[0] for e in events(acd)] == ["ENTERQUEUE", "CONNECT", "COMPLETEAGENT"]
    assert at(acd, "COMPLETEAGENT").data2 == "12"


def test_ring_no_answer_then_another_agent() -> None:
    acd = Acd()
    first = acd.agent("2001")
    acd.h.advance(1)
    second = acd.agent("2003")
    caller = acd.phones["1001"]
    caller.invite("700", "rep3")
    [ring] = offers(first)
    first.answer(ring, 180)
    acd.h.advance(10.5)  # the queue's ring timeout is 10 s
    first.answer(ring, 487)
    [next_ring] = offers(second)
    acd.h.advance(2)
    answer(acd, second, next_ring, caller, "rep3")
    hang_up(caller, "rep3", acd.ok)  # type: ignore[attr-defined]
    rec = record(acd)
    assert rec.agent == "2003"
    assert rec.answered - rec.queue_entered == pytest.approx(12.5, abs=0.25)
    noanswer = at(acd, "RINGNOANSWER")
    assert (noanswer.agent, noanswer.queue) == ("2001", "support")
    assert int(noanswer.data1) == pytest.approx(10_000, abs=250)  # rang 10 s, in ms
    assert [e[0] for e in events(acd)] == [
        "ENTERQUEUE", "RINGNOANSWER", "CONNECT", "COMPLETECALLER"]
    assert at(acd, "CONNECT").agent == "2003"


def test_a_rejected_offer_is_a_ring_no_answer_at_once() -> None:
    acd = Acd()
    first = acd.agent("2001")
    caller = acd.phones["1001"]
    caller.invite("700", "rep4")
    [ring] = offers(first)
    acd.h.advance(2)
    first.answer(ring, 486)
    noanswer = at(acd, "RINGNOANSWER")
    assert noanswer.agent == "2001" and int(noanswer.data1) == pytest.approx(2000, abs=250)


def test_caller_hang_up_while_waiting_is_abandoned() -> None:
    acd = Acd()
    caller = acd.phones["1001"]
    acd.phones["1002"].invite("700", "ahead")  # someone is already waiting
    invite = caller.invite("700", "rep5")
    acd.h.advance(7)
    cancel(caller, invite)
    [rec] = [r for r in acd.h.b2bua.finished_records]
    assert (rec.disposition, rec.queue, rec.agent, rec.ended_by) == (
        "abandoned", "support", "", "")
    assert rec.answered is None and rec.ended - rec.queue_entered == pytest.approx(7)
    assert rec.wrap_up_seconds is None
    abandon = at(acd, "ABANDON")
    assert (abandon.queue, abandon.agent, abandon.data2, abandon.data3) == (
        "support", "NONE", "2", "7")  # second in line, waited 7 s


def test_caller_hang_up_while_an_agent_rings_is_ringcanceled_and_abandoned() -> None:
    acd = Acd()
    agent = acd.agent("2001")
    caller = acd.phones["1001"]
    invite = caller.invite("700", "rep6")
    [ring] = offers(agent)
    agent.answer(ring, 180)
    acd.h.advance(4)
    cancel(caller, invite)
    assert [e[0] for e in events(acd)] == ["ENTERQUEUE", "RINGCANCELED", "ABANDON"]
    assert at(acd, "RINGCANCELED").agent == "2001"
    assert int(at(acd, "RINGCANCELED").data1) == pytest.approx(4000, abs=250)
    assert record(acd).disposition == "abandoned"


def test_max_wait_without_overflow_is_exit_with_timeout() -> None:
    acd = Acd()
    acd.phones["1001"].invite("703", "rep7")  # dead_end: max_wait 30, nowhere to go
    acd.h.advance(31)
    rec = record(acd)
    assert (rec.disposition, rec.queue) == ("exit_timeout", "dead_end")
    exit_event = at(acd, "EXITWITHTIMEOUT")
    assert (exit_event.queue, exit_event.data2, exit_event.data3) == ("dead_end", "1", "30")


def test_overflow_into_another_queue_leaves_one_and_enters_the_other() -> None:
    acd = Acd()
    acd.phones["1001"].invite("705", "rep8")  # first_line: max_wait 20, then support
    acd.h.advance(20.5)
    assert [(e[0], e[1]) for e in events(acd)] == [
        ("ENTERQUEUE", "first_line"), ("EXITWITHTIMEOUT", "first_line"),
        ("ENTERQUEUE", "support")]
    agent = acd.agent("2001")
    [ring] = offers(agent)
    caller = acd.phones["1001"]
    answer(acd, agent, ring, caller, "rep8")
    hang_up(caller, "rep8", acd.ok)  # type: ignore[attr-defined]
    rec = record(acd)
    # The record names the queue the caller first entered, and the whole wait.
    assert rec.queue == "first_line" and rec.agent == "2001"
    assert rec.answered - rec.queue_entered == pytest.approx(20.5, abs=0.3)
    assert at(acd, "CONNECT").queue == "support"


def test_agent_sessions_and_pauses_are_in_the_queue_log() -> None:
    acd = Acd()
    start = acd.h.now
    acd.agent("2001")  # login
    acd.h.advance(5)
    acd.bridge.pause("2001", "lunch", acd.h.now)
    acd.h.advance(30)
    acd.bridge.pause("2001", "training", acd.h.now)  # a new reason is a new PAUSE
    acd.bridge.ready("2001", acd.h.now)
    acd.bridge.ready("2001", acd.h.now)  # nothing changes: nothing logged
    caller = acd.phones["1001"]
    caller.invite("700", "rep10")
    [ring] = offers(acd.phones["2001"])
    acd.phones["2001"].answer(ring, 180)  # a live phone rings (a silent one is pruned)
    acd.h.advance(10.5)  # rings out: the router stops offering (not-responding)
    acd.phones["2001"].answer(ring, 487)
    acd.bridge.logout("2001", acd.h.now)
    assert agent_events(acd) == [
        (start, "2001", "AGENTLOGIN", ""), (start + 5, "2001", "PAUSE", "lunch"),
        (start + 35, "2001", "PAUSE", "training"), (start + 35, "2001", "UNPAUSE", ""),
        (start + 45, "2001", "PAUSE", "not-responding"),
        (start + 45.5, "2001", "AGENTLOGOFF", "")]
    assert {e.queue for e in acd.bridge.queue_events if e.call_id == "NONE"} == {"NONE"}


def test_a_direct_call_has_no_queue_fields() -> None:
    acd = Acd()
    callee = acd.phones["1002"]
    assert callee.register().status == 200
    caller = acd.phones["1001"]
    caller.invite("1002", "rep9")
    [ring] = requests(callee.messages(), "INVITE")
    callee.answer(ring, 486)
    rec = record(acd)
    assert (rec.queue, rec.queue_entered, rec.agent, rec.disposition) == ("", None, "", "busy")
    assert events(acd) == []


HUNT = """
sip:
  domain: vaultpbx.test
  keepalive_probe_interval: 0
extensions:
  "1001": {password: "pw1"}
  "2001": {password: "pa1"}
  "2002": {password: "pa2"}
dialplan:
  - {match: '709', queue: sales}
queues:
  sales: {members: ["2001", "2002"], ring_timeout: 5}
"""


def test_a_hunt_group_call_has_queue_wait_and_the_member_who_answered() -> None:
    from tests.b2bua.harness import Harness

    h = Harness(HUNT)
    first, second = Phone(h, 7001, "2001", "pa1"), Phone(h, 7002, "2002", "pa2")
    caller = Phone(h, 6001, "1001", "pw1")
    assert first.register().status == 200 and second.register().status == 200
    entered = h.now
    caller.invite("709", "hunt1")
    [ring] = requests(first.messages(), "INVITE")
    first.answer(ring, 180)
    h.advance(5.5)  # 2001 rings out, 2002 rings
    first.answer(ring, 487)
    ring2 = requests(second.messages(), "INVITE")[0]  # (and its retransmission)
    h.advance(1)
    second.answer(ring2, 200, body=b"v=0\r\n")
    ok = [r for r in caller.responses() if r.status == 200 and r.cseq.method == "INVITE"][-1]
    caller.ack_2xx(ok, "hunt1")
    h.advance(4)
    hang_up(caller, "hunt1", ok)
    [rec] = h.b2bua.finished_records
    assert (rec.queue, rec.agent, rec.disposition, rec.ended_by) == (
        "sales", "2002", "answered", "caller")
    assert rec.queue_entered == pytest.approx(entered)
    assert rec.answered - rec.queue_entered == pytest.approx(6.5)
    assert rec.ended - rec.answered == pytest.approx(4)
    assert rec.wrap_up_seconds is None  # hunt groups have no after-call work
