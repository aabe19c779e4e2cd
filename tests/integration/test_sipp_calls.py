"""Real SIPp processes against a real `vaultpbx run`, all on 127.0.0.1.

Covers REGISTER with a 401 challenge, calls between registered extensions with a 407 challenge,
trunk calls with number rewriting, CANCEL, busy, hang-up from either side, TCP, and load through
a loadtest-like config and through the shipped configs/loadtest.yaml. After every test the
engine must have no active calls and no new SIP parse errors.

SIPp only knows MD5 and answers only the topmost challenge, so these engines offer MD5
(`sip.digest_algorithms`). SIPp matches messages to calls by Call-ID, so a registered SIPp
callee takes the engine's INVITE through an out-of-call scenario (-oocsf) while the scenario
that registered it keeps the socket open (scenarios/register_and_wait.xml).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration import engine as engine_module
from tests.integration.engine import ROOT, RunningEngine, start_engine
from tests.integration.sipp import SIPP, SippProcess, SippResult, SippRunner, sipp_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) is not installed"),
]

DOMAIN = "vaultpbx.test"
PASSWORDS = {"1001": "pw-1001-secret", "1002": "pw-1002-secret"}
SIPP_TRANSPORT = {"udp": "u1", "tcp": "t1"}


# ------------------------------------------------------------------------------------------------
# fixtures and helpers
@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippRunner]:
    runner = SippRunner(tmp_path / "sipp")
    yield runner
    runner.cleanup()


@pytest.fixture
def engines() -> Iterator[list[RunningEngine]]:
    started: list[RunningEngine] = []
    yield started
    for engine in started:
        engine.stop(timeout=10)


def pbx_overrides(trunk_port: int | None = None, trunk_transport: str = "udp") -> dict:
    overrides: dict = {
        "sip": {"digest_algorithms": ["MD5"], "ring_timeout": 15},
        "extensions": {ext: {"password": pw} for ext, pw in PASSWORDS.items()},
        "dialplan": [{"match": r"1\d{3}", "extension": r"\g<0>"}],
    }
    if trunk_port is not None:
        overrides["trunks"] = {"t": {"target": f"sip:127.0.0.1:{trunk_port}",
                                     "transport": trunk_transport}}
        overrides["dialplan"].append({"match": r"0(\d+)", "trunk": "t", "number": r"\1"})
    return overrides


class Watch:
    """Engine counters at the start of a test, checked again at its end."""

    def __init__(self, engine: RunningEngine) -> None:
        self.engine = engine
        self.before = engine.metrics()

    def delta(self, name: str) -> float:
        now = self.engine.metrics()
        assert name in now, f"no metric {name}: {sorted(now)}"
        return now[name] - self.before.get(name, 0.0)

    def settle(self, timeout: float = 10.0) -> dict:
        """No call left active, no new parse error; returns the last /health."""
        deadline = time.monotonic() + timeout
        health = self.engine.health()
        while health["active_calls"] and time.monotonic() < deadline:
            time.sleep(0.1)
            health = self.engine.health()
        assert health["active_calls"] == 0, (health, self.engine.log()[-4000:])
        assert self.delta("vaultpbx_sip_parse_errors_total") == 0, self.engine.log()[-4000:]
        assert self.delta("vaultpbx_hook_errors_total") == 0
        return health


def start_pbx(engines: list[RunningEngine], tmp_path: Path, overrides: dict) -> RunningEngine:
    # start_engine picks ephemeral ports; a neighbour's outgoing connection can take one
    # before the engine binds it: try again with fresh ports.
    for attempt in range(3):
        try:
            engine = start_engine(tmp_path, overrides)
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == 2:
                raise
            continue
        engines.append(engine)
        return engine
    raise AssertionError("unreachable")


def cdr_rows(engine: RunningEngine, count: int, timeout: float = 8.0) -> list[dict]:
    """Call records from <data_dir>/cdr.db (written in batches once a second)."""
    path = engine.data_dir / "cdr.db"
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        if path.exists():
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
            try:
                db.row_factory = sqlite3.Row
                rows = [dict(r) for r in db.execute("SELECT * FROM calls ORDER BY started")]
            except sqlite3.OperationalError:
                rows = []
            finally:
                db.close()
            if len(rows) >= count:
                break
        time.sleep(0.2)
    assert len(rows) == count, (rows, engine.log()[-3000:])
    return rows


def remote(engine: RunningEngine) -> str:
    return f"127.0.0.1:{engine.sip_port}"


def register_callee(sipp: SippRunner, engine: RunningEngine, ext: str, ooc: str, *,
                    transport: str = "udp", timeout: float = 25.0) -> SippProcess:
    """A SIPp callee registered as `ext` that takes one call with the `ooc` scenario."""
    before = engine.health()["registrations"]
    callee = sipp.start(
        f"callee-{ext}", scenario="register_and_wait.xml", ooc=ooc, remote=remote(engine),
        service=ext, auth=(ext, PASSWORDS[ext]), keys={"domain": DOMAIN},
        transport=SIPP_TRANSPORT[transport], timeout=timeout,
    )
    deadline = time.monotonic() + 10
    while engine.health()["registrations"] <= before:
        if not callee.running() or time.monotonic() > deadline:
            pytest.fail("callee did not register:\n" + callee.wait(1).describe())
        time.sleep(0.05)
    return callee


def trunk_uas(sipp: SippRunner, scenario: str, port: int, *, transport: str = "udp",
              calls: int = 1, timeout: float = 25.0) -> SippProcess:
    return sipp.start("trunk-uas", scenario=scenario, port=port,
                      transport=SIPP_TRANSPORT[transport], calls=calls, timeout=timeout)


def call(sipp: SippRunner, engine: RunningEngine, scenario: str, number: str, *,
         caller: str = "1001", transport: str = "udp", name: str = "caller") -> SippResult:
    """One call from SIPp as `caller` to `number`, answering the engine's 407."""
    return sipp.run(
        name, scenario=scenario, remote=remote(engine), service=number,
        auth=(caller, PASSWORDS[caller]), auth_uri=f"{number}@{remote(engine)}",
        keys={"domain": DOMAIN, "caller": caller},
        transport=SIPP_TRANSPORT[transport], timeout=20,
    )


def setup_destination(kind: str, sipp: SippRunner, engines: list[RunningEngine],
                      tmp_path: Path, uas_scenario: str, transport: str = "udp"
                      ) -> tuple[RunningEngine, SippProcess, str]:
    """An engine plus a SIPp callee running `uas_scenario`, reached as extension 1002 (a
    registered SIPp) or through trunk t (a SIPp on the trunk's port, dialled as 0 + number).
    Returns the engine, the callee process and the number to dial."""
    if kind == "extension":
        engine = start_pbx(engines, tmp_path, pbx_overrides())
        callee = register_callee(sipp, engine, "1002", uas_scenario, transport=transport)
        return engine, callee, "1002"
    trunk_port = sipp_port()
    engine = start_pbx(engines, tmp_path, pbx_overrides(trunk_port, transport))
    callee = trunk_uas(sipp, uas_scenario, trunk_port, transport=transport)
    return engine, callee, "05551234"


def assert_two_legs(row: dict, transport: str = "udp") -> list[dict]:
    legs = json.loads(row["legs"])
    assert [leg["side"] for leg in legs] == ["a", "b"], legs
    assert all(leg["transport"] == transport for leg in legs), legs
    return legs


# ------------------------------------------------------------------------------------------------
# 1. REGISTER
def test_register_with_401_challenge(sipp: SippRunner, engines: list[RunningEngine],
                                     tmp_path: Path) -> None:
    engine = start_pbx(engines, tmp_path, pbx_overrides())
    watch = Watch(engine)
    assert engine.health()["registrations"] == 0
    port = sipp_port()
    result = sipp.run("register", scenario="register.xml", remote=remote(engine), port=port,
                      service="1001", auth=("1001", PASSWORDS["1001"]),
                      keys={"domain": DOMAIN}, timeout=15)
    result.assert_ok(calls=1)
    # The 200 lists the binding with the granted expiry (the scenario checks the regexp).
    assert f"contact=<sip:1001@127.0.0.1:{port};transport=UDP>;expires=120" in result.logs, \
        result.logs
    assert "SIP/2.0 401 Unauthorized" in result.messages
    health = watch.settle()
    assert health["registrations"] == 1
    assert watch.delta("vaultpbx_registrations") == 1  # the gauge
    assert watch.delta("vaultpbx_registrations_total") == 1  # accepted REGISTERs
    assert watch.delta("vaultpbx_auth_challenges_total") == 1
    assert watch.delta("vaultpbx_auth_failures_total") == 0


def test_register_with_wrong_password_is_refused(sipp: SippRunner,
                                                 engines: list[RunningEngine],
                                                 tmp_path: Path) -> None:
    engine = start_pbx(engines, tmp_path, pbx_overrides())
    watch = Watch(engine)
    result = sipp.run("register", scenario="register.xml", remote=remote(engine),
                      service="1001", auth=("1001", "wrong"),
                      keys={"domain": DOMAIN}, timeout=15)
    assert result.returncode == 1 and result.failed == 1, result.describe()
    assert watch.settle()["registrations"] == 0
    assert watch.delta("vaultpbx_auth_failures_total") == 1


def test_unregister_then_call_gets_480(sipp: SippRunner, engines: list[RunningEngine],
                                       tmp_path: Path) -> None:
    engine = start_pbx(engines, tmp_path, pbx_overrides())
    watch = Watch(engine)
    port = sipp_port()
    for name, scenario in (("register", "register.xml"), ("unregister", "unregister.xml")):
        sipp.run(name, scenario=scenario, remote=remote(engine), port=port, service="1002",
                 auth=("1002", PASSWORDS["1002"]), keys={"domain": DOMAIN},
                 timeout=15).assert_ok(calls=1)
        if name == "register":
            assert engine.health()["registrations"] == 1
    assert engine.health()["registrations"] == 0
    assert "unregistered, contact=\n" in sipp.processes[-1].wait().logs

    result = call(sipp, engine, "uac_rejected.xml", "1002")
    result.assert_ok(calls=1)
    assert "status=480" in result.logs, result.describe()
    [row] = cdr_rows(engine, 1)
    assert (row["cause"], row["status"], row["answered"]) == ("unavailable", 480, None), row
    watch.settle()


def test_unknown_number_gets_404(sipp: SippRunner, engines: list[RunningEngine],
                                 tmp_path: Path) -> None:
    engine = start_pbx(engines, tmp_path, pbx_overrides())
    watch = Watch(engine)
    result = call(sipp, engine, "uac_rejected.xml", "9999")
    result.assert_ok(calls=1)
    assert "status=404" in result.logs, result.describe()
    watch.settle()
    assert watch.delta("vaultpbx_calls_started_total") == 0  # refused before any call existed


# ------------------------------------------------------------------------------------------------
# 2, 3, 7. Answered calls (caller hangs up) to an extension and through a trunk, UDP and TCP
@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("kind", ["extension", "trunk"])
def test_answered_call_caller_hangs_up(kind: str, transport: str, sipp: SippRunner,
                                       engines: list[RunningEngine], tmp_path: Path) -> None:
    engine, callee, number = setup_destination(kind, sipp, engines, tmp_path,
                                               "uas_answer.xml", transport)
    watch = Watch(engine)
    result = call(sipp, engine, "uac_call.xml", number, transport=transport)
    result.assert_ok(calls=1)
    assert "SIP/2.0 407 Proxy Authentication Required" in result.messages
    callee_result = callee.wait(15)
    callee_result.assert_ok(calls=1)
    assert "bye answered" in callee_result.logs, callee_result.describe()

    [row] = cdr_rows(engine, 1)
    assert row["cause"] == "normal_clearing" and row["status"] == 200, row
    assert row["answered"] is not None and row["ended"] >= row["answered"] >= row["started"]
    assert row["caller"] == "1001"
    assert_two_legs(row, transport)
    if kind == "extension":
        assert (row["route_kind"], row["route_name"], row["callee"]) == (
            "extension", "1002", "1002")
        # The engine calls the registered Contact.
        assert f"ruri=sip:1002@127.0.0.1:{callee_result_port(callee_result)}" in \
            callee_result.logs, callee_result.logs
    else:
        # An outside number is sealed under its subject's key (docs/retention-and-erasure.md):
        # blank in the column, whole through the store.
        assert (row["route_kind"], row["route_name"], row["callee"]) == ("trunk", "t", "")
        from vaultpbx.recording.cli import open_store
        from vaultpbx.runtime.cdr import CdrStore

        with open_store(engine.data_dir) as keystore:
            store = CdrStore(engine.data_dir / "cdr.db", keystore.subjects)
            assert store.recent()[0]["callee"] == "5551234"
            store.close()
        # dialplan '0(\d+)' -> number '\1': the trunk sees the number without the 0.
        assert "ruri=sip:5551234@127.0.0.1:" in callee_result.logs, callee_result.logs
    watch.settle()
    assert watch.delta("vaultpbx_calls_answered_total") == 1
    assert watch.delta("vaultpbx_calls_failed_total") == 0


def callee_result_port(result: SippResult) -> int:
    command = (result.workdir / f"{result.name}.cmd").read_text().split()
    return int(command[command.index("-p") + 1])


# ------------------------------------------------------------------------------------------------
# 6. The callee hangs up
@pytest.mark.parametrize("kind", ["extension", "trunk"])
def test_answered_call_callee_hangs_up(kind: str, sipp: SippRunner,
                                       engines: list[RunningEngine], tmp_path: Path) -> None:
    engine, callee, number = setup_destination(kind, sipp, engines, tmp_path, "uas_hangup.xml")
    watch = Watch(engine)
    result = call(sipp, engine, "uac_remote_bye.xml", number)
    result.assert_ok(calls=1)
    callee_result = callee.wait(15)
    callee_result.assert_ok(calls=1)
    assert "bye sent and answered" in callee_result.logs, callee_result.describe()
    # The caller's BYE came from the engine, in the caller's own dialog.
    assert "BYE sip:1001@127.0.0.1:" in result.messages, result.messages[-3000:]

    [row] = cdr_rows(engine, 1)
    assert row["cause"] == "normal_clearing" and row["answered"] is not None, row
    assert_two_legs(row)
    watch.settle()


# ------------------------------------------------------------------------------------------------
# 4. CANCEL before answer
@pytest.mark.parametrize(("when", "uac", "uas"), [
    ("ringing", "uac_cancel.xml", "uas_ring_cancel.xml"),
    # The caller cancels on 100 Trying; the engine may CANCEL the callee's INVITE only once
    # the callee has sent a provisional (RFC 3261 §9.1), here a second later.
    ("before_ringing", "uac_cancel_early.xml", "uas_slow_ring_cancel.xml"),
])
@pytest.mark.parametrize("kind", ["extension", "trunk"])
def test_cancel_before_answer(kind: str, when: str, uac: str, uas: str, sipp: SippRunner,
                              engines: list[RunningEngine], tmp_path: Path) -> None:
    engine, callee, number = setup_destination(kind, sipp, engines, tmp_path, uas)
    watch = Watch(engine)
    result = call(sipp, engine, uac, number)
    result.assert_ok(calls=1)
    callee_result = callee.wait(15)
    callee_result.assert_ok(calls=1)
    assert "487 acknowledged" in callee_result.logs, callee_result.describe()

    [row] = cdr_rows(engine, 1)
    assert row["cause"] == "cancelled" and row["status"] == 487, row
    assert row["answered"] is None, row
    watch.settle()
    assert watch.delta("vaultpbx_calls_answered_total") == 0


# ------------------------------------------------------------------------------------------------
# 5. Busy
@pytest.mark.parametrize("kind", ["extension", "trunk"])
def test_busy(kind: str, sipp: SippRunner, engines: list[RunningEngine],
              tmp_path: Path) -> None:
    engine, callee, number = setup_destination(kind, sipp, engines, tmp_path, "uas_busy.xml")
    watch = Watch(engine)
    result = call(sipp, engine, "uac_busy.xml", number)
    result.assert_ok(calls=1)
    assert "SIP/2.0 486 Busy Here" in result.messages
    callee_result = callee.wait(15)
    callee_result.assert_ok(calls=1)
    assert "486 acknowledged" in callee_result.logs, callee_result.describe()

    [row] = cdr_rows(engine, 1)
    assert row["cause"] == "busy" and row["status"] == 486, row
    assert row["answered"] is None, row
    watch.settle()
    assert watch.delta("vaultpbx_calls_failed_total") == 1


# ------------------------------------------------------------------------------------------------
# 8. Load: SIPp's built-in uac through a loadtest-like engine to SIPp's built-in uas
def run_load(sipp: SippRunner, engine: RunningEngine, uas_port: int, *, calls: int,
             rate: float, transport: str = "udp", hold_ms: int = 0
             ) -> tuple[SippResult, SippResult, int]:
    """Built-in uas on the trunk, built-in uac through the engine; returns both results and
    the most calls /health saw active at once."""
    uas = sipp.start("load-uas", scenario="uas", port=uas_port, calls=calls, timeout=40,
                     transport=SIPP_TRANSPORT[transport], trace_msg=False)
    time.sleep(0.2)  # let the UAS bind before the first INVITE reaches it
    uac = sipp.start("load-uac", scenario="uac", remote=remote(engine),
                     calls=calls, rate=rate, timeout=40, transport=SIPP_TRANSPORT[transport],
                     trace_msg=False, extra=["-d", str(hold_ms)])
    peak = 0
    while uac.running() and time.monotonic() < uac.deadline:
        peak = max(peak, engine.health()["active_calls"])
        time.sleep(0.2)
    return uac.wait(), uas.wait(15), peak


def test_load_through_trusted_trunk_config(sipp: SippRunner, engines: list[RunningEngine],
                                           tmp_path: Path) -> None:
    uas_port = sipp_port()
    engine = start_pbx(engines, tmp_path, {
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "trunks": {"uas": {"target": f"sip:127.0.0.1:{uas_port}", "transport": "udp"}},
        "dialplan": [{"match": ".*", "trunk": "uas"}],
        "logging": {"level": "warning"},
    })
    watch = Watch(engine)
    # Each call is held 1 s, so about 50 are up at once.
    uac, uas, peak = run_load(sipp, engine, uas_port, calls=300, rate=50, hold_ms=1000)
    uac.assert_ok(calls=300)
    assert peak >= 20, peak
    uas.assert_ok(calls=300)
    watch.settle(timeout=15)
    assert watch.delta("vaultpbx_calls_started_total") == 300
    assert watch.delta("vaultpbx_calls_answered_total") == 300
    assert watch.delta("vaultpbx_calls_failed_total") == 0
    assert watch.delta("vaultpbx_auth_challenges_total") == 0
    rows = cdr_rows(engine, 300, timeout=10)
    assert {row["cause"] for row in rows} == {"normal_clearing"}
    assert {row["route_name"] for row in rows} == {"uas"}


def test_shipped_loadtest_config(sipp: SippRunner, engines: list[RunningEngine],
                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/loadtest.yaml as shipped, with only data_dir and the ports moved (5060, 5070
    and 8080 may be taken on this machine)."""
    config = yaml.safe_load((ROOT / "configs" / "loadtest.yaml").read_text())
    sip_port, admin_port, uas_port = sipp_port(), sipp_port(), sipp_port()
    config["data_dir"] = str(tmp_path / "var")
    for listener in config["sip"]["listen"]:
        assert listener["port"] == 5060 and listener["host"] == "127.0.0.1"
        listener["port"] = sip_port
    [trunk] = config["trunks"].values()
    assert trunk["target"] == "sip:127.0.0.1:5070"
    trunk["target"] = f"sip:127.0.0.1:{uas_port}"
    assert config["admin"]["port"] == 8080
    config["admin"]["port"] = admin_port
    # start_engine picks the SIP, TLS and admin ports in that order; hand it ours.
    ports = iter([sip_port, sipp_port(), admin_port])
    monkeypatch.setattr(engine_module, "free_port", lambda both=True: next(ports))
    engine = start_engine(tmp_path, config=config)
    engines.append(engine)
    assert (engine.sip_port, engine.admin_port) == (sip_port, admin_port)

    watch = Watch(engine)
    uac, uas, _ = run_load(sipp, engine, uas_port, calls=100, rate=50)
    uac.assert_ok(calls=100)
    uas.assert_ok(calls=100)
    watch.settle(timeout=15)
    assert watch.delta("vaultpbx_calls_answered_total") == 100
    # Media is anchored as shipped: every call went through a worker, spread over 4 addresses.
    assert watch.delta("vaultpbx_media_calls_anchored_total") == 100
    samples = engine.metrics()
    assert samples["vaultpbx_media_workers_alive"] == 4
    assert samples["vaultpbx_media_calls"] == 0
    rows = cdr_rows(engine, 100, timeout=10)
    assert {row["cause"] for row in rows} == {"normal_clearing"}


def test_load_over_tcp(sipp: SippRunner, engines: list[RunningEngine], tmp_path: Path) -> None:
    uas_port = sipp_port()
    engine = start_pbx(engines, tmp_path, {
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "trunks": {"uas": {"target": f"sip:127.0.0.1:{uas_port}", "transport": "tcp"}},
        "dialplan": [{"match": ".*", "trunk": "uas"}],
        "logging": {"level": "warning"},
    })
    watch = Watch(engine)
    uac, uas, _ = run_load(sipp, engine, uas_port, calls=100, rate=50, transport="tcp")
    uac.assert_ok(calls=100)
    uas.assert_ok(calls=100)
    watch.settle(timeout=15)
    assert watch.delta("vaultpbx_calls_answered_total") == 100
