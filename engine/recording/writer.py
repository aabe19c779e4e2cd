"""Streaming writer: frames in, sealed chunks out, straight into the final file.

Invariants:
- No plaintext audio or metadata is ever written: the file holds the sealed header, then sealed
  chunks only. There is no temp file; the path is created with O_EXCL and mode 0600.
- At most one chunk interval of audio (1 s by default) lives only in memory. A chunk is sealed
  when a channel has buffered a full interval (checked in `append`) or when `maybe_seal(now)`
  finds the interval elapsed, so a quiet call still reaches the disk every second.
- Each sealed chunk is handed to the kernel with one write() as soon as it is sealed: a SIGKILL
  loses only the unsealed buffer. fsync runs every `fsync_every` chunks and at close (fsync per
  chunk per call would cost 10,000 fsyncs/s at 10,000 calls for protection against power loss
  only; the reader treats a cut last frame as the end of an unfinished file).
- While the call is in sensitive mode (PCI pause), audio frames of both channels are dropped
  before they are buffered; the pause start and end are kept as events, and export renders the
  gap as silence. DTMF typed during the pause therefore never reaches the disk.
- Per channel, stored sample positions only increase and never overlap. A frame is placed right
  after the previous one while its arrival time agrees within `jitter_tolerance`; a later arrival
  leaves a gap (lost packets, silence suppression); a frame that would run more than `max_lead`
  ahead of the arrival clock is dropped and counted (sender clock faster than ours).

`append_rtp` places a frame by its RTP timestamp (anchored to, and bounded by, the arrival
clock) instead of its arrival time: the media workers use it, so jitter never cuts a G.711 stream.

The media plane calls `append` (or `append_rtp`) per packet and `maybe_seal` from its timer; no
call allocates more than the list entry for the frame, and none performs I/O except when a chunk
is sealed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .container import (
    ChunkPayload,
    Codec,
    Direction,
    Event,
    EventKind,
    RecordingHeader,
    RecordingMetadata,
    Segment,
    derive_keys,
    encode_payload,
    header_digest,
    seal_chunk,
    seal_header,
)


@dataclass(slots=True)
class WriterStats:
    frames: int = 0
    frames_dropped_sensitive: int = 0
    frames_dropped_ahead: int = 0
    frames_malformed: int = 0
    frames_late: int = 0  # RTP timestamp behind what is stored already (reordered, duplicate)
    frames_skipped: int = 0  # RTP packets of payload types not recorded (telephone-event, CN...)
    chunks: int = 0
    bytes_written: int = 0


class _Channel:
    __slots__ = ("next_sample", "segments", "buffered", "rtp_base", "sample_base", "next_rtp")

    def __init__(self) -> None:
        self.next_sample = 0
        self.segments: list[tuple[int, bytearray]] = []
        self.buffered = 0  # samples
        self.rtp_base = -1  # RTP timestamp that `sample_base` maps to; -1: not anchored yet
        self.sample_base = 0
        self.next_rtp = -1  # timestamp of the frame that would continue the last segment


_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_PLAIN_FIRST_OCTETS = b"\x80" * 4096  # version 2, no padding, extension or CSRC


def rtp_payload(packet: bytes) -> bytes | None:
    """The payload of an RTP packet (after CSRCs and header extension, without padding), or
    None when the header does not fit the packet (RFC 3550 §5.1, §5.3.1)."""
    first = packet[0]
    offset = 12 + (first & 0x0F) * 4
    end = len(packet)
    if first & 0x10:  # header extension
        if end < offset + 4:
            return None
        offset += 4 + _U16.unpack_from(packet, offset + 2)[0] * 4
    if first & 0x20:  # padding: the last octet counts it
        end -= packet[-1]
    if offset >= end:
        return None
    return packet[offset:end]


def _timestamps_follow(packets: bytes, size: int, first: int, step: int, count: int) -> bool:
    """Whether `count` packets of `size` octets, back to back in `packets`, carry the RTP
    timestamps first, first + step, ... (no wrap): compared a byte column at a time, in C."""
    expected = struct.pack(f"!{count}I", *range(first, first + step * count, step))
    return all(packets[4 + octet::size] == expected[octet::4] for octet in range(4))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """Directory entries of newly created files, made durable together: `flush` fsyncs each
    directory once, however many files were created in it since the last flush. A media
    worker's recordings share one directory, so a worker starting 100 recordings a second
    fsyncs it once per sweep instead of once per file."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: set[Path] = set()

    def created(self, path: Path) -> None:
        self._pending.add(path.parent)

    def flush(self) -> None:
        pending, self._pending = self._pending, set()
        for directory in pending:
            _fsync_directory(directory)


class RecordingWriter:
    """One recording being written. Not thread-safe: one media worker owns it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        recording_id: bytes,
        key_id: bytes,
        data_key: bytes,
        codec: Codec,
        sample_rate: int,
        now: float,
        wall_time: float,
        metadata: RecordingMetadata | None = None,
        chunk_seconds: float = 1.0,
        fsync_every: int = 5,
        jitter_tolerance: float = 0.06,
        max_lead: float = 0.2,
        resync: float = 2.0,
        on_close: Callable[[RecordingWriter], None] | None = None,
        directory_sync: DirectorySync | None = None,
    ) -> None:
        """`now` is the media clock (the one passed to append/maybe_seal) at the first sample;
        `wall_time` is the Unix time of that same instant, stored in the header.

        Without `directory_sync` the header and the file's directory entry are fsynced before
        this returns. With it (the media workers), both wait: the header for the file's first
        periodic fsync, the entry for the owner's next `directory_sync.flush()`. A power cut
        may then lose a recording younger than `fsync_every` chunks whole, which is the loss
        `fsync_every` allows anyway; a SIGKILL loses nothing either way."""
        self.path = Path(path)
        self.recording_id = recording_id
        self.codec = codec
        self.sample_rate = sample_rate
        self.stats = WriterStats()
        self.closed = False
        self._origin = now
        self._wall_time = wall_time
        self._bytes_per_sample = codec.bytes_per_sample
        self._chunk_samples = max(1, round(chunk_seconds * sample_rate))
        self._chunk_seconds = chunk_seconds
        self._fsync_every = fsync_every
        self._tolerance = round(jitter_tolerance * sample_rate)
        self._max_lead = round(max_lead * sample_rate)
        self._resync = round(resync * sample_rate)
        self._on_close = on_close
        self._channels = (_Channel(), _Channel())
        self._events: list[Event] = []
        self._sensitive = False
        self._pause_start = 0
        self._next_index = 0
        self._last_seal = now
        self._unsynced = 0

        self._keys = derive_keys(data_key, recording_id)
        header = RecordingHeader(
            recording_id=recording_id,
            key_id=key_id,
            codec=codec,
            sample_rate=sample_rate,
            start_time_us=round(wall_time * 1_000_000),
        )
        raw = seal_header(header, metadata or RecordingMetadata(), self._keys)
        self._digest = header_digest(raw)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o600)
        try:
            _write_all(self._fd, raw)
            if directory_sync is None:
                os.fsync(self._fd)
                _fsync_directory(self.path.parent)  # the file itself survives a power cut
            else:
                directory_sync.created(self.path)
                self._unsynced = 1  # the header rides on the first periodic fsync
        except BaseException:
            os.close(self._fd)
            raise
        self.stats.bytes_written = len(raw)

    # -- per frame --------------------------------------------------------------------------------

    def append(self, direction: Direction, payload: bytes, now: float) -> None:
        """Buffer one frame of codec payload that arrived (or was played out) at `now`."""
        if self._sensitive:
            self.stats.frames_dropped_sensitive += 1
            return
        samples = len(payload) // self._bytes_per_sample
        if samples == 0 or len(payload) % self._bytes_per_sample:
            self.stats.frames_malformed += 1
            return
        channel = self._channels[direction]
        expected = channel.next_sample
        at = round((now - self._origin) * self.sample_rate)
        if at > expected + self._tolerance:
            start = at  # a gap: export renders silence
        elif expected > at + self._max_lead:
            self.stats.frames_dropped_ahead += 1
            return
        else:
            start = expected
        segments = channel.segments
        if segments and start == expected:
            segments[-1][1].extend(payload)
        else:
            segments.append((start, bytearray(payload)))
        channel.next_sample = start + samples
        channel.buffered += samples
        self.stats.frames += 1
        if channel.buffered >= self._chunk_samples:
            self.seal_chunk(now)

    def append_rtp(self, direction: int, payload: bytes, timestamp: int, now: float) -> None:
        """Buffer one RTP frame, placed by its RTP timestamp rather than by its arrival.

        The sender's timestamps are the media timeline: frames that arrive in a burst after a
        stall, or with jitter beyond `jitter_tolerance`, are still stored back to back, so a
        G.711 call exports bit-exact. The first frame of a channel anchors its timestamps to the
        arrival clock; when the two disagree by more than `resync` (a new source the rewriter
        did not smooth, a sender clock far off, or a forged timestamp) the channel is re-anchored
        at its arrival, so a timestamp can never move audio far from when it was heard.
        `direction` is a `Direction` or its int value (the relay's leg index: no enum on the
        per-packet path).
        """
        if self._sensitive:
            self.stats.frames_dropped_sensitive += 1
            return
        size = len(payload)
        samples = size if self._bytes_per_sample == 1 else size // self._bytes_per_sample
        if samples == 0 or samples * self._bytes_per_sample != size:
            self.stats.frames_malformed += 1
            return
        channel = self._channels[direction]
        segments = channel.segments
        if timestamp == channel.next_rtp and segments:
            # Nearly every frame: the one right after the last, in the chunk being filled.
            segments[-1][1].extend(payload)
            channel.next_sample += samples
            channel.next_rtp = (timestamp + samples) & 0xFFFFFFFF
            channel.buffered += samples
            self.stats.frames += 1
            if channel.buffered >= self._chunk_samples:
                self.seal_chunk(now)
            return
        arrived = int((now - self._origin) * self.sample_rate + 0.5)
        base = channel.rtp_base
        if base < 0:
            channel.rtp_base, channel.sample_base = timestamp, max(arrived, channel.next_sample)
            start = channel.sample_base
        else:
            delta = (timestamp - base) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000  # RFC 3550 §5.1: timestamps wrap; older is negative
            start = channel.sample_base + delta
            if not -self._resync <= start - arrived <= self._resync:
                start = max(arrived, channel.next_sample)
                channel.rtp_base, channel.sample_base = timestamp, start
        expected = channel.next_sample
        if start < expected:
            self.stats.frames_late += 1
            return
        if segments and start == expected:
            segments[-1][1].extend(payload)
        else:
            segments.append((start, bytearray(payload)))
        channel.next_sample = start + samples
        channel.next_rtp = (timestamp + samples) & 0xFFFFFFFF
        channel.buffered += samples
        self.stats.frames += 1
        if channel.buffered >= self._chunk_samples:
            self.seal_chunk(now)

    def append_rtp_packets(self, direction: int, items: list[bytes | float],
                           payload_types: frozenset[int] | set[int]) -> None:
        """Buffer a batch of whole RTP packets from one direction: `items` alternates a packet
        and its arrival time (the relay's recording buffer). Packets of other payload types are
        counted in `frames_skipped` and never stored. Placement is `append_rtp`'s; a batch that
        simply continues the stored audio (one-byte samples, plain headers, one size, each
        timestamp one frame after the last: nearly every batch of a call) is checked and
        appended with a few C-level operations instead of a Python loop per packet, which is
        most of what recording costs per packet."""
        if self._sensitive:
            self.stats.frames_dropped_sensitive += len(items) // 2
            return
        packets: list[bytes] = items[0::2]  # type: ignore[assignment]
        count = len(packets)
        if count == 0:
            return
        channel = self._channels[direction]
        size = len(packets[0])
        step = size - 12
        if self._bytes_per_sample == 1 and step > 0:
            first = channel.next_rtp
            headers = b"".join(packets)
            if (first >= 0 and len(headers) == size * count and len(set(map(len, packets))) == 1
                    and first + step * count <= 0xFFFFFFFF
                    and headers[0::size] == _PLAIN_FIRST_OCTETS[:count]
                    and payload_types.issuperset(headers[1::size])
                    and _timestamps_follow(headers, size, first, step, count)):
                audio = b"".join([p[12:] for p in packets])
                if channel.segments:
                    channel.segments[-1][1].extend(audio)
                else:  # the first frames after a seal: they continue the stored timeline
                    channel.segments.append((channel.next_sample, bytearray(audio)))
                samples = step * count
                channel.next_sample += samples
                channel.next_rtp = first + samples
                channel.buffered += samples
                self.stats.frames += count
                if channel.buffered >= self._chunk_samples:
                    self.seal_chunk(items[-1])  # type: ignore[arg-type]
                return
        for index in range(0, 2 * count, 2):
            packet: bytes = items[index]  # type: ignore[assignment]
            if len(packet) < 12:
                self.stats.frames_malformed += 1
                continue
            if packet[1] & 0x7F not in payload_types:
                self.stats.frames_skipped += 1
                continue
            payload = packet[12:] if packet[0] == 0x80 else rtp_payload(packet)
            if payload is None:
                self.stats.frames_malformed += 1
                continue
            self.append_rtp(direction, payload, _U32.unpack_from(packet, 4)[0],
                            items[index + 1])  # type: ignore[arg-type]

    def sensitive_start(self, now: float) -> None:
        """Start the PCI pause: from now on no audio is kept until `sensitive_end`.

        The pause is a clean interval of the timeline: it starts no earlier than the audio
        already stored (RTP timestamps may run a little ahead of the arrival clock), and audio
        after it is placed no earlier than its end."""
        if not self._sensitive:
            self._sensitive = True
            at = max(self._sample_at(now), *(c.next_sample for c in self._channels))
            self._pause_start = at
            self._events.append(Event(EventKind.SENSITIVE_START, at))

    def sensitive_end(self, now: float) -> None:
        if self._sensitive:
            self._sensitive = False
            at = max(self._sample_at(now), self._pause_start)
            for channel in self._channels:
                channel.rtp_base = channel.next_rtp = -1  # re-anchor at or after its end
                channel.next_sample = max(channel.next_sample, at)
            self._events.append(Event(EventKind.SENSITIVE_END, at))

    def add_note(self, now: float, detail: str) -> None:
        """Mark the timeline (hold, transfer...). `detail` is sealed but must not hold personal
        data: it is not covered by erasure requests."""
        self._events.append(Event(EventKind.NOTE, self._sample_at(now), detail))

    @property
    def sensitive(self) -> bool:
        return self._sensitive

    @property
    def chunk_seconds(self) -> float:
        return self._chunk_seconds

    def _sample_at(self, now: float) -> int:
        return max(0, round((now - self._origin) * self.sample_rate))

    # -- sealing ----------------------------------------------------------------------------------

    def maybe_seal(self, now: float, early: float = 0.0) -> bool:
        """Seal if a chunk interval has passed since the last seal, less `early`, and anything
        is buffered. A caller that checks every `early` seconds passes it, so that the chunk is
        sealed at the last check before the interval ends, not at the first after it. The seal
        is stamped with `now`, the time it really happened: stamping it `now + early` (as this
        once did) pushed the next seal a further `early` out, 1.2 s apart for 1 s chunks checked
        every 0.4 s, and a SIGKILL then lost up to 1.2 s."""
        if now + early - self._last_seal < self._chunk_seconds:
            return False
        if not self._events and not any(c.segments for c in self._channels):
            self._last_seal = now
            return False
        self.seal_chunk(now)
        return True

    def seal_chunk(self, now: float | None = None) -> None:
        self._seal(final=False)
        if now is not None:
            self._last_seal = now

    def close(self, now: float | None = None) -> None:
        """Seal the final chunk (with whatever is buffered), fsync, and report to `on_close`."""
        if self.closed:
            return
        if self._sensitive and now is not None:
            self.sensitive_end(now)
        self._seal(final=True)
        os.fsync(self._fd)
        os.close(self._fd)
        self.closed = True
        if self._on_close is not None:
            self._on_close(self)

    def close_unfinished(self) -> None:
        """Seal what is buffered as an ordinary (non-final) chunk, fsync and close: for a writer
        whose owner is gone (the signalling process died). Nothing buffered is lost, and the
        missing final chunk tells recovery the call did not end here (state 'incomplete')."""
        if self.closed:
            return
        if self._events or any(c.segments for c in self._channels):
            self._seal(final=False)
        self.abort()

    def abort(self) -> None:
        """Close the file without a final chunk (the call plane is shutting down hard)."""
        if not self.closed:
            os.fsync(self._fd)
            os.close(self._fd)
            self.closed = True

    def _seal(self, *, final: bool) -> None:
        if self.closed:
            raise ValueError("recording writer is closed")
        channels: list[list[Segment]] = []
        for channel in self._channels:
            channels.append([Segment(start, bytes(data)) for start, data in channel.segments])
            channel.segments = []
            channel.buffered = 0
        plain = encode_payload(ChunkPayload(events=self._events, channels=channels))
        self._events = []
        frame = seal_chunk(
            self._keys, self._digest, self.recording_id, self._next_index, final, plain
        )
        _write_all(self._fd, frame)
        self._next_index += 1
        self.stats.chunks += 1
        self.stats.bytes_written += len(frame)
        self._unsynced += 1
        if self._unsynced >= self._fsync_every and not final:
            os.fsync(self._fd)
            self._unsynced = 0

    @property
    def duration(self) -> float:
        """Seconds of timeline covered so far (the furthest channel)."""
        return max(c.next_sample for c in self._channels) / self.sample_rate

    @property
    def wall_time_now(self) -> float:
        return self._wall_time + self.duration
