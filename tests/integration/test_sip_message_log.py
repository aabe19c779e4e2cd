"""`logging.sip_messages: true` on a real engine writes one record per SIP message received and
sent, with personal data masked and credentials redacted by the maskers; `false` (the default)
writes none, and a SIGHUP switches it without a restart."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import yaml

from tests.integration.engine import RunningEngine, start_engine
from tests.integration.sipclient import UdpClient

CARD = "4111111111111111"  # a Luhn-valid test card number, as a caller might put it in a header


def sip_records(engine: RunningEngine) -> list[dict]:
    out = []
    for line in engine.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") in ("sip.received", "sip.sent"):
                out.append(record)
    return out


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sip_messages_are_logged_masked_only_when_asked(tmp_path: Path) -> None:
    engine = start_engine(tmp_path, {"extensions": {"1001": {"password": "pw-1001-secret"}},
                                     "logging": {"level": "info", "sip_messages": True}})
    client = UdpClient(engine.sip_port)
    try:
        assert client.register("1001", "pw-1001-secret").status == 200
        options = client.request("OPTIONS", f"sip:127.0.0.1:{engine.sip_port}", user="1001",
                                 extra=f"Subject: card {CARD}\r\n")
        assert client.exchange(options).status == 200
        assert wait_for(lambda: len(sip_records(engine)) >= 6)
        records = sip_records(engine)
        received = [r for r in records if r["event"] == "sip.received"]
        sent = [r for r in records if r["event"] == "sip.sent"]
        # REGISTER, REGISTER with credentials, OPTIONS in; 401, 200, 200 out: one record each.
        assert [r["message"].split(" ")[0] for r in received] == ["REGISTER", "REGISTER",
                                                                 "OPTIONS"]
        assert [r["message"].split("\r\n")[0] for r in sent] == [
            "SIP/2.0 401 Unauthorized", "SIP/2.0 200 OK", "SIP/2.0 200 OK"]
        assert all(r["transport"] == "udp" and r["peer"] == f"127.0.0.1:{client.port}"
                   for r in records)
        log = engine.log()
        # The digest answer (password-derived) and the card number never reach the log.
        authorized = received[1]["message"]
        assert "Authorization: [redacted]" in authorized, authorized
        assert "response=" not in log
        assert CARD not in log
        assert "Subject: card 4111" in received[2]["message"]  # masked, not dropped

        # Off by SIGHUP: no more records, the engine still answers.
        config = yaml.safe_load(engine.config_path.read_text())
        config["logging"]["sip_messages"] = False
        engine.config_path.write_text(yaml.safe_dump(config))
        engine.signal(signal.SIGHUP)
        assert wait_for(lambda: "config.reloaded" in engine.log())
        before = len(sip_records(engine))
        assert client.exchange(client.request(
            "OPTIONS", f"sip:127.0.0.1:{engine.sip_port}", user="1001")).status == 200
        assert client.register("1001", "pw-1001-secret").status == 200
        assert len(sip_records(engine)) == before
    finally:
        client.close()
        assert engine.stop() == 0
