"""Registration and calls over UDP with pyVoIP 1.6.8 and a raw UDP client as the peers.

What pyVoIP 1.6.8 does with digest auth decides what can be tested with it unchanged:
- it answers a challenge in RFC 2069 style (no qop, nc, cnonce) although the challenge offers
  qop="auth" (RFC 2617 §3.2.2 makes qop mandatory then), and its digest-uri carries
  ";transport=UDP" where the Request-URI has none. The engine refuses such credentials with
  400 Bad Authorization, so stock pyVoIP never registers (test_stock_pyvoip_...);
- on an INVITE it only handles 401, not the 407 a proxy/B2BUA sends, and its ACK for a 2xx
  carries a made-up To tag, so it cannot place calls through the engine.
`QopVoIPPhone` keeps pyVoIP's whole REGISTER flow and replaces only its Authorization line with a
qop=auth one (computed here, independently of the engine's digest code). With it pyVoIP
registers, and a pjsua2 UA (over UDP, in its own process) calls the pyVoIP phone.

The raw client checks what pyVoIP hides: the exact answers, and that an unknown user and a known
user with a wrong password get answers that cannot be told apart.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest
import pyVoIP
from pyVoIP.VoIP import CallState, PhoneStatus, VoIPCall, VoIPPhone

from tests.integration.engine import RunningEngine, free_port, start_engine
from tests.integration.pjsua_peer import PeerProcess

pytestmark = pytest.mark.integration

DOMAIN = "vaultpbx.test"
PASSWORDS = {"1001": "udp-1001-secret", "1002": "udp-1002-secret", "1003": "udp-1003-secret"}


@pytest.fixture
def engine(tmp_path: Path):
    running = start_engine(tmp_path, {
        "sip": {"domain": DOMAIN},
        "extensions": {user: {"password": pw} for user, pw in PASSWORDS.items()},
        "dialplan": [{"match": r"1\d{3}", "extension": r"\g<0>"}],
    })
    try:
        yield running
    finally:
        running.stop()


# ------------------------------------------------------------------------------------------------
# digest, computed here (not with the engine's code)
def _parse_challenge(value: str) -> dict[str, str]:
    assert value.startswith("Digest "), value
    return {k.lower(): v1 or v2 for k, v1, v2 in
            re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', value[len("Digest "):])}


def digest_authorization(challenge: str, method: str, uri: str, user: str, password: str,
                         *, qop: bool = True) -> str:
    """An Authorization value answering `challenge` (qop=auth, or RFC 2069 style)."""
    params = _parse_challenge(challenge)
    algorithm = params.get("algorithm", "MD5")
    name = {"MD5": "md5", "SHA-256": "sha256"}[algorithm.upper()]

    def h(text: str) -> str:
        return hashlib.new(name, text.encode()).hexdigest()

    ha1 = h(f"{user}:{params['realm']}:{password}")
    ha2 = h(f"{method}:{uri}")
    fields = [f'username="{user}"', f'realm="{params["realm"]}"', f'nonce="{params["nonce"]}"',
              f'uri="{uri}"', f"algorithm={algorithm}"]
    if qop:
        cnonce, nc = uuid.uuid4().hex[:16], "00000001"
        response = h(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}")
        fields += ["qop=auth", f"nc={nc}", f'cnonce="{cnonce}"']
    else:
        response = h(f"{ha1}:{params['nonce']}:{ha2}")
    fields.append(f'response="{response}"')
    return "Digest " + ", ".join(fields)


# ------------------------------------------------------------------------------------------------
# a raw UDP SIP client
class Answer:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head = raw.split(b"\r\n\r\n", 1)[0].decode()
        status_line, *lines = head.split("\r\n")
        _, code, self.reason = status_line.split(" ", 2)
        self.status = int(code)
        self.headers: list[tuple[str, str]] = []
        for line in lines:
            name, _, value = line.partition(":")
            self.headers.append((name.strip().lower(), value.strip()))

    def get(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def shape(self) -> tuple:
        """What may not depend on who asked: status, reason, header names in order, and the
        challenges with their nonces blanked."""
        challenges = tuple(re.sub(r'nonce="[^"]*"', 'nonce=""', v)
                           for n, v in self.headers if n.endswith("-authenticate"))
        return (self.status, self.reason, tuple(n for n, _ in self.headers), challenges,
                self.raw.split(b"\r\n\r\n", 1)[1])


class RawClient:
    def __init__(self, engine: RunningEngine) -> None:
        self.engine = engine
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3)
        self.port = self.sock.getsockname()[1]
        self.cseq = 0
        self.call_id = uuid.uuid4().hex

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, ruri: str, from_user: str, to: str, *,
                extra: list[tuple[str, str]] = (), body: str = "") -> Answer:
        """Send one request; the final answer (100 Trying is skipped)."""
        self.cseq += 1
        branch = "z9hG4bK" + uuid.uuid4().hex
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:{from_user}@{DOMAIN}>;tag={self.call_id[:8]}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} {method}",
            f"Contact: <sip:{from_user}@127.0.0.1:{self.port}>",
            *(f"{name}: {value}" for name, value in extra),
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(),
                         ("127.0.0.1", self.engine.sip_port))
        while True:
            answer = Answer(self.sock.recvfrom(65535)[0])
            if answer.status >= 200:
                if method == "INVITE":  # ACK the non-2xx final answer (same branch, §17.1.1.3)
                    to_value = answer.get("to")[0]
                    ack = "\r\n".join([
                        f"ACK {ruri} SIP/2.0", lines[1], "Max-Forwards: 70", lines[3],
                        f"To: {to_value}", f"Call-ID: {self.call_id}",
                        f"CSeq: {self.cseq} ACK", "Content-Length: 0"]) + "\r\n\r\n"
                    self.sock.sendto(ack.encode(), ("127.0.0.1", self.engine.sip_port))
                return answer

    def register(self, user: str, password: str | None, *, expires: int = 60,
                 qop: bool = True) -> tuple[Answer, Answer | None]:
        """REGISTER, answer the challenge with `password`: (challenge, final answer)."""
        ruri = f"sip:{DOMAIN}"
        to = f"<sip:{user}@{DOMAIN}>"
        extra = [("Expires", str(expires))]
        first = self.request("REGISTER", ruri, user, to, extra=extra)
        if first.status != 401 or password is None:
            return first, None
        challenge = first.get("www-authenticate")[0]
        auth = digest_authorization(challenge, "REGISTER", ruri, user, password, qop=qop)
        return first, self.request("REGISTER", ruri, user, to,
                                   extra=[*extra, ("Authorization", auth)])

    def invite(self, caller: str, password: str, callee: str, *,
               qop: bool = True) -> tuple[Answer, Answer]:
        """INVITE, answer the proxy challenge: (challenge, final answer)."""
        ruri = f"sip:{callee}@{DOMAIN}"
        sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               "m=audio 29990 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
        first = self.request("INVITE", ruri, caller, f"<{ruri}>", body=sdp)
        assert first.status == 407, first.raw
        challenge = first.get("proxy-authenticate")[0]
        auth = digest_authorization(challenge, "INVITE", ruri, caller, password, qop=qop)
        self.call_id = uuid.uuid4().hex  # a new INVITE transaction, new call
        return first, self.request("INVITE", ruri, caller, f"<{ruri}>", body=sdp,
                                   extra=[("Proxy-Authorization", auth)])


@pytest.fixture
def raw(engine: RunningEngine):
    clients: list[RawClient] = []

    def make() -> RawClient:
        clients.append(RawClient(engine))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def test_raw_register_401_then_200(engine: RunningEngine, raw) -> None:
    client = raw()
    challenge, final = client.register("1002", PASSWORDS["1002"])
    assert challenge.status == 401, challenge.raw
    algorithms = [_parse_challenge(v)["algorithm"] for v in challenge.get("www-authenticate")]
    assert algorithms == ["SHA-256", "MD5"], challenge.raw  # RFC 8760: preferred first
    assert final is not None and final.status == 200, final and final.raw
    assert any(f"127.0.0.1:{client.port}" in c for c in final.get("contact")), final.raw
    assert engine.health()["registrations"] == 1
    # ... and Expires: 0 takes the binding away again.
    _, gone = client.register("1002", PASSWORDS["1002"], expires=0)
    assert gone is not None and gone.status == 200 and not gone.get("contact"), gone.raw
    assert engine.health()["registrations"] == 0


@pytest.mark.parametrize("qop", [True, False], ids=["qop-auth", "rfc2069"])
def test_unknown_user_and_wrong_password_look_the_same(engine: RunningEngine, raw,
                                                      qop: bool) -> None:
    before = engine.metrics()
    shapes: dict[str, list[tuple]] = {}
    for user, password in (("1003", "wrong-password"), ("9999", "any-password")):
        client = raw()
        challenge, final = client.register(user, password, qop=qop)
        assert final is not None
        invite_challenge, invite_final = raw().invite(user, password, "1002", qop=qop)
        shapes[user] = [challenge.shape(), final.shape(), invite_challenge.shape(),
                        invite_final.shape()]
    assert shapes["1003"] == shapes["9999"], json.dumps(shapes, default=repr, indent=1)
    register_final, invite_final = shapes["1003"][1], shapes["1003"][3]
    if qop:  # a wrong digest is challenged again
        assert (register_final[0], invite_final[0]) == (401, 407), shapes
    else:  # credentials without the qop the challenge asked for are malformed
        assert (register_final[0], invite_final[0]) == (400, 400), shapes
    after = engine.metrics()
    assert after["vaultpbx_auth_failures_total"] - before["vaultpbx_auth_failures_total"] == 4
    assert engine.health()["registrations"] == 0


def test_raw_invite_with_right_password_reaches_the_dialplan(engine: RunningEngine,
                                                             raw) -> None:
    """The right credentials pass the 407: nobody is registered as 1002, so 480."""
    _, final = raw().invite("1001", PASSWORDS["1001"], "1002")
    assert final.status == 480, final.raw


# ------------------------------------------------------------------------------------------------
# pyVoIP
class QopSIPClient(pyVoIP.SIP.SIPClient):  # pyVoIP.SIP: imported by pyVoIP.VoIP
    """pyVoIP's SIP client with one change: REGISTER credentials use the qop=auth the challenge
    offers, and the digest-uri is the Request-URI that pyVoIP actually sends."""

    challenges: list[str]

    def gen_register(self, request, deregister=False):  # type: ignore[no-untyped-def]
        message = super().gen_register(request, deregister)
        challenge = "Digest " + ", ".join(f'{k}="{v}"' for k, v in request.authentication.items())
        self.challenges.append(challenge)
        auth = digest_authorization(challenge, "REGISTER", f"sip:{self.server}",
                                    self.username, self.password)
        return re.sub(r"Authorization: [^\r]*", lambda _: f"Authorization: {auth}", message)


def make_phone(engine: RunningEngine, user: str, password: str, *, qop: bool = True,
               answer: bool = False) -> tuple[VoIPPhone, dict]:
    """A VoIPPhone for `user` on the engine's UDP port; with `answer`, incoming calls are
    answered and followed until the far end hangs up (recorded in the returned dict)."""
    seen: dict = {"calls": [], "ended": threading.Event()}

    def on_call(call: VoIPCall) -> None:
        seen["calls"].append(call.request.headers.get("From", {}).get("raw"))
        try:
            call.answer()
            deadline = time.monotonic() + 15
            while call.state == CallState.ANSWERED and time.monotonic() < deadline:
                time.sleep(0.05)
            seen["final_state"] = call.state
        finally:
            seen["ended"].set()

    rtp = free_port(False)
    phone = VoIPPhone("127.0.0.1", engine.sip_port, user, password, myIP="127.0.0.1",
                      callCallback=on_call if answer else None, sipPort=free_port(False),
                      rtpPortLow=rtp, rtpPortHigh=rtp)
    phone.sip.register_timeout = 5
    if qop:
        phone.sip.__class__ = QopSIPClient
        phone.sip.challenges = []
    return phone, seen


def wait_status(phone: VoIPPhone, wanted: set[PhoneStatus], timeout: float) -> PhoneStatus:
    end = time.monotonic() + timeout
    while phone.get_status() not in wanted and time.monotonic() < end:
        time.sleep(0.05)
    return phone.get_status()


def test_stock_pyvoip_is_refused_for_rfc2069_credentials(engine: RunningEngine) -> None:
    """Documents the interop gap above: the right password, but no qop → 400, never 200."""
    before = engine.metrics()
    phone, _ = make_phone(engine, "1003", PASSWORDS["1003"], qop=False)
    try:
        phone.start()
        status = wait_status(phone, {PhoneStatus.FAILED, PhoneStatus.REGISTERED}, 15)
    finally:
        phone.stop()
    assert status == PhoneStatus.FAILED
    after = engine.metrics()
    assert after["vaultpbx_auth_failures_total"] > before["vaultpbx_auth_failures_total"]
    assert after["vaultpbx_registrations_total"] == before["vaultpbx_registrations_total"]


def test_pyvoip_registers_then_unregisters(engine: RunningEngine) -> None:
    before = engine.metrics()
    phone, _ = make_phone(engine, "1003", PASSWORDS["1003"])
    try:
        phone.start()  # registers synchronously: 401, then the answer to our credentials
        assert phone.get_status() == PhoneStatus.REGISTERED
        assert len(phone.sip.challenges) == 1  # exactly one 401 was answered
        assert engine.health()["registrations"] == 1
    finally:
        phone.stop()  # REGISTER with Expires: 0 (challenged and answered again)
    assert engine.health()["registrations"] == 0
    after = engine.metrics()
    assert after["vaultpbx_auth_challenges_total"] - before["vaultpbx_auth_challenges_total"] == 2
    assert after["vaultpbx_auth_failures_total"] == before["vaultpbx_auth_failures_total"]


def test_pyvoip_wrong_password_fails(engine: RunningEngine) -> None:
    phone, _ = make_phone(engine, "1003", "not-the-password")
    try:
        phone.start()
        status = wait_status(phone, {PhoneStatus.FAILED, PhoneStatus.REGISTERED}, 15)
    finally:
        phone.stop()
    assert status == PhoneStatus.FAILED
    assert phone.sip.challenges  # it was challenged and answered, and refused
    assert engine.health()["registrations"] == 0


def test_pjsua2_over_udp_calls_pyvoip(engine: RunningEngine, tmp_path: Path) -> None:
    phone, seen = make_phone(engine, "1003", PASSWORDS["1003"], answer=True)
    caller: PeerProcess | None = None
    try:
        phone.start()
        assert phone.get_status() == PhoneStatus.REGISTERED
        caller = PeerProcess({
            "user": "1001", "password": PASSWORDS["1001"], "domain": DOMAIN,
            "registrar": f"sip:127.0.0.1:{engine.sip_port}", "transport": "udp",
            "call": f"sip:1003@127.0.0.1:{engine.sip_port}", "hangup_after": 1.0,
            "rtp_port": free_port(False) // 20 * 20, "timeout": 20,
            "log_file": str(tmp_path / "pjsua-1001.log"),
        }, name="1001")
        caller.wait_for("done", 25)
        assert seen["ended"].wait(10), seen
    finally:
        code = caller.finish(10) if caller is not None else None
        phone.stop()
    detail = json.dumps(caller.events, indent=1)[-5000:] + caller.stderr
    assert code == 0, detail
    assert seen["final_state"] == CallState.ENDED, seen  # pyVoIP got the BYE
    assert len(seen["calls"]) == 1 and "1001" in seen["calls"][0], seen
    invite_codes = [e["code"] for e in caller.sip(dir="rx", kind="response", method="INVITE")]
    assert invite_codes[0] == 407 and invite_codes[-1] == 200, detail
    assert 180 in invite_codes, detail  # pyVoIP rings before it answers
    assert caller.sip(dir="rx", kind="response", method="BYE", code=200), detail

    rows = _cdr_rows(engine)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["cause"] == "normal_clearing" and row["answered"] is not None, row
    legs = json.loads(row["legs"])
    assert {leg["transport"] for leg in legs} == {"udp"}, legs


def _cdr_rows(engine: RunningEngine, timeout: float = 5.0) -> list[dict]:
    db_path = engine.data_dir / "cdr.db"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if db_path.exists():
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=2)
            db.row_factory = sqlite3.Row
            try:
                rows = [dict(r) for r in db.execute("SELECT * FROM calls ORDER BY started")]
            finally:
                db.close()
            if rows:
                return rows
        time.sleep(0.2)
    return []

