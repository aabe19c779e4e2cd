"""Helpers shared by the recording tests (imported by module name: tests have no packages)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from vaultpbx.recording.container import (
    FIXED_HEADER_SIZE,
    FRAME_HEADER_SIZE,
    Codec,
    Direction,
    RecordingMetadata,
    peek_header,
)
from vaultpbx.recording.keystore import Keystore
from vaultpbx.recording.recorder import start_recording

T0 = 1000.0  # media clock at the first sample
WALL = 1_700_000_000.0
FRAME = 160  # 20 ms at 8 kHz, one byte per sample


def audio(seconds: float, seed: int, rate: int = 8000, width: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, int(seconds * rate) * width, dtype=np.uint8).tobytes()


def write_recording(
    store: Keystore,
    directory: Path,
    *,
    seconds: float = 4.2,
    codec: Codec = Codec.PCMU,
    caller: str = "+44 20 7946 0000",
    retention_class: str = "default",
    seed: int = 1,
    wall: float = WALL,
) -> tuple[str, Path, bytes, bytes]:
    """Write a call with steady 20 ms frames on both channels; return id, path and the audio."""
    width = codec.bytes_per_sample
    left = audio(seconds, seed, width=width)
    right = audio(seconds, seed + 1000, width=width)
    writer = start_recording(
        store, directory, codec=codec, now=T0, wall_time=wall,
        metadata=RecordingMetadata(caller=caller, callee="1001", call_id="abc@host"),
        retention_class=retention_class,
    )
    step = FRAME * width
    for i in range(len(left) // step):
        now = T0 + i * 0.02
        writer.append(Direction.FROM_CALLER, left[i * step : (i + 1) * step], now)
        writer.append(Direction.FROM_CALLEE, right[i * step : (i + 1) * step], now)
        writer.maybe_seal(now)
    writer.close(T0 + seconds)
    return writer.recording_id.hex(), writer.path, left, right


def frame_offsets(path: Path) -> list[tuple[int, int]]:
    """(offset, total length) of every chunk frame in the file."""
    data = path.read_bytes()
    _, header_len = peek_header(data[:FIXED_HEADER_SIZE])
    offsets = []
    pos = header_len
    while pos < len(data):
        (body_len,) = struct.unpack_from(">I", data, pos)
        offsets.append((pos, FRAME_HEADER_SIZE + body_len))
        pos += FRAME_HEADER_SIZE + body_len
    return offsets


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


DIRECTIONS = (Direction.FROM_CALLER, Direction.FROM_CALLEE)
