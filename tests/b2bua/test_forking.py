"""Forking that ends promptly (RFC 3261 §16.7) and contacts pruned by OPTIONS qualify, on a
manual clock through the real transaction layer and B2BUA (issue 12)."""

from __future__ import annotations

import pytest
from vaultpbx.b2bua.b2bua import final_rank
from vaultpbx.sip.endpoint import Flow
from vaultpbx.sip.message import Request, Response

from tests.b2bua.harness import Harness, Phone, requests

CONFIG = """
sip:
  domain: vaultpbx.test
  keepalive_probe_interval: 0
  ring_timeout: 60
  fork_response_timeout: 4
  qualify: {interval: 30, max_failures: 2}
extensions:
  "1001": {password: "pw1"}
  "1002": {password: "pw2"}
dialplan:
  - {match: '1\\d{3}', extension: '\\g<0>'}
"""


def two_devices(config: str = CONFIG) -> tuple[Harness, Phone, Phone, Phone]:
    """1001 calls 1002, registered twice: a desk phone (6002) and a softphone (6012)."""
    h = Harness(config)
    caller = Phone(h, 6001, "1001", "pw1")
    desk = Phone(h, 6002, "1002", "pw2")
    soft = Phone(h, 6012, "1002", "pw2")
    assert desk.register().status == 200 and soft.register().status == 200
    return h, caller, desk, soft


def finals(phone: Phone) -> list[Response]:
    return [r for r in phone.responses() if r.status >= 200 and r.cseq.method == "INVITE"]


def test_a_busy_device_and_a_vanished_one_give_busy_after_the_silence_timeout() -> None:
    h, caller, desk, soft = two_devices()
    caller.invite("1002", "fork-busy")
    [desk_invite] = requests(desk.messages(), "INVITE")
    assert requests(soft.messages(), "INVITE")  # the softphone has vanished: it never answers
    desk.answer(desk_invite, 486)
    assert finals(caller) == []  # the other branch may still answer
    h.advance(3.5)
    assert finals(caller) == []
    h.advance(1.0)  # 4 s of silence from the softphone: its branch is pruned
    final = finals(caller)[0]  # (then retransmitted until the caller's ACK)
    assert final.status == 486  # the device's answer beats our own 408 (§16.7.6)
    assert h.b2bua.calls == {}
    assert h.b2bua.finished_records[-1].cause == "busy"
    assert h.b2bua.counters()["branches_pruned"] == 1


def test_a_transport_error_prunes_only_that_branch_at_once() -> None:
    h, caller, desk, soft = two_devices(CONFIG.replace("fork_response_timeout: 4",
                                                       "fork_response_timeout: 0"))
    caller.invite("1002", "fork-refused")
    [desk_invite] = requests(desk.messages(), "INVITE")
    desk.answer(desk_invite, 180)
    # The softphone's connection cannot be opened (what io reports for a refused TCP connect).
    assert h.layer.flow_failed(Flow("udp", "127.0.0.1", 6012), h.now) == 1
    h._collect()
    assert finals(caller) == [] and len(h.b2bua.calls) == 1  # the desk phone still rings
    desk.answer(desk_invite, 486)
    assert finals(caller)[0].status == 486  # at once, no timer involved


def test_without_the_silence_timeout_the_caller_waits_for_timer_b() -> None:
    h, caller, desk, soft = two_devices(CONFIG.replace("fork_response_timeout: 4",
                                                       "fork_response_timeout: 0"))
    caller.invite("1002", "fork-slow")
    [desk_invite] = requests(desk.messages(), "INVITE")
    desk.answer(desk_invite, 486)
    h.advance(20)
    assert finals(caller) == []
    h.advance(13)  # Timer B (64*T1 = 32 s) ends the silent branch: still the device's 486
    assert {f.status for f in finals(caller)} == {486}


def test_a_ringing_device_is_not_pruned() -> None:
    h, caller, desk, soft = two_devices()
    caller.invite("1002", "fork-ring")
    [desk_invite] = requests(desk.messages(), "INVITE")
    [soft_invite] = requests(soft.messages(), "INVITE")
    desk.answer(desk_invite, 180)
    soft.answer(soft_invite, 100)
    h.advance(10)
    assert finals(caller) == [] and len(h.b2bua.calls) == 1
    soft.answer(soft_invite, 200, body=b"v=0\r\n")
    assert [f.status for f in finals(caller)] == [200]
    assert requests(desk.messages(), "CANCEL")  # the other branch is cancelled (§16.7 step 10)


def test_a_6xx_from_one_device_ends_the_call_at_once_and_cancels_the_others() -> None:
    h, caller, desk, soft = two_devices()
    caller.invite("1002", "fork-decline")
    [desk_invite] = requests(desk.messages(), "INVITE")
    [soft_invite] = requests(soft.messages(), "INVITE")
    desk.answer(desk_invite, 180)
    soft.answer(soft_invite, 603)
    assert {f.status for f in finals(caller)} == {603}
    [cancel] = requests(desk.messages(), "CANCEL")
    assert cancel.call_id == desk_invite.call_id
    assert h.b2bua.calls == {} and h.b2bua.finished_records[-1].cause == "declined"


def test_a_pruned_device_that_wakes_up_is_cancelled_or_hung_up() -> None:
    h, caller, desk, soft = two_devices()
    caller.invite("1002", "fork-late")
    [desk_invite] = requests(desk.messages(), "INVITE")
    [soft_invite] = requests(soft.messages(), "INVITE")
    desk.answer(desk_invite, 180)
    h.advance(4.5)  # the softphone's branch is pruned; the desk phone still rings
    assert finals(caller) == [] and len(h.b2bua.calls) == 1
    soft.answer(soft_invite, 180)  # too late: it gets a CANCEL, the caller hears nothing of it
    [cancel] = requests(soft.messages(), "CANCEL")
    assert cancel.call_id == soft_invite.call_id
    desk.answer(desk_invite, 200, body=b"v=0\r\n")
    assert [f.status for f in finals(caller)] == [200]


def test_the_best_answer_goes_to_the_caller_when_the_last_branch_ends() -> None:
    h, caller, desk, soft = two_devices()
    caller.invite("1002", "fork-best")
    [desk_invite] = requests(desk.messages(), "INVITE")
    [soft_invite] = requests(soft.messages(), "INVITE")
    desk.answer(desk_invite, 503)
    soft.answer(soft_invite, 480)
    assert {f.status for f in finals(caller)} == {480}  # lowest class wins over 5xx


@pytest.mark.parametrize(("first", "second", "best"), [
    ((503, False), (486, False), 486),
    ((486, False), (408, True), 486),
    ((408, True), (486, False), 486),
    ((486, False), (407, False), 407),
    ((486, False), (603, False), 603),
    ((302, False), (486, False), 302),
    ((486, False), (404, False), 486),  # a tie keeps the earlier answer
])
def test_final_rank_follows_rfc3261_16_7_6(first: tuple[int, bool], second: tuple[int, bool],
                                           best: int) -> None:
    ranked = sorted([first, second], key=lambda f: final_rank(f[0], local=f[1]))
    assert ranked[0][0] == best


# -- qualify ----------------------------------------------------------------------------------
def qualify(h: Harness) -> None:
    """What the shell's housekeeping does each second: send the probes that are due."""
    h.b2bua.qualify(h.now)
    h._collect()


def options_to(phone: Phone) -> list[Request]:
    return requests(phone.messages(), "OPTIONS")


def test_qualify_removes_a_contact_that_stopped_answering_and_keeps_the_live_one() -> None:
    h, caller, desk, soft = two_devices()
    qualify(h)  # the first call only starts the clock: nobody is probed at once
    assert options_to(desk) == [] and options_to(soft) == []
    for round_ in range(2):
        h.advance(30)
        soft.messages()  # the last round's retransmissions
        qualify(h)
        [probe] = options_to(desk)
        desk.answer(probe, 200)
        assert len(options_to(soft)) == 1  # the softphone stays silent
        h.advance(33)  # Timer F (64*T1) ends the silent probe
        contacts = [b.contact for b in h.b2bua.location.lookup("1002", h.now)]
        if round_ == 0:
            assert len(contacts) == 2  # one unanswered probe is not enough
    assert [b.contact for b in h.b2bua.location.lookup("1002", h.now)] == [
        "sip:1002@127.0.0.1:6002"]
    assert h.b2bua.counters()["contacts_pruned"] == 1
    assert h.b2bua.registrar.pruned == [("1002", "sip:1002@127.0.0.1:6012")]
    # The next call rings the desk phone alone.
    caller.invite("1002", "after-qualify")
    assert requests(desk.messages(), "INVITE") and requests(soft.messages(), "INVITE") == []


def test_qualify_any_answer_or_a_new_register_proves_the_contact_alive() -> None:
    h, caller, desk, soft = two_devices()
    qualify(h)
    for _ in range(3):
        h.advance(30)
        desk.messages()
        qualify(h)
        options_to(desk)  # the desk phone never answers, but re-registers between probes
        [probe] = options_to(soft)
        soft.answer(probe, 405)  # "Method Not Allowed" is an answer: the device is there
        h.advance(33)
        assert desk.register().status == 200
    assert len(h.b2bua.location.lookup("1002", h.now)) == 2
    assert h.b2bua.counters()["contacts_pruned"] == 0
