"""G.711 µ-law and A-law (ITU-T G.711) through numpy lookup tables.

Invariants:
- The tables are built once, at import, from the reference algorithm (the Sun Microsystems g711.c
  that CPython's `audioop` also uses), so every one of the 256 codewords decodes and every one of
  the 65,536 int16 samples encodes exactly as `audioop` does. The tests check all of them.
- Decoding indexes a 256-entry int16 table with the payload bytes; encoding indexes a 65,536-entry
  uint8 table with the samples reinterpreted as uint16 (no arithmetic per sample). `take` is
  used rather than fancy indexing: same result, ~25% less overhead on a 160-sample frame.
- Functions take and return `bytes` on the wire side and int16 numpy arrays on the sample side;
  a 2-D array of frames (one row per frame) works the same way, which is the cheap batched path.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_DECODE_TABLE",
    "ALAW_ENCODE_TABLE",
    "ULAW_DECODE_TABLE",
    "ULAW_ENCODE_TABLE",
    "alaw_decode",
    "alaw_encode",
    "ulaw_decode",
    "ulaw_encode",
]

Int16Array = npt.NDArray[np.int16]

_QUANT_MASK = 0x0F
_SEG_SHIFT = 4
_ULAW_BIAS = 0x84  # g711.c BIAS, applied as BIAS >> 2 on the 14-bit magnitude
_ULAW_CLIP = 8159  # g711.c CLIP (14-bit magnitude)
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _segment(
    magnitude: npt.NDArray[np.int32], seg_end: npt.NDArray[np.int32]
) -> npt.NDArray[np.int32]:
    # g711.c search(): the first segment whose end is >= the value; 8 means "beyond the last".
    return np.searchsorted(seg_end, magnitude, side="left").astype(np.int32)


def _build_ulaw_decode() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & _QUANT_MASK) << 3) + _ULAW_BIAS
    t = t << ((u >> _SEG_SHIFT) & 0x07)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_decode() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a >> _SEG_SHIFT) & 0x07
    t = (a & _QUANT_MASK) << 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _all_int16_by_uint16_index() -> npt.NDArray[np.int32]:
    # Position i holds the int16 whose bit pattern is i, so the table can be indexed by
    # `samples.view(np.uint16)`.
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    pcm = _all_int16_by_uint16_index() >> 2  # audioop feeds g711.c the 14-bit sample
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = _segment(magnitude, _ULAW_SEG_END)
    code = (np.minimum(seg, 7) << 4) | ((magnitude >> (np.minimum(seg, 7) + 1)) & _QUANT_MASK)
    code = np.where(seg >= 8, 0x7F, code)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    pcm = _all_int16_by_uint16_index() >> 3  # audioop feeds g711.c the 13-bit sample
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    magnitude = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = _segment(magnitude, _ALAW_SEG_END)
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    code = (np.minimum(seg, 7) << _SEG_SHIFT) | ((magnitude >> shift) & _QUANT_MASK)
    code = np.where(seg >= 8, 0x7F, code)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


ULAW_DECODE_TABLE: Int16Array = _build_ulaw_decode()
ALAW_DECODE_TABLE: Int16Array = _build_alaw_decode()
ULAW_ENCODE_TABLE: npt.NDArray[np.uint8] = _build_ulaw_encode()
ALAW_ENCODE_TABLE: npt.NDArray[np.uint8] = _build_alaw_encode()
for _table in (ULAW_DECODE_TABLE, ALAW_DECODE_TABLE, ULAW_ENCODE_TABLE, ALAW_ENCODE_TABLE):
    _table.flags.writeable = False


def ulaw_decode(payload: bytes) -> Int16Array:
    """µ-law codewords → int16 samples (one per byte)."""
    return ULAW_DECODE_TABLE.take(np.frombuffer(payload, dtype=np.uint8))


def alaw_decode(payload: bytes) -> Int16Array:
    """A-law codewords → int16 samples (one per byte)."""
    return ALAW_DECODE_TABLE.take(np.frombuffer(payload, dtype=np.uint8))


def ulaw_encode(samples: Int16Array) -> bytes:
    """int16 samples → µ-law codewords. A 2-D array encodes row after row."""
    return ULAW_ENCODE_TABLE.take(samples.view(np.uint16)).tobytes()


def alaw_encode(samples: Int16Array) -> bytes:
    """int16 samples → A-law codewords. A 2-D array encodes row after row."""
    return ALAW_ENCODE_TABLE.take(samples.view(np.uint16)).tobytes()
