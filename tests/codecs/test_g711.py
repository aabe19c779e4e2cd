"""G.711 tables against CPython's audioop on every codeword and every 16-bit (and 8-bit) sample."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from vaultpbx.codecs.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_CODEWORDS = bytes(range(256))
ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_INT8_AS_INT16 = (np.arange(-128, 128, dtype=np.int16) << 8).astype(np.int16)

LAWS = [
    pytest.param(ulaw_encode, ulaw_decode, audioop.lin2ulaw, audioop.ulaw2lin, id="ulaw"),
    pytest.param(alaw_encode, alaw_decode, audioop.lin2alaw, audioop.alaw2lin, id="alaw"),
]


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_decode_every_codeword_matches_audioop(encode, decode, ref_encode, ref_decode):
    expected = np.frombuffer(ref_decode(ALL_CODEWORDS, 2), dtype="<i2")
    assert decode(ALL_CODEWORDS).dtype == np.int16
    assert np.array_equal(decode(ALL_CODEWORDS), expected)
    # 8-bit output is the 16-bit value's high byte.
    expected8 = np.frombuffer(ref_decode(ALL_CODEWORDS, 1), dtype=np.int8)
    assert np.array_equal((decode(ALL_CODEWORDS) >> 8).astype(np.int8), expected8)


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_encode_every_int16_matches_audioop(encode, decode, ref_encode, ref_decode):
    assert encode(ALL_INT16) == ref_encode(ALL_INT16.astype("<i2").tobytes(), 2)


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_encode_every_int8_matches_audioop(encode, decode, ref_encode, ref_decode):
    int8 = np.arange(-128, 128, dtype=np.int8).tobytes()
    assert encode(ALL_INT8_AS_INT16) == ref_encode(int8, 1)


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_decode_encode_is_identity_on_codewords(encode, decode, ref_encode, ref_decode):
    # Every codeword but µ-law's negative zero (0x7f decodes to 0 and re-encodes as 0xff).
    round_trip = encode(decode(ALL_CODEWORDS))
    differing = [i for i in range(256) if round_trip[i] != i]
    assert differing in ([], [0x7F])


@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_batched_frames_equal_frame_by_frame(encode, decode, ref_encode, ref_decode):
    rng = np.random.default_rng(7)
    frames = rng.integers(-32768, 32768, size=(50, 160), dtype=np.int16)
    batched = encode(frames)
    assert batched == b"".join(encode(frame) for frame in frames)
    decoded = decode(batched).reshape(50, 160)
    assert np.array_equal(decoded[3], decode(encode(frames[3])))
