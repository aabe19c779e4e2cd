"""Write sounds/moh-default.wav: a short, royalty-free music-on-hold loop synthesised here.

A simple melody (a pentatonic tune over a soft fifth drone), each note with a gentle attack and
decay so the loop has no clicks, ending where it began so it repeats seamlessly. 8 kHz mono
16-bit PCM, the format the media workers pre-encode to G.711. Deterministic: running it again
gives the same bytes, so the committed file can be checked against this script.

    python scripts/make_moh_wav.py [OUTPUT]
"""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import numpy as np

RATE = 8000
BEAT = 0.3  # seconds per eighth note
# (MIDI note, beats); 0 is a rest. C major pentatonic, eight bars.
MELODY = [
    (72, 2), (74, 1), (76, 1), (79, 2), (76, 2),
    (74, 1), (72, 1), (69, 2), (72, 4),
    (76, 2), (79, 1), (81, 1), (79, 2), (76, 2),
    (74, 2), (76, 1), (74, 1), (72, 4),
]
DRONE = (48, 55)  # C3 and G3 under everything


def frequency(note: int) -> float:
    return float(440.0 * 2 ** ((note - 69) / 12))


def tone(note: int, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    if note == 0:
        return np.zeros_like(t)
    f = frequency(note)
    wave_ = np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t)  # a little warmth
    attack = np.minimum(1.0, t / 0.02)
    decay = np.exp(-2.5 * t)
    release = np.minimum(1.0, (seconds - t) / 0.03)
    return np.asarray(wave_ * attack * decay * release)


def render() -> np.ndarray:
    melody = np.concatenate([tone(note, beats * BEAT) for note, beats in MELODY])
    t = np.arange(len(melody)) / RATE
    drone = sum(np.sin(2 * np.pi * frequency(n) * t) for n in DRONE) / len(DRONE)
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)  # loop boundary without a click
    mix = 0.55 * melody + 0.15 * drone * fade
    return np.asarray(np.clip(mix * 0.6 * 32767, -32768, 32767).astype("<i2"))


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "sounds" / (
        "moh-default.wav")
    samples = render()
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(samples.tobytes())
    print(f"{out}: {len(samples) / RATE:.1f} s, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv)
