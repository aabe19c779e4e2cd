"""`srtp: optional` meets a callee that requires SRTP: vaultpbx offers RTP/AVP with a=crypto
(best effort), pjsua2 in mandatory-SRTP mode refuses that profile with 488, and the B2BUA must
offer the same call again as RTP/SAVP, so the call connects with SRTP on the callee's leg.
Real pjsua2 UAs over TLS, media anchored; the caller's phone does no SRTP at all."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.engine import free_port, start_engine
from tests.integration.pjsua_peer import PeerProcess
from tests.integration.test_tls_pjsua2 import make_pki

DOMAIN = "vaultpbx.test"
PASSWORDS = {"1001": "retry-1001-pw", "1002": "retry-1002-pw"}


def test_optional_srtp_retries_as_savp_when_the_callee_requires_it(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path / "pki")
    engine = start_engine(tmp_path, {
        "sip": {"domain": DOMAIN,
                "tls": {"certificate": str(cert), "private_key": str(key),
                        "create_self_signed": False, "min_version": "1.2"}},
        # Both extensions keep the default policy: srtp: optional.
        "extensions": {u: {"password": p} for u, p in PASSWORDS.items()},
        "dialplan": [{"match": r"1\d{3}", "extension": r"\g<0>"}],
        "media": {"anchor": True, "workers": 1},
    })

    def peer(user: str, srtp: str, **extra: object) -> PeerProcess:
        args = {
            "user": user, "password": PASSWORDS[user], "domain": DOMAIN,
            "registrar": f"sip:127.0.0.1:{engine.tls_port};transport=tls",
            "transport": "tls", "ca": str(ca), "tls_proto": "1.2", "srtp": srtp,
            "rtp_port": free_port(False) // 20 * 20, "timeout": 25,
            "log_file": str(tmp_path / f"pjsua-{user}.log"),
        }
        args.update(extra)
        return PeerProcess(args, name=user)

    bob = peer("1002", "mandatory", answer_calls=1, hangup_after=None)
    alice: PeerProcess | None = None
    try:
        bob.wait_for("registered", 15)
        alice = peer("1001", "disabled",
                     call=f"sip:1002@127.0.0.1:{engine.tls_port};transport=tls",
                     hangup_after=3.0)
        assert alice.finish(30) == 0, alice.events[-20:]
        assert bob.finish(15) == 0, bob.events[-20:]
        # The callee refused the first offer and took the second.
        assert [e["code"] for e in bob.sip(dir="tx", kind="response", method="INVITE")
                if e["code"] >= 200] == [488, 200], bob.sip(method="INVITE")
        assert len(bob.sip(dir="rx", kind="request", method="INVITE")) == 2
        alice_rx = max(e["rx"] for e in alice.of("media"))
        bob_rx = max(e["rx"] for e in bob.of("media"))
        assert alice_rx >= 50 and bob_rx >= 50, (alice.of("media"), bob.of("media"))
    finally:
        for p in (alice, bob):
            if p is not None:
                p.kill()
        engine.stop()
    # What pjsip logged: the callee's leg was offered RTP/AVP with crypto, then RTP/SAVP with
    # the same key, and answered RTP/SAVP with a key of its own; the caller's leg stayed plain.
    bob_log = (tmp_path / "pjsua-1002.log").read_text(errors="replace")
    offers = re.findall(r"m=audio \d+ (RTP/S?AVP) ", bob_log)
    assert offers[:2] == ["RTP/AVP", "RTP/SAVP"], offers
    assert offers.count("RTP/SAVP") >= 2  # our retried offer and bob's answer
    alice_log = (tmp_path / "pjsua-1001.log").read_text(errors="replace")
    assert "RTP/SAVP" not in alice_log and "a=crypto" not in alice_log
