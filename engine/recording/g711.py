"""G.711 decoding to 16-bit linear PCM (ITU-T G.711, as in the classic Sun reference code).

Two 256-entry numpy tables built once from the standard expansion rules; decoding a payload is a
single table lookup. Bit-exact with `audioop.ulaw2lin` / `audioop.alaw2lin` (a test checks all 256
codes). `vaultpbx.codecs` will own G.711 once it lands; this stays until the export switches.
"""

from __future__ import annotations

import numpy as np

_BIAS = 0x84  # mu-law: 33 << 2, the bias added before the segment search on encode


def ulaw_to_linear(code: int) -> int:
    code = ~code & 0xFF
    magnitude = (((code & 0x0F) << 3) + _BIAS) << ((code & 0x70) >> 4)
    return (_BIAS - magnitude) if code & 0x80 else (magnitude - _BIAS)


def alaw_to_linear(code: int) -> int:
    code ^= 0x55  # even bits are inverted on the wire
    magnitude = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        magnitude += 8
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if code & 0x80 else -magnitude


ULAW_TABLE = np.array([ulaw_to_linear(c) for c in range(256)], dtype="<i2")
ALAW_TABLE = np.array([alaw_to_linear(c) for c in range(256)], dtype="<i2")


def decode_ulaw(payload: bytes) -> np.ndarray:
    return ULAW_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def decode_alaw(payload: bytes) -> np.ndarray:
    return ALAW_TABLE[np.frombuffer(payload, dtype=np.uint8)]
