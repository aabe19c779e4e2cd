"""L16: 16-bit linear PCM in network byte order (RFC 3551 §4.5.11).

Invariants: payload bytes are big-endian int16; samples are native int16 numpy arrays. An odd
payload length is a malformed packet and raises `ValueError` (callers count and drop it).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["l16_decode", "l16_encode"]

_BIG_ENDIAN_INT16 = np.dtype(">i2")


def l16_decode(payload: bytes) -> npt.NDArray[np.int16]:
    """Network-order L16 payload → native int16 samples."""
    if len(payload) % 2:
        raise ValueError(f"L16 payload has an odd length ({len(payload)} bytes)")
    return np.frombuffer(payload, dtype=_BIG_ENDIAN_INT16).astype(np.int16)


def l16_encode(samples: npt.NDArray[np.int16]) -> bytes:
    """Native int16 samples → network-order L16 payload."""
    return samples.astype(_BIG_ENDIAN_INT16, copy=False).tobytes()
