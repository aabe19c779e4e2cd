"""A sealed recording's waveform for the console: a small envelope per channel and the PCI-paused
spans, computed from the decrypted audio without ever holding it whole.

The picture is `columns` columns wide; column c covers samples [c*frames/columns,
(c+1)*frames/columns). Per channel and column: the lowest and highest 16-bit sample, None for a
column with no audio at all (a gap: lost packets, silence suppression, or a PCI pause). Spans are
[start, end) sample pairs from the SENSITIVE_START/SENSITIVE_END events; a pause still open at the
end of the recording ends at its last frame.

Invariants:
- Two passes over the file, like the WAV stream (recording.stream): the first authenticates every
  chunk and counts frames (so a tampered file is refused before anything is computed), the second
  decrypts again, chunk by chunk. Memory is one chunk plus the envelope (O(columns)), whatever
  the call's length; no plaintext audio is written anywhere.
- Plain CPU and file work: run it in a worker thread (the keystore's data key is read before, on
  the loop's thread). The envelope carries no audio a listener could reconstruct speech from
  (a few hundred points for minutes of sound).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from .container import EventKind
from .export import _decoder  # the same G.711 tables as the WAV export
from .stream import WavStream

MAX_COLUMNS = 2000


@dataclass(frozen=True, slots=True, kw_only=True)
class Waveform:
    sample_rate: int
    frames: int
    columns: int
    channels: list[list[tuple[int, int] | None]] = field(default_factory=list)
    pci_spans: list[tuple[int, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"sample_rate": self.sample_rate, "frames": self.frames,
                "seconds": self.frames / self.sample_rate if self.sample_rate else 0.0,
                "columns": self.columns,
                "channels": [[list(p) if p is not None else None for p in channel]
                             for channel in self.channels],
                "pci_spans": [list(span) for span in self.pci_spans]}


def compute_waveform(path: str | os.PathLike[str], data_key: bytes, recording_id: str, *,
                     allow_incomplete: bool, columns: int = 600) -> Waveform:
    if not 1 <= columns <= MAX_COLUMNS:
        raise ValueError(f"columns must be 1..{MAX_COLUMNS}")
    stream = WavStream(path, data_key, recording_id, allow_incomplete=allow_incomplete)
    try:
        stream.measure()  # every tag checked, frames counted
        frames, rate = stream.frames, stream.sample_rate
        lows = np.full((2, columns), np.iinfo(np.int32).max, dtype=np.int32)
        highs = np.full((2, columns), np.iinfo(np.int32).min, dtype=np.int32)
        spans: list[tuple[int, int]] = []
        opened: int | None = None
        with stream._reader() as reader:
            decode = _decoder(reader.header.codec)
            chunks = reader.iter_chunks(allow_incomplete=allow_incomplete)
            for chunk in islice(chunks, stream._chunks):
                for event in chunk.payload.events:
                    if event.kind is EventKind.SENSITIVE_START and opened is None:
                        opened = event.sample
                    elif event.kind is EventKind.SENSITIVE_END and opened is not None:
                        spans.append((opened, event.sample))
                        opened = None
                for channel, segments in enumerate(chunk.payload.channels[:2]):
                    for segment in segments:
                        _fold(decode(segment.payload), segment.sample, frames, columns,
                              lows[channel], highs[channel])
        if opened is not None:
            spans.append((opened, max(opened, frames)))
    finally:
        stream.close()
    channels: list[list[tuple[int, int] | None]] = [
        [(int(lo), int(hi)) if lo <= hi else None for lo, hi in zip(lows[c], highs[c], strict=True)]
        for c in range(2)]
    return Waveform(sample_rate=rate, frames=frames, columns=columns, channels=channels,
                    pci_spans=spans)


def _fold(samples: np.ndarray, first: int, frames: int, columns: int, lows: np.ndarray,
          highs: np.ndarray) -> None:
    """Merge one segment's samples into the per-column minima and maxima (vectorised: one
    reduceat per segment, so the cost is linear in the audio, not in columns × samples)."""
    if not len(samples) or frames <= 0:
        return
    positions = np.arange(first, first + len(samples), dtype=np.int64)
    cols = np.minimum(positions * columns // frames, columns - 1)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(cols)) + 1))
    values = samples.astype(np.int32)
    where = cols[starts]
    np.minimum.at(lows, where, np.minimum.reduceat(values, starts))
    np.maximum.at(highs, where, np.maximum.reduceat(values, starts))
