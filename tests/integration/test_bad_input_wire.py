"""Issue 17 over real sockets: SIP input that escaped error handling, sent to a real engine
process on UDP and on TCP. Each bad packet gets its 4xx on the transport it came on, is counted
as a parse error, leaves one log line (not a traceback), and is followed by an OPTIONS probe
that the engine must answer - over TCP on the same connection, which must survive (unless the
stream itself could not be framed: then the 4xx comes first and the connection closes,
RFC 3261 §18.3).

Also item 19: a request that copies a live transaction's branch and sent-by from another
source or transport is answered to its own sender, and a CANCEL copied that way does not end
someone else's INVITE.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.engine import RunningEngine, start_engine

pytestmark = pytest.mark.integration
_STATUS = re.compile(rb"^SIP/2\.0 (\d{3})")


def request(method: str = "OPTIONS", uri: str = "sip:1001@127.0.0.1", *, transport: str = "UDP",
            branch: str, to: str = "<sip:1001@127.0.0.1>", extra: str = "",
            via: str | None = None, content_length: str = "0", call_id: str | None = None,
            sent_by: str = "127.0.0.1:5099") -> bytes:
    via = via if via is not None else f"SIP/2.0/{transport} {sent_by};branch={branch}"
    return (
        f"{method} {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:1002@127.0.0.1>;tag=f-{branch}\r\nTo: {to}\r\n"
        f"Call-ID: {call_id or branch}\r\nCSeq: 1 {method}\r\n{extra}"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def status(data: bytes) -> int | None:
    match = _STATUS.match(data)
    return int(match.group(1)) if match else None


class Udp:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.port))

    def receive(self, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recvfrom(65535)[0]

    def nothing_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            self.sock.recvfrom(65535)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


class Tcp:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                             source_address=(host, 0))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, timeout: float = 5.0) -> bytes:
        """One whole response (our responses always carry Content-Length 0 or a body)."""
        self.sock.settimeout(timeout)
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buffer[:end]
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                total = end + 4 + (int(length.group(1)) if length else 0)
                if len(self.buffer) >= total:
                    message, self.buffer = self.buffer[:total], self.buffer[total:]
                    return message
            chunk = self.sock.recv(65535)
            if not chunk:
                raise ConnectionError("closed by the engine")
            self.buffer += chunk

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65535):
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    tmp: Path = tmp_path_factory.mktemp("badinput")
    running = start_engine(tmp, {
        "extensions": {"1001": {"password": "secret-1001"}},
        "trunks": {"far": {"target": "sip:127.0.0.1:9"}},
        "dialplan": [{"match": "1\\d{3}", "extension": "\\g<0>"},
                     {"match": ".*", "trunk": "far"}],
    })
    yield running
    log = running.log()
    assert running.stop() == 0
    for marker in ("Traceback", "Fatal error on transport", "sip.internal_error"):
        assert marker not in log


def probe_udp(engine: RunningEngine, tag: str) -> None:
    udp = Udp(engine.sip_port)
    try:
        udp.send(request(branch=f"z9hG4bKprobe-{tag}"))
        assert status(udp.receive()) == 200
    finally:
        udp.close()


class LogWatch:
    """The lines the engine logged since this was made."""

    def __init__(self, engine: RunningEngine) -> None:
        self.engine = engine
        self.start = len(engine.log_path.read_bytes())

    def new_lines(self) -> list[str]:
        return self.engine.log_path.read_bytes()[self.start:].decode(errors="replace"
                                                                      ).splitlines()


PARSE = "vaultpbx_sip_parse_errors_total"
# Unreadable credentials are the registrar's 400 "Bad Authorization", counted and logged as a
# failed registration (the line fail2ban reads), not as a SIP parse error.
AUTH = "vaultpbx_auth_failures_total"

# name: (bytes builder(transport, branch), the status answered, the counter that moves)
ESCAPES = {
    # item 15
    "request-uri-not-a-uri": (lambda t, b: request(uri="foo", transport=t, branch=b), 400,
                              PARSE),
    "request-uri-bad-ipv6": (lambda t, b: request(uri="sip:a@[zz", transport=t, branch=b), 400,
                             PARSE),
    # item 16
    "via-comma": (lambda t, b: request(via=",", transport=t, branch=b, call_id=b), 400, PARSE),
    "register-to-uri-malformed": (
        lambda t, b: request("REGISTER", "sip:127.0.0.1", transport=t, branch=b,
                             to="<sip:1001@[zz>",
                             extra="Contact: <sip:1001@127.0.0.1:5099>\r\n"), 400, PARSE),
    # item 14, through the whole engine
    "digest-60000-blanks": (
        lambda t, b: request("REGISTER", "sip:127.0.0.1", transport=t, branch=b,
                             extra="Contact: <sip:1001@127.0.0.1:5099>\r\n"
                                   "Authorization: Digest " + " " * 60_000 + "x\r\n"), 400,
        AUTH),
    # found by the long fuzz run
    "max-forwards-control-char": (
        lambda t, b: request(transport=t, branch=b).replace(b"Max-Forwards: 70",
                                                            b"Max-Forwards: 7\x1d"), 400,
        PARSE),
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_over_udp_is_answered_counted_and_logged_once(engine: RunningEngine,
                                                              name: str) -> None:
    build, expected, counter = ESCAPES[name]
    before = engine.metrics()
    watch = LogWatch(engine)
    udp = Udp(engine.sip_port)
    try:
        udp.send(build("UDP", f"z9hG4bKudp-{name}"))
        assert status(udp.receive()) == expected
        udp.send(request(branch=f"z9hG4bKudp-after-{name}"))  # the probe, same socket
        assert status(udp.receive()) == 200
    finally:
        udp.close()
    after = engine.metrics()
    assert after[counter] == before.get(counter, 0) + 1
    assert after["vaultpbx_sip_internal_errors_total"] == 0
    lines = watch.new_lines()
    marker = "sip.rejected" if counter == PARSE else "Registration from"
    assert len(lines) == 1 and marker in lines[0], lines


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_over_tcp_keeps_the_connection(engine: RunningEngine, name: str) -> None:
    build, expected, counter = ESCAPES[name]
    before = engine.metrics()
    tcp = Tcp(engine.sip_port)
    try:
        tcp.send(build("TCP", f"z9hG4bKtcp-{name}"))
        assert status(tcp.receive()) == expected
        tcp.send(request(transport="TCP", branch=f"z9hG4bKtcp-after-{name}"))
        assert status(tcp.receive()) == 200  # the same connection survived
    finally:
        tcp.close()
    after = engine.metrics()
    assert after[counter] == before.get(counter, 0) + 1
    assert after["vaultpbx_sip_internal_errors_total"] == 0
    assert (after["vaultpbx_transport_framing_errors_total"]
            == before["vaultpbx_transport_framing_errors_total"])


def test_content_length_of_5000_digits_over_udp_is_413(engine: RunningEngine) -> None:
    udp = Udp(engine.sip_port)
    try:
        udp.send(request(branch="z9hG4bKcl-udp", content_length="9" * 5000))
        assert status(udp.receive()) == 413
    finally:
        udp.close()
    probe_udp(engine, "cl-udp")


def test_content_length_of_5000_digits_over_tcp_is_413_then_close(engine: RunningEngine
                                                                  ) -> None:
    """The stream cannot be framed past it: the 413 goes out, then the connection closes; the
    request before it on the same connection was answered normally."""
    before = engine.metrics()
    tcp = Tcp(engine.sip_port)
    try:
        tcp.send(request(transport="TCP", branch="z9hG4bKcl-ok")
                 + request(transport="TCP", branch="z9hG4bKcl-tcp", content_length="7" * 5000))
        assert status(tcp.receive()) == 200
        assert status(tcp.receive()) == 413
        assert tcp.closed_by_peer()
    finally:
        tcp.close()
    after = engine.metrics()
    assert after["vaultpbx_transport_framing_errors_total"] == (
        before["vaultpbx_transport_framing_errors_total"] + 1)
    assert after["vaultpbx_sip_internal_errors_total"] == 0
    fresh = Tcp(engine.sip_port)
    try:
        fresh.send(request(transport="TCP", branch="z9hG4bKcl-after"))
        assert status(fresh.receive()) == 200
    finally:
        fresh.close()


def test_the_loop_answers_others_while_it_reads_a_huge_authorization(engine: RunningEngine
                                                                     ) -> None:
    """Item 14 froze every transaction for ~24 s. Ten of those packets, then a probe from
    another socket: the probe is answered (5 s timeout per read: liveness, not speed)."""
    attacker = Udp(engine.sip_port)
    try:
        build, _, _ = ESCAPES["digest-60000-blanks"]
        for i in range(10):
            attacker.send(build("UDP", f"z9hG4bKflood-{i}"))
        probe_udp(engine, "during-flood")
        for _ in range(10):
            assert status(attacker.receive()) == 400
    finally:
        attacker.close()


# -- item 19 --------------------------------------------------------------------------------------
def test_copied_branch_from_another_source_is_answered_to_that_source(engine: RunningEngine
                                                                      ) -> None:
    victim = Udp(engine.sip_port, "127.0.0.1")
    attacker_udp = Udp(engine.sip_port, "127.0.0.66")
    attacker_tcp = Tcp(engine.sip_port, "127.0.0.67")
    try:
        data = request(branch="z9hG4bKshared-branch", sent_by="127.0.0.1:5099")
        victim.send(data)
        assert status(victim.receive()) == 200
        attacker_udp.send(data)  # same branch, same sent-by, another host
        assert status(attacker_udp.receive()) == 200
        attacker_tcp.send(data)  # ... and another transport
        assert status(attacker_tcp.receive()) == 200
        assert victim.nothing_within(0.5)  # no retransmitted final response went to the victim
        victim.send(data)  # the victim's own retransmission still matches its transaction
        assert status(victim.receive()) == 200
    finally:
        victim.close()
        attacker_udp.close()
        attacker_tcp.close()


def test_copied_cancel_from_another_source_does_not_end_the_call(tmp_path: Path) -> None:
    trunk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trunk.bind(("127.0.0.1", 0))
    trunk_port = trunk.getsockname()[1]
    running = start_engine(tmp_path, {
        "trunks": {"far": {"target": f"sip:127.0.0.1:{trunk_port}"}},
        "dialplan": [{"match": ".*", "trunk": "far"}],
        "auth": {"trusted_sources": ["127.0.0.1"]},
    })
    caller = Udp(running.sip_port, "127.0.0.1")
    attacker = Udp(running.sip_port, "127.0.0.66")
    try:
        via = "SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKinvite-1"
        invite = request("INVITE", "sip:5550100@127.0.0.1", via=via, branch="x",
                         call_id="cancel-attack")
        caller.send(invite)
        assert status(caller.receive()) == 100
        trunk.settimeout(5)
        assert trunk.recvfrom(65535)[0].startswith(b"INVITE ")  # the call went on
        cancel = request("CANCEL", "sip:5550100@127.0.0.1", via=via, branch="x",
                         call_id="cancel-attack")
        attacker.send(cancel)
        assert status(attacker.receive()) == 481
        assert caller.nothing_within(0.5)  # no 487 to the caller: its call is untouched
        assert running.health()["active_calls"] == 1
        caller.send(cancel)  # the caller's own CANCEL works
        answers = {status(caller.receive()), status(caller.receive())}
        assert answers == {200, 487}
    finally:
        caller.close()
        attacker.close()
        trunk.close()
        assert running.stop() == 0
