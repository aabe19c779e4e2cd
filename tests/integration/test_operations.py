"""Operations on a real engine process: configuration errors, SIGHUP reload, SIGTERM drain,
/metrics, and the audit trail of it all."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.engine import ROOT, start_engine
from tests.integration.sipclient import UdpClient

EXTENSIONS = {"1001": {"password": "pw-1001"}}


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vaultpbx.runtime.cli", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=60)


def test_check_config_names_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sip:\n  listen:\n    - transport: udp\n      prot: 5060\n")
    result = run_cli("check-config", "-c", str(bad))
    assert result.returncode == 2
    assert "line 4" in result.stderr and "sip.listen[0].prot" in result.stderr
    assert "unknown key" in result.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text("extensions:\n  '1001': {password: x}\nsecurity:\n  floodguard:\n"
                    "    rate: fast\n")
    result = run_cli("check-config", "-c", str(typo))
    assert result.returncode == 2 and "security.floodguard" in result.stderr
    for shipped in ("configs/default.yaml", "configs/loadtest.yaml"):
        assert run_cli("check-config", "-c", shipped).returncode == 0


def test_sighup_reload_good_and_bad(tmp_path: Path) -> None:
    engine = start_engine(tmp_path, {"extensions": EXTENSIONS})
    client = UdpClient(engine.sip_port)
    try:
        assert client.register("1001", "pw-1001").status == 200
        assert client.register("1009", "pw-1009").status in (401, 403)  # not configured yet
        # A bad file is rejected with its path and line; the old configuration stays.
        good = engine.config_path.read_text()
        engine.config_path.write_text(good + "\nbogus_key: 1\n")
        engine.signal(signal.SIGHUP)
        assert wait_for(lambda: "config.reload_rejected" in engine.log())
        assert "bogus_key" in engine.log() and "line" in engine.log()
        assert client.register("1001", "pw-1001").status == 200
        # A good file takes effect without a restart; registrations survive.
        config = yaml.safe_load(good)
        config["extensions"]["1009"] = {"password": "pw-1009"}
        engine.config_path.write_text(yaml.safe_dump(config))
        engine.signal(signal.SIGHUP)
        assert wait_for(lambda: "config.reloaded" in engine.log())
        assert client.register("1009", "pw-1009").status == 200
        assert engine.health()["registrations"] == 2
    finally:
        client.close()
        assert engine.stop() == 0
    verify = run_cli("audit", "verify", "--dir", str(engine.data_dir / "audit"),
                     "--sink", str(tmp_path / "audit-outside" / "checkpoints.jsonl"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    records = (engine.data_dir / "audit").glob("*")
    text = "".join(p.read_text(errors="replace") for p in records if p.is_file())
    assert "config.reload_rejected" in text and "config.reload" in text


def test_metrics_names(tmp_path: Path) -> None:
    engine = start_engine(tmp_path)
    try:
        metrics = engine.metrics()
        for name in ("vaultpbx_active_calls", "vaultpbx_calls_per_second",
                     "vaultpbx_transactions", "vaultpbx_sip_retransmissions_sent_total",
                     "vaultpbx_sip_parse_errors_total", "vaultpbx_calls_started_total",
                     "vaultpbx_floodguard_allowed", "vaultpbx_gc_gen2_longest_pause_seconds"):
            assert any(key.startswith(name) for key in metrics), name
    finally:
        engine.stop()


@pytest.mark.skipif(subprocess.run(["which", "sipp"], capture_output=True).returncode != 0,
                    reason="sipp (Debian sip-tester) is installed by the test command")
def test_sigterm_drains_then_ends_calls(tmp_path: Path) -> None:
    from tests.integration.engine import free_port

    uas_port = free_port()
    engine = start_engine(tmp_path, {
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "trunks": {"uas": {"target": f"sip:127.0.0.1:{uas_port}"}},
        "dialplan": [{"match": ".*", "trunk": "uas"}],
        "drain_timeout": 2,
    })
    uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port),
                            "-nostdin", "-timeout", "40"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uac = subprocess.Popen(["sipp", "-sn", "uac", f"127.0.0.1:{engine.sip_port}",
                            "-i", "127.0.0.1", "-p", str(free_port()), "-m", "5", "-r", "10",
                            "-d", "30000", "-nostdin", "-timeout", "40",
                            # "all" includes abortunexp: the engine's BYE during the pause ends
                            # the call (SIPp answers it 200) instead of being ignored.
                            "-default_behaviors", "all", "-recv_timeout", "10000"],
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: engine.health()["active_calls"] == 5, 15)
        engine.signal(signal.SIGTERM)
        assert wait_for(lambda: "engine.draining" in engine.log(), 5)
        # While draining, a new call is refused with 503.
        client = UdpClient(engine.sip_port)
        try:
            answer = client.exchange(client.request("INVITE", "sip:42@127.0.0.1", user="x"))
            assert answer.status == 503
        finally:
            client.close()
        started = time.monotonic()
        assert engine.process.wait(15) == 0
        assert time.monotonic() - started < 10  # bounded by drain_timeout, not the 30 s calls
        # Both SIPp sides got their BYE: the UAC counts its calls as ended.
        assert uac.wait(20) in (0, 1)
    finally:
        uac.kill()
        uas.kill()
        engine.kill()
    db = sqlite3.connect(engine.data_dir / "cdr.db")
    causes = [row[0] for row in db.execute("SELECT cause FROM calls")]
    assert causes.count("shutdown") == 5


def test_sighup_applies_new_flood_limits(tmp_path: Path) -> None:
    engine = start_engine(tmp_path, {"security": {"floodguard": {
        "trusted": ["127.0.0.1/32"], "rate": 1000, "burst": 1000}}})
    try:
        def blast(count: int) -> int:
            client = UdpClient(engine.sip_port, host="127.0.0.2")
            answered = 0
            try:
                for n in range(count):
                    client.sock.sendto(client.request("OPTIONS", "sip:vaultpbx.test", user="x",
                                                      call_id=f"b{n}"), client.server)
                client.sock.settimeout(0.5)
                while True:
                    client.sock.recvfrom(65535)
                    answered += 1
            except TimeoutError:
                return answered
            finally:
                client.close()

        assert blast(20) == 20
        config = yaml.safe_load(engine.config_path.read_text())
        config["security"]["floodguard"].update(rate=1, burst=5)
        engine.config_path.write_text(yaml.safe_dump(config))
        engine.signal(signal.SIGHUP)
        assert wait_for(lambda: "config.reloaded" in engine.log())
        assert blast(20) <= 6  # the new bucket: 5 at once, then banned
        assert engine.metrics()["vaultpbx_floodguard_bans_total"] >= 1
    finally:
        engine.stop()
