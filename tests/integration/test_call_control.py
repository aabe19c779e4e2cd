"""Call control through a running engine (issue 12): forks that end promptly, contacts pruned
by OPTIONS qualify, 3xx followed by the PBX.

The phones are Python UAs on their own sockets (tests/integration/sipclient.py); a "vanished"
phone is a registered contact whose socket has been closed, so the engine's INVITE gets only an
ICMP port-unreachable that a UDP server never sees. Each test synchronises on the SIP answer it
waits for; the ring timeout is long (60 s) and the test's own receive timeout short (15 s), so
an answer that only came at the ring timeout fails the test.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vaultpbx.sip.digest import build_authorization
from vaultpbx.sip.message import Request, Response, build_response
from vaultpbx.sip.parser import parse_message

from tests.integration.engine import RunningEngine, start_engine
from tests.integration.sipclient import UdpClient

pytestmark = [pytest.mark.integration]

RING_TIMEOUT = 60
WAIT = 15.0  # far below RING_TIMEOUT


@pytest.fixture
def engines() -> Iterator[list[RunningEngine]]:
    started: list[RunningEngine] = []
    yield started
    for engine in started:
        engine.stop(timeout=10)


def start(engines: list[RunningEngine], tmp_path: Path, sip: dict | None = None,
          extra: dict | None = None) -> RunningEngine:
    overrides: dict = {
        "sip": {"ring_timeout": RING_TIMEOUT, "digest_algorithms": ["MD5"], **(sip or {})},
        "auth": {"trusted_sources": ["127.0.0.1"]},  # the caller needs no credentials
        "extensions": {"1001": {"password": "pw-1001"}, "1002": {"password": "pw-1002"},
                       "1003": {"password": "pw-1003"}},
        "dialplan": [{"match": r"1\d{3}", "extension": r"\g<0>"}],
        **(extra or {}),
    }
    engine = start_engine(tmp_path, overrides)
    engines.append(engine)
    return engine


def receive_request(client: UdpClient, method: str, timeout: float = WAIT) -> Request:
    client.sock.settimeout(timeout)
    while True:
        raw, _ = client.sock.recvfrom(65535)
        message = parse_message(raw)
        if isinstance(message, Request) and message.method == method:
            return message


def answer(client: UdpClient, request: Request, status: int, *,
           extra: list[tuple[str, str]] | None = None) -> None:
    response = build_response(request, status, to_tag=f"dev{client.port}", extra=extra or [])
    client.sock.sendto(response.serialize(), client.server)


def invite(caller: UdpClient, number: str, call_id: str) -> bytes:
    return caller.request("INVITE", f"sip:{number}@vaultpbx.test", user="1001",
                          to_user=number, call_id=call_id,
                          extra="Content-Type: application/sdp\r\n",
                          body=b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"
                               b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")


def final_of(caller: UdpClient, timeout: float = WAIT) -> Response:
    caller.sock.settimeout(timeout)
    while True:
        raw, _ = caller.sock.recvfrom(65535)
        message = parse_message(raw)
        if isinstance(message, Response) and message.status >= 200:
            return message


def test_a_busy_phone_and_a_vanished_one_give_the_caller_busy_promptly(
        engines: list[RunningEngine], tmp_path: Path) -> None:
    engine = start(engines, tmp_path)
    live = UdpClient(engine.sip_port)
    gone = UdpClient(engine.sip_port)
    caller = UdpClient(engine.sip_port)
    assert live.register("1002", "pw-1002").status == 200
    assert gone.register("1002", "pw-1002").status == 200
    gone.close()  # the device vanished without unregistering
    caller.sock.sendto(invite(caller, "1002", "fork-486@test"), caller.server)
    answer(live, receive_request(live, "INVITE"), 486)
    final = final_of(caller)  # within WAIT (15 s), not at the 60 s ring timeout
    assert final.status == 486
    assert engine.metrics()["vaultpbx_branches_pruned_total"] == 1
    for client in (live, caller):
        client.close()


def register_over_tcp(port: int, user: str, password: str) -> socket.socket:
    """REGISTER over a TCP connection (the binding then remembers that connection)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    local_port = sock.getsockname()[1]
    builder = UdpClient.__new__(UdpClient)  # only its request builder, with our address
    builder.host, builder.port = "127.0.0.1", local_port
    buffer = b""

    def exchange(data: bytes) -> Response:
        nonlocal buffer
        sock.sendall(data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
                     .replace(f"@127.0.0.1:{local_port}>".encode(),
                              f"@127.0.0.1:{local_port};transport=tcp>".encode()))
        while True:
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            if sep:
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                if len(rest) >= length:
                    buffer = rest[length:]
                    message = parse_message(head + sep + rest[:length])
                    if isinstance(message, Response) and message.status >= 200:
                        return message
                    continue
            chunk = sock.recv(65535)
            assert chunk, "the engine closed the connection"
            buffer += chunk

    uri, call_id = "sip:vaultpbx.test", f"tcp-reg-{local_port}"
    first = exchange(builder.request("REGISTER", uri, user=user, call_id=call_id, cseq=1,
                                     extra="Expires: 300\r\n"))
    assert first.status == 401
    auth = build_authorization(first.get("www-authenticate") or "", "REGISTER", uri, user,
                               password, "cn0nce", 1)
    ok = exchange(builder.request("REGISTER", uri, user=user, call_id=call_id, cseq=2,
                                  extra=f"Expires: 300\r\nAuthorization: {auth}\r\n"))
    assert ok.status == 200
    return sock


def test_a_refused_tcp_contact_is_pruned_at_once_and_the_busy_phone_answers(
        engines: list[RunningEngine], tmp_path: Path) -> None:
    # No silence timer: only the transport error can end the TCP branch before Timer B (32 s).
    engine = start(engines, tmp_path, sip={"fork_response_timeout": 0})
    live = UdpClient(engine.sip_port)
    caller = UdpClient(engine.sip_port)
    assert live.register("1002", "pw-1002").status == 200
    tcp_phone = register_over_tcp(engine.sip_port, "1002", "pw-1002")
    assert engine.health()["registrations"] == 2
    tcp_phone.close()  # its connection is gone; a new one to its port is refused
    # Wait until the engine has seen the close: an INVITE written into a connection it still
    # thinks open is lost in the kernel with no error, and only Timer B would end that fork.
    deadline = time.monotonic() + WAIT
    while engine.metrics().get("vaultpbx_sip_tcp_inbound_connections", 0) > 0:
        assert time.monotonic() < deadline, "the engine never saw the TCP phone go"
        time.sleep(0.02)
    caller.sock.sendto(invite(caller, "1002", "fork-tcp@test"), caller.server)
    answer(live, receive_request(live, "INVITE"), 486)
    assert final_of(caller).status == 486  # within WAIT, far below Timer B and ring_timeout
    for client in (live, caller):
        client.close()


def test_a_decline_from_one_phone_ends_the_call_and_cancels_the_other(
        engines: list[RunningEngine], tmp_path: Path) -> None:
    engine = start(engines, tmp_path)
    desk = UdpClient(engine.sip_port)
    soft = UdpClient(engine.sip_port)
    caller = UdpClient(engine.sip_port)
    assert desk.register("1002", "pw-1002").status == 200
    assert soft.register("1002", "pw-1002").status == 200
    caller.sock.sendto(invite(caller, "1002", "fork-603@test"), caller.server)
    ringing = receive_request(desk, "INVITE")
    answer(desk, ringing, 180)
    answer(soft, receive_request(soft, "INVITE"), 603)
    assert final_of(caller).status == 603
    cancel = receive_request(desk, "CANCEL")
    assert cancel.call_id == ringing.call_id
    for client in (desk, soft, caller):
        client.close()


def test_qualify_removes_a_vanished_phone_and_keeps_the_one_that_answers(
        engines: list[RunningEngine], tmp_path: Path) -> None:
    # T1 = 0.1 s: an unanswered OPTIONS ends after 64*T1 = 6.4 s (Timer F).
    engine = start(engines, tmp_path, sip={"timers": {"t1": 0.1, "t2": 4.0, "t4": 5.0},
                                           "qualify": {"interval": 1, "max_failures": 1}})
    live = UdpClient(engine.sip_port)
    gone = UdpClient(engine.sip_port)
    assert live.register("1002", "pw-1002").status == 200
    assert gone.register("1002", "pw-1002").status == 200
    assert engine.health()["registrations"] == 2
    gone.close()
    stop = threading.Event()

    def answer_options() -> None:
        live.sock.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = live.sock.recvfrom(65535)
            except TimeoutError:
                continue
            message = parse_message(raw)
            if isinstance(message, Request) and message.method == "OPTIONS":
                answer(live, message, 200)

    thread = threading.Thread(target=answer_options, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while "registrar.contact_pruned" not in engine.log():  # logged by the next housekeeping
            assert time.monotonic() < deadline, engine.log()
            time.sleep(0.2)
        assert engine.metrics()["vaultpbx_contacts_pruned_total"] == 1
        assert engine.health()["registrations"] == 1
        assert engine.metrics()["vaultpbx_qualify_probes_total"] >= 2
    finally:
        stop.set()
        thread.join(2)
    # The phone that answers keeps its registration: probes go on and it stays.
    probes = engine.metrics()["vaultpbx_qualify_probes_total"]
    deadline = time.monotonic() + 10
    while engine.metrics()["vaultpbx_qualify_probes_total"] < probes + 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert engine.health()["registrations"] == 1
    assert engine.metrics()["vaultpbx_contacts_pruned_total"] == 1
    live.close()


def test_a_302_from_a_phone_is_followed_and_the_call_lands_at_its_contact(
        engines: list[RunningEngine], tmp_path: Path) -> None:
    engine = start(engines, tmp_path)
    forwarding = UdpClient(engine.sip_port)  # 1003 forwards its calls to 1002
    target = UdpClient(engine.sip_port)
    caller = UdpClient(engine.sip_port)
    assert forwarding.register("1003", "pw-1003").status == 200
    assert target.register("1002", "pw-1002").status == 200
    caller.sock.sendto(invite(caller, "1003", "fwd-302@test"), caller.server)
    answer(forwarding, receive_request(forwarding, "INVITE"), 302,
           extra=[("contact", "<sip:1002@vaultpbx.test>")])
    assert receive_request(forwarding, "ACK").method == "ACK"  # the 302 is acknowledged
    landed = receive_request(target, "INVITE")
    assert landed.request_uri.user == "1002"
    answer(target, landed, 200, extra=[("contact", f"<sip:1002@127.0.0.1:{target.port}>")])
    ok = final_of(caller)
    assert ok.status == 200
    assert engine.metrics()["vaultpbx_redirects_followed_total"] == 1
    for client in (forwarding, target, caller):
        client.close()


def test_a_302_the_pbx_must_not_follow_reaches_the_caller_with_its_contact(
        engines: list[RunningEngine], tmp_path: Path) -> None:
    engine = start(engines, tmp_path)
    phone = UdpClient(engine.sip_port)
    caller = UdpClient(engine.sip_port)
    assert phone.register("1003", "pw-1003").status == 200
    caller.sock.sendto(invite(caller, "1003", "fwd-away@test"), caller.server)
    answer(phone, receive_request(phone, "INVITE"), 302,
           extra=[("contact", "<sip:carol@example.org>")])
    final = final_of(caller)
    assert final.status == 302
    assert final.values("contact") == ["<sip:carol@example.org>"]
    for client in (phone, caller):
        client.close()


def test_a_sipp_phone_that_forwards_with_302_sends_the_call_to_its_contact(
        engines: list[RunningEngine], tmp_path: Path) -> None:
    """An independent UA (SIPp) registered as 1003 answers 302 with Contact 1002; a SIPp
    registered as 1002 answers; a SIPp caller (with digest) reaches 1002 through the redirect."""
    from tests.integration.sipp import SIPP, SippRunner

    if SIPP is None:
        pytest.fail("sipp (Debian sip-tester) is needed: scripts/setup.sh installs it")
    engine = start(engines, tmp_path, extra={"auth": {"trusted_sources": []}})
    remote = f"127.0.0.1:{engine.sip_port}"
    passwords = {"1001": "pw-1001", "1002": "pw-1002", "1003": "pw-1003"}
    runner = SippRunner(tmp_path / "sipp")
    try:
        def register(ext: str, ooc: str, keys: dict[str, str]) -> object:
            before = engine.health()["registrations"]
            process = runner.start(f"phone-{ext}", scenario="register_and_wait.xml", ooc=ooc,
                                   remote=remote, service=ext, auth=(ext, passwords[ext]),
                                   keys={"domain": "vaultpbx.test", **keys}, timeout=25)
            deadline = time.monotonic() + 10
            while engine.health()["registrations"] <= before:
                assert process.running() and time.monotonic() < deadline, \
                    process.wait(1).describe()
                time.sleep(0.05)
            return process

        forwarding = register("1003", "uas_redirect.xml", {"target": "1002"})
        answering = register("1002", "uas_answer.xml", {})
        result = runner.run("caller", scenario="uac_call.xml", remote=remote, service="1003",
                            auth=("1001", passwords["1001"]), auth_uri=f"1003@{remote}",
                            keys={"domain": "vaultpbx.test", "caller": "1001"}, timeout=20)
        result.assert_ok(calls=1)  # 200 from 1002, ACK, BYE, 200
        answered = answering.wait(15)  # type: ignore[attr-defined]
        assert "bye answered" in answered.logs, answered.describe()
        assert "ruri=sip:1002@" in answered.logs, answered.describe()
        forwarded = forwarding.wait(15)  # type: ignore[attr-defined]
        assert "302 acknowledged" in forwarded.logs, forwarded.describe()
        assert engine.metrics()["vaultpbx_redirects_followed_total"] == 1
    finally:
        runner.cleanup()
