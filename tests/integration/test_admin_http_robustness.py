"""The admin API as an attacker meets it, against a running engine with TLS 1.3 on the admin port:
malformed heads and bodies, chunked bodies, slow and oversized heads, idle connections, and more
connections than the admin budget allows, from one and from many sources.

Each answer is a 4xx or a closed connection, never a 5xx; the engine logs no traceback; every
refusal and cut is counted in /metrics; SIP OPTIONS over UDP and TCP keep being answered
throughout, and the admin connections never hold more descriptors than the budget.
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .engine import RunningEngine, start_engine
from .sipclient import UdpClient

pytestmark = pytest.mark.integration


def admin_config(**limits: object) -> dict:
    return {"admin": {"tls": True, **limits}, "logging": {"level": "info"}}


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[Callable[..., RunningEngine]]:
    started: list[RunningEngine] = []

    def make(**limits: object) -> RunningEngine:
        directory = tmp_path / f"engine{len(started)}"
        directory.mkdir()
        engine = start_engine(directory, admin_config(**limits))
        started.append(engine)
        return engine

    yield make
    for engine in started:
        log = engine.log()
        engine.stop()
        assert "Traceback" not in log, log[-3000:]


# -- clients ---------------------------------------------------------------------------------------

def tls_connect(engine: RunningEngine, source: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", engine.admin_port), timeout=10,
                                   source_address=(source, 0))
    return engine.admin_tls_context().wrap_socket(raw, server_hostname="127.0.0.1")


def read_until_closed(sock: socket.socket, limit: float = 30.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or `limit` passes (False)."""
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except (ConnectionError, ssl.SSLError):
        pass
    return data, True


def _complete(data: bytes) -> bool:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value)
    return False


def exchange(engine: RunningEngine, payload: bytes) -> tuple[bytes, bool]:
    """Send `payload`; read until the server closes (True) or one whole answer arrived on a
    connection it keeps open (False)."""
    with tls_connect(engine) as sock:
        try:
            sock.sendall(payload)
        except (ConnectionError, ssl.SSLError):
            pass  # cut while sending: what the server answered, if anything, is still read
        sock.settimeout(30)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
                if _complete(data):
                    return data, False
        except (ConnectionError, ssl.SSLError):
            pass
        return data, True


def statuses(raw: bytes) -> list[int]:
    """Status codes of the HTTP responses in `raw`, in order (aiohttp answers a head it could
    not parse as HTTP/1.0)."""
    return [int(code) for code in re.findall(rb"(?:^|\n)HTTP/1\.[01] (\d{3}) ", raw)]


def sip_options_udp(engine: RunningEngine) -> int:
    client = UdpClient(engine.sip_port)
    try:
        return client.exchange(client.request("OPTIONS", "sip:vaultpbx.test", user="probe"),
                               timeout=5).status
    finally:
        client.close()


def sip_options_tcp(engine: RunningEngine) -> int:
    with socket.create_connection(("127.0.0.1", engine.sip_port), timeout=5) as sock:
        port = sock.getsockname()[1]
        sock.sendall((
            f"OPTIONS sip:vaultpbx.test SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP 127.0.0.1:{port};branch=z9hG4bK-opt{port}\r\n"
            f"From: <sip:probe@vaultpbx.test>;tag=p{port}\r\nTo: <sip:probe@vaultpbx.test>\r\n"
            f"Call-ID: opt-{port}@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "SIP over TCP closed without an answer"
            head += chunk
        return int(head.split(b" ", 2)[1])


def sip_answers(engine: RunningEngine) -> tuple[int, int]:
    return sip_options_udp(engine), sip_options_tcp(engine)


def admin_metric(engine: RunningEngine, name: str) -> float:
    return engine.metrics()[f"vaultpbx_admin_http_{name}"]


def wait_for(predicate: Callable[[], bool], limit: float = 30.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def open_descriptors(engine: RunningEngine) -> int:
    return len(os.listdir(f"/proc/{engine.process.pid}/fd"))


# -- malformed requests ----------------------------------------------------------------------------

HEAD = b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
BAD_REQUESTS = {
    "content-length-abc": HEAD + b"Content-Length: abc\r\n\r\n{}",
    "content-length-negative": HEAD + b"Content-Length: -5\r\n\r\n{}",
    "content-length-twice": HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "length-and-chunked": HEAD + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"2\r\n{}\r\n0\r\n\r\n",
    "bad-chunk-size": HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "not-http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n",
    "bad-request-line": b"GET\r\n\r\n",
    "line-too-long": b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    "head-too-large": b"GET /health HTTP/1.1\r\n" + b"".join(
        b"X-Filler-%d: %s\r\n" % (n, b"b" * 200) for n in range(100)) + b"\r\n",
    "body-too-large": HEAD + b"Content-Length: 200000\r\n\r\n" + b"x" * 200000,
    "chunked-too-large": HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(
        b"4000\r\n" + b"x" * 0x4000 + b"\r\n" for _ in range(16)) + b"0\r\n\r\n",
    "bad-json": HEAD + b"Content-Length: 9\r\n\r\n{not json",
    "bad-utf8": HEAD + b"Content-Length: 4\r\n\r\n\xff\xfe\xfd\xfc",
    "unknown-path": b"GET /%00%ff/../.. HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown-method": b"BREW /login HTTP/1.1\r\nHost: x\r\n\r\n",
}


def test_malformed_requests_get_4xx_or_a_closed_connection(
        make_engine: Callable[..., RunningEngine]) -> None:
    engine = make_engine(max_body_size=65536)
    seen: dict[str, list[int]] = {}
    for name, payload in BAD_REQUESTS.items():
        answer, closed = exchange(engine, payload)
        seen[name] = codes = statuses(answer)
        assert closed or codes, name  # an answer, or a closed connection: nothing hangs
        assert all(400 <= code < 500 for code in codes), (name, answer[:300])
        assert len(codes) <= 1, (name, answer[:300])
    assert seen["content-length-abc"] == [400]
    assert seen["length-and-chunked"] == [400]  # request smuggling: refused, not guessed
    assert seen["body-too-large"] == [413] and seen["chunked-too-large"] == [413]
    assert seen["bad-json"] == [400] and seen["bad-utf8"] == [400]
    assert seen["head-too-large"] in ([], [400], [431])
    metrics = engine.metrics()
    assert metrics["vaultpbx_admin_http_bad_requests_total"] >= 8
    assert metrics["vaultpbx_admin_http_errors_total"] == 0
    assert metrics["vaultpbx_admin_errors_total"] == 0
    assert sip_answers(engine) == (200, 200)


def test_a_chunked_body_is_one_request(make_engine: Callable[..., RunningEngine]) -> None:
    """A chunked login followed by a pipelined GET: exactly two answers, in order (the old
    server read the chunks as a second request and answered three times)."""
    engine = make_engine()
    login = json.dumps({"user": "nobody", "password": "x"}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                       for part in (login[:7], login[7:])) + b"0\r\n\r\n"
    with tls_connect(engine) as sock:
        sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked
                     + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer, closed = read_until_closed(sock)
    assert closed and statuses(answer) == [401, 200], answer
    assert b'{"error": "invalid credentials"}' in answer


# -- slow and idle clients -------------------------------------------------------------------------

def test_slowloris_heads_bodies_and_idle_connections_are_cut(
        make_engine: Callable[..., RunningEngine]) -> None:
    engine = make_engine(header_timeout=1.0, idle_timeout=2.0)
    # A head sent one byte at a time, each well within any per-read timeout: cut as a whole.
    slow = tls_connect(engine)
    slow.sendall(b"GET /health HTTP/1.1\r\n")
    cut = False
    for byte in b"X-Slow: " + b"a" * 200:
        try:
            slow.sendall(bytes([byte]))
        except (ConnectionError, ssl.SSLError):
            cut = True
            break
        readable, _, _ = select.select([slow], [], [], 0.2)
        if readable:
            data, cut = read_until_closed(slow, 5)
            assert statuses(data) == [], data
            break
    slow.close()
    assert cut
    assert wait_for(lambda: admin_metric(engine, "header_timeouts_total") == 1)

    # A body that never completes: 408, and the connection is closed.
    with tls_connect(engine) as sock:
        sock.sendall(HEAD + b"Content-Length: 100\r\n\r\n{\"user\"")
        answer, closed = read_until_closed(sock)
    assert closed and statuses(answer) == [408]
    assert admin_metric(engine, "body_timeouts_total") == 1

    # An idle keep-alive connection after one good request, and a connection that never sends.
    idle = tls_connect(engine)
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer, closed = read_until_closed(idle)
    assert closed and statuses(answer) == [200]
    silent = tls_connect(engine)
    _, closed = read_until_closed(silent)
    assert closed
    idle.close()
    silent.close()
    assert admin_metric(engine, "idle_timeouts_total") == 2
    assert sip_answers(engine) == (200, 200)


# -- connection budget -----------------------------------------------------------------------------

def _open_many(sources: list[str], per_source: int, port: int) -> list[socket.socket]:
    sockets = []
    for source in sources:
        for _ in range(per_source):
            sock = socket.socket()
            sock.bind((source, 0))
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sockets.append(sock)
    return sockets


def _closed_by_server(sock: socket.socket) -> bool:
    """The server closed this connection (EOF or reset); False while it holds it open."""
    try:
        return sock.recv(1) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except ConnectionError:
        return True
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:  # the SYN still waits in a full accept queue
            return False
        raise


def test_two_thousand_connections_stay_within_the_budget_and_sip_answers(
        make_engine: Callable[..., RunningEngine]) -> None:
    """2,000 connections that never start their TLS handshake, 100 from each of 20 sources,
    against a budget of 300 (50 per source): 300 are held, 1,700 closed at accept; the engine's
    descriptors stay within the budget; SIP answers OPTIONS over UDP and TCP meanwhile; when the
    clients go, the admin API serves again and /metrics counts every refusal."""
    engine = make_engine(max_connections=300, max_connections_per_source=50,
                         header_timeout=120.0, max_new_connections_per_second=10_000,
                         max_new_connections_per_source_per_second=10_000)
    assert sip_answers(engine) == (200, 200)
    baseline = open_descriptors(engine)
    sockets = _open_many([f"127.0.9.{n}" for n in range(1, 21)], 100, engine.admin_port)
    closed: set[int] = set()

    def count_closed() -> int:
        for index, sock in enumerate(sockets):
            if index not in closed and _closed_by_server(sock):
                closed.add(index)
        return len(closed)

    try:
        assert sip_answers(engine) == (200, 200)
        assert wait_for(lambda: count_closed() >= 1700, limit=60)
        assert sip_answers(engine) == (200, 200)
        assert count_closed() == 1700  # the 300 admitted ones are still held
        held = open_descriptors(engine) - baseline
        assert 290 <= held <= 300 + 5, held  # (give or take a SIP probe connection)
        # The budget is the admin API's alone: at it, even a well-behaved admin is refused.
        assert not _reachable(engine)
    finally:
        for sock in sockets:
            sock.close()
    assert wait_for(lambda: _reachable(engine))
    metrics = engine.metrics()
    assert metrics["vaultpbx_admin_http_connections_refused_budget_total"] >= 1
    assert (metrics["vaultpbx_admin_http_connections_refused_budget_total"]
            + metrics["vaultpbx_admin_http_connections_refused_per_source_total"]) >= 1700
    assert metrics["vaultpbx_admin_http_tls_handshake_failures_total"] >= 300
    assert metrics["vaultpbx_admin_http_connections_refused_rate_total"] == 0
    assert wait_for(lambda: open_descriptors(engine) <= baseline + 5)
    assert sip_answers(engine) == (200, 200)


def _reachable(engine: RunningEngine) -> bool:
    try:
        engine.health()
    except OSError:
        return False
    return True


def test_one_source_gets_its_share_and_idle_tls_sessions_are_closed(
        make_engine: Callable[..., RunningEngine]) -> None:
    """Completed TLS sessions from one address: 20 allowed, the rest refused at accept (their
    handshake fails); the 20 are closed when idle; another address is never affected."""
    engine = make_engine(max_connections_per_source=20, idle_timeout=3.0)
    held: list[ssl.SSLSocket] = []
    failed = 0
    for _ in range(30):
        try:
            held.append(tls_connect(engine, "127.0.8.1"))
        except (ConnectionError, ssl.SSLError, OSError):
            failed += 1
    assert (len(held), failed) == (20, 10)
    assert engine.health()["status"] == "ok"  # from 127.0.0.1: its own share
    assert sip_answers(engine) == (200, 200)
    for sock in held:
        _, closed = read_until_closed(sock)
        assert closed
        sock.close()
    metrics = engine.metrics()
    assert metrics["vaultpbx_admin_http_connections_refused_per_source_total"] == 10
    assert metrics["vaultpbx_admin_http_idle_timeouts_total"] >= 20


def test_a_storm_of_new_connections_is_paced(make_engine: Callable[..., RunningEngine]) -> None:
    """Short TLS connections opened back to back from one address (each handshake costs the
    event loop CPU): beyond its rate the address is refused at accept; another address, and
    SIP, are not affected; the refusals are counted."""
    engine = make_engine(max_new_connections_per_source_per_second=5)
    before = engine.metrics()  # from 127.0.0.1, which the storm below does not use
    completed = refused = 0
    for _ in range(40):
        try:
            with tls_connect(engine, "127.0.7.1") as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer, _ = read_until_closed(sock)
                assert statuses(answer) == [200]
                completed += 1
        except (ConnectionError, ssl.SSLError, OSError):
            refused += 1
    # A burst of two seconds' worth, plus what the rate refilled while the storm lasted.
    assert 10 <= completed < 40 and refused == 40 - completed
    assert engine.health()["status"] == "ok"
    assert sip_answers(engine) == (200, 200)
    after = engine.metrics()
    assert (after["vaultpbx_admin_http_connections_refused_source_rate_total"]
            - before["vaultpbx_admin_http_connections_refused_source_rate_total"]) == refused


def test_out_of_tokens_the_listener_waits_instead_of_refusing_each_attempt(
        make_engine: Callable[..., RunningEngine]) -> None:
    """A storm from many addresses, each far below its own rate, against a total of 5 new
    connections per second: past the burst the listener stops accepting until the next token
    (the kernel queues the attempts), so it refuses about one attempt per admitted one instead
    of spending an accept and a close on every attempt of the storm."""
    engine = make_engine(max_new_connections_per_second=5)
    before = engine.metrics()
    completed = refused = 0
    for n in range(40):
        try:
            with tls_connect(engine, f"127.0.5.{n % 20 + 1}"):
                completed += 1
        except (ConnectionError, ssl.SSLError, OSError):
            refused += 1
    scraped: list[dict[str, float]] = []

    def scrape() -> bool:  # /metrics too needs a token: it may be refused once more
        try:
            scraped.append(engine.metrics())
        except OSError:
            return False
        return True

    assert wait_for(scrape)
    after = scraped[0]
    rate_refusals = (after["vaultpbx_admin_http_connections_refused_rate_total"]
                     - before["vaultpbx_admin_http_connections_refused_rate_total"])
    assert completed >= 10 + 5  # the burst, then the rate: the clients waited, they got in
    assert refused <= completed and rate_refusals >= refused
    assert sip_answers(engine) == (200, 200)
