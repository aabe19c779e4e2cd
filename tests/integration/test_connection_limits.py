"""SIP TCP/TLS connection budgets on a real engine process (issue 17 item 17, issue 11's SIP half):
a ceiling per source and per listener, one descriptor reserve per process, a header timeout for
slowloris, and bans for sources that keep hitting them, while everyone else carries on.

Every attacker has its own loopback address (127.0.0.2 and up); the engine listens on 127.0.0.1
in the test's private network namespace. Sizes are bounded (a few thousand connections; the one
test of the default budget opens 5,100).
"""

from __future__ import annotations

import json
import os
import re
import selectors
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vaultpbx.sip.digest import build_authorization
from vaultpbx.sip.message import Response
from vaultpbx.sip.parser import parse_message

from tests.integration.engine import RunningEngine, base_config, free_port, start_engine
from tests.integration.sipclient import UdpClient

pytestmark = [pytest.mark.integration]

DOMAIN = "vaultpbx.test"
PASSWORD = "pw-1001-Secret"


@pytest.fixture
def engines() -> Iterator[list[RunningEngine]]:
    started: list[RunningEngine] = []
    yield started
    for engine in started:
        engine.stop(timeout=10)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def start(engines: list[RunningEngine], tmp_path: Path, overrides: dict) -> RunningEngine:
    base: dict = {
        "sip": {"digest_algorithms": ["MD5"]},
        "extensions": {"1001": {"password": PASSWORD}},
        "dialplan": [{"match": r"1\d{3}", "extension": r"\g<0>"}],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    engine = start_engine(tmp_path, base)
    engines.append(engine)
    return engine


def metric(engine: RunningEngine, name: str) -> float:
    """A gauge, or a counter by its name without `_total`."""
    metrics = engine.metrics()
    return metrics.get(f"vaultpbx_{name}", metrics.get(f"vaultpbx_{name}_total", 0.0))


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def log_records(engine: RunningEngine, event: str) -> list[dict]:
    out = []
    for line in engine.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            out.append(record)
    return out


def connect(port: int, source: str, sockets: list[socket.socket]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockets.append(sock)
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the engine closed `sock` (EOF or reset) within `timeout`, False if it stays."""
    sock.settimeout(timeout)
    try:
        while True:
            if sock.recv(65536) == b"":
                return True
    except (ConnectionResetError, ssl.SSLError, OSError) as exc:
        if isinstance(exc, TimeoutError | socket.timeout):
            return False
        return True


class StreamSip:
    """A SIP client over one TCP or TLS connection from a chosen loopback address."""

    def __init__(self, port: int, source: str, *, tls: bool = False) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.settimeout(5)
        raw.bind((source, 0))
        raw.connect(("127.0.0.1", port))
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            raw = context.wrap_socket(raw)
        self.sock = raw
        self.source = source
        self.port = raw.getsockname()[1]
        self.transport = "TLS" if tls else "TCP"
        self.buffer = b""
        self.n = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, ruri: str, user: str, call_id: str, cseq: int,
                extra: str = "") -> bytes:
        self.n += 1
        return (
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{self.transport} {self.source}:{self.port};branch=z9hG4bK-s{self.n}"
            f"-{cseq}-{time.monotonic_ns()}\r\n"
            f"From: <sip:{user}@{DOMAIN}>;tag=f{self.n}\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:{user}@{self.source}:{self.port};transport={self.transport.lower()}>"
            f"\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n").encode()

    def exchange(self, data: bytes) -> Response:
        self.sock.sendall(data)
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buffer[:end + 4]
                match = re.search(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*(\d+)", head, re.I)
                total = end + 4 + int(match.group(1) if match else 0)
                if len(self.buffer) >= total:
                    message, self.buffer = self.buffer[:total], self.buffer[total:]
                    parsed = parse_message(message)
                    if isinstance(parsed, Response) and parsed.status >= 200:
                        return parsed
                    continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the engine")
            self.buffer += chunk

    def options(self) -> int:
        call_id = f"opt-{self.source}-{time.monotonic_ns()}"
        return self.exchange(self.request("OPTIONS", f"sip:100@{DOMAIN}", "100", call_id,
                                          1)).status

    def register(self, user: str, password: str) -> int:
        uri = f"sip:{DOMAIN}"
        call_id = f"reg-{self.source}-{time.monotonic_ns()}"
        first = self.exchange(self.request("REGISTER", uri, user, call_id, 1,
                                           "Expires: 300\r\n"))
        if first.status != 401:
            return first.status
        auth = build_authorization(first.get("www-authenticate") or "", "REGISTER", uri, user,
                                   password, "cn1", 1)
        return self.exchange(self.request("REGISTER", uri, user, call_id, 2,
                                          f"Expires: 300\r\nAuthorization: {auth}\r\n")).status


def udp_options(engine: RunningEngine, source: str) -> int:
    client = UdpClient(engine.sip_port, host=source)
    try:
        n = time.monotonic_ns()
        return client.exchange((
            f"OPTIONS sip:100@{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {source}:{client.port};branch=z9hG4bK-u{n};rport\r\n"
            f"From: <sip:100@{source}>;tag=u{n}\r\nTo: <sip:100@{DOMAIN}>\r\n"
            f"Call-ID: udp-{n}@{source}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode()).status
    finally:
        client.close()


def open_file_descriptors(engine: RunningEngine) -> int:
    return len(os.listdir(f"/proc/{engine.process.pid}/fd"))


# ------------------------------------------------------------------------------------------------
def test_one_source_is_capped_then_banned_while_another_registers(
        engines: list[RunningEngine], tmp_path: Path, sockets: list[socket.socket]) -> None:
    """2,000 connections from one untrusted address: 20 are held, the rest refused; after 20
    refusals the address is banned and its held connections are closed. Logged per source."""
    engine = start(engines, tmp_path, {
        "sip": {"digest_algorithms": ["MD5"], "connections": {"max_per_source": 20}},
        "security": {"floodguard": {"trusted": ["127.0.0.1/32"], "connection_strikes": 20,
                                    "connection_ban_seconds": 120}}})
    # The first 20 are set up and held before the rest come (as from a patient attacker).
    attacker = [connect(engine.sip_port, "127.0.0.2", sockets) for _ in range(20)]
    assert wait_for(lambda: metric(engine, "transport_connections_opened") == 20)
    attacker += [connect(engine.sip_port, "127.0.0.2", sockets) for _ in range(1980)]
    assert wait_for(lambda: metric(engine, "floodguard_connection_bans") == 1)
    # Every one of the attacker's connections ends up closed by the engine: the refused ones at
    # once, the 20 it held when the ban came.
    selector = selectors.DefaultSelector()
    for sock in attacker:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    open_ones = set(attacker)
    deadline = time.monotonic() + 10
    while open_ones and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            sock = key.fileobj
            try:
                data = sock.recv(4096)  # type: ignore[union-attr]
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if data == b"":
                selector.unregister(sock)
                open_ones.discard(sock)  # type: ignore[arg-type]
    selector.close()
    assert not open_ones, f"{len(open_ones)} attacker connections still open"
    assert wait_for(lambda: metric(engine, "sip_tcp_inbound_connections") == 0)
    refused = metric(engine, "transport_refused_source_limit")
    assert refused == 20, refused  # the 20th strike banned it; the ban drops the rest unread
    assert metric(engine, "transport_dropped_by_guard") == 2000 - 20 - refused
    assert metric(engine, "floodguard_banned_sources") == 1
    # Another address connects and registers over TCP meanwhile, and keeps doing so.
    client = StreamSip(engine.sip_port, "127.0.0.3")
    try:
        assert client.register("1001", PASSWORD) == 200
        assert client.options() == 200
    finally:
        client.close()
    # The banned address is cut off at once, before it can send anything.
    assert closed_by_peer(connect(engine.sip_port, "127.0.0.2", sockets), 5)
    # Logged per source: one line for the first refusal, one for the ban; not 2,000.
    limited = [r for r in log_records(engine, "sip.connection_limit")
               if r["source"] == "127.0.0.2"]
    assert len(limited) == 1 and limited[0]["reason"] == "source_limit", limited
    [ban] = log_records(engine, "sip.source_banned")
    assert ban["source"] == "127.0.0.2" and ban["closed_connections"] == 20, ban


def test_slowloris_connections_are_closed_after_the_header_timeout(
        engines: list[RunningEngine], tmp_path: Path, sockets: list[socket.socket]) -> None:
    header_timeout = 1.0
    engine = start(engines, tmp_path, {"sip": {
        "digest_algorithms": ["MD5"], "connections": {"header_timeout": header_timeout}}})
    control = StreamSip(engine.sip_port, "127.0.0.5")
    try:
        assert control.options() == 200  # a complete message: then idle is fine
        # Half a request head over TCP, then nothing.
        slow = connect(engine.sip_port, "127.0.0.4", sockets)
        slow.sendall(b"REGISTER sip:vaultpbx.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.4:5;br")
        sent = time.monotonic()
        # A TLS connection that never says hello, and a TCP one that connects and says nothing.
        mute_tls = connect(engine.tls_port, "127.0.0.6", sockets)
        mute_tcp = connect(engine.sip_port, "127.0.0.7", sockets)
        assert closed_by_peer(slow, 15)
        assert time.monotonic() - sent >= header_timeout * 0.9  # not before its time
        assert closed_by_peer(mute_tls, 15)
        assert closed_by_peer(mute_tcp, 15)
        # The idle but well-behaved connection is still there and still answered.
        assert control.options() == 200
    finally:
        control.close()
    assert wait_for(lambda: metric(engine, "transport_header_timeouts") == 3)
    assert metric(engine, "transport_tls_handshake_failures") == 1
    assert metric(engine, "sip_tcp_inbound_connections") == 0
    sources = sorted(r["source"] for r in log_records(engine, "sip.connection_limit"))
    assert sources == ["127.0.0.4", "127.0.0.6", "127.0.0.7"], sources


def test_a_full_listener_never_stops_udp_or_the_other_listener(
        engines: list[RunningEngine], tmp_path: Path, sockets: list[socket.socket]) -> None:
    """Idle connections (no TLS handshake at all) from ten addresses fill the TLS listener's
    budget; SIP over UDP and over TCP still answer, and the TLS listener answers again once the
    flood is gone."""
    # The TLS listener has its own budget of 200; the TCP listener keeps the default 5,000.
    config = base_config(tmp_path / "var", free_port(), free_port(False), free_port(False))
    for listener in config["sip"]["listen"]:
        if listener["transport"] == "tls":
            listener["max_connections"] = 200
    engine = start_engine(tmp_path, {
        "sip": {"digest_algorithms": ["MD5"],
                "connections": {"max_per_source": 50, "header_timeout": 60}},
        "extensions": {"1001": {"password": PASSWORD}}}, config=config)
    engines.append(engine)
    for i in range(10):
        for _ in range(50):
            connect(engine.tls_port, f"127.0.0.{10 + i}", sockets)
    assert wait_for(lambda: metric(engine, "transport_refused_listener_limit") == 300)
    assert metric(engine, "sip_tls_inbound_connections") == 200
    assert udp_options(engine, "127.0.0.30") == 200
    tcp = StreamSip(engine.sip_port, "127.0.0.31")
    try:
        assert tcp.options() == 200
        assert tcp.register("1001", PASSWORD) == 200
    finally:
        tcp.close()
    # No bans: a full listener is not any one source's fault.
    assert metric(engine, "floodguard_bans") == 0
    for sock in sockets:
        sock.close()
    assert wait_for(lambda: metric(engine, "sip_tls_inbound_connections") == 0)
    tls = StreamSip(engine.tls_port, "127.0.0.32", tls=True)
    try:
        assert tls.options() == 200
    finally:
        tls.close()


def test_the_descriptor_reserve_is_never_given_to_inbound_connections(
        engines: list[RunningEngine], tmp_path: Path, sockets: list[socket.socket]) -> None:
    """With a descriptor limit of 400 and a reserve of 100, inbound connections of all
    listeners together stop at 300 although each listener's own budget is larger; what the
    reserve keeps serves UDP and the process's own connections."""
    engine = start(engines, tmp_path, {
        "sip": {"digest_algorithms": ["MD5"],
                "connections": {"max_connections": 1000, "max_per_source": 1000,
                                "header_timeout": 60}},
        "descriptors": {"limit": 400, "reserve": 100}})
    for i in range(7):  # 50 from each address (the flood guard's burst is 200 per source)
        if i == 5:  # the TCP listener first (each listener accepts at its own pace)
            assert wait_for(lambda: metric(engine, "sip_tcp_inbound_connections") == 250)
        for _ in range(50):
            connect(engine.sip_port if i < 5 else engine.tls_port, f"127.0.0.{2 + i}", sockets)
    assert wait_for(lambda: metric(engine, "transport_refused_descriptor_reserve") == 50)
    assert metric(engine, "descriptors_inbound") == 300
    assert metric(engine, "sip_tcp_inbound_connections") == 250
    assert metric(engine, "sip_tls_inbound_connections") == 50
    assert udp_options(engine, "127.0.0.20") == 200
    assert metric(engine, "floodguard_bans") == 0


def test_the_default_budget_leaves_descriptors_for_sip(
        engines: list[RunningEngine], tmp_path: Path, sockets: list[socket.socket]) -> None:
    """Default limits (5,000 connections per listener, 100 per source, a reserve of 2,000 of
    the 20,000 descriptors): an attacker who fills the TCP listener from 51 addresses, each
    connection sending keep-alives like a real phone, gets 5,000 and no more; the process keeps
    most of its descriptors, and UDP and the TLS listener still serve a REGISTER."""
    engine = start(engines, tmp_path, {})
    assert metric(engine, "descriptors_limit") == 20_000
    assert metric(engine, "descriptors_reserve") == 2_000
    for i in range(51):
        for _ in range(100):
            sock = connect(engine.sip_port, f"127.0.1.{i}", sockets)
            sock.sendall(b"\r\n\r\n")  # a keep-alive ping: not a slowloris
    assert wait_for(lambda: metric(engine, "transport_refused_listener_limit") == 100, 30)
    assert metric(engine, "sip_tcp_inbound_connections") == 5000
    used = open_file_descriptors(engine)
    assert 5000 < used < 20_000 - 2_000, used
    assert udp_options(engine, "127.0.0.4") == 200
    tls = StreamSip(engine.tls_port, "127.0.0.5", tls=True)
    try:
        assert tls.register("1001", PASSWORD) == 200
    finally:
        tls.close()
    assert metric(engine, "floodguard_bans") == 0
