"""Interop: two pjsua2 UAs with mandatory SDES-SRTP call each other through vaultpbx over TLS,
with media anchored. pjsua2 offers AES_256_CM_HMAC_SHA1_80 first, which pylibsrtp lacks: the
engine must answer with a suite both sides have, give each leg its own keys, and relay the audio.

pjsua2's bundled OpenSSL (1.0.2) has no TLS 1.3, so this engine's TLS minimum is 1.2."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from tests.integration.engine import free_port, start_engine
from tests.integration.pjsua_peer import PeerProcess
from tests.integration.test_tls_pjsua2 import make_pki

DOMAIN = "vaultpbx.test"
PASSWORDS = {"1001": "srtp-1001-pw", "1002": "srtp-1002-pw"}


def test_mandatory_srtp_pjsua2_call_through_anchored_media(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path / "pki")
    engine = start_engine(tmp_path, {
        "sip": {"domain": DOMAIN,
                "tls": {"certificate": str(cert), "private_key": str(key),
                        "create_self_signed": False, "min_version": "1.2"}},
        "extensions": {u: {"password": p, "srtp": "required"} for u, p in PASSWORDS.items()},
        "dialplan": [{"match": r"1\d{3}", "extension": r"\g<0>"}],
        "media": {"anchor": True, "workers": 1},
    })

    def peer(user: str, **extra: object) -> PeerProcess:
        args = {
            "user": user, "password": PASSWORDS[user], "domain": DOMAIN,
            "registrar": f"sip:127.0.0.1:{engine.tls_port};transport=tls",
            "transport": "tls", "ca": str(ca), "tls_proto": "1.2", "srtp": "mandatory",
            "rtp_port": free_port(False) // 20 * 20, "timeout": 25,
            "log_file": str(tmp_path / f"pjsua-{user}.log"),
        }
        args.update(extra)
        return PeerProcess(args, name=user)

    bob = peer("1002", answer_calls=1, hangup_after=None)
    alice: PeerProcess | None = None
    try:
        bob.wait_for("registered", 15)
        alice = peer("1001", call=f"sip:1002@127.0.0.1:{engine.tls_port};transport=tls",
                     hangup_after=3.0)
        assert alice.finish(30) == 0, alice.events[-20:]
        assert bob.finish(15) == 0, bob.events[-20:]
        # Audio flowed both ways through the relay (pjsua sends 50 packets/s, VAD off).
        alice_rx = max(e["rx"] for e in alice.of("media"))
        bob_rx = max(e["rx"] for e in bob.of("media"))
        assert alice_rx >= 50 and bob_rx >= 50, (alice.of("media"), bob.of("media"))
    finally:
        for p in (alice, bob):
            if p is not None:
                p.kill()
        engine.stop()
    # What was negotiated (pjsip logs every SDP): pjsua2 offered AES_256_CM first, which we
    # cannot do; both legs settled on AES_CM_128_HMAC_SHA1_80, and no key crossed legs.
    keys = {}
    for user in PASSWORDS:
        text = (tmp_path / f"pjsua-{user}.log").read_text(errors="replace")
        assert "AES_256_CM_HMAC_SHA1_80 inline:" in text or user == "1002"
        keys[user] = set(re.findall(r"AES_CM_128_HMAC_SHA1_80 inline:(\S+)", text))
        assert len(keys[user]) >= 2, keys  # ours and the engine's, on this leg
    assert not keys["1001"] & keys["1002"], "an SRTP key appeared on both legs"
    db = sqlite3.connect(engine.data_dir / "cdr.db")
    time.sleep(0.2)
    assert [row[0] for row in db.execute("SELECT cause FROM calls")] == ["normal_clearing"]
