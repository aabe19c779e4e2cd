"""SIP abuse defence on a real engine process (issue 6): the flood guard before parsing, bans
(rate, scanners, password guessing) and their expiry, the fail2ban line, and no extension
enumeration.

Every attacker has its own loopback address (127.0.0.2 and up); the legitimate load generator is
127.0.0.1. The engine listens on 127.0.0.1 only, so these are all "remote" sources to it.
Each run is bounded: floods by a duration, SIPp by -timeout and a kill deadline, every wait for
an answer by a socket timeout.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from vaultpbx.sip.digest import build_authorization
from vaultpbx.sip.message import Response
from vaultpbx.sip.parser import parse_message

from tests.integration.engine import RunningEngine, free_port, start_engine
from tests.integration.sipclient import UdpClient
from tests.integration.sipp import SIPP, SippRunner

pytestmark = [
    pytest.mark.integration,
]

DOMAIN = "vaultpbx.test"
PASSWORD = "pw-1001-Secret"
EXTENSIONS = {"1001": {"password": PASSWORD}, "1002": {"password": "pw-1002-Secret"}}

# The message part of fail2ban's stock asterisk filter (filter.d/asterisk.conf), with <HOST>
# spelled out as fail2ban expands it. A fail2ban jail on the engine's JSON log uses this on the
# "event" field.
FAIL2BAN_ASTERISK = re.compile(
    r"Registration from '[^']*' failed for '(?P<host>[\w\-.^_:]+?)(?::\d+)?' - "
    r"(?:Wrong password|Username/auth name mismatch|No matching peer found|Not a local domain|"
    r"Device does not match ACL|Peer is not supposed to register|"
    r"ACL error \(permit/deny\))$")


# ------------------------------------------------------------------------------------------------
# helpers
@pytest.fixture
def engines() -> Iterator[list[RunningEngine]]:
    started: list[RunningEngine] = []
    yield started
    for engine in started:
        engine.stop(timeout=10)


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippRunner]:
    # A missing SIPp is a broken setup (scripts/setup.sh installs it), never a skip.
    assert SIPP is not None, "sipp (Debian sip-tester) is not installed: run make test"
    runner = SippRunner(tmp_path / "sipp")
    yield runner
    runner.cleanup()


def guard_config(**settings: object) -> dict:
    """Flood guard settings; only 127.0.0.1 (the load generator and the SIPp UAS) is trusted."""
    return {"security": {"floodguard": {"trusted": ["127.0.0.1/32"], **settings}}}


def start(engines: list[RunningEngine], tmp_path: Path, overrides: dict) -> RunningEngine:
    base = {
        "sip": {"digest_algorithms": ["MD5"]},
        "extensions": EXTENSIONS,
        "dialplan": [{"match": r"1\d{3}", "extension": r"\g<0>"}],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}  # type: ignore[dict-item]
        else:
            base[key] = value
    engine = start_engine(tmp_path, base)
    engines.append(engine)
    return engine


def guard(engine: RunningEngine) -> dict[str, float]:
    """The flood guard's metrics, short names: bans, dropped_banned, rate_limited, ..."""
    return {name.removeprefix("vaultpbx_floodguard_").removesuffix("_total"): value
            for name, value in engine.metrics().items()
            if name.startswith("vaultpbx_floodguard_") and not name.endswith("_created")}


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def options(client: UdpClient, user_agent: str | None = None, from_name: str = "") -> bytes:
    n = int(time.monotonic() * 1e6)
    ua = f"User-Agent: {user_agent}\r\n" if user_agent else ""
    return (
        f"OPTIONS sip:100@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {client.host}:{client.port};branch=z9hG4bK-o{n};rport\r\n"
        f"From: {from_name}<sip:100@{client.host}>;tag=o{n}\r\n"
        f"To: <sip:100@{DOMAIN}>\r\nCall-ID: opt-{n}@{client.host}\r\nCSeq: 1 OPTIONS\r\n"
        f"Max-Forwards: 70\r\n{ua}Content-Length: 0\r\n\r\n").encode()


def answered(client: UdpClient, data: bytes, timeout: float = 1.0) -> Response | None:
    """The final response to `data`, or None when nothing comes back within `timeout`."""
    try:
        return client.exchange(data, timeout=timeout)
    except TimeoutError:
        return None


def drain(sock: socket.socket, call_ids: set[bytes] | None = None) -> int:
    """Read whatever is waiting; collect the Call-IDs answered into `call_ids`."""
    sock.setblocking(False)
    n = 0
    try:
        while True:
            data = sock.recv(65535)
            n += 1
            if call_ids is not None:
                match = _CALL_ID.search(data)
                if match:
                    call_ids.add(match.group(1))
    except BlockingIOError:
        return n


_CALL_ID = re.compile(rb"\r\nCall-ID: *([^\r]+)", re.IGNORECASE)


@dataclass
class FloodResult:
    sent: int
    seconds: float
    answers: int
    answered: set[bytes]
    """Call-IDs answered: each flood datagram is a new transaction with its own Call-ID."""

    @property
    def rate(self) -> float:
        return self.sent / self.seconds


def flood(port: int, source: str, rate: float, seconds: float) -> FloodResult:
    """Blast INVITEs and REGISTERs (alternating, each a new transaction) from `source` at
    `rate` datagrams/s for `seconds`, counting the answers that come back."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((source, 0))
    me = sock.getsockname()[1]
    templates = []
    for method, ruri in (("INVITE", f"sip:5551234@{DOMAIN}"), ("REGISTER", f"sip:{DOMAIN}")):
        templates.append((
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {source}:{me};branch=z9hG4bK-fl%d;rport\r\n"
            f"From: <sip:1001@{DOMAIN}>;tag=fl%d\r\nTo: <sip:1001@{DOMAIN}>\r\n"
            f"Call-ID: flood-%d@{source}\r\nCSeq: 1 {method}\r\n"
            f"Contact: <sip:1001@{source}:{me}>\r\nMax-Forwards: 70\r\n"
            f"User-Agent: load-of-junk\r\nContent-Length: 0\r\n\r\n").encode())
    target = ("127.0.0.1", port)
    tick = 0.005
    per_tick = max(1, round(rate * tick))
    sent = answers = 0
    answered: set[bytes] = set()
    start = time.monotonic()
    next_tick = start
    try:
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                break
            if now < next_tick:
                time.sleep(next_tick - now)
            next_tick += tick
            for _ in range(per_tick):
                sock.sendto(templates[sent & 1] % (sent, sent, sent), target)
                sent += 1
            answers += drain(sock, answered)
        elapsed = time.monotonic() - start
        time.sleep(0.3)
        answers += drain(sock, answered)
    finally:
        sock.close()
    return FloodResult(sent, elapsed, answers, answered)


# ------------------------------------------------------------------------------------------------
# 1. A flood from 127.0.0.2 while legitimate SIPp calls from 127.0.0.1 go through a trunk
@pytest.mark.parametrize("legitimate", ["trusted", "below-the-rate"])
def test_flood_is_banned_while_legitimate_calls_complete(
        legitimate: str, sipp: SippRunner, engines: list[RunningEngine], tmp_path: Path) -> None:
    """`trusted`: 127.0.0.1 is in floodguard.trusted (loadtest.yaml). `below-the-rate`: nothing
    is trusted; 127.0.0.1 (SIPp UAC and UAS together, ~6 datagrams per call at 50 calls/s) stays
    below a per-source rate that the flooder's 3,000 datagrams/s exceed."""
    uas_port = free_port()
    settings: dict = ({"rate": 50, "burst": 200} if legitimate == "trusted"
                      else {"rate": 1000, "burst": 1000, "trusted": []})
    engine = start(engines, tmp_path, {
        "auth": {"trusted_sources": ["127.0.0.1"]},  # the load generator, as in loadtest.yaml
        "trunks": {"uas": {"target": f"sip:127.0.0.1:{uas_port}", "transport": "udp"}},
        "dialplan": [{"match": ".*", "trunk": "uas"}],
        "logging": {"level": "warning"},
        **guard_config(ban_seconds=120, **settings),
    })
    burst = settings["burst"]
    calls, cps, flood_rate = 300, 50, 3000
    uas = sipp.start("uas", scenario="uas", port=uas_port, calls=calls, timeout=40,
                     trace_msg=False)
    time.sleep(0.2)
    uac = sipp.start("uac", scenario="uac", remote=f"127.0.0.1:{engine.sip_port}",
                     port=free_port(), calls=calls, rate=cps, timeout=40, trace_msg=False,
                     extra=["-d", "500"])
    time.sleep(0.5)  # calls are flowing; now the flood starts
    result: list[FloodResult] = []
    flooder = threading.Thread(target=lambda: result.append(
        flood(engine.sip_port, "127.0.0.2", rate=flood_rate, seconds=4.0)))
    flooder.start()
    flooder.join(15)
    assert not flooder.is_alive()
    [flooded] = result
    uac_result, uas_result = uac.wait(), uas.wait(15)

    # The flooder was banned after its burst: almost everything it sent was dropped unparsed.
    assert flooded.sent >= 8000, flooded
    metrics = engine.metrics()
    g = guard(engine)
    assert g["bans"] == 1 and g["rate_limited"] >= 1, g
    assert g["banned_sources"] == 1, g
    # Admitted: the bucket (burst) plus what refilled while the flood emptied it.
    admitted = flooded.sent - g["dropped_banned"] - g["rate_limited"]
    assert admitted <= 1.2 * burst * flood_rate / (flood_rate - settings["rate"]) + 50, (
        admitted, g)
    assert metrics["vaultpbx_transport_dropped_by_guard_total"] == flooded.sent - admitted
    # Every admitted request was answered (401/407), none of the dropped ones.
    assert len(flooded.answered) == admitted, (len(flooded.answered), admitted)
    # Legitimate calls: at least 99% complete (in practice all of them).
    assert uac_result.successful >= 0.99 * calls, uac_result.describe()
    assert uac_result.successful + uac_result.failed == calls, uac_result.describe()
    assert uas_result.successful >= 0.99 * calls, uas_result.describe()
    assert metrics["vaultpbx_calls_answered_total"] >= 0.99 * calls
    # A source that was not flooding (127.0.0.3) is not affected by the ban on 127.0.0.2.
    other = UdpClient(engine.sip_port, host="127.0.0.3")
    flooder_again = UdpClient(engine.sip_port, host="127.0.0.2")
    try:
        reply = answered(other, options(other))
        assert reply is not None and reply.status == 200
        assert answered(flooder_again, options(flooder_again), timeout=0.5) is None
    finally:
        other.close()
        flooder_again.close()


# ------------------------------------------------------------------------------------------------
# 2. Password guessing: banned after `auth_failures`, one fail2ban line per failure
def test_password_guessing_is_banned_and_logged(engines: list[RunningEngine],
                                                tmp_path: Path) -> None:
    engine = start(engines, tmp_path, guard_config(auth_failures=6, auth_window=60,
                                                   auth_ban_seconds=120))
    guesser = UdpClient(engine.sip_port, host="127.0.0.3")
    legit = UdpClient(engine.sip_port, host="127.0.0.4")
    try:
        # Five wrong passwords for an existing extension and one for a user that does not
        # exist: all six are refused alike (401 with a fresh challenge).
        for i, user in enumerate(["1001"] * 5 + ["7777"]):
            reply = guesser.register(user, f"guess-{i}")
            assert reply.status == 401, reply
        # Banned now: the next request, even a harmless OPTIONS, gets no answer at all.
        assert answered(guesser, options(guesser)) is None
        call_id = f"reg-1001-{guesser.port}"
        guesser.cseq[call_id] += 1
        assert answered(guesser, guesser.request(
            "REGISTER", f"sip:{DOMAIN}", user="1001", call_id=call_id,
            cseq=guesser.cseq[call_id])) is None
        # ... even with the right password: a ban is a ban.
        with pytest.raises(TimeoutError):
            guesser.register("1001", PASSWORD)
        # Another source with the right password is not affected.
        assert legit.register("1001", PASSWORD).status == 200
        g = guard(engine)
        assert g["auth_bans"] == 1 and g["bans"] == 1 and g["dropped_banned"] >= 3, g
        assert engine.metrics()["vaultpbx_auth_failures_total"] == 6
    finally:
        guesser.close()
        legit.close()
    # One fail2ban-matchable line per failure, naming the guesser's address and port.
    assert wait_for(lambda: len(auth_lines(engine)) >= 6)
    lines = auth_lines(engine)
    assert len(lines) == 6, lines
    for record in lines:
        match = FAIL2BAN_ASTERISK.fullmatch(record["event"])
        assert match is not None, record
        assert match["host"] == "127.0.0.3", record
        assert f"'127.0.0.3:{guesser.port}'" in record["event"]
        assert record["level"] == "warning" and record["source"] == "127.0.0.3"
    events = [record["event"] for record in lines]
    assert sum("'1001'" in e and e.endswith("Wrong password") for e in events) == 5, events
    assert sum("'7777'" in e and e.endswith("No matching peer found") for e in events) == 1
    assert [record["reason"] for record in lines] == ["bad-response"] * 5 + ["unknown-user"]
    # Real fail2ban, where installed, finds the guesser six times and nobody else.
    hosts = fail2ban_hosts(engine, tmp_path)
    assert hosts is None or hosts == ["127.0.0.3"] * 6, hosts
    # The passwords tried never reach the log.
    text = engine.log()
    assert "guess-" not in text and PASSWORD not in text


# The same regex as a fail2ban filter for the engine's JSON log (the stock asterisk filter's
# message part, matched inside the "event" field).
FAIL2BAN_FILTER = """[Definition]
failregex = "event": "Registration from '[^']*' failed for '<HOST>(:\\d+)?' - (?:Wrong password|\
Username/auth name mismatch|No matching peer found|Not a local domain|Device does not match ACL|\
Peer is not supposed to register|ACL error \\(permit/deny\\))"
datepattern = "timestamp": "%%Y-%%m-%%dT%%H:%%M:%%S\\.%%fZ"
"""


def fail2ban_hosts(engine: RunningEngine, tmp_path: Path) -> list[str] | None:
    """The addresses real fail2ban (`fail2ban-regex`, Debian package fail2ban) finds in the
    engine's log, one per matched line; None when fail2ban is not installed."""
    tool = shutil.which("fail2ban-regex")
    if tool is None:
        return None
    conf = tmp_path / "vaultpbx-f2b.conf"
    conf.write_text(FAIL2BAN_FILTER)
    out = subprocess.run([tool, "-o", "<ip>", str(engine.log_path), str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def auth_lines(engine: RunningEngine) -> list[dict]:
    records = []
    for line in engine.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if str(record.get("event", "")).startswith("Registration from "):
            records.append(record)
    return records


def test_auth_failure_line_cannot_be_forged_by_the_username(engines: list[RunningEngine],
                                                            tmp_path: Path) -> None:
    """The username is the attacker's text: it must not make the line name another address
    (fail2ban would then ban a victim instead of the guesser)."""
    engine = start(engines, tmp_path, guard_config(auth_failures=50))
    guesser = UdpClient(engine.sip_port, host="127.0.0.5")
    try:
        # The To is a plain AOR; the digest username (a quoted string) carries the forgery.
        forged = "x' failed for '127.109.8.7:5060' - Wrong password"
        uri = f"sip:{DOMAIN}"
        first = guesser.exchange(guesser.request("REGISTER", uri, user="1001", call_id="forge"))
        auth = build_authorization(first.get("www-authenticate") or "", "REGISTER", uri,
                                   forged, "nope", "cn1", 1)
        reply = guesser.exchange(guesser.request("REGISTER", uri, user="1001", call_id="forge",
                                                 cseq=2, extra=f"Authorization: {auth}\r\n"))
        assert reply.status == 401, reply
    finally:
        guesser.close()
    assert wait_for(lambda: len(auth_lines(engine)) >= 1)
    [record] = auth_lines(engine)
    match = FAIL2BAN_ASTERISK.fullmatch(record["event"])
    assert match is not None and match["host"] == "127.0.0.5", record
    assert "127.109.8.7:5060' - " not in record["event"], record
    hosts = fail2ban_hosts(engine, tmp_path)
    assert hosts is None or hosts == ["127.0.0.5"], hosts


# ------------------------------------------------------------------------------------------------
# 3. Scanner user agents: dropped unanswered, source banned
@pytest.mark.parametrize(("source", "user_agent", "from_name"), [
    ("127.0.0.6", "friendly-scanner", ""),
    ("127.0.0.7", "sipvicious", ""),
    ("127.0.0.8", "SIPVicious 0.3.4", ""),
    ("127.0.0.9", None, '"sipvicious" '),  # old SIPVicious: its name in the From display name
])
def test_scanner_user_agents_are_dropped_and_banned(
        source: str, user_agent: str | None, from_name: str,
        engines: list[RunningEngine], tmp_path: Path) -> None:
    engine = start(engines, tmp_path, guard_config(scanner_ban_seconds=120))
    scanner = UdpClient(engine.sip_port, host=source)
    control = UdpClient(engine.sip_port, host="127.0.0.10")
    try:
        assert answered(scanner, options(scanner, user_agent, from_name)) is None
        # The source is banned: a clean request from it gets nothing either.
        assert answered(scanner, options(scanner), timeout=0.5) is None
        assert answered(scanner, scanner.request("REGISTER", f"sip:{DOMAIN}", user="1001"),
                        timeout=0.5) is None
        # Same request without the scanner's name, from elsewhere: answered.
        reply = answered(control, options(control, "Linphone/5.2"))
        assert reply is not None and reply.status == 200
        g = guard(engine)
        assert g["scanners"] == 1 and g["bans"] == 1 and g["banned_sources"] == 1, g
        assert g["dropped_banned"] == 2, g
        assert engine.metrics()["vaultpbx_sip_parse_errors_total"] == 0
    finally:
        scanner.close()
        control.close()


def test_scanner_over_tcp_is_cut_off(engines: list[RunningEngine], tmp_path: Path) -> None:
    engine = start(engines, tmp_path, guard_config(scanner_ban_seconds=120))
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.settimeout(2)
    conn.bind(("127.0.0.11", 0))
    conn.connect(("127.0.0.1", engine.sip_port))
    host, port = conn.getsockname()
    try:
        conn.sendall(
            f"OPTIONS sip:100@{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bK-tcpscan\r\n"
            f"From: <sip:100@{host}>;tag=s1\r\nTo: <sip:100@{DOMAIN}>\r\n"
            f"Call-ID: tcpscan@{host}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            f"User-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n".encode())
        conn.settimeout(1.0)
        with pytest.raises(TimeoutError):
            conn.recv(4096)  # no answer on the connection
    finally:
        conn.close()
    # A new connection from the banned source is closed at once, before any data.
    again = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    again.settimeout(2)
    again.bind(("127.0.0.11", 0))
    try:
        again.connect(("127.0.0.1", engine.sip_port))
        try:
            assert again.recv(4096) == b""  # closed by the engine
        except ConnectionResetError:
            pass
    finally:
        again.close()
    g = guard(engine)
    assert g["scanners"] == 1 and g["bans"] == 1 and g["dropped_banned"] >= 1, g


# ------------------------------------------------------------------------------------------------
# 4. Known and unknown users get the same answers
_VOLATILE = re.compile(
    r'(nonce|opaque|cnonce|branch|tag|received|rport)=("[^"]*"|[^;,\s]*)', re.IGNORECASE)


def shape(raw: bytes, user: str) -> list[str]:
    """The response as it went over the wire, line by line (start line, every header name and
    value in order, body), with nonces, tags, branches, Call-IDs and the user name blanked."""
    lines = []
    for line in raw.decode().split("\r\n"):
        line = _VOLATILE.sub(r"\1=*", line).replace(user, "USER")
        line = re.sub(r"127\.0\.0\.\d+:\d+", "ADDR", line)
        if line.lower().startswith(("call-id:", "i:")):
            line = "Call-ID: *"
        lines.append(line)
    return lines


def final_raw(client: UdpClient, data: bytes, timeout: float = 2.0) -> tuple[bytes, Response]:
    client.sock.settimeout(timeout)
    client.sock.sendto(data, client.server)
    while True:
        raw, _ = client.sock.recvfrom(65535)
        message = parse_message(raw)
        if isinstance(message, Response) and message.status >= 200:
            return raw, message


def probe(client: UdpClient, method: str, user: str, password: str | None
          ) -> tuple[bytes, Response]:
    """One request for `user` (REGISTER for its AOR, or INVITE from it), answered with a
    properly computed digest for `password` when given; the final answer, raw and parsed."""
    ruri = f"sip:{DOMAIN}" if method == "REGISTER" else f"sip:1002@{DOMAIN}"
    call_id = f"probe-{user}-{time.monotonic_ns()}"
    raw, reply = final_raw(client, client.request(method, ruri, user=user, call_id=call_id))
    if method == "INVITE":
        ack(client, reply, ruri, user, call_id, 1)
    if password is None:
        return raw, reply
    header, answer = (("www-authenticate", "Authorization") if reply.status == 401
                      else ("proxy-authenticate", "Proxy-Authorization"))
    auth = build_authorization(reply.get(header) or "", method, ruri, user, password, "cn1", 1)
    raw, reply = final_raw(client, client.request(
        method, ruri, user=user, call_id=call_id, cseq=2, extra=f"{answer}: {auth}\r\n"))
    if method == "INVITE":
        ack(client, reply, ruri, user, call_id, 2)
    return raw, reply


def ack(client: UdpClient, reply: Response, ruri: str, user: str, call_id: str,
        cseq: int) -> None:
    """ACK a non-2xx final answer to an INVITE (same branch and From as the INVITE), so the
    engine stops retransmitting it."""
    via = reply.get("via") or ""
    to = reply.get("to") or ""
    from_ = reply.get("from") or ""
    client.sock.sendto((
        f"ACK {ruri} SIP/2.0\r\nVia: {via}\r\nFrom: {from_}\r\nTo: {to}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} ACK\r\nMax-Forwards: 70\r\n"
        f"Content-Length: 0\r\n\r\n").encode(), client.server)


def test_known_and_unknown_users_are_indistinguishable(engines: list[RunningEngine],
                                                       tmp_path: Path) -> None:
    engine = start(engines, tmp_path, guard_config(auth_failures=1000))
    client = UdpClient(engine.sip_port, host="127.0.0.12")
    try:
        for method in ("REGISTER", "INVITE"):
            expected = 401 if method == "REGISTER" else 407
            for password in (None, "wrong-password"):
                known_raw, known = probe(client, method, "1001", password)
                unknown_raw, unknown = probe(client, method, "1009", password)
                assert known.status == unknown.status == expected, (known, unknown)
                assert known.reason == unknown.reason
                assert shape(known_raw, "1001") == shape(unknown_raw, "1009"), (
                    method, password, known_raw, unknown_raw)
        # A user name that cannot be an extension at all gets the same answer too.
        odd_raw, _ = probe(client, "REGISTER", "x" * 40, "wrong-password")
        known_raw, _ = probe(client, "REGISTER", "1002", "wrong-password")
        assert shape(odd_raw, "x" * 40) == shape(known_raw, "1002")
        assert engine.metrics()["vaultpbx_auth_failures_total"] == 6
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------
# 5. Bans expire
def test_bans_expire(engines: list[RunningEngine], tmp_path: Path) -> None:
    engine = start(engines, tmp_path, guard_config(
        rate=20, burst=20, ban_seconds=2, scanner_ban_seconds=2, auth_failures=3,
        auth_ban_seconds=2))
    flooder = UdpClient(engine.sip_port, host="127.0.0.13")
    scanner = UdpClient(engine.sip_port, host="127.0.0.14")
    guesser = UdpClient(engine.sip_port, host="127.0.0.15")
    try:
        for _ in range(60):
            flooder.sock.sendto(options(flooder), flooder.server)
        time.sleep(0.3)
        drain(flooder.sock)
        assert answered(scanner, options(scanner, "friendly-scanner")) is None
        for i in range(3):
            assert guesser.register("1001", f"guess-{i}").status == 401
        banned_at = time.monotonic()
        # Read the gauge while all three bans are live: the housekeeping sweep (once a second,
        # at a phase the test does not control) drops a ban from it as soon as it expires.
        assert guard(engine)["banned_sources"] == 3
        for client in (flooder, scanner, guesser):
            assert answered(client, options(client), timeout=0.5) is None, client.host
        # ban_seconds = 2: a little later all three are answered again.
        time.sleep(max(0.0, banned_at + 2.3 - time.monotonic()))
        for client in (flooder, scanner, guesser):
            reply = answered(client, options(client))
            assert reply is not None and reply.status == 200, client.host
        assert guesser.register("1001", PASSWORD).status == 200
        # The housekeeping sweep drops the expired entries from the table (and the gauge).
        assert wait_for(lambda: guard(engine)["banned_sources"] == 0, timeout=3)
        g = guard(engine)
        assert g["bans"] == 3 and g["auth_bans"] == 1 and g["scanners"] == 1, g
    finally:
        for client in (flooder, scanner, guesser):
            client.close()
