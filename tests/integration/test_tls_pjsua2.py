"""SIP over TLS against a real engine, with pjsua2 as the independent peer.

The test makes its own CA and a server certificate for 127.0.0.1/localhost, and the engine
presents that certificate with TLS 1.3 as the minimum. Two pjsua2 UAs (each in its own process,
see pjsua_peer.py) verify the server against the test CA, register over TLS (401, then 200),
and call each other through the B2BUA; the call record shows both legs on TLS. A TLS 1.2-only
client is refused.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import re
import socket
import sqlite3
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.engine import RunningEngine, free_port, start_engine
from tests.integration.pjsua_peer import PeerProcess

pytestmark = pytest.mark.integration

DOMAIN = "vaultpbx.test"
PASSWORDS = {"1001": "tls-1001-secret", "1002": "tls-1002-secret"}


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a leaf for 127.0.0.1/localhost signed by it: (ca.pem, server.pem, server.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vaultpbx test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / "ca.pem", directory / "server.pem",
                                    directory / "server.key")
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca, cert, key = make_pki(tmp_path_factory.mktemp("pki"))
    rogue_ca, _, _ = make_pki(tmp_path_factory.mktemp("rogue-pki"))
    return {"ca": ca, "cert": cert, "key": key, "rogue_ca": rogue_ca}


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]):
    """engines(min_version): one engine per TLS minimum, started on first use."""
    running: dict[str, RunningEngine] = {}

    def get(min_version: str) -> RunningEngine:
        if min_version not in running:
            tmp_path = tmp_path_factory.mktemp(f"tls{min_version}")
            running[min_version] = start_engine(tmp_path, {
                "sip": {
                    "domain": DOMAIN,
                    "tls": {"certificate": str(pki["cert"]), "private_key": str(pki["key"]),
                            "create_self_signed": False, "min_version": min_version},
                },
                "extensions": {user: {"password": pw} for user, pw in PASSWORDS.items()},
                "dialplan": [{"match": r"1\d{3}", "extension": r"\g<0>"}],
            })
        return running[min_version]

    try:
        yield get
    finally:
        for engine in running.values():
            engine.stop()


@pytest.fixture(scope="module")
def pjsua2_openssl() -> dict:
    """Which OpenSSL the installed pjsua2 uses (pjsua2-python 2.15 bundles 1.0.2k: no TLS 1.3)."""
    probe = PeerProcess({"probe": True}, name="probe")
    try:
        return probe.wait_for("openssl", 15)
    finally:
        probe.finish(5)


def _peer(engine: RunningEngine, ca: Path, user: str, **extra: object) -> PeerProcess:
    log_dir = engine.data_dir.parent
    args = {
        "user": user, "password": PASSWORDS[user], "domain": DOMAIN,
        "registrar": f"sip:127.0.0.1:{engine.tls_port};transport=tls",
        "transport": "tls", "ca": str(ca),
        "rtp_port": free_port(False) // 20 * 20, "timeout": 20,
        "log_file": str(log_dir / f"pjsua-{user}-{time.monotonic_ns()}.log"),
    }
    args.update(extra)
    return PeerProcess(args, name=user)


def _cdr_rows(engine: RunningEngine, timeout: float = 5.0,
              at_least: int = 1) -> list[sqlite3.Row]:
    """The call records, waiting (up to `timeout`) until there are `at_least` of them."""
    db_path = engine.data_dir / "cdr.db"
    end = time.monotonic() + timeout
    while True:
        if db_path.exists():
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=2)
            db.row_factory = sqlite3.Row
            try:
                rows = db.execute("SELECT * FROM calls ORDER BY started").fetchall()
            finally:
                db.close()
            if len(rows) >= at_least:
                return rows
        if time.monotonic() > end:
            return rows if db_path.exists() else []
        time.sleep(0.2)


def _register_codes(peer: PeerProcess) -> list[int]:
    return [e["code"] for e in peer.sip(dir="rx", kind="response", method="REGISTER")]


def _detail(*peers: PeerProcess) -> str:
    out = {p.name: p.events for p in peers}
    text = json.dumps(out, indent=1)[-6000:]
    return text + "".join(f"\n--- {p.name} stderr:\n{p.stderr}" for p in peers if p.stderr)


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_register_and_call_over_tls(engines, pki: dict[str, Path], pjsua2_openssl: dict,
                                    version: str) -> None:
    """Engine minimum = the only version the pjsua2 UAs offer: the call works end to end."""
    if version == "1.3" and not pjsua2_openssl["tls13"]:
        pytest.skip(f"pjsua2 is linked with OpenSSL {pjsua2_openssl['version_num']:#x} "
                    f"({pjsua2_openssl['path']}): no TLS 1.3 (needs >= 1.1.1)")
    engine = engines(version)
    before = engine.metrics()
    calls_before = len(_cdr_rows(engine, timeout=0))
    bob = _peer(engine, pki["ca"], "1002", answer_calls=1, tls_proto=version)
    alice: PeerProcess | None = None
    try:
        bob.wait_for("registered", 15)
        alice = _peer(engine, pki["ca"], "1001", tls_proto=version,
                      call=f"sip:1002@127.0.0.1:{engine.tls_port};transport=tls",
                      hangup_after=1.0)
        alice.wait_for("registered", 15)
        alice.wait_for("done", 20)
        bob.wait_for("done", 10)
    finally:
        codes = {p.name: p.finish(10) for p in (bob, alice) if p is not None}
    assert alice is not None
    detail = _detail(alice, bob)
    assert codes == {"1002": 0, "1001": 0}, detail

    # Registration: challenged first, then accepted; every message on TLS.
    for peer in (alice, bob):
        assert _register_codes(peer)[:2] == [401, 200], detail
        assert {e["transport"] for e in peer.of("sip")} == {"TLS"}, detail

    # The call: the INVITE was challenged with 407, then answered; both sides confirmed, the
    # caller hung up after about a second, both saw the end.
    invite_codes = [e["code"] for e in alice.sip(dir="rx", kind="response", method="INVITE")]
    assert invite_codes[0] == 407 and invite_codes[-1] == 200, detail
    for peer in (alice, bob):
        states = [e["state"] for e in peer.of("call_state")]
        assert "CONFIRMED" in states and states[-1] == "DISCONNECTED", detail
        (end,) = peer.of("disconnected")
        assert end["confirmed"], detail
    assert alice.of("disconnected")[0]["duration"] >= 0.8, detail
    assert bob.sip(dir="rx", kind="request", method="INVITE"), detail
    assert bob.sip(dir="rx", kind="request", method="BYE"), detail
    assert alice.sip(dir="rx", kind="response", method="BYE", code=200), detail

    rows = _cdr_rows(engine, at_least=calls_before + 1)
    assert len(rows) == calls_before + 1, [dict(r) for r in rows]
    row = rows[-1]
    assert row["cause"] == "normal_clearing" and row["answered"] is not None, dict(row)
    assert (row["route_kind"], row["route_name"]) == ("extension", "1002"), dict(row)
    legs = json.loads(row["legs"])
    assert sorted(leg["side"] for leg in legs) == ["a", "b"], legs
    assert {leg["transport"] for leg in legs} == {"tls"}, legs

    after = engine.metrics()
    def grew(name: str) -> float:
        return after[name] - before[name]

    assert grew("vaultpbx_registrations_total") >= 2, after
    assert grew("vaultpbx_calls_answered_total") == 1, after
    assert grew("vaultpbx_auth_challenges_total") >= 3, after  # two REGISTERs, one INVITE
    assert after["vaultpbx_active_calls"] == 0, after


def _pair(engine: RunningEngine, ca: Path, version: str, bob_args: dict,
          alice_args: dict) -> tuple[PeerProcess, PeerProcess]:
    """Bob (1002) registers and waits; Alice (1001) registers and calls him; both finish."""
    bob = _peer(engine, ca, "1002", answer_calls=1, tls_proto=version, **bob_args)
    alice: PeerProcess | None = None
    try:
        bob.wait_for("registered", 15)
        alice = _peer(engine, ca, "1001", tls_proto=version,
                      call=f"sip:1002@127.0.0.1:{engine.tls_port};transport=tls",
                      **alice_args)
        alice.wait_for("done", 25)
        bob.wait_for("done", 10)
    finally:
        codes = {p.name: p.finish(10) for p in (bob, alice) if p is not None}
    assert alice is not None
    assert codes == {"1002": 0, "1001": 0}, _detail(alice, bob)
    return alice, bob


def _usable_version(pjsua2_openssl: dict) -> str:
    return "1.3" if pjsua2_openssl["tls13"] else "1.2"


def test_callee_hangs_up_over_tls(engines, pki: dict[str, Path], pjsua2_openssl: dict) -> None:
    """The BYE from the callee reaches the caller over the caller's own TLS connection."""
    version = _usable_version(pjsua2_openssl)
    engine = engines(version)
    calls_before = len(_cdr_rows(engine, timeout=0))
    alice, bob = _pair(engine, pki["ca"], version, {"hangup_after": 1.0},
                       {"hangup_after": None})
    detail = _detail(alice, bob)
    assert bob.of("hangup") and not alice.of("hangup"), detail
    assert alice.sip(dir="rx", kind="request", method="BYE", transport="TLS"), detail
    assert bob.sip(dir="rx", kind="response", method="BYE", code=200), detail
    for peer in (alice, bob):
        (end,) = peer.of("disconnected")
        assert end["confirmed"] and end["duration"] >= 0.8, detail
    rows = _cdr_rows(engine, at_least=calls_before + 1)
    assert len(rows) == calls_before + 1, [dict(r) for r in rows]
    assert rows[-1]["cause"] == "normal_clearing", dict(rows[-1])
    assert engine.metrics()["vaultpbx_active_calls"] == 0


def test_caller_cancels_while_ringing_over_tls(engines, pki: dict[str, Path],
                                               pjsua2_openssl: dict) -> None:
    """180 relayed to the caller, then its CANCEL: 487 to the caller, CANCEL to the callee."""
    version = _usable_version(pjsua2_openssl)
    engine = engines(version)
    calls_before = len(_cdr_rows(engine, timeout=0))
    alice, bob = _pair(engine, pki["ca"], version,
                       {"answer_after": -1, "expect_confirmed": False},
                       {"cancel_after": 1.0})
    detail = _detail(alice, bob)
    invite_codes = [e["code"] for e in alice.sip(dir="rx", kind="response", method="INVITE")]
    assert invite_codes[0] == 407 and 180 in invite_codes and invite_codes[-1] == 487, detail
    assert alice.sip(dir="rx", kind="response", method="CANCEL", code=200), detail
    assert bob.sip(dir="rx", kind="request", method="CANCEL", transport="TLS"), detail
    for peer in (alice, bob):
        (end,) = peer.of("disconnected")
        assert not end["confirmed"] and end["code"] == 487, detail
    rows = _cdr_rows(engine, at_least=calls_before + 1)
    assert len(rows) == calls_before + 1, [dict(r) for r in rows]
    row = rows[-1]
    assert (row["cause"], row["status"], row["answered"]) == ("cancelled", 487, None), dict(row)
    assert engine.metrics()["vaultpbx_active_calls"] == 0


def _refused_registration(peer: PeerProcess) -> dict:
    try:
        error = peer.wait_for("error", 15)
    finally:
        peer.finish(5)
    assert "register" in error["reason"], _detail(peer)
    assert not peer.of("registered"), _detail(peer)
    return error


def test_wrong_password_over_tls_is_refused(engines, pki: dict[str, Path]) -> None:
    peer = _peer(engines("1.2"), pki["ca"], "1001", password="not-the-password", timeout=10)
    _refused_registration(peer)
    codes = _register_codes(peer)
    assert codes and set(codes) <= {401, 403}, _detail(peer)


def test_pjsua2_refuses_a_server_its_ca_did_not_sign(engines, pki: dict[str, Path]) -> None:
    """The UAs really verify the server: with another CA, no REGISTER is ever answered."""
    peer = _peer(engines("1.2"), pki["rogue_ca"], "1001", timeout=10)
    error = _refused_registration(peer)
    assert "ECERTVERIF" in error["reason"], _detail(peer)  # pjsip's certificate error
    assert not peer.sip(dir="rx"), _detail(peer)


def test_pjsua2_limited_to_tls12_is_refused_by_a_tls13_minimum(
        engines, pki: dict[str, Path]) -> None:
    peer = _peer(engines("1.3"), pki["ca"], "1001", tls_proto="1.2", timeout=10)
    error = _refused_registration(peer)
    # The server ends the handshake (without an alert, see the test below): 503 locally.
    assert " 503 " in error["reason"] and "EOF" in error["reason"], _detail(peer)
    assert not peer.sip(dir="rx"), _detail(peer)


def _tls_client(engine: RunningEngine, ca: Path, **versions: ssl.TLSVersion) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(ca))
    for name, value in versions.items():
        setattr(context, name, value)
    raw = socket.create_connection(("127.0.0.1", engine.tls_port), timeout=5)
    try:
        return context.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


OPTIONS = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
           b"Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKtls13probe\r\n"
           b"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p1\r\n"
           b"To: <sip:127.0.0.1>\r\nCall-ID: tls13probe\r\nCSeq: 1 OPTIONS\r\n"
           b"Content-Length: 0\r\n\r\n")


def test_tls13_client_verifies_the_server_and_gets_sip(engines, pki: dict[str, Path]) -> None:
    with _tls_client(engines("1.3"), pki["ca"]) as conn:
        assert conn.version() == "TLSv1.3"
        conn.sendall(OPTIONS)
        data = conn.recv(4096)
    assert data.startswith(b"SIP/2.0 200 "), data


def _tls_request(conn: ssl.SSLSocket, lines: list[str]) -> str:
    conn.sendall(("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:  # answers here have no body
        chunk = conn.recv(4096)
        assert chunk, data
        data += chunk
    return data.decode()


def test_register_over_tls13_with_a_python_client(engines, pki: dict[str, Path]) -> None:
    """What pjsua2 cannot do here: REGISTER over TLS 1.3 (401, then 200) with a verifying
    client; the binding remembers the TLS connection, so it is reported with transport=tls."""
    engine = engines("1.3")
    user, password = "1002", PASSWORDS["1002"]
    bindings = engine.health()["registrations"]
    with _tls_client(engine, pki["ca"]) as conn:
        assert conn.version() == "TLSv1.3"
        port = conn.getsockname()[1]

        def register(cseq: int, extra: list[str], expires: int = 60) -> str:
            return _tls_request(conn, [
                f"REGISTER sip:{DOMAIN} SIP/2.0",
                f"Via: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK13reg{cseq};alias",
                "Max-Forwards: 70", f"From: <sip:{user}@{DOMAIN}>;tag=r13",
                f"To: <sip:{user}@{DOMAIN}>", "Call-ID: tls13-register",
                f"CSeq: {cseq} REGISTER",
                f"Contact: <sip:{user}@127.0.0.1:{port};transport=tls>",
                f"Expires: {expires}",
                *extra])

        first = register(1, [])
        assert first.startswith("SIP/2.0 401 "), first
        nonce = re.search(r'nonce="([^"]+)"', first).group(1)
        realm = re.search(r'realm="([^"]+)"', first).group(1)
        uri, cnonce = f"sip:{DOMAIN}", "0a4f113b"

        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()

        def authorization(nc: str) -> str:
            response = md5(f"{md5(f'{user}:{realm}:{password}')}:{nonce}:{nc}:{cnonce}:auth:"
                           f"{md5(f'REGISTER:{uri}')}")
            return (f'Authorization: Digest username="{user}", realm="{realm}", '
                    f'nonce="{nonce}", uri="{uri}", algorithm=MD5, qop=auth, nc={nc}, '
                    f'cnonce="{cnonce}", response="{response}"')

        second = register(2, [authorization("00000001")])
        assert second.startswith("SIP/2.0 200 "), second
        assert f"127.0.0.1:{port};transport=tls" in second, second
        # A refresh on the same connection reuses the nonce with the next count (qop=auth).
        refresh = register(3, [authorization("00000002")])
        assert refresh.startswith("SIP/2.0 200 "), refresh
        assert engine.health()["registrations"] == bindings + 1
        gone = register(4, [authorization("00000003")], expires=0)
        assert gone.startswith("SIP/2.0 200 "), gone
    assert engine.health()["registrations"] == bindings


def test_tls12_only_client_is_refused(engines, pki: dict[str, Path]) -> None:
    engine = engines("1.3")
    with pytest.raises(ssl.SSLError) as info:
        _tls_client(engine, pki["ca"], minimum_version=ssl.TLSVersion.TLSv1_2,
                    maximum_version=ssl.TLSVersion.TLSv1_2).close()
    # OpenSSL would answer with a protocol_version alert, but asyncio's and uvloop's SSL layers
    # drop the alert when the handshake fails and just close: the client sees EOF.
    message = str(info.value).upper()
    assert "VERSION" in message or "EOF" in message, info.value
    # The listener is unharmed: the next TLS 1.3 client gets in.
    with _tls_client(engine, pki["ca"]) as conn:
        assert conn.version() == "TLSv1.3"
