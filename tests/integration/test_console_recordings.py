"""The console's recordings view in headless Chromium: a recording's waveform with its PCI-paused
span shaded where the pause really was.

A recorded call carries a continuous tone from the caller; a supervisor switches the PCI pause on
and off through the API while the tone plays, so the exported WAV is digital silence exactly over
the pause (no audio of either channel is kept then) and tone everywhere else. QA opens the
waveform in the page: the shaded band's pixel columns must cover that silent run within two RTP
frames, the envelope must be empty inside it and not outside it. The route is recording.play's
(an agent gets 403) and is audited as recording.waveform. A screenshot goes to
test-artifacts/console/recording-waveform.png.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import urllib.request
import wave

import numpy as np
import pytest

from tests.integration.engine import RunningEngine
from tests.integration.test_console_browser import (  # noqa: F401  (fixtures)
    _api,
    _audit,
    _click,
    _login,
    _shot,
    _text,
    _token,
    _wait,
    browser,
    callee,
    engine,
)
from tests.integration.test_media_calls import RawUa
from tests.integration.test_recording_calls import (
    _establish,
    _hang_up,
    _play,
    _tone,
    _wait_recording,
)

pytestmark = pytest.mark.integration

FRAME = 160  # one 20 ms RTP frame at 8 kHz
STALL = 0.25  # seconds the test's RTP sender may stall (a thread beside HTTPS calls)


def _wav(running: RunningEngine, recording_id: str, token: str) -> np.ndarray:
    request = urllib.request.Request(f"{running.admin_url}/recordings/{recording_id}/play",
                                     headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=20,
                                context=running.admin_tls_context()) as response:
        data = response.read()
    with wave.open(io.BytesIO(data)) as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    return frames[:, 0].copy()


def _silent_run(channel: np.ndarray) -> tuple[int, int]:
    """The longest run of digital silence strictly inside the channel: [start, end)."""
    zero = np.concatenate(([False], channel == 0, [False]))
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    longest = int(np.argmax(ends - starts))
    return int(starts[longest]), int(ends[longest])


@pytest.fixture(scope="module")
def paused_recording(engine: RunningEngine, callee: RawUa) -> str:  # noqa: F811
    sup = _token(engine, "sup")
    caller = RawUa()
    alice = bob = None
    try:
        ok, alice, bob = _establish(engine.sip_port, caller, callee, "wave-1")
        _wait_recording(engine)
        tone = _tone("5", 3.0)
        player = threading.Thread(target=lambda: asyncio.run(_play([(alice, tone)], pace=0.02)))
        player.start()
        time.sleep(1.0)  # pacing the call's timeline, not waiting for a result
        assert _api(engine, "POST", "/calls/wave-1/sensitive", {"on": True}, sup)[0] == 200
        time.sleep(0.8)
        assert _api(engine, "POST", "/calls/wave-1/sensitive", {"on": False}, sup)[0] == 200
        player.join()
        _hang_up(caller, engine.sip_port, ok.to.tag or "", "wave-1")
    finally:
        for part in (caller, alice, bob):
            if part is not None:
                part.close()
    deadline = time.monotonic() + 10
    while True:
        status, body = _api(engine, "GET", "/recordings", token=sup)
        assert status == 200, body
        closed = [r for r in body["recordings"] if r["state"] == "closed"]
        if closed:
            return str(max(closed, key=lambda r: r["created_at"])["recording_id"])
        assert time.monotonic() < deadline, f"the recording never closed: {body}"
        time.sleep(0.1)


def test_the_waveform_shades_the_pci_pause_where_the_audio_is_silent(
        engine: RunningEngine, browser, paused_recording: str) -> None:  # noqa: F811
    recording = paused_recording
    left = _wav(engine, recording, _token(engine, "sup"))
    silent_start, silent_end = _silent_run(left)
    assert 0.5 * 8000 < silent_end - silent_start < 1.5 * 8000, (silent_start, silent_end)
    assert silent_start > 8000 // 2 and silent_end < len(left) - 8000 // 2  # in the middle

    driver = browser
    _login(driver, engine, "qa")
    driver.get(engine.admin_url + "/#recordings")
    button = f'tr[data-recording="{recording}"] button.waveform'
    _wait(driver, 10, lambda d: _text(d, button), "no Waveform button for the recording")
    _click(driver, button)
    _wait(driver, 10, lambda d: d.execute_script(
        "return document.getElementById('waveform').dataset.recording") == recording,
        f"the waveform was not drawn: {_text(driver, '#recordings-message')}")
    width, frames, spans = driver.execute_script(
        "const c = document.getElementById('waveform');"
        "return [c.width, Number(c.dataset.frames), JSON.parse(c.dataset.pciSpans)];")
    assert frames == len(left)
    assert len(spans) == 1, spans
    per_pixel = frames / width
    slack = 2 * FRAME / per_pixel + 1  # two RTP frames, in pixels
    x0, x1 = spans[0]
    # The band covers no tone (it lies inside the silence, within two frames at each edge)...
    assert x0 >= silent_start / per_pixel - slack, (x0, silent_start / per_pixel)
    assert x1 <= silent_end / per_pixel + slack, (x1, silent_end / per_pixel)
    # ...and the silence is the pause: it may be longer only by a stall of the test's own RTP
    # sender on this shared 2-core machine (seen up to ~100 ms around the API calls).
    stall = STALL * 8000 / per_pixel
    assert (silent_end - silent_start) / per_pixel - (x1 - x0) <= stall + 2 * slack, \
        (x0, x1, silent_start / per_pixel, silent_end / per_pixel)
    assert "PCI pause" in _text(driver, "#waveform-caption")
    _shot(driver, "recording-waveform")

    # The JSON the page drew from: no audio inside the span, audio on both sides of it.
    status, picture = driver.execute_async_script(
        "const done = arguments[0];"
        f"fetch('/recordings/{recording}/waveform?columns=200', {{credentials: 'same-origin'}})"
        ".then(r => r.json().then(j => done([r.status, j])));")
    assert status == 200
    (start, end), = picture["pci_spans"]
    assert silent_start - 2 * FRAME <= start < end <= silent_end + 2 * FRAME
    assert (silent_end - silent_start) - (end - start) <= STALL * 8000 + 4 * FRAME
    caller_channel = picture["channels"][0]
    column = lambda sample: sample * 200 // frames  # noqa: E731
    inside = caller_channel[column(start) + 1:column(end) - 1]
    assert inside and all(point is None for point in inside), inside
    for point in (caller_channel[column(start) - 3], caller_channel[column(end) + 3]):
        assert point is not None and point[1] - point[0] > 4000, point  # the tone

    views = [r for r in _audit(engine) if r["action"] == "recording.waveform"]
    assert any(r["actor"] == "qa" and r["target"] == recording for r in views), views


def test_the_waveform_is_refused_without_play_permission_and_checks_its_input(
        engine: RunningEngine, paused_recording: str) -> None:  # noqa: F811
    agent = _token(engine, "agent")
    status, _ = _api(engine, "GET", f"/recordings/{paused_recording}/waveform", token=agent)
    assert status == 403
    qa = _token(engine, "qa")
    assert _api(engine, "GET", "/recordings/00ff/waveform", token=qa)[0] == 404
    status, body = _api(engine, "GET",
                        f"/recordings/{paused_recording}/waveform?columns=99999", token=qa)
    assert status == 400, body
    status, body = _api(engine, "GET", f"/recordings/{paused_recording}/waveform?columns=50",
                        token=qa)
    assert status == 200 and len(body["channels"][0]) == 50
    assert "caller" not in body and not any(isinstance(v, bytes) for v in body.values())


NUMBER = "+447700900123"


@pytest.fixture(scope="module")
def queued_recording(engine: RunningEngine, paused_recording: str) -> str:  # noqa: F811
    """A call from NUMBER to queue `support`, answered by agent 2001's phone, recorded, ended:
    its call record carries queue and agent (the trunk call of `paused_recording` has neither)."""
    from vaultpbx.media.rtppeer import RtpPeer
    from vaultpbx.sip.message import Request, Response, build_response
    from vaultpbx.sip.parser import parse_message

    from tests.integration.sipclient import UdpClient
    from tests.integration.test_media_calls import invite

    sup = _token(engine, "sup")
    status, body = _api(engine, "POST", "/agents/login", {"agent": "2001"}, sup)
    assert status == 200 and body["state"] == "available", body
    phone = UdpClient(engine.sip_port)
    caller = RawUa()
    try:
        assert phone.register("2001", "pw-2001-secret").status == 200
        data = invite(caller, engine.sip_port, RtpPeer(ssrc=0x7171).sdp())
        caller.send(data.replace(b"0555", b"700").replace(b"media-call-1", b"queued-rec-1")
                    .replace(b"sip:caller@", f"sip:{NUMBER}@".encode()), engine.sip_port)
        phone.sock.settimeout(5)
        while True:
            offer = parse_message(phone.sock.recvfrom(65535)[0])
            if isinstance(offer, Request) and offer.method == "INVITE":
                break
        ok = build_response(offer, 200, to_tag="agent2001q", extra=[
            ("contact", f"<sip:2001@127.0.0.1:{phone.port}>"),
            ("content-type", "application/sdp")], body=RtpPeer(ssrc=0x7272).answer_to(offer.body))
        phone.sock.sendto(ok.serialize(), ("127.0.0.1", engine.sip_port))
        answered = caller.wait(lambda m: isinstance(m, Response) and m.status == 200)
        assert isinstance(answered, Response)
        _wait_recording(engine, started=2)
        _hang_up(caller, engine.sip_port, answered.to.tag or "", "queued-rec-1")
        while True:  # the engine ends the agent's leg: answer its BYE
            bye = parse_message(phone.sock.recvfrom(65535)[0])
            if isinstance(bye, Request) and bye.method == "BYE":
                phone.sock.sendto(build_response(bye, 200).serialize(),
                                  ("127.0.0.1", engine.sip_port))
                break
    finally:
        caller.close()
        phone.close()
    deadline = time.monotonic() + 10
    while True:  # the call record is written when the call ends
        status, body = _api(engine, "GET", "/recordings?queue=support", token=sup)
        assert status == 200, body
        if body["recordings"]:
            return str(body["recordings"][0]["recording_id"])
        assert time.monotonic() < deadline, "no recording of queue support is listed"
        time.sleep(0.1)


def _ids(running: RunningEngine, token: str, query: str) -> set[str]:
    status, body = _api(running, "GET", f"/recordings?{query}", token=token)
    assert status == 200, body
    return {row["recording_id"] for row in body["recordings"]}


def test_recordings_are_searched_by_queue_agent_date_and_masked_number_on_the_server(
        engine: RunningEngine, paused_recording: str,  # noqa: F811
        queued_recording: str) -> None:
    from urllib.parse import quote

    qa = _token(engine, "qa")
    everything = _ids(engine, qa, "")
    assert {paused_recording, queued_recording} <= everything
    assert _ids(engine, qa, "queue=support") == {queued_recording}
    assert _ids(engine, qa, "agent=2001") == {queued_recording}
    assert _ids(engine, qa, "agent=2001&queue=backlog") == set()
    assert _ids(engine, qa, "queue=nope") == set()
    status, body = _api(engine, "GET", "/recordings?agent=2001", token=qa)
    (row,) = body["recordings"]
    assert (row["queue"], row["agent"]) == ("support", "2001") and row["call_id"], row
    # QA sees the number masked, and searches what it sees: the visible tail finds the call,
    # the full number (hidden digits) finds nothing, so the search is no oracle for the mask.
    shown = str(row["caller"])
    assert NUMBER not in shown and "*" in shown, shown
    tail = shown.rsplit("*", 1)[1]
    assert tail and _ids(engine, qa, f"caller={quote(tail)}") == {queued_recording}
    assert _ids(engine, qa, f"caller={quote(NUMBER)}") == set()
    # A supervisor sees numbers in clear (configs/default.yaml) and finds it by the full number.
    sup = _token(engine, "sup")
    assert _ids(engine, sup, f"caller={quote(NUMBER)}") == {queued_recording}
    # Dates: everything was made in the last hour.
    now = time.time()
    assert _ids(engine, qa, f"from={now - 3600}&to={now + 60}") == everything
    assert _ids(engine, qa, f"from={now + 60}") == set()
    # Bad input is a 400 and names the parameter.
    status, body = _api(engine, "GET", "/recordings?from=yesterday", token=qa)
    assert status == 400 and "from" in body["error"], body
    status, body = _api(engine, "GET", "/recordings?queue=" + "q" * 65, token=qa)
    assert status == 400 and "queue" in body["error"], body


def test_the_page_filters_recordings_by_queue_and_agent(
        engine: RunningEngine, browser, paused_recording: str,  # noqa: F811
        queued_recording: str) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    _login(driver, engine, "qa")
    driver.get(engine.admin_url + "/#recordings")
    _wait(driver, 10, lambda d: d.execute_script(
        "return document.querySelectorAll('tr[data-recording]').length;") >= 2,
        "the recordings are not listed")
    driver.find_element(By.ID, "rec-queue").send_keys("support")
    driver.find_element(By.ID, "rec-agent").send_keys("2001")
    driver.find_element(By.CSS_SELECTOR, "#recordings-filter button[type=submit]").click()
    _wait(driver, 10, lambda d: d.execute_script(  # one script: rows are redrawn meanwhile
        "return [...document.querySelectorAll('tr[data-recording]')]"
        ".map((tr) => tr.dataset.recording);") == [queued_recording],
        "the page did not narrow the list to the queue's recording")
    assert _text(driver, f'tr[data-recording="{queued_recording}"] .queue') == "support"
    assert _text(driver, f'tr[data-recording="{queued_recording}"] .agent') == "2001"
    assert NUMBER not in _text(driver, "#recordings-table")
    _shot(driver, "recordings-search")


def test_a_legal_hold_takes_two_people_through_the_api(
        engine: RunningEngine, paused_recording: str) -> None:  # noqa: F811
    admin, admin2, sup = (_token(engine, name) for name in ("admin", "admin2", "sup"))
    path = f"/recordings/{paused_recording}/legal-hold"
    # Without recording.legal_hold: refused (and nothing is requested).
    assert _api(engine, "POST", path, {"reason": "case 7"}, sup)[0] == 403
    assert _api(engine, "POST", path, {"reason": ""}, admin)[0] == 400
    assert _api(engine, "POST", "/recordings/00ff/legal-hold", {"reason": "x"}, admin)[0] == 404
    status, body = _api(engine, "POST", path, {"reason": "case 7"}, admin)
    assert status == 201 and body["status"] == "pending", body
    assert _api(engine, "POST", path, {"reason": "again"}, admin2)[0] == 409
    status, body = _api(engine, "GET", "/legal-holds", token=admin2)
    assert [(h["recording_id"], h["status"], h["requested_by"]) for h in body["holds"]] \
        == [(paused_recording, "pending", "admin")]
    # Four eyes: the requester cannot approve; the hold is still not in force.
    status, body = _api(engine, "POST", path + "/approve", token=admin)
    assert status == 403, body
    listed = {r["recording_id"]: r for r in _api(engine, "GET", "/recordings", token=admin)[1][
        "recordings"]}
    assert listed[paused_recording]["legal_hold"] is False
    refusals = [r for r in _audit(engine) if r["target"] == paused_recording
                and "hold" in r["action"] and r["actor"] == "admin"]
    assert any(r.get("details", {}).get("allowed") is False for r in refusals), refusals
    # The second person approves: in force.
    status, body = _api(engine, "POST", path + "/approve", token=admin2)
    assert status == 200 and body["requested_by"] == "admin", body
    listed = {r["recording_id"]: r for r in _api(engine, "GET", "/recordings", token=admin)[1][
        "recordings"]}
    assert listed[paused_recording]["legal_hold"] is True
    assert _api(engine, "POST", path + "/approve", token=admin2)[0] == 409
    holds = [r for r in _audit(engine) if r["target"] == paused_recording
             and r["actor"] == "admin2" and "hold" in r["action"]]
    assert holds, [r for r in _audit(engine) if "hold" in r["action"]]


def test_a_legal_hold_is_requested_and_approved_in_the_page(
        engine: RunningEngine, browser, queued_recording: str) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    driver = browser
    _login(driver, engine, "admin")
    driver.get(engine.admin_url + "/#recordings")
    row = f'tr[data-recording="{queued_recording}"]'
    _wait(driver, 10, lambda d: _text(d, f"{row} button.request-hold"),
          "an admin is not offered a legal hold")
    driver.find_element(By.ID, "hold-reason").send_keys("complaint 2026-118")
    _click(driver, f"{row} button.request-hold")
    _wait(driver, 5, lambda d: "requested" in _text(d, "#recordings-message"),
          f"no hold request: {_text(driver, '#recordings-message')}")
    hold = f'tr[data-hold="{queued_recording}"]'
    _wait(driver, 5, lambda d: _text(d, f"{hold} .hold-status") == "pending",
          "the request is not listed as pending")
    assert not _text(driver, f"{hold} button.approve-hold")  # not for the requester

    _login(driver, engine, "admin2")
    driver.get(engine.admin_url + "/#recordings")
    _wait(driver, 10, lambda d: _text(d, f"{hold} button.approve-hold"),
          "the second admin is not offered the approval")
    _shot(driver, "recordings-legal-hold")
    _click(driver, f"{hold} button.approve-hold")
    _wait(driver, 5, lambda d: "approved" in _text(d, "#recordings-message"),
          f"approval failed: {_text(driver, '#recordings-message')}")
    _wait(driver, 5, lambda d: _text(d, f"{row}") and "legal hold" in _text(d, row),
          "the recording is not shown on legal hold")
    _wait(driver, 5, lambda d: _text(d, f"{hold} .hold-status") == "active",
          "the hold is not shown active")
