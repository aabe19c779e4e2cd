"""The web console in a real browser: Debian's headless Chromium, driven by Selenium through
chromedriver, against a real engine on 127.0.0.1 serving HTTPS with its development certificate.

- a supervisor logs in with password + TOTP; the wallboard (pushed over the WebSocket) shows an
  agent logging in (through the API) and a call entering a queue within a second;
- the supervisor hangs up a live call from the page and both SIP user agents see the BYE;
- a QA account plays the recording of that call in the page; the audit log has the play, and
  the auditor's view shows it beside the chain's `verify` result;
- an agent account cannot open the recordings view: the page refuses and the API answers 403;
  its desktop pauses with a reason.
A screenshot of each view goes to test-artifacts/console/. Chromium missing is a failure, never
a skip: `make setup` installs it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from argon2 import PasswordHasher
from vaultpbx.sip.message import Request

from tests.integration.engine import RunningEngine
from tests.integration.test_media_calls import RawUa, invite
from tests.integration.test_recording_calls import (
    _establish,
    _overrides,
    _play,
    _tone,
    _wait_recording,
)
from tests.integration.test_sipp_calls import start_pbx

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "console"
HASHER = PasswordHasher()


def _account(name: str, role: str, **extra: str) -> tuple[dict, str, str]:
    password, secret = f"{name}-test-password", pyotp.random_base32(32)
    return ({"name": name, "role": role, "password_hash": HASHER.hash(password),
             "totp_secret": secret, **extra}, password, secret)


ACCOUNTS = {name: _account(name, role, **extra) for name, role, extra in (
    ("sup", "supervisor", {}), ("api", "supervisor", {}), ("qa", "qa", {}),
    ("auditor", "auditor", {}), ("agent", "agent", {"extension": "2001"}),
    ("admin", "admin", {}), ("admin2", "admin", {}))}


@pytest.fixture(scope="module")
def callee() -> Iterator[RawUa]:
    ua = RawUa()
    yield ua
    ua.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, callee: RawUa) -> Iterator[RunningEngine]:
    overrides = _overrides(callee)
    overrides["dialplan"] = [{"match": "0(\\d+)", "trunk": "carrier", "number": "\\1"},
                             {"match": "700", "queue": "support"},
                             {"match": "701", "queue": "backlog"}]
    overrides.update({
        "admin": {"tls": True, "min_version": "1.3"},
        "extensions": {"2001": {"password": "pw-2001-secret"}},
        "security": {"floodguard": {"trusted": ["127.0.0.1/32"]},
                     "users": [entry for entry, _, _ in ACCOUNTS.values()],
                     # As configs/default.yaml: agents neither list nor play recordings.
                     "access": {"roles": {"agent": ["calls.handle", "metadata.read"]}}},
        "routing": {
            "skills": ["english", "spanish"],
            "agents": {"2001": {"skills": {"english": 5}}},
            # No agent speaks Spanish: a call to 701 waits in `backlog` until it is hung up.
            "queues": {"support": {"skills": {"english": 1}},
                       "backlog": {"skills": {"spanish": 1}}},
        },
    })
    started: list[RunningEngine] = []
    try:
        yield start_pbx(started, tmp_path_factory.mktemp("console"), overrides)
    finally:
        for each in started:
            each.stop(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail("Debian's chromium and chromium-driver are required: run `make setup`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="vaultpbx-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--ignore-certificate-errors",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1200,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# helpers
def _wait(driver, seconds: float, condition, what: str):  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(condition, message=what)


def _shot(driver, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _text(driver, css: str) -> str:  # type: ignore[no-untyped-def]
    # Read in one script: the live tables are redrawn with each push, so an element handle
    # could go stale between finding it and reading it.
    return str(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", css))


def _click(driver, css: str) -> None:  # type: ignore[no-untyped-def]
    driver.execute_script("document.querySelector(arguments[0]).click();", css)


def _login(driver, engine: RunningEngine, name: str, *, shot: str | None = None
           ) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(engine.admin_url + "/")
    _wait(driver, 10, lambda d: d.execute_script("return document.body.dataset.ready"),
          "the console never started")
    _, password, secret = ACCOUNTS[name]
    driver.find_element(By.ID, "login-user").send_keys(name)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-otp").send_keys(_fresh_code(secret))
    if shot:
        _shot(driver, shot)
    driver.find_element(By.ID, "login-submit").click()
    _wait(driver, 10, lambda d: d.find_element(By.ID, "who").text.startswith(name + " "),
          f"{name} was not logged in: {_text(driver, '#login-error')}")


_used_codes: set[tuple[str, str]] = set()


def _fresh_code(secret: str) -> str:
    """A TOTP code not used yet (a code works once): wait for the next step if needed."""
    totp = pyotp.TOTP(secret)
    while (secret, totp.now()) in _used_codes:
        time.sleep(0.5)
    code = totp.now()
    _used_codes.add((secret, code))
    return code


def _api(engine: RunningEngine, method: str, path: str, body: object = None,
         token: str | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(engine.admin_url + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=10,
                                    context=engine.admin_tls_context()) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _token(engine: RunningEngine, name: str) -> str:
    _, password, secret = ACCOUNTS[name]
    status, body = _api(engine, "POST", "/login", {"user": name, "password": password,
                                                   "otp": _fresh_code(secret)})
    assert status == 200, body
    return str(body["token"])


def _audit(engine: RunningEngine) -> list[dict]:
    path = next(engine.config_path.parent.rglob("audit.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def _queue_call(ua: RawUa, engine: RunningEngine, number: str, call_id: str) -> None:
    from vaultpbx.media.rtppeer import RtpPeer

    data = invite(ua, engine.sip_port, RtpPeer(ssrc=0x5151).sdp())
    data = data.replace(b"0555", number.encode()).replace(b"media-call-1", call_id.encode())
    ua.send(data, engine.sip_port)


# ------------------------------------------------------------------------------------------------
# the tests (in order: they share one engine and one browser)
def test_wallboard_follows_an_agent_and_a_queued_call_within_a_second(
        engine: RunningEngine, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver = browser
    _login(driver, engine, "sup", shot="login")
    _wait(driver, 5, lambda d: d.find_element(By.ID, "wallboard-view").is_displayed(),
          "the supervisor's first view is the wallboard")
    _wait(driver, 5, lambda d: _text(d, "#feed-state") == "live", "the WebSocket never opened")
    _wait(driver, 5, lambda d: "offline" == _text(d, 'tr[data-agent="2001"] .state'),
          "agent 2001 is not on the wallboard")

    token = _token(engine, "api")
    status, body = _api(engine, "POST", "/agents/login", {"agent": "2001"}, token)
    assert status == 200 and body["state"] == "available", body
    _wait(driver, 1.0, lambda d: _text(d, 'tr[data-agent="2001"] .state') == "available",
          "the agent's login did not reach the wallboard within a second")

    caller = RawUa()
    try:
        _queue_call(caller, engine, "701", "queued-call-1")
        _wait(driver, 1.0, lambda d: _text(d, 'tr[data-queue="backlog"] .waiting') == "1",
              "the queued call did not reach the wallboard within a second")
        _shot(driver, "wallboard")
        # The same numbers as GET /queues: the page shows the API's data, not its own.
        status, queues = _api(engine, "GET", "/queues", token=token)
        assert status == 200 and queues["queues"]["backlog"]["waiting"] == 1
        # The call is live: the supervisor sees it, masked for the role, and ends it.
        driver.get(engine.admin_url + "/#calls")
        _wait(driver, 5, lambda d: d.find_elements(By.CSS_SELECTOR,
                                                   'tr[data-call] .call-state'),
              "the queued call is not among the live calls")
    finally:
        caller.close()


def test_supervisor_hangs_up_a_live_call_and_both_phones_get_the_bye(
        engine: RunningEngine, browser, callee: RawUa) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver = browser
    if not driver.find_elements(By.ID, "calls-view") or _text(driver, "#who")[:4] != "sup ":
        _login(driver, engine, "sup")
    driver.get(engine.admin_url + "/#calls")
    caller = RawUa()
    try:
        _ok, alice, bob = _establish(engine.sip_port, caller, callee, "hangup-call-1")
        _wait_recording(engine)
        # A second of each side talking, so that there is something to play later.
        asyncio.run(_play([(alice, _tone("5", 1.0)), (bob, _tone("9", 1.0))], pace=0.02))
        established = 'tr[data-call-state="established"] button.hangup'
        _wait(driver, 5, lambda d: d.find_elements(By.CSS_SELECTOR, established),
              "the established call is not among the live calls")
        assert driver.execute_script(
            "return document.querySelectorAll('tr[data-call-state=\"established\"]').length"
        ) == 1
        _shot(driver, "live-calls")
        _click(driver, established)
        for phone in (caller, callee):
            bye = phone.wait(lambda m: isinstance(m, Request) and m.method == "BYE")
            assert isinstance(bye, Request)
            assert bye.call_id == "hangup-call-1" or phone is callee
        _wait(driver, 5, lambda d: "being hung up" in _text(d, "#calls-message"),
              "the page did not confirm the hang-up")
    finally:
        caller.close()
    hangups = [r for r in _audit(engine) if r["action"] == "call.hangup"]
    assert [r["actor"] for r in hangups] == ["sup"], hangups


def test_qa_plays_a_recording_and_the_audit_log_has_the_play(
        engine: RunningEngine, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver = browser
    _login(driver, engine, "qa")
    driver.get(engine.admin_url + "/#recordings")
    _wait(driver, 10, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-recording] button.play"),
          "no recording is listed for QA")
    driver.find_element(By.CSS_SELECTOR, "tr[data-recording] button.play").click()
    # The WAV streamed, decrypted as it went: the audio element knows the call's length.
    _wait(driver, 10, lambda d: d.execute_script(
        "const p = document.getElementById('player');"
        "return p.readyState >= 1 && isFinite(p.duration) && p.duration > 0;"),
        "the recording did not play in the browser: " + str(driver.execute_async_script(
            "const done = arguments[0]; const p = document.getElementById('player');"
            "fetch(p.src).then(r => r.text().then(t => done([r.status, t.slice(0, 200),"
            " p.error && p.error.message, p.readyState])));")))
    _shot(driver, "recordings")
    recording = driver.find_element(By.CSS_SELECTOR, "tr[data-recording]").get_attribute(
        "data-recording")

    plays = [r for r in _audit(engine) if r["action"] == "recording.play"]
    assert any(r["actor"] == "qa" and r["target"] == recording for r in plays), plays

    _login(driver, engine, "auditor")
    _wait(driver, 10, lambda d: d.find_elements(By.CSS_SELECTOR,
                                                'tr[data-action="recording.play"]'),
          "the auditor's view does not show the play")
    _wait(driver, 10, lambda d: _text(d, "#audit-verify").startswith("passed"),
          "the audit view does not show a passing verify")
    _shot(driver, "audit")


def test_an_agent_cannot_open_recordings_page_or_api(
        engine: RunningEngine, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    _login(driver, engine, "agent")
    assert not driver.find_elements(By.ID, "nav-recordings")
    _wait(driver, 5, lambda d: d.find_element(By.ID, "desktop-view").is_displayed(),
          "the agent's first view is the desktop")
    Select(driver.find_element(By.ID, "pause-reason")).select_by_visible_text("lunch")
    driver.find_element(By.ID, "agent-pause").click()
    _wait(driver, 5, lambda d: _text(d, "#desktop-state") == "break (lunch)",
          f"pause failed: {_text(driver, '#desktop-message')}")
    _shot(driver, "agent-desktop")

    driver.get(engine.admin_url + "/#recordings")
    _wait(driver, 5, lambda d: d.find_element(By.ID, "denied-view").is_displayed(),
          "the page let an agent open the recordings view")
    assert not driver.find_element(By.ID, "recordings-view").is_displayed()
    _shot(driver, "agent-recordings-refused")
    # The API refuses the same session (the page's own cookie) too.
    status = driver.execute_async_script(
        "const done = arguments[0];"
        "fetch('/recordings', {credentials: 'same-origin'}).then(r => done(r.status));")
    assert status == 403
    status = driver.execute_async_script(
        "const done = arguments[0];"
        "fetch('/recordings/x/play', {credentials: 'same-origin'}).then(r => done(r.status));")
    assert status == 403



def test_agent_desktop_shows_its_caller_masked_and_pauses_recording_for_pci(
        engine: RunningEngine, browser) -> None:  # type: ignore[no-untyped-def]
    from vaultpbx.media.rtppeer import RtpPeer
    from vaultpbx.sip.message import Response, build_response
    from vaultpbx.sip.parser import parse_message

    from tests.integration.sipclient import UdpClient

    driver = browser
    if _text(driver, "#who")[:6] != "agent ":
        _login(driver, engine, "agent")
    driver.get(engine.admin_url + "/#desktop")
    _click(driver, "#agent-ready")
    _wait(driver, 5, lambda d: _text(d, "#desktop-state") == "available",
          f"ready failed: {_text(driver, '#desktop-message')}")

    phone = UdpClient(engine.sip_port)  # agent 2001's phone
    caller = RawUa()
    number = "+447700900123"
    try:
        assert phone.register("2001", "pw-2001-secret").status == 200
        data = invite(caller, engine.sip_port, RtpPeer(ssrc=0x6161).sdp())
        caller.send(data.replace(b"0555", b"700").replace(b"media-call-1", b"agent-call-1")
                    .replace(b"sip:caller@", f"sip:{number}@".encode()), engine.sip_port)
        phone.sock.settimeout(5)
        while True:  # the ACD offers the call to the agent's phone, which answers
            offer = parse_message(phone.sock.recvfrom(65535)[0])
            if isinstance(offer, Request) and offer.method == "INVITE":
                break
        ok = build_response(offer, 200, to_tag="agent2001", extra=[
            ("contact", f"<sip:2001@127.0.0.1:{phone.port}>"),
            ("content-type", "application/sdp")], body=RtpPeer(ssrc=0x6262).answer_to(offer.body))
        phone.sock.sendto(ok.serialize(), ("127.0.0.1", engine.sip_port))
        answered = caller.wait(lambda m: isinstance(m, Response) and m.status == 200)
        assert isinstance(answered, Response)

        _wait(driver, 5, lambda d: d.find_element("id", "desktop-call").is_displayed(),
              "the agent's desktop does not show the current call")
        shown = _text(driver, "#desktop-caller")
        # Agents see the caller's number masked (the role's policy), never in clear.
        assert shown and number not in shown and "*" in shown, shown
        assert _text(driver, "#desktop-queue") == "support"
        _wait(driver, 5, lambda d: _text(d, "#desktop-recorded") == "recording",
              "the call is not recorded")
        _click(driver, "#pci-pause")
        _wait(driver, 5, lambda d: _text(d, "#desktop-recorded") == "paused (PCI)",
              f"the PCI pause did not take: {_text(driver, '#desktop-message')}")
        _shot(driver, "agent-desktop-call")
        switches = [r for r in _audit(engine) if r["action"] == "recording.sensitive_on"]
        assert [r["actor"] for r in switches] == ["agent"], switches
    finally:
        caller.close()
        phone.close()


def test_an_export_needs_a_second_person_approving_in_the_page(
        engine: RunningEngine, browser) -> None:  # type: ignore[no-untyped-def]
    driver = browser
    _login(driver, engine, "sup")
    driver.get(engine.admin_url + "/#recordings")
    _wait(driver, 10, lambda d: _text(d, "tr[data-recording] button.request-export"),
          "a supervisor is not offered an export request")
    _click(driver, "tr[data-recording] button.request-export")
    _wait(driver, 5, lambda d: "requested" in _text(d, "#recordings-message"),
          f"no export request: {_text(driver, '#recordings-message')}")
    request = _text(driver, "#approvals-table tr[data-request] td")
    assert request.startswith("apr-")
    # The requester is not offered an approval of its own request.
    assert not _text(driver, f'tr[data-request="{request}"] button.approve')

    _login(driver, engine, "admin")
    driver.get(engine.admin_url + "/#recordings")
    _wait(driver, 10, lambda d: _text(d, f'tr[data-request="{request}"] button.approve'),
          "the second admin does not see the request to approve")
    _shot(driver, "recordings-approval")
    _click(driver, f'tr[data-request="{request}"] button.approve')
    _wait(driver, 5, lambda d: "approved" in _text(d, "#recordings-message"),
          f"approval failed: {_text(driver, '#recordings-message')}")
    grants = [r for r in _audit(engine) if r["action"] == "approval.grant"]
    assert [(r["actor"], r["details"]["request"], r["details"]["requester"]) for r in grants] \
        == [("admin", request, "sup")]
