from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest
from vaultpbx.codecs.wav import WavWriter


def test_stereo_file_reads_back_with_the_wave_module(tmp_path):
    left = np.arange(-800, 800, dtype=np.int16)
    right = -left
    path = tmp_path / "call.wav"
    with path.open("wb") as file, WavWriter(file) as writer:
        for start in range(0, left.size, 160):  # streamed frame by frame
            writer.write_stereo(left[start : start + 160], right[start : start + 160])
        assert writer.frames_written == 1600
    with wave.open(str(path), "rb") as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (2, 2, 8000)
        assert reader.getnframes() == 1600
        frames = np.frombuffer(reader.readframes(1600), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(frames[:, 0], left)
    assert np.array_equal(frames[:, 1], right)


def test_empty_file_is_valid():
    buffer = io.BytesIO()
    WavWriter(buffer, sample_rate=16000, channels=1).close()
    buffer.seek(0)
    with wave.open(buffer, "rb") as reader:
        assert (reader.getnchannels(), reader.getframerate(), reader.getnframes()) == (1, 16000, 0)


def test_header_sizes_are_unsigned_32_bit_and_patched_at_close():
    buffer = io.BytesIO()
    writer = WavWriter(buffer)
    writer.write(np.zeros((4000, 2), dtype=np.int16))
    assert buffer.getvalue()[4:8] == b"\0\0\0\0"  # not yet patched
    writer.close()
    writer.close()  # idempotent
    data = buffer.getvalue()
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    assert data[72:76] == b"data" and struct.unpack_from("<I", data, 76)[0] == 16000


def test_outgrowing_riff_turns_the_file_into_rf64(monkeypatch):
    # Writing 4 GiB is too slow for a unit test: lower the limit instead.
    monkeypatch.setattr(WavWriter, "riff_size_limit", 1000)
    buffer = io.BytesIO()
    with WavWriter(buffer) as writer:
        writer.write(np.ones((300, 2), dtype=np.int16))
    data = buffer.getvalue()
    assert data[0:4] == b"RF64" and struct.unpack_from("<I", data, 4)[0] == 0xFFFFFFFF
    ds64_id, ds64_len, riff_size, data_size, samples, table = struct.unpack_from(
        "<4sIQQQI", data, 12
    )
    assert (ds64_id, ds64_len, table) == (b"ds64", 28, 0)
    assert (riff_size, data_size, samples) == (len(data) - 8, 1200, 300)
    assert struct.unpack_from("<I", data, 76)[0] == 0xFFFFFFFF


def test_partial_frames_and_mismatched_channels_rejected():
    writer = WavWriter(io.BytesIO())
    with pytest.raises(ValueError, match="whole 2-channel frames"):
        writer.write(np.zeros(3, dtype=np.int16))
    with pytest.raises(ValueError, match="channel lengths differ"):
        writer.write_stereo(np.zeros(3, dtype=np.int16), np.zeros(4, dtype=np.int16))
