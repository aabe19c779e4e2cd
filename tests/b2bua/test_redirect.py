"""3xx from a callee followed by the PBX within a hop limit, or passed to the caller with its
Contact (issue 12), on a manual clock through the real transaction layer and B2BUA."""

from __future__ import annotations

from vaultpbx.sip.message import Request, Response

from tests.b2bua.harness import Harness, Phone, requests

CONFIG = """
sip:
  domain: vaultpbx.test
  keepalive_probe_interval: 0
  ring_timeout: 60
  max_redirects: 2
extensions:
  "1001": {password: "pw1"}
  "1002": {password: "pw2"}
  "1003": {password: "pw3"}
  "1004": {password: "pw4"}
trunks:
  carrier: {target: "sip:127.0.0.1:5080", max_calls: 1}
dialplan:
  - {match: '1\\d{3}', extension: '\\g<0>'}
  - {match: '0(\\d+)', trunk: carrier, number: '\\1'}
"""


def phones(config: str = CONFIG) -> tuple[Harness, Phone, Phone, Phone]:
    h = Harness(config)
    caller = Phone(h, 6001, "1001", "pw1")
    bob = Phone(h, 6002, "1002", "pw2")
    carol = Phone(h, 6003, "1003", "pw3")
    assert bob.register().status == 200 and carol.register().status == 200
    return h, caller, bob, carol


def redirect(phone: Phone, invite: Request, *targets: str, status: int = 302) -> None:
    response = Response(status, "Moved Temporarily" if status == 302 else "Redirect")
    for name in ("via", "from", "call-id", "cseq"):
        response.headers[name] = list(invite.headers[name])
    response.headers["to"] = [f"{invite.headers['to'][0]};tag=fwd{phone.port}"]
    response.headers["contact"] = [f"<{target}>" for target in targets]
    phone.send(response.serialize())


def finals(phone: Phone) -> list[Response]:
    return [r for r in phone.responses() if r.status >= 200 and r.cseq.method == "INVITE"]


def test_a_302_to_another_extension_is_followed_and_the_call_lands_there() -> None:
    h, caller, bob, carol = phones()
    caller.invite("1002", "fwd-1")
    [to_bob] = requests(bob.messages(), "INVITE")
    redirect(bob, to_bob, "sip:1003@vaultpbx.test")
    assert finals(caller) == []  # the caller does not see the redirect
    [to_carol] = requests(carol.messages(), "INVITE")
    assert to_carol.call_id != to_bob.call_id  # a new branch, a new dialog
    assert requests(bob.messages(), "ACK")  # the 302 was acknowledged (§17.1.1.3)
    carol.answer(to_carol, 200, body=b"v=0\r\n")
    [ok] = finals(caller)
    assert ok.status == 200
    caller.ack_2xx(ok, "fwd-1")
    call = next(iter(h.b2bua.calls.values()))
    assert call.b is not None and call.b.target_name == "1003"
    assert h.b2bua.counters()["redirects_followed"] == 1


def test_a_302_to_a_number_goes_out_through_the_dialplan_and_trunk() -> None:
    h, caller, bob, _ = phones()
    caller.invite("1002", "fwd-trunk")
    [to_bob] = requests(bob.messages(), "INVITE")
    redirect(bob, to_bob, "sip:0555123@127.0.0.1")  # our own address: "route this number"
    [to_carrier] = requests(h.take(5080), "INVITE")
    assert to_carrier.uri == "sip:555123@127.0.0.1:5080"


def test_a_302_to_someone_elses_host_reaches_the_caller_with_its_contact() -> None:
    h, caller, bob, _ = phones()
    caller.invite("1002", "fwd-away")
    [to_bob] = requests(bob.messages(), "INVITE")
    redirect(bob, to_bob, "sip:alice@example.org")
    final = finals(caller)[0]
    assert final.status == 302
    assert final.values("contact") == ["<sip:alice@example.org>"]  # not dropped any more
    assert h.b2bua.calls == {} and h.b2bua.finished_records[-1].cause == "redirected"


def test_a_302_to_an_unregistered_extension_reaches_the_caller_with_its_contact() -> None:
    h, caller, bob, _ = phones()
    caller.invite("1002", "fwd-nobody")
    [to_bob] = requests(bob.messages(), "INVITE")
    redirect(bob, to_bob, "sip:1004@vaultpbx.test")  # 1004 is not registered
    final = finals(caller)[0]
    assert final.status == 302 and final.values("contact") == ["<sip:1004@vaultpbx.test>"]


def test_the_first_contact_the_pbx_can_reach_wins_by_q() -> None:
    h, caller, bob, carol = phones()
    caller.invite("1002", "fwd-q")
    [to_bob] = requests(bob.messages(), "INVITE")
    response = Response(302, "Moved Temporarily")
    for name in ("via", "from", "call-id", "cseq"):
        response.headers[name] = list(to_bob.headers[name])
    response.headers["to"] = [f"{to_bob.headers['to'][0]};tag=q"]
    response.headers["contact"] = ["<sip:1004@vaultpbx.test>;q=0.9",
                                   "<sip:1003@vaultpbx.test>;q=0.5"]
    bob.send(response.serialize())
    assert requests(carol.messages(), "INVITE")  # 1004 (higher q) is unreachable: 1003 rings


def test_redirects_stop_at_the_hop_limit_and_the_last_one_reaches_the_caller() -> None:
    h, caller, bob, carol = phones()
    caller.invite("1002", "fwd-loop")
    [first] = requests(bob.messages(), "INVITE")
    redirect(bob, first, "sip:1003@vaultpbx.test")  # hop 1: followed
    [second] = requests(carol.messages(), "INVITE")
    redirect(carol, second, "sip:1002@vaultpbx.test")  # hop 2: followed (a loop)
    [third] = requests(bob.messages(), "INVITE")
    assert finals(caller) == []
    redirect(bob, third, "sip:1003@vaultpbx.test")  # hop 3: past max_redirects
    assert requests(carol.messages(), "INVITE") == []
    final = finals(caller)[0]
    assert final.status == 302 and final.values("contact") == ["<sip:1003@vaultpbx.test>"]
    counters = h.b2bua.counters()
    assert counters["redirects_followed"] == 2 and counters["redirects_refused"] == 1


def test_max_redirects_zero_passes_every_3xx_to_the_caller() -> None:
    h, caller, bob, carol = phones(CONFIG.replace("max_redirects: 2", "max_redirects: 0"))
    caller.invite("1002", "fwd-off")
    [to_bob] = requests(bob.messages(), "INVITE")
    redirect(bob, to_bob, "sip:1003@vaultpbx.test")
    assert finals(caller)[0].status == 302
    assert requests(carol.messages(), "INVITE") == []
