"""The ACD on a real engine: SIPp callers into routed queues, two registered SIPp agent phones,
agents logged in through the admin API, statistics read back from GET /queues, GET /agents and
/metrics. All on 127.0.0.1; every SIPp run is bounded by its own timeouts and a kill deadline.

Agent phones run scenarios/queue_agent.xml (REGISTER, then stay up until the number of offers
given with `-set remaining N` were taken) with an out-of-call scenario for the offers:
queue_uas_answer.xml answers, queue_uas_ring.xml rings until the engine's CANCEL.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from argon2 import PasswordHasher

from tests.integration.engine import RunningEngine
from tests.integration.sipp import SIPP, SippProcess, SippResult, SippRunner
from tests.integration.test_sipp_calls import start_pbx

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) is not installed"),
]

DOMAIN = "vaultpbx.test"
PASSWORDS = {"1001": "pw-1001-secret", "2001": "pw-2001-secret", "2002": "pw-2002-secret"}
RING_TIMEOUT = 3
WRAP_UP = 4


def acd_overrides() -> dict:
    return {
        "sip": {"digest_algorithms": ["MD5"], "ring_timeout": 30},
        "security": {"floodguard": {"trusted": ["127.0.0.1/32"]},
                     "users": [SUPERVISOR, AGENT_2001, AGENT_WITHOUT_EXTENSION]},
        "extensions": {ext: {"password": pw} for ext, pw in PASSWORDS.items()},
        "dialplan": [{"match": r"1\d{3}|2\d{3}", "extension": r"\g<0>"},
                     {"match": "700", "queue": "support"},
                     {"match": "701", "queue": "spanish"}],
        "routing": {
            "skills": ["english", "spanish"],
            "agents": {"2001": {"skills": {"english": 5}},
                       "2002": {"skills": {"english": 2, "spanish": 4}}},
            "queues": {
                "support": {"skills": {"english": 1}, "ring_timeout": RING_TIMEOUT,
                            "wrap_up": WRAP_UP},
                "spanish": {"skills": {"spanish": 3}, "ring_timeout": RING_TIMEOUT,
                            "wrap_up": 1},
            },
        },
    }


# ------------------------------------------------------------------------------------------------
# fixtures and helpers
@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippRunner]:
    runner = SippRunner(tmp_path / "sipp")
    yield runner
    runner.cleanup()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[RunningEngine]:
    started: list[RunningEngine] = []
    try:
        running = start_pbx(started, tmp_path, acd_overrides())
        status, _ = api(running, "GET", "/queues")
        # The ACD's routes are part of the engine: a 404 here is a regression, never a skip.
        assert status == 200, f"GET /queues answered {status}: the ACD is not wired in"
        yield running
    finally:
        for each in started:
            each.stop(timeout=10)


# A supervisor account for the admin API (agent controls and queue statistics need a session).
SUPERVISOR_PASSWORD = "supervisor-test-password"
SUPERVISOR_TOTP = pyotp.random_base32(32)
SUPERVISOR = {"name": "sup", "role": "supervisor",
              "password_hash": PasswordHasher().hash(SUPERVISOR_PASSWORD),
              "totp_secret": SUPERVISOR_TOTP}
# Agents' own accounts: one that is agent 2001, one that is no agent at all.
AGENT_PASSWORD = "agent-test-password"
AGENT_TOTP = pyotp.random_base32(32)
AGENT_2001 = {"name": "alice", "role": "agent", "extension": "2001",
              "password_hash": PasswordHasher().hash(AGENT_PASSWORD), "totp_secret": AGENT_TOTP}
AGENT_WITHOUT_EXTENSION = dict(AGENT_2001, name="bob")
del AGENT_WITHOUT_EXTENSION["extension"]
_tokens: dict[tuple[int, str], str] = {}


def _token(engine: RunningEngine, user: str = "sup") -> str:
    token = _tokens.get((engine.admin_port, user))
    if token is None:
        password, secret = ((SUPERVISOR_PASSWORD, SUPERVISOR_TOTP) if user == "sup"
                            else (AGENT_PASSWORD, AGENT_TOTP))
        credentials = {"user": user, "password": password, "otp": pyotp.TOTP(secret).now()}
        request = urllib.request.Request(
            f"http://127.0.0.1:{engine.admin_port}/login", method="POST",
            data=json.dumps(credentials).encode(), headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            token = _tokens[(engine.admin_port, user)] = json.loads(response.read())["token"]
    return token


def api(engine: RunningEngine, method: str, path: str, body: object = None, *,
        user: str = "sup") -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{engine.admin_port}{path}", data=data,
                                     method=method,
                                     headers={"content-type": "application/json",
                                              "authorization": f"Bearer {_token(engine, user)}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def login(engine: RunningEngine, agent: str) -> None:
    status, body = api(engine, "POST", "/agents/login", {"agent": agent})
    assert status == 200 and body["state"] == "available", (status, body)


def queue(engine: RunningEngine, name: str) -> dict:
    status, body = api(engine, "GET", "/queues")
    assert status == 200, body
    return body["queues"][name]


def agent(engine: RunningEngine, name: str) -> dict:
    status, body = api(engine, "GET", "/agents")
    assert status == 200, body
    return body["agents"][name]


def wait_for(check, timeout: float = 10.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def remote(engine: RunningEngine) -> str:
    return f"127.0.0.1:{engine.sip_port}"


def agent_phone(sipp: SippRunner, engine: RunningEngine, ext: str, ooc: str, offers: int,
                timeout: float = 30.0) -> SippProcess:
    """A registered SIPp phone for agent `ext` that takes `offers` offers with `ooc`."""
    before = engine.health()["registrations"]
    phone = sipp.start(f"agent-{ext}", scenario="queue_agent.xml", ooc=ooc,
                       remote=remote(engine), service=ext, auth=(ext, PASSWORDS[ext]),
                       keys={"domain": DOMAIN}, timeout=timeout,
                       extra=["-set", "remaining", str(offers)])
    deadline = time.monotonic() + 10
    while engine.health()["registrations"] <= before:
        if not phone.running() or time.monotonic() > deadline:
            pytest.fail("agent phone did not register:\n" + phone.wait(1).describe())
        time.sleep(0.05)
    return phone


def caller(sipp: SippRunner, engine: RunningEngine, number: str, *, name: str = "caller",
           scenario: str = "uac_call.xml", extra: list[str] | None = None) -> SippProcess:
    return sipp.start(
        name, scenario=scenario, remote=remote(engine), service=number,
        auth=("1001", PASSWORDS["1001"]), auth_uri=f"{number}@{remote(engine)}",
        keys={"domain": DOMAIN, "caller": "1001"}, timeout=25, extra=extra,
    )


def offered(result: SippResult) -> list[str]:
    """The Request-URI users an agent phone was offered, in order."""
    return [line.split("ruri=sip:", 1)[1].split("@", 1)[0]
            for line in result.logs.splitlines() if "offer ruri=" in line]


def settle(engine: RunningEngine, timeout: float = 10.0) -> None:
    wait_for(lambda: engine.health()["active_calls"] == 0, timeout, "no active calls")


# ------------------------------------------------------------------------------------------------
def test_the_agent_with_the_skill_rings(sipp: SippRunner, engine: RunningEngine) -> None:
    english = agent_phone(sipp, engine, "2001", "queue_uas_answer.xml", offers=1)
    spanish = agent_phone(sipp, engine, "2002", "queue_uas_answer.xml", offers=1)
    login(engine, "2001")
    login(engine, "2002")
    caller(sipp, engine, "701").wait().assert_ok(calls=1)  # Spanish: only 2002 has it
    spanish_result = spanish.wait(10)
    spanish_result.assert_ok(calls=1)
    assert offered(spanish_result) == ["2002"], spanish_result.describe()
    assert english.running()  # never offered anything
    english.kill()
    settle(engine)
    stats = queue(engine, "spanish")
    assert (stats["entered"], stats["answered"], stats["abandoned"]) == (1, 1, 0), stats
    assert agent(engine, "2001")["offered"] == 0
    assert agent(engine, "2002")["answered"] == 1


def test_no_answer_moves_on_to_the_next_agent(sipp: SippRunner, engine: RunningEngine) -> None:
    silent = agent_phone(sipp, engine, "2001", "queue_uas_ring.xml", offers=1)
    answering = agent_phone(sipp, engine, "2002", "queue_uas_answer.xml", offers=1)
    login(engine, "2001")  # logged in first: idle longest, offered first
    time.sleep(0.2)
    login(engine, "2002")
    started = time.monotonic()
    caller(sipp, engine, "700").wait().assert_ok(calls=1)
    assert time.monotonic() - started >= RING_TIMEOUT - 0.5  # rang 2001 for the ring timeout
    silent_result = silent.wait(10)
    silent_result.assert_ok(calls=1)
    assert offered(silent_result) == ["2001"] and "487 acknowledged" in silent_result.logs
    answering_result = answering.wait(10)
    answering_result.assert_ok(calls=1)
    assert offered(answering_result) == ["2002"]
    settle(engine)
    first = agent(engine, "2001")
    assert (first["state"], first["missed"], first["answered"]) == ("not-responding", 1, 0)
    assert agent(engine, "2002")["answered"] == 1
    assert queue(engine, "support")["answered"] == 1


def test_wrap_up_delays_the_next_offer(sipp: SippRunner, engine: RunningEngine) -> None:
    phone = agent_phone(sipp, engine, "2001", "queue_uas_answer.xml", offers=2, timeout=40)
    login(engine, "2001")
    caller(sipp, engine, "700", name="first").wait().assert_ok(calls=1)
    first_ended = time.monotonic()
    assert agent(engine, "2001")["state"] == "wrap-up"
    second = caller(sipp, engine, "700", name="second")
    wait_for(lambda: queue(engine, "support")["waiting"] == 1, 5, "the second call to wait")
    assert agent(engine, "2001")["state"] == "wrap-up"
    second.wait().assert_ok(calls=1)
    # The second call was only offered once wrap-up ended.
    assert time.monotonic() - first_ended >= WRAP_UP - 0.5
    phone_result = phone.wait(10)
    phone_result.assert_ok(calls=1)
    assert offered(phone_result) == ["2001", "2001"]
    settle(engine)
    stats = queue(engine, "support")
    assert (stats["entered"], stats["answered"]) == (2, 2), stats


def test_caller_hang_up_while_queued_is_abandoned(sipp: SippRunner,
                                                  engine: RunningEngine) -> None:
    # No agent is logged in: the call waits until the caller gives up after 1.5 s.
    gave_up = caller(sipp, engine, "700", scenario="queue_uac_abandon.xml",
                     extra=["-d", "1500"])
    wait_for(lambda: queue(engine, "support")["waiting"] == 1, 5, "the call to wait")
    assert queue(engine, "support")["longest_wait"] >= 0
    gave_up.wait().assert_ok(calls=1)
    settle(engine)
    stats = queue(engine, "support")
    assert (stats["waiting"], stats["abandoned"], stats["answered"]) == (0, 1, 0), stats
    metrics = engine.metrics()
    assert metrics['vaultpbx_queue_abandoned_total{queue="support"}'] == 1, sorted(metrics)
    assert metrics["vaultpbx_acd_abandoned_total"] == 1


def test_an_agent_account_controls_only_its_own_agent(engine: RunningEngine) -> None:
    """alice is agent 2001: she may log herself in, pause and ready herself, but not touch
    2002; bob is no agent and may touch none; the supervisor may touch any. Each refusal is
    a 403, counted with the API's other refusals."""
    denied = engine.metrics().get("vaultpbx_admin_denied_total", 0)
    assert api(engine, "POST", "/agents/login", {"agent": "2001"}, user="alice")[0] == 200
    assert api(engine, "POST", "/agents/pause", {"agent": "2001", "reason": "lunch"},
               user="alice")[0] == 200
    assert api(engine, "POST", "/agents/ready", {"agent": "2001"}, user="alice")[0] == 200
    status, body = api(engine, "POST", "/agents/login", {"agent": "2002"}, user="alice")
    assert (status, body["error"]) == (403, "forbidden")  # the reason goes to the audit log
    assert api(engine, "POST", "/agents/logout", {"agent": "2001"}, user="bob")[0] == 403
    assert api(engine, "POST", "/agents/login", {"nope": 1}, user="bob")[0] == 400
    assert engine.metrics()["vaultpbx_admin_denied_total"] == denied + 2
    status, body = api(engine, "GET", "/agents")
    states = {name: agent["state"] for name, agent in body["agents"].items()}
    assert states["2001"] == "available" and states["2002"] == "offline"
    assert api(engine, "POST", "/agents/logout", {"agent": "2001"})[0] == 200  # supervisor
