"""B2BUA behaviour in memory: registrar, dialplan, queues, in-dialog pass-through, timers."""

from __future__ import annotations

from vaultpbx.sip.message import Request, Response

from tests.b2bua.harness import Harness, Phone, requests

CONFIG = """
sip:
  domain: vaultpbx.test
  keepalive_probe_interval: 0
  session_expires: 90
  register_min_expires: 60
  ring_timeout: 30
extensions:
  "1001": {password: "pw1"}
  "1002": {password: "pw2"}
  "2001": {password: "pa1"}
  "2002": {password: "pa2"}
trunks:
  carrier: {target: "sip:127.0.0.1:5080", max_calls: 1, username: "acct", password: "tpw"}
queues:
  support: {members: ["2001", "2002"], ring_timeout: 10}
dialplan:
  - {match: '1\\d{3}|2\\d{3}', extension: '\\g<0>'}
  - {match: '700', queue: support}
  - {match: '0(\\d+)', trunk: carrier, number: '\\1'}
"""


def setup() -> tuple[Harness, Phone, Phone]:
    h = Harness(CONFIG)
    caller = Phone(h, 6001, "1001", "pw1")
    callee = Phone(h, 6002, "1002", "pw2")
    return h, caller, callee


# -- registrar ------------------------------------------------------------------------------
def test_register_challenge_then_several_contacts_and_expiry() -> None:
    h, phone, _ = setup()
    assert phone.register(expires=120).status == 200
    desk = Phone(h, 6011, "1001", "pw1")
    ok = desk.register(expires=600)
    assert ok.status == 200
    assert len(ok.values("contact")) == 2  # both bindings listed with their expiry
    assert len(h.b2bua.location.lookup("1001", h.now)) == 2
    h.advance(121)
    assert [b.contact for b in h.b2bua.location.lookup("1001", h.now)] == [
        "sip:1001@127.0.0.1:6011"]


def test_register_rules() -> None:
    h, phone, _ = setup()
    assert phone.register(expires=10).status == 423  # below register_min_expires
    wrong = Phone(h, 6003, "1001", "nope")
    assert wrong.register().status == 401  # re-challenged, like an unknown user
    ghost = Phone(h, 6004, "9999", "x")
    assert ghost.register().status == 401
    assert phone.register().status == 200
    unregister = phone.register(expires=0)
    assert unregister.status == 200 and not unregister.values("contact")


def test_wildcard_unregister_needs_expires_zero() -> None:
    h, phone, _ = setup()
    phone.register()
    uri = "sip:vaultpbx.test"
    aor = "sip:1001@vaultpbx.test"
    data = phone.request("REGISTER", uri, to=aor, call_id="wild",
                         extra="Expires: 0\r\n").replace(
        b"Contact: <sip:1001@127.0.0.1:6001>", b"Contact: *")
    phone.send(data)
    assert phone.responses()[-1].status == 401  # still authenticated first


# -- calls ------------------------------------------------------------------------------------
def establish(h: Harness, caller: Phone, callee: Phone, call_id: str = "c1"
              ) -> tuple[Request, Response]:
    callee.register()
    caller.invite("1002", call_id)
    offered = requests(callee.messages(), "INVITE")
    assert len(offered) == 1
    b_invite = offered[0]
    callee.answer(b_invite, 180)
    callee.answer(b_invite, 200, body=b"v=0\r\nanswer\r\n")
    answers = caller.responses()
    assert [r.status for r in answers][-2:] == [180, 200]
    ok = answers[-1]
    assert ok.body == b"v=0\r\nanswer\r\n"  # SDP passes through unchanged (for now)
    caller.ack_2xx(ok, call_id)
    assert len(h.b2bua.calls) == 1
    return b_invite, ok


def test_call_between_extensions_then_callee_hangs_up() -> None:
    h, caller, callee = setup()
    b_invite, ok = establish(h, caller, callee)
    assert b_invite.call_id != "c1"  # the legs share nothing
    assert b_invite.from_.tag != caller.tag
    acks = requests(callee.messages(), "ACK")
    assert len(acks) == 1
    # BYE from the callee ends both legs.
    callee.in_dialog("BYE", "sip:vaultpbx@127.0.0.1:5060", b_invite.from_.uri,
                     b_invite.from_.tag or "", b_invite.call_id)
    assert [r.status for r in callee.responses()] == [200]
    byes = requests(caller.messages(), "BYE")
    assert len(byes) == 1 and byes[0].call_id == "c1"
    assert h.b2bua.calls == {}
    record = h.b2bua.finished_records[-1]
    assert record.cause == "normal_clearing" and record.answered is not None


def test_reinvite_and_update_pass_through_with_new_sdp() -> None:
    h, caller, callee = setup()
    b_invite, ok = establish(h, caller, callee)
    callee.messages()
    target = ok.values("contact")[0].strip("<>")
    caller.in_dialog("INVITE", target, "sip:1002@vaultpbx.test", ok.to.tag or "", "c1",
                     body=b"v=0\r\nhold\r\n")
    relayed = requests(callee.messages(), "INVITE")
    assert relayed and relayed[0].body == b"v=0\r\nhold\r\n"
    assert relayed[0].call_id == b_invite.call_id
    callee.answer(relayed[0], 200, body=b"v=0\r\nheld\r\n")
    answer = [r for r in caller.responses() if r.cseq.method == "INVITE"][-1]
    assert answer.status == 200 and answer.body == b"v=0\r\nheld\r\n"
    caller.in_dialog("UPDATE", target, "sip:1002@vaultpbx.test", ok.to.tag or "", "c1",
                     body=b"v=0\r\nupd\r\n")
    relayed_update = requests(callee.messages(), "UPDATE")
    assert relayed_update[0].body == b"v=0\r\nupd\r\n"
    callee.answer(relayed_update[0], 200)
    assert [r.status for r in caller.responses() if r.cseq.method == "UPDATE"] == [200]


def test_busy_and_not_found_map_to_the_caller() -> None:
    h, caller, callee = setup()
    callee.register()
    caller.invite("1002", "busy")
    b_invite = requests(callee.messages(), "INVITE")[0]
    callee.answer(b_invite, 486)
    assert caller.responses()[-1].status == 486
    assert h.b2bua.finished_records[-1].cause == "busy"
    caller.invite("9999", "nowhere")
    assert caller.responses()[-1].status == 404
    caller.invite("1003", "unregistered")  # matches the dialplan, no such extension
    assert caller.responses()[-1].status == 404


def test_cancel_before_answer_cancels_the_callee() -> None:
    h, caller, callee = setup()
    callee.register()
    invite = caller.invite("1002", "cx")
    b_invite = requests(callee.messages(), "INVITE")[0]
    callee.answer(b_invite, 180)
    caller.responses()
    cancel = invite.split(b"\r\n\r\n")[0].replace(b"INVITE sip", b"CANCEL sip", 1)
    cancel = cancel.replace(b" INVITE\r\n", b" CANCEL\r\n").split(b"Content-Type")[0]
    caller.send(cancel.rstrip(b"\r\n") + b"\r\nContent-Length: 0\r\n\r\n")
    statuses = [r.status for r in caller.responses()]
    assert 200 in statuses and 487 in statuses
    cancels = requests(callee.messages(), "CANCEL")
    assert len(cancels) == 1 and cancels[0].via.branch == b_invite.via.branch
    assert h.b2bua.finished_records[-1].cause == "cancelled"


def test_ring_timeout_gives_480() -> None:
    h, caller, callee = setup()
    callee.register()
    caller.invite("1002", "slow")
    b_invite = requests(callee.messages(), "INVITE")[0]
    callee.answer(b_invite, 180)
    h.advance(31)
    assert caller.responses()[-1].status == 480
    # One CANCEL transaction (retransmitted over UDP while unanswered).
    assert len({c.via.branch for c in requests(callee.messages(), "CANCEL")}) == 1
    assert h.b2bua.finished_records[-1].cause == "no_answer"


def test_queue_hunts_members_in_order() -> None:
    h, caller, _ = setup()
    first = Phone(h, 7001, "2001", "pa1")
    second = Phone(h, 7002, "2002", "pa2")
    first.register()
    second.register()
    caller.invite("700", "q1")
    ring_first = requests(first.messages(), "INVITE")
    assert ring_first and not requests(second.messages(), "INVITE")
    first.answer(ring_first[0], 180)
    h.advance(10.5)  # the member's ring timeout: CANCEL it and ring the next
    assert len({c.via.branch for c in requests(first.messages(), "CANCEL")}) == 1
    ring_second = requests(second.messages(), "INVITE")
    assert len({r.via.branch for r in ring_second}) == 1  # one INVITE, maybe retransmitted
    second.answer(ring_second[0], 200, body=b"v=0\r\n")
    assert caller.responses()[-1].status == 200
    assert h.b2bua.calls and next(iter(h.b2bua.calls.values())).route_kind == "queue"


def test_session_timer_ends_a_call_that_is_never_refreshed() -> None:
    h, caller, callee = setup()
    callee.register()
    caller.invite("1002", "st", extra="Supported: timer\r\n")
    b_invite = requests(callee.messages(), "INVITE")[0]
    callee.answer(b_invite, 200, body=b"v=0\r\n")
    ok = caller.responses()[-1]
    assert ok.get("session-expires") == "90;refresher=uac"
    caller.ack_2xx(ok, "st")
    h.advance(60)
    assert h.b2bua.calls  # still inside the interval
    h.advance(32)
    assert h.b2bua.calls == {}
    assert requests(callee.messages(), "BYE") and requests(caller.messages(), "BYE")
    assert h.b2bua.finished_records[-1].cause == "session_expired"


def test_missing_ack_ends_the_call_after_64_t1() -> None:
    h, caller, callee = setup()
    callee.register()
    caller.invite("1002", "noack")
    b_invite = requests(callee.messages(), "INVITE")[0]
    callee.answer(b_invite, 200, body=b"v=0\r\n")
    oks = [r for r in caller.responses() if r.status == 200]
    h.advance(20)
    retransmitted = [r for r in caller.responses() if r.status == 200]
    assert len(oks) == 1 and len(retransmitted) >= 4  # §13.3.1.4: T1 doubling to T2
    h.advance(13)
    assert h.b2bua.calls == {}
    assert h.b2bua.finished_records[-1].cause == "no_ack"


def test_trunk_credentials_and_call_limit() -> None:
    h, caller, _ = setup()
    carrier = Phone(h, 5080, "carrier")
    caller.invite("0555123", "t1")
    first = requests(carrier.messages(), "INVITE")[0]
    assert first.request_uri.user == "555123"
    carrier.send(first_response(first, 407,
                                'Digest realm="carrier", nonce="abc", qop="auth", algorithm=MD5'))
    retried = requests(carrier.messages(), "INVITE")
    assert len(retried) == 1
    auth = retried[0].get("proxy-authorization") or ""
    assert 'username="acct"' in auth and "tpw" not in auth
    # The trunk allows one call: a second caller is refused with 503 meanwhile.
    other = Phone(h, 6009, "1002", "pw2")
    other.invite("0555999", "t2")
    assert other.responses()[-1].status == 503


def first_response(invite: Request, status: int, challenge: str) -> bytes:
    from vaultpbx.sip.message import build_response

    return build_response(invite, status, to_tag="tr", extra=[
        ("proxy-authenticate", challenge)]).serialize()


def test_granted_expiry_is_not_truncated_by_float_arithmetic() -> None:
    h, phone, _ = setup()
    h.now = 4028.408  # here (now + 120) - now is 119.99999999999955 in floating point
    ok = phone.register(expires=120)
    assert ok.values("contact") == ["<sip:1001@127.0.0.1:6001>;expires=120"]
