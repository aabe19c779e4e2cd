"""In-band DTMF detection (ITU-T Q.23/Q.24) with the Goertzel algorithm over 8 kHz audio.

Invariants:
- Audio is cut into blocks of `BLOCK_SAMPLES` (20 ms, one G.711 frame); samples that do not fill a
  block wait for the next `feed`. Packetisation therefore never changes what is detected.
- A block names a digit only if all of these hold (thresholds as in spandsp's detector):
  each of the strongest row and column tones is loud enough; the twist between them is within
  +4 dB / -8 dB; each beats every other tone of its group by 8 dB; and together they carry most
  of the block's energy (speech and noise spread theirs over many frequencies).
- A digit is reported once, when two consecutive blocks name it; it is reported again only after
  a block that names another digit or none (the inter-digit pause).
- The power of each of the eight DTMF frequencies is the Goertzel power |X(f)|^2 of the block.
  `goertzel_power` is the textbook recursion; the detector evaluates the same quantity for all
  eight frequencies at once as a precomputed 8xN cosine/sine product, which costs one small
  matrix product per block instead of N interpreted iterations (the tests check they agree).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "BLOCK_SAMPLES",
    "COLUMN_FREQUENCIES",
    "DtmfDetector",
    "KEYPAD",
    "ROW_FREQUENCIES",
    "goertzel_power",
]

SAMPLE_RATE = 8000
BLOCK_SAMPLES = 160
ROW_FREQUENCIES = (697.0, 770.0, 852.0, 941.0)
COLUMN_FREQUENCIES = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")  # KEYPAD[row][column]

_NORMAL_TWIST = 10 ** (8 / 10)  # the row (low) tone may be up to 8 dB above the column tone
_REVERSE_TWIST = 10 ** (4 / 10)  # the column (high) tone may be up to 4 dB above the row tone
_RELATIVE_PEAK = 10 ** (8 / 10)  # the chosen tone beats the others of its group by 8 dB
_TONE_TO_TOTAL_ENERGY = 0.6  # share of the block's energy the two tones must carry
# Each tone at least ~ -33 dBm0: peak amplitude 500 of int16 full scale.
_MIN_TONE_AMPLITUDE = 500.0


def goertzel_power(
    samples: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    frequency: float,
    sample_rate: int = SAMPLE_RATE,
) -> float:
    """|X(f)|^2 of `samples` by the Goertzel recursion (reference; the detector is vectorised)."""
    coefficient = 2.0 * math.cos(2.0 * math.pi * frequency / sample_rate)
    s_prev = s_prev2 = 0.0
    for x in samples.tolist():
        s_prev, s_prev2 = x + coefficient * s_prev - s_prev2, s_prev
    return s_prev * s_prev + s_prev2 * s_prev2 - coefficient * s_prev * s_prev2


def _basis(n: int) -> npt.NDArray[np.float64]:
    frequencies = np.array(ROW_FREQUENCIES + COLUMN_FREQUENCIES)
    phase = 2.0 * np.pi * np.outer(frequencies, np.arange(n)) / SAMPLE_RATE
    return np.vstack([np.cos(phase), np.sin(phase)])  # 16 x n: cosines then sines


class DtmfDetector:
    """Feed int16 samples at 8 kHz; get back the digits that started in them."""

    __slots__ = ("_basis", "_pending", "_candidate", "current")

    def __init__(self) -> None:
        self._basis = _basis(BLOCK_SAMPLES)
        self._pending: npt.NDArray[np.float64] = np.empty(0, dtype=np.float64)
        self._candidate: str | None = None
        #: The digit sounding now (reported and not yet released), for muting while it plays.
        self.current: str | None = None

    def feed(self, samples: npt.NDArray[np.int16]) -> list[str]:
        audio = samples.astype(np.float64)
        if self._pending.size:
            audio = np.concatenate((self._pending, audio))
        whole = audio.size - audio.size % BLOCK_SAMPLES
        self._pending = audio[whole:].copy()
        if not whole:
            return []
        blocks = audio[:whole].reshape(-1, BLOCK_SAMPLES)
        projections = blocks @ self._basis.T  # blocks x 16
        powers = projections[:, :8] ** 2 + projections[:, 8:] ** 2  # blocks x 8
        energies = np.einsum("ij,ij->i", blocks, blocks)
        detected: list[str] = []
        for power, energy in zip(powers.tolist(), energies.tolist(), strict=True):
            digit = self._classify(power, energy)
            if digit is not None and digit == self._candidate and digit != self.current:
                self.current = digit
                detected.append(digit)
            elif digit != self._candidate and digit != self.current:
                self.current = None
            self._candidate = digit
        return detected

    @staticmethod
    def _classify(power: list[float], energy: float) -> str | None:
        rows, columns = power[:4], power[4:]
        row = max(range(4), key=rows.__getitem__)
        column = max(range(4), key=columns.__getitem__)
        row_power, column_power = rows[row], columns[column]
        # A sine of amplitude A over N samples has |X|^2 = (A N / 2)^2.
        minimum = (_MIN_TONE_AMPLITUDE * BLOCK_SAMPLES / 2) ** 2
        if row_power < minimum or column_power < minimum:
            return None
        if column_power > row_power * _REVERSE_TWIST or row_power > column_power * _NORMAL_TWIST:
            return None
        for i in range(4):
            if i != row and rows[i] * _RELATIVE_PEAK > row_power:
                return None
            if i != column and columns[i] * _RELATIVE_PEAK > column_power:
                return None
        # A sine's energy over the block is 2 |X|^2 / N.
        if 2.0 * (row_power + column_power) / BLOCK_SAMPLES < _TONE_TO_TOTAL_ENERGY * energy:
            return None
        return KEYPAD[row][column]
