"""Queue announcements in the ACD bridge, in memory: the real router, transaction layer, B2BUA and
bridge on a manual clock; the media plane is a stand-in that answers at once and writes down what
it was told to play (the real one is tested in tests/integration/test_queue_announcements.py).

What is checked here is the timing and the words: the greeting first, then every period the
caller's position among the waiting callers and the estimate from the queue's answered waits;
never a prompt once an agent answered; empty-queue refusals and departures with 480 after the
prompt's length; none of it counted as abandoned."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from vaultpbx.b2bua.acd import PROMPT_GRACE, AcdBridge
from vaultpbx.media.prompts import PromptLibrary
from vaultpbx.routing.announce import wait_prompts
from vaultpbx.sip.message import Response

from tests.b2bua.harness import Harness, Phone
from tests.b2bua.test_acd import offers

CONFIG = """
sip:
  domain: vaultpbx.test
  keepalive_probe_interval: 0
  ring_timeout: 60
media:
  music_on_hold: music.wav
extensions:
  "1001": {password: "pw1"}
  "1002": {password: "pw2"}
  "1003": {password: "pw3"}
  "2001": {password: "pa1"}
dialplan:
  - {match: '1\\d{3}|2\\d{3}', extension: '\\g<0>'}
  - {match: '700', queue: support}
  - {match: '701', queue: closed}
  - {match: '702', queue: leaving}
routing:
  skills: [english, french]
  agents:
    "2001": {skills: {english: 5}}
  queues:
    support:
      skills: {english: 1}
      ring_timeout: 30
      announce: {greeting: true, position: true, estimated_wait: true, period: 10}
    closed:
      skills: {french: 1}
      max_wait: 600
      announce: {join_empty: false}
    leaving:
      skills: {english: 1}
      max_wait: 600
      announce: {leave_when_empty: true}
"""
PASSWORDS = {"1001": "pw1", "1002": "pw2", "1003": "pw3", "2001": "pa1"}
PORTS = {"1001": 6001, "1002": 6002, "1003": 6003, "2001": 7001}
SDP = b"v=0\r\nours\r\n"


class MediaStandIn:
    """The B2BUA's MediaPort and the bridge's Announcer: answers after `run()` (the real port
    answers from a task, later than the message that asked), and records what is played."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.pending: list[Callable[[], None]] = []
        self.opening: Callable[[str], tuple[tuple[str, ...], bool]] | None = None
        self.started: dict[str, tuple[tuple[str, ...], bool]] = {}
        self.played: list[tuple[float, str, tuple[str, ...], bool]] = []

    def offer(self, call_id, leg, sdp, policy, other_policy, done) -> None:  # type: ignore[no-untyped-def]
        self.pending.append(lambda: done(SDP, 0, "", self.h.now))

    def answer(self, call_id, leg, sdp, done) -> None:  # type: ignore[no-untyped-def]
        self.pending.append(lambda: done(SDP, 0, "", self.h.now))

    def delete(self, call_id: str) -> None:
        pass

    def play_music(self, call_id, source, done) -> None:  # type: ignore[no-untyped-def]
        assert self.opening is not None
        self.started[call_id] = self.opening(call_id)  # as AsyncMediaPort: before the queue
        self.pending.append(lambda: done(SDP, SDP, 0, "", self.h.now))

    def play_prompts(self, call_id: str, prompts: tuple[str, ...], *,
                     resume: bool = True) -> None:
        self.played.append((self.h.now, call_id, prompts, resume))

    def run(self) -> None:
        while self.pending:
            self.pending.pop(0)()
            self.h._collect()


class Acd:
    def __init__(self) -> None:
        self.h = Harness(CONFIG)
        self.media = MediaStandIn(self.h)
        self.h.b2bua.media = self.media
        self.bridge = AcdBridge(self.h.b2bua, self.h.config.routing, self.h.now,
                                clock=lambda: self.h.now, flush=self.h._collect)
        self.h.b2bua.queue_router = self.bridge
        self.library = PromptLibrary.load()
        self.bridge.announcer = self.media
        self.bridge.prompt_seconds = self.library.seconds
        self.media.opening = self.bridge.opening_prompts
        self.phones = {ext: Phone(self.h, PORTS[ext], ext, PASSWORDS[ext]) for ext in PORTS}

    def call(self, caller: str, number: str, call_id: str) -> str:
        """The B2BUA's id of the new call (the caller's Call-ID is the a-leg's)."""
        before = set(self.h.b2bua.calls)
        self.phones[caller].invite(number, call_id)
        self.media.run()
        [new] = set(self.h.b2bua.calls) - before
        return new

    def advance(self, seconds: float) -> None:
        self.h.advance(seconds, step=0.05)
        self.media.run()

    def seconds(self, *names: str) -> float:
        return self.library.length(names)

    def heard(self, call: str) -> list[tuple[float, tuple[str, ...]]]:
        return [(at, prompts) for at, who, prompts, _ in self.media.played if who == call]


def finals(phone: Phone) -> list[int]:
    return [r.status for r in phone.responses() if isinstance(r, Response) and r.status >= 200]


def test_greeting_then_position_and_estimate_every_period_never_after_the_answer() -> None:
    acd = Acd()
    start = acd.h.now
    a = acd.call("1001", "700", "ann-a")
    assert acd.media.started[a] == (("queue-welcome",), True)  # the greeting, then music
    acd.advance(1.0)
    b = acd.call("1002", "700", "ann-b")
    first_due = start + acd.seconds("queue-welcome") + 10
    acd.advance(first_due - acd.h.now - 0.1)
    assert acd.media.played == []  # not before greeting + one period
    acd.advance(0.2)
    unknown = ("queue-wait-unknown", "queue-thank-you")
    [(at, words)] = acd.heard(a)
    assert at == pytest.approx(first_due, abs=0.06)
    assert words == ("queue-you-are-caller", "digit-1", *unknown)  # nothing answered yet
    acd.advance(1.1)
    assert acd.heard(b)[0][1] == ("queue-you-are-caller", "digit-2", *unknown)
    # The next one a period after this one ended (its own length counts, not only the period).
    acd.advance(acd.seconds(*words) + 10 - 1.0)
    assert len(acd.heard(a)) == 2 and acd.heard(a)[1][0] == pytest.approx(
        first_due + acd.seconds(*words) + 10, abs=0.06)
    # An agent comes: A rings (it is no longer waiting, so B is first in line), then answers.
    agent = acd.phones["2001"]
    assert agent.register().status == 200
    acd.bridge.login("2001", acd.h.now)
    acd.media.run()
    [invite] = offers(agent)
    agent.answer(invite, 180)  # a live phone rings (a silent one is pruned after 4 s)
    acd.advance(12)
    b_heard = acd.heard(b)
    assert b_heard[-1][1][:2] == ("queue-you-are-caller", "digit-1")
    a_count = len(acd.heard(a))
    agent.answer(invite, 200, body=b"v=0\r\nagent\r\n")
    acd.media.run()
    answered_at = acd.h.now
    a_waited = answered_at - start
    acd.advance(30)
    assert len(acd.heard(a)) == a_count  # never a prompt over the agent's voice
    # B's estimate now comes from A's answered wait, minus what B has waited.
    at, words = acd.heard(b)[-1]
    assert at > answered_at
    b_waited = at - (start + 1.0)
    assert words == ("queue-you-are-caller", "digit-1",
                     *wait_prompts(max(0.0, a_waited - b_waited)), "queue-thank-you")


def test_a_refused_caller_hears_the_prompt_then_480_at_its_end() -> None:
    acd = Acd()
    caller = acd.phones["1001"]
    call = acd.call("1001", "701", "closed-1")
    assert acd.media.started[call] == (("queue-no-one-available",), False)  # no music after
    assert 183 in [r.status for r in caller.responses()]
    length = acd.seconds("queue-no-one-available")
    acd.advance(length - 0.1)
    assert finals(caller) == [] and call in acd.h.b2bua.calls
    acd.advance(PROMPT_GRACE + 0.2)
    assert finals(caller) == [480]  # promptly: max_wait is 600 s
    assert acd.bridge.counters["refused_empty"] == 1
    assert acd.bridge.stats(acd.h.now)["queues"]["closed"]["entered"] == 0
    assert acd.media.played == []  # the prompt went out with the answer, not again


def test_a_refused_caller_that_hangs_up_during_the_prompt_is_not_ended_twice() -> None:
    acd = Acd()
    call = acd.call("1001", "701", "closed-2")
    acd.h.b2bua.end_call_by_id(call, "caller_gone", acd.h.now)
    acd.media.run()
    acd.advance(acd.seconds("queue-no-one-available") + 1)
    assert acd.h.b2bua.calls == {}
    assert acd.bridge._leaving == {} and acd.bridge.counters["errors"] == 0


def test_callers_leave_when_the_last_agent_signs_out_not_before() -> None:
    acd = Acd()
    acd.bridge.login("2001", acd.h.now)
    acd.bridge.pause("2001", "lunch", acd.h.now)  # signed in, on a break: the queue is staffed
    caller = acd.phones["1001"]
    call = acd.call("1001", "702", "leave-1")
    assert acd.media.started[call] == ((), True)  # no greeting configured: music
    acd.advance(5)
    assert finals(caller) == [] and acd.media.played == []
    acd.bridge.logout("2001", acd.h.now)
    assert acd.heard(call) == [(acd.h.now, ("queue-no-one-available",))]
    assert acd.media.played[-1][3] is False  # the music does not come back after it
    acd.advance(acd.seconds("queue-no-one-available") + PROMPT_GRACE + 0.1)
    assert finals(caller) == [480]
    stats = acd.bridge.stats(acd.h.now)["queues"]["leaving"]
    assert stats["abandoned"] == 0 and stats["overflowed"] == 0 and stats["waiting"] == 0
    assert acd.bridge.counters["left_empty"] == 1
    events = [e.event for e in acd.bridge.queue_events if e.call_id == call]
    assert events == ["ENTERQUEUE", "EXITEMPTY"]


def test_an_agent_signing_out_of_a_staffed_queue_sends_nobody_away() -> None:
    acd = Acd()
    acd.bridge.login("2001", acd.h.now)
    acd.bridge.pause("2001", "lunch", acd.h.now)
    acd.call("1001", "702", "leave-2")
    acd.call("1002", "700", "stay-2")  # support: leave_when_empty is off
    acd.bridge.logout("2001", acd.h.now)
    acd.advance(6)
    assert finals(acd.phones["1002"]) == []
    assert acd.bridge.counters["left_empty"] == 1  # only the `leaving` caller
