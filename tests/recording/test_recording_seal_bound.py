"""What a SIGKILL of the media worker can lose is bounded by construction: the audio that lives
only in the worker's memory is what arrived since the last seal, so the longest time between two
seals of a talking call is the bound. Streamed through the worker's own `LiveRecordings` with a
real writer and file, swept on the worker's grid with late timers; each seal is read back from
the file (what is in the file survives the kill of the process)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from vaultpbx.recording.live import SWEEP_SECONDS, LiveRecordings, seal_period
from vaultpbx.recording.reader import scan_structure

from .recording_helpers import FRAME, T0, WALL, audio
from .test_recording_live import rtp

PROMISE = 1.0  # README: "A SIGKILL loses at most the last second"
LATE = 0.05  # how late a sweep may run here (the worker's loop is busy relaying)


def longest_unsealed(env, chunk_seconds: float, seconds: float, seed: int) -> float:
    """Stream `seconds` of 20 ms frames, sweep every SWEEP_SECONDS on a grid (each sweep up to
    LATE seconds late); the longest time any frame waited in memory before it was in the file."""
    recordings = LiveRecordings()
    new = env.store.create_recording(env.directory, created_at=WALL)
    env.directory.mkdir(parents=True, exist_ok=True)
    recordings.start(f"s{seed}", "call-1", {  # the `record` command, as protocol.py has it
        "path": str(new.path), "recording-id": new.recording_id.hex(),
        "key-id": new.key_id.hex(), "data-key": base64.b64encode(new.data_key).decode(),
        "codec": "PCMU", "rate": 8000, "payload-types": [0], "chunk-seconds": chunk_seconds,
    }, T0)
    assert recordings.interval == min(SWEEP_SECONDS, chunk_seconds / 2)
    path = new.path
    rng = np.random.default_rng(seed)
    a = audio(0.02, seed)
    frames = int(seconds / 0.02)
    grid = T0 + recordings.interval
    waiting: list[float] = []  # arrival times of frames not yet sealed in the file
    chunks = 0
    longest = 0.0
    for i in range(frames):
        now = T0 + i * 0.02
        while grid + LATE <= now:  # sweeps due before this frame (at most LATE late)
            swept = grid + float(rng.uniform(0, LATE))
            recordings.sweep(swept)
            sealed = scan_structure(path).complete_chunks
            if sealed > chunks:
                chunks = sealed
                longest = max([longest] + [swept - t for t in waiting])
                waiting.clear()
            grid += recordings.interval
        recordings.tap(f"s{seed}", 0, rtp(i, i * FRAME, a), now)
        waiting.append(now)
    recordings.close_all_unfinished()
    assert chunks >= seconds / (chunk_seconds + LATE) - 1  # it did seal along the way
    return longest


@pytest.mark.parametrize("chunk_seconds", [1.0, 0.5, 0.25])
def test_audio_waits_in_memory_at_most_the_seal_period(env, chunk_seconds: float) -> None:
    period = seal_period(chunk_seconds, min(SWEEP_SECONDS, chunk_seconds / 2))
    # The code's own cadence leaves room for a late sweep within the promise.
    assert period + LATE <= chunk_seconds
    for seed in range(3):
        longest = longest_unsealed(env, chunk_seconds, 6.0, seed)
        assert longest <= period + LATE + 0.02 + 1e-9, (seed, longest)
        assert longest <= min(chunk_seconds, PROMISE)


def test_the_default_cadence_seals_every_0_8_s() -> None:
    assert seal_period(1.0, SWEEP_SECONDS) == pytest.approx(0.8)
