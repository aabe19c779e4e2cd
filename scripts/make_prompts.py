#!/usr/bin/env python3
"""Generate the engine's built-in voice prompts into sounds/prompts/ with Debian's espeak-ng.

Every prompt the engine says is listed in `PROMPTS` (name -> text); the engine looks prompts up
by name (vaultpbx.routing.announce composes names, vaultpbx.media.prompts finds the files), and
an operator's `sounds:` directory may replace any of them with recorded voice.

The generated files are committed (about 0.5 MB), and this script reproduces them: espeak-ng's
output differs between versions, so a clean machine with another espeak-ng would otherwise play
slightly different audio than the tests were written against. Run it after changing `PROMPTS`
(or with --check to see that the committed files still match what this espeak-ng makes).

Output: 8 kHz mono 16-bit PCM WAV, resampled from espeak-ng's 22050 Hz by band-limited FFT
resampling (numpy, already a dependency), with leading and trailing silence trimmed to 40 ms so
that a sequence of prompts ("you are caller number" "twenty" "three") runs on naturally.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sounds" / "prompts"
RATE = 8000
VOICE = "en-us"
SPEED = 160  # words per minute: espeak-ng's default is 175; a little slower on the telephone
PAD = int(0.04 * RATE)  # silence kept around each prompt
SILENCE = 300  # |sample| below this counts as silence when trimming

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen"]
_TENS = {20: "twenty", 30: "thirty", 40: "forty", 50: "fifty", 60: "sixty", 70: "seventy",
         80: "eighty", 90: "ninety"}

PROMPTS: dict[str, str] = {
    "queue-welcome": "Thank you for calling. Please hold, and the next available agent will "
                     "answer your call.",
    "queue-all-busy": "All our agents are busy.",
    "queue-you-are-caller": "You are caller number",
    "queue-estimated-wait": "Your estimated wait is about",
    "queue-wait-unknown": "We cannot estimate your waiting time yet.",
    "queue-less-than-a-minute": "less than a minute",
    "queue-more-than": "more than",
    "queue-thank-you": "Thank you for waiting.",
    "queue-no-one-available": "There is no one available to take your call. Please call "
                              "again later.",
    "minute": "minute",
    "minutes": "minutes",
    "seconds": "seconds",
    "call-recorded": "This call may be recorded.",
    **{f"digit-{n}": word for n, word in enumerate(_UNITS)},
    **{f"digit-{n}": word for n, word in _TENS.items()},
}


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling (truncate or pad the spectrum): no aliasing above 4 kHz."""
    count = round(len(samples) * target / rate)
    spectrum = np.fft.rfft(samples.astype(np.float64))
    keep = count // 2 + 1
    spectrum = spectrum[:keep]
    out = np.fft.irfft(spectrum, n=count) * (count / len(samples))
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def trim(samples: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > SILENCE)
    if len(loud) == 0:
        raise SystemExit("espeak-ng produced silence")
    start = max(0, int(loud[0]) - PAD)
    end = min(len(samples), int(loud[-1]) + 1 + PAD)
    return samples[start:end]


def synthesise(text: str, espeak: str = "espeak-ng") -> np.ndarray:
    try:
        raw = subprocess.run([espeak, "-v", VOICE, "-s", str(SPEED), "--stdout", text],
                             check=True, capture_output=True).stdout
    except FileNotFoundError:
        raise SystemExit("espeak-ng is not installed (scripts/setup.sh installs it)") from None
    with wave.open(io.BytesIO(raw), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise SystemExit("espeak-ng wrote something other than mono 16-bit PCM")
        rate = wav.getframerate()
        # espeak-ng streaming to stdout leaves the frame count unset: read to the end.
        data = wav.readframes(1 << 30)
    samples = np.frombuffer(data, dtype="<i2")
    return trim(resample(samples, rate, RATE))


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true",
                        help="compare with the files in --out instead of writing them")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    differ = []
    for name, text in PROMPTS.items():
        data = wav_bytes(synthesise(text))
        path = args.out / f"{name}.wav"
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                differ.append(name)
        else:
            path.write_bytes(data)
    if args.check and differ:
        print(f"differ from this espeak-ng's output: {', '.join(differ)}", file=sys.stderr)
        return 1
    if not args.check:
        total = sum((args.out / f"{n}.wav").stat().st_size for n in PROMPTS)
        print(f"{len(PROMPTS)} prompts, {total // 1024} KB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
