from __future__ import annotations

import numpy as np
import pytest
from vaultpbx.codecs.dtmf import (
    BLOCK_SAMPLES,
    COLUMN_FREQUENCIES,
    KEYPAD,
    ROW_FREQUENCIES,
    DtmfDetector,
    goertzel_power,
)
from vaultpbx.codecs.g711 import ulaw_decode, ulaw_encode

RATE = 8000


def tone(
    digit: str, ms: float, *, amplitude: float = 6000.0, twist_db: float = 0.0, detune: float = 0.0
) -> np.ndarray:
    row = next(i for i, keys in enumerate(KEYPAD) if digit in keys)
    column = KEYPAD[row].index(digit)
    t = np.arange(int(RATE * ms / 1000)) / RATE
    low = amplitude * np.sin(2 * np.pi * ROW_FREQUENCIES[row] * (1 + detune) * t)
    high = (
        amplitude
        * 10 ** (twist_db / 20)
        * np.sin(2 * np.pi * COLUMN_FREQUENCIES[column] * (1 + detune) * t + 0.7)
    )
    return np.round(low + high).astype(np.int16)


def silence(ms: float) -> np.ndarray:
    return np.zeros(int(RATE * ms / 1000), dtype=np.int16)


def detect(signal: np.ndarray, chunk: int = 160) -> str:
    detector = DtmfDetector()
    found: list[str] = []
    for start in range(0, signal.size, chunk):
        found += detector.feed(signal[start : start + chunk])
    return "".join(found)


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Voiced segments (gliding pitch, harmonics shaped by three formants) with noisy gaps."""
    rng = np.random.default_rng(seed)
    n = int(RATE * seconds)
    t = np.arange(n) / RATE
    pitch = 110 + 40 * np.sin(2 * np.pi * 0.7 * t) + 10 * rng.standard_normal(n).cumsum() / n
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    formants = rng.uniform([300, 900, 2200], [800, 1800, 3000])
    voiced = np.zeros(n)
    for harmonic in range(1, 30):
        freq = pitch.mean() * harmonic
        gain = sum(np.exp(-(((freq - f) / 150) ** 2)) for f in formants) + 0.05
        voiced += gain * np.sin(harmonic * phase) / harmonic**0.5
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None)  # syllables
    noise = rng.standard_normal(n) * 0.2
    signal = voiced * envelope + noise
    return np.round(signal / np.abs(signal).max() * 20000).astype(np.int16)


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
def test_each_digit_is_detected_once(digit):
    assert detect(np.concatenate([silence(30), tone(digit, 80), silence(60)])) == digit


def test_sequence_in_odd_sized_chunks_is_packetisation_independent():
    keys = "0123456789*#ABCD"
    signal = np.concatenate([np.concatenate([tone(d, 70), silence(50)]) for d in keys])
    assert detect(signal, chunk=160) == keys
    assert detect(signal, chunk=97) == keys
    assert detect(signal, chunk=1000) == keys


def test_repeated_digit_needs_a_pause():
    held = tone("7", 300)
    assert detect(held) == "7"
    assert detect(np.concatenate([tone("7", 80), silence(50), tone("7", 80)])) == "77"


def test_survives_g711_and_modest_level_twist_and_detune():
    signal = np.concatenate(
        [
            tone("5", 80, amplitude=1500, twist_db=-6, detune=0.015),
            silence(50),
            tone("9", 80, twist_db=3),
            silence(50),
        ]
    )
    assert detect(ulaw_decode(ulaw_encode(signal))) == "59"


def test_rejects_excessive_twist_and_weak_tones():
    assert detect(tone("1", 100, twist_db=8)) == ""  # high tone 8 dB over the low: reverse twist
    assert detect(tone("1", 100, twist_db=-12)) == ""  # high tone 12 dB under: normal twist
    assert detect(tone("1", 100, amplitude=100)) == ""


def test_rejects_a_single_tone_and_short_bursts():
    t = np.arange(800) / RATE
    assert detect(np.round(8000 * np.sin(2 * np.pi * 697 * t)).astype(np.int16)) == ""
    assert detect(np.concatenate([silence(10), tone("3", 25), silence(50)])) == ""


@pytest.mark.parametrize("seed", range(6))
def test_no_false_positives_on_speech_like_audio(seed):
    assert detect(speech_like(3.0, seed)) == ""


@pytest.mark.parametrize("seed", range(3))
def test_no_false_positives_on_white_noise(seed):
    rng = np.random.default_rng(seed)
    noise = np.clip(rng.standard_normal(RATE * 3) * 8000, -32768, 32767).astype(np.int16)
    assert detect(noise) == ""


def test_digit_inside_speech_is_found():
    speech = speech_like(1.0, 99) // 4
    signal = np.concatenate([speech, tone("8", 100), silence(40), speech])
    assert detect(signal) == "8"


def test_vectorised_powers_equal_the_goertzel_recursion():
    block = tone("6", BLOCK_SAMPLES * 1000 / RATE).astype(np.float64)
    n = np.arange(BLOCK_SAMPLES)
    for frequency in ROW_FREQUENCIES + COLUMN_FREQUENCIES:
        dft = np.abs(np.sum(block * np.exp(-2j * np.pi * frequency * n / RATE))) ** 2
        assert goertzel_power(block, frequency) == pytest.approx(dft, rel=1e-9)
