"""A sealed recording as a stream of 16-bit stereo WAV bytes, for the admin API's download.

`export_wav` writes a file and patches the WAV header at the end; an HTTP download must send the
length first and cannot take back what it sent. So the stream reads the recording twice:

1. `measure()` authenticates every chunk and counts the frames the WAV will hold; any integrity
   error is raised here, before the first byte is sent (the caller answers an error status).
2. `blocks()` decrypts again and yields the header, then the audio in blocks of about
   `block_size` bytes; exactly `length` bytes in all, the same bytes `export_wav` writes.

Invariants:
- Memory is bounded by one chunk, one block and `max_skew` seconds of audio per channel,
  whatever the call's length; nothing is written to disk.
- Both passes see the same chunks: the second stops at the count the first saw, so a recording
  still being written exports as it was when measured. Should the second pass still differ (the
  file was altered between the passes), it raises instead of yielding a wrong length: the HTTP
  layer then cuts the connection, and the client sees a body shorter than announced.
- Plain CPU work with no I/O besides reading the file: meant to run in a worker thread (the
  keystore, whose SQLite handle belongs to the event loop's thread, is read before).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, cast

from .errors import RecordingFormatError
from .export import _decoder, _StereoAssembler  # the same alignment as export_wav, by design
from .reader import RecordingReader

if TYPE_CHECKING:
    import wave

_WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
CHANNELS = 2
SAMPLE_WIDTH = 2


def wav_header(frames: int, sample_rate: int) -> bytes:
    """The 44-byte PCM header `wave` writes for `frames` 16-bit stereo frames."""
    data = frames * CHANNELS * SAMPLE_WIDTH
    return _WAV_HEADER.pack(b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, CHANNELS, sample_rate,
                            sample_rate * CHANNELS * SAMPLE_WIDTH, CHANNELS * SAMPLE_WIDTH,
                            SAMPLE_WIDTH * 8, b"data", data)


class _Blocks:
    """What _StereoAssembler writes to: collects frame bytes until someone takes them."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def writeframesraw(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)

    def take(self) -> bytes:
        block = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        return block


class WavStream:
    def __init__(self, path: str | os.PathLike[str], data_key: bytes, recording_id: str, *,
                 allow_incomplete: bool, max_skew: float = 10.0,
                 block_size: int = 256 * 1024) -> None:
        self.path = path
        self._data_key = data_key
        self._expected_id = bytes.fromhex(recording_id)
        self._allow_incomplete = allow_incomplete
        self._max_skew = max_skew
        self._block_size = block_size
        self.length = 0
        self.frames = 0
        self.sample_rate = 0
        self._chunks = -1  # unmeasured

    def _reader(self) -> RecordingReader:
        return RecordingReader(self.path, self._data_key, expected_id=self._expected_id)

    def measure(self) -> int:
        """Pass 1: authenticate every chunk, count chunks and frames; returns `length`."""
        chunks = 0
        frames = 0
        with self._reader() as reader:
            width = reader.header.codec.bytes_per_sample
            self.sample_rate = reader.header.sample_rate
            for chunk in reader.iter_chunks(allow_incomplete=self._allow_incomplete):
                chunks += 1
                for segments in chunk.payload.channels:
                    for segment in segments:
                        samples = len(segment.payload) // width
                        if samples and segment.sample + samples > frames:
                            frames = segment.sample + samples
        self._chunks = chunks
        self.frames = frames
        self.length = len(wav_header(frames, self.sample_rate)) + frames * CHANNELS * SAMPLE_WIDTH
        return self.length

    def blocks(self) -> Iterator[bytes]:
        """Pass 2: the WAV, header first, in blocks of about `block_size` bytes."""
        if self._chunks < 0:
            raise RuntimeError("measure() first: the length must be known before the body")
        yield wav_header(self.frames, self.sample_rate)
        sink = _Blocks()
        with self._reader() as reader:
            decode = _decoder(reader.header.codec)
            assembler = _StereoAssembler(
                cast("wave.Wave_write", sink),  # it only calls writeframesraw
                round(self._max_skew * reader.header.sample_rate))
            chunks = reader.iter_chunks(allow_incomplete=self._allow_incomplete)
            for chunk in islice(chunks, self._chunks):
                for channel, segments in enumerate(chunk.payload.channels):
                    for segment in segments:
                        assembler.add(channel, segment.sample, decode(segment.payload))
                assembler.flush_ready()
                if sink.size >= self._block_size:
                    yield sink.take()
            assembler.finish()
        if assembler.written != self.frames:
            raise RecordingFormatError(
                f"recording changed while it was exported ({assembler.written} frames, "
                f"{self.frames} announced)")
        if sink.size:
            yield sink.take()

    def close(self) -> None:
        self._data_key = b""
