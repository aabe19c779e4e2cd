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
    assert abs(x0 - silent_start / per_pixel) <= slack, (x0, silent_start / per_pixel)
    assert abs(x1 - silent_end / per_pixel) <= slack, (x1, silent_end / per_pixel)
    assert "PCI pause" in _text(driver, "#waveform-caption")
    _shot(driver, "recording-waveform")

    # The JSON the page drew from: no audio inside the span, audio on both sides of it.
    status, picture = driver.execute_async_script(
        "const done = arguments[0];"
        f"fetch('/recordings/{recording}/waveform?columns=200', {{credentials: 'same-origin'}})"
        ".then(r => r.json().then(j => done([r.status, j])));")
    assert status == 200
    (start, end), = picture["pci_spans"]
    assert abs(start - silent_start) <= 2 * FRAME and abs(end - silent_end) <= 2 * FRAME
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
