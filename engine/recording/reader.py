"""Reading sealed recordings: strict chunk iteration, a full verify pass, a key-less structure scan.

Invariants:
- Memory stays bounded by one chunk: the file is read frame by frame, never whole.
- `iter_chunks` yields only authenticated chunks, in order, and raises at the first problem with
  an error naming the header, the chunk position, or the missing final chunk.
- `verify_file` never raises for a damaged file: it walks every frame it can still delimit, checks
  every tag, and returns every problem found.
- `scan_structure` needs no key: it reads clear frame fields only, which is enough to tell a
  finished file (last frame final) from one a crashed writer left behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .container import (
    FIXED_HEADER_SIZE,
    FRAME_HEADER_SIZE,
    MAX_CHUNK_BODY,
    TAG_SIZE,
    ChunkPayload,
    RecordingHeader,
    RecordingKeys,
    RecordingMetadata,
    decode_payload,
    derive_keys,
    header_digest,
    open_chunk,
    open_header,
    parse_frame_header,
    peek_header,
)
from .errors import (
    ChunkError,
    FrameLengthError,
    HeaderError,
    MissingFinalChunkError,
    RecordingFormatError,
    TrailingDataError,
    TruncatedChunkError,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodedChunk:
    index: int
    final: bool
    payload: ChunkPayload
    end_offset: int  # file offset just after this chunk (progress reporting)


def _read_exact(fileobj: BinaryIO, size: int) -> bytes:
    parts: list[bytes] = []
    remaining = size
    while remaining:
        part = fileobj.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def read_raw_header(fileobj: BinaryIO) -> tuple[RecordingHeader, bytes]:
    fixed = _read_exact(fileobj, FIXED_HEADER_SIZE)
    header, header_len = peek_header(fixed)
    rest = _read_exact(fileobj, header_len - FIXED_HEADER_SIZE)
    if len(rest) != header_len - FIXED_HEADER_SIZE:
        raise HeaderError("file ends inside the header")
    return header, fixed + rest


class RecordingReader:
    """Opens one sealed recording with its data key. Use as a context manager."""

    def __init__(
        self, path: str | os.PathLike[str], data_key: bytes, *, expected_id: bytes | None = None
    ) -> None:
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        try:
            self.header, raw = read_raw_header(self._file)
            # The keys are derived from the id we *expect* when we know it, so an altered id in
            # the header fails the header tag instead of silently selecting other keys.
            rec_id = expected_id if expected_id is not None else self.header.recording_id
            self._keys: RecordingKeys = derive_keys(data_key, rec_id)
            self.metadata: RecordingMetadata = open_header(raw, self._keys)
            self._digest = header_digest(raw)
            self._recording_id = rec_id
            self.header_size = len(raw)
            self.file_size = os.fstat(self._file.fileno()).st_size
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_frame(self, position: int) -> tuple[bytes, bytes] | None:
        """Return (frame header bytes, body) at the current offset, None at a clean EOF."""
        head = _read_exact(self._file, FRAME_HEADER_SIZE)
        if not head:
            return None
        if len(head) < FRAME_HEADER_SIZE:
            raise TruncatedChunkError(
                position, f"file ends inside the frame header ({len(head)} of {FRAME_HEADER_SIZE})"
            )
        frame = parse_frame_header(head)
        if frame.body_len < TAG_SIZE or frame.body_len > MAX_CHUNK_BODY:
            raise FrameLengthError(position, f"impossible chunk length {frame.body_len}")
        body = _read_exact(self._file, frame.body_len)
        if len(body) < frame.body_len:
            raise TruncatedChunkError(
                position, f"file ends inside the chunk ({len(body)} of {frame.body_len} bytes)"
            )
        return head, body

    def iter_chunks(self, *, allow_incomplete: bool = False) -> Iterator[DecodedChunk]:
        """Yield authenticated chunks in order.

        With `allow_incomplete`, a file that a crashed writer left behind (no final chunk, maybe a
        partly written or garbled last frame) yields its sealed chunks and stops without error;
        a chunk that fails its tag still raises.
        """
        self._file.seek(self.header_size)
        position = 0
        while True:
            try:
                framed = self._read_frame(position)
            except (TruncatedChunkError, FrameLengthError):
                if allow_incomplete:
                    return
                raise
            if framed is None:
                if allow_incomplete:
                    return
                raise MissingFinalChunkError(position)
            head, body = framed
            frame = parse_frame_header(head)
            plain = open_chunk(self._keys, self._digest, self._recording_id, position, frame, body)
            yield DecodedChunk(
                index=position,
                final=frame.final,
                payload=decode_payload(plain, self.header.channels),
                end_offset=self._file.tell(),
            )
            position += 1
            if frame.final:
                if self._file.read(1):
                    raise TrailingDataError(position)
                return


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    where: str  # "header", "chunk", "end"
    position: int | None
    kind: str  # the exception class name
    message: str


@dataclass(slots=True, kw_only=True)
class FileVerifyReport:
    path: str
    recording_id: str
    chunks_ok: int = 0
    chunks_bad: int = 0
    final_chunk: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.final_chunk


def verify_file(
    path: str | os.PathLike[str], data_key: bytes, *, expected_id: bytes | None = None
) -> FileVerifyReport:
    """Check every tag of one file and return every problem found; never raises on damage."""
    report = FileVerifyReport(
        path=str(path), recording_id=expected_id.hex() if expected_id else ""
    )
    try:
        reader = RecordingReader(path, data_key, expected_id=expected_id)
    except (RecordingFormatError, OSError) as exc:
        report.problems.append(Problem(where="header", position=None, kind=type(exc).__name__,
                                       message=str(exc)))
        return report
    with reader:
        report.recording_id = reader.header.recording_id.hex()
        reader._file.seek(reader.header_size)
        position = 0
        while True:
            try:
                framed = reader._read_frame(position)
            except ChunkError as exc:  # truncated or undelimitable: nothing after it can be found
                report.problems.append(_problem(exc))
                break
            if framed is None:
                report.problems.append(_problem(MissingFinalChunkError(position)))
                break
            head, body = framed
            frame = parse_frame_header(head)
            try:
                open_chunk(reader._keys, reader._digest, reader._recording_id, position, frame,
                           body)
            except ChunkError as exc:
                report.chunks_bad += 1
                report.problems.append(_problem(exc))
            else:
                report.chunks_ok += 1
                if frame.final:
                    report.final_chunk = True
                    if reader._file.read(1):
                        report.problems.append(_problem(TrailingDataError(position + 1)))
                    break
            position += 1
    return report


def _problem(exc: RecordingFormatError) -> Problem:
    if isinstance(exc, ChunkError):
        return Problem(where="chunk", position=exc.position, kind=type(exc).__name__,
                       message=str(exc))
    if isinstance(exc, MissingFinalChunkError | TrailingDataError):
        return Problem(where="end", position=None, kind=type(exc).__name__, message=str(exc))
    return Problem(where="header", position=None, kind=type(exc).__name__, message=str(exc))


@dataclass(frozen=True, slots=True, kw_only=True)
class StructureScan:
    path: str
    recording_id: str
    complete_chunks: int
    finished: bool  # the last complete frame carries the final flag
    trailing_bytes: int  # bytes after the last complete frame (a frame cut by a crash)


def scan_structure(path: str | os.PathLike[str]) -> StructureScan:
    """Walk the clear frame fields without a key (no authentication: a hint for recovery)."""
    with open(path, "rb") as fileobj:
        header, raw = read_raw_header(fileobj)
        size = os.fstat(fileobj.fileno()).st_size
        offset = len(raw)
        chunks = 0
        finished = False
        while offset + FRAME_HEADER_SIZE <= size:
            fileobj.seek(offset)
            frame = parse_frame_header(fileobj.read(FRAME_HEADER_SIZE))
            end = offset + FRAME_HEADER_SIZE + frame.body_len
            if frame.body_len < TAG_SIZE or end > size:
                break
            chunks += 1
            offset = end
            finished = frame.final
            if finished:
                break
        return StructureScan(path=str(path), recording_id=header.recording_id.hex(),
                             complete_chunks=chunks, finished=finished,
                             trailing_bytes=size - offset)
