"""A streaming WAV writer: 16-bit PCM, stereo by default (one channel per call direction).

Invariants:
- Audio goes straight to the file as it is written; nothing is kept in memory but the byte count.
- The header is written up front with placeholder sizes and patched once, at `close`. The file
  object must therefore be seekable.
- A 28-byte JUNK chunk is reserved after the RIFF header (EBU Tech 3306). If the file outgrows
  RIFF's 32-bit sizes (~37 hours of 8 kHz stereo), `close` turns it into RF64 in place: "RIFF"
  becomes "RF64" and the JUNK chunk becomes the ds64 chunk holding the 64-bit sizes. Files under
  4 GiB stay plain RIFF/WAVE that every reader (including the standard `wave` module) accepts.
"""

from __future__ import annotations

import struct
from types import TracebackType
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

__all__ = ["WavWriter"]

_LITTLE_ENDIAN_INT16 = np.dtype("<i2")
_WAVE_FORMAT_PCM = 1
_BITS_PER_SAMPLE = 16
_RIFF_HEADER = struct.Struct("<4sI4s")  # "RIFF", size of what follows, "WAVE"
_JUNK_OR_DS64 = struct.Struct("<4sIQQQI")  # id, 28, riff size, data size, sample count, table len
_FMT = struct.Struct("<4sIHHIIHH")
_DATA_HEADER = struct.Struct("<4sI")
_DATA_OFFSET = _RIFF_HEADER.size + _JUNK_OR_DS64.size + _FMT.size + _DATA_HEADER.size
_U32_MAX = 0xFFFFFFFF


class WavWriter:
    """`write` int16 frames; `close` (or leave the `with` block) to patch the sizes."""

    #: Largest RIFF size a plain WAV can state; larger files become RF64 (tests lower it).
    riff_size_limit: int = _U32_MAX

    def __init__(self, file: BinaryIO, *, sample_rate: int = 8000, channels: int = 2) -> None:
        if channels < 1 or sample_rate < 1:
            raise ValueError("channels and sample_rate must be positive")
        self._file = file
        self._channels = channels
        self._data_bytes = 0
        self._start = file.tell()
        self.closed = False
        block_align = channels * _BITS_PER_SAMPLE // 8
        file.write(_RIFF_HEADER.pack(b"RIFF", 0, b"WAVE"))
        file.write(_JUNK_OR_DS64.pack(b"JUNK", 28, 0, 0, 0, 0))
        file.write(
            _FMT.pack(
                b"fmt ",
                16,
                _WAVE_FORMAT_PCM,
                channels,
                sample_rate,
                sample_rate * block_align,
                block_align,
                _BITS_PER_SAMPLE,
            )
        )
        file.write(_DATA_HEADER.pack(b"data", 0))

    def write(self, frames: npt.NDArray[np.int16]) -> None:
        """Frames as a (n, channels) array, or already interleaved as a 1-D array."""
        if frames.size % self._channels:
            raise ValueError(
                f"{frames.size} samples do not fill whole {self._channels}-channel frames"
            )
        data = frames.astype(_LITTLE_ENDIAN_INT16, copy=False).tobytes()
        self._file.write(data)
        self._data_bytes += len(data)

    def write_stereo(self, left: npt.NDArray[np.int16], right: npt.NDArray[np.int16]) -> None:
        """Two equally long mono int16 arrays, interleaved into stereo frames."""
        if self._channels != 2:
            raise ValueError("write_stereo needs a 2-channel writer")
        if left.shape != right.shape:
            raise ValueError(f"channel lengths differ: {left.shape} vs {right.shape}")
        self.write(np.column_stack((left, right)))

    @property
    def frames_written(self) -> int:
        return self._data_bytes // (self._channels * _BITS_PER_SAMPLE // 8)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        riff_size = _DATA_OFFSET - 8 + self._data_bytes
        end = self._file.tell()
        self._file.seek(self._start)
        if riff_size <= self.riff_size_limit and self._data_bytes <= self.riff_size_limit:
            self._file.write(_RIFF_HEADER.pack(b"RIFF", riff_size, b"WAVE"))
            self._file.seek(self._start + _DATA_OFFSET - _DATA_HEADER.size)
            self._file.write(_DATA_HEADER.pack(b"data", self._data_bytes))
        else:
            self._file.write(_RIFF_HEADER.pack(b"RF64", _U32_MAX, b"WAVE"))
            self._file.write(
                _JUNK_OR_DS64.pack(b"ds64", 28, riff_size, self._data_bytes, self.frames_written, 0)
            )
            self._file.seek(self._start + _DATA_OFFSET - _DATA_HEADER.size)
            self._file.write(_DATA_HEADER.pack(b"data", _U32_MAX))
        self._file.seek(end)
        self._file.flush()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
