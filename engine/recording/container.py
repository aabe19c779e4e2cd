"""The sealed recording container: header, chunk frames, chunk payloads (docs/recording-format.md).

Invariants this module keeps:
- Nothing leaves `seal_*` in clear except the fixed header fields (codec, rate, times, ids) and the
  frame fields that locate a chunk (length, index, final flag, recording id). Audio, events and
  personal metadata (caller number...) are only ever stored sealed.
- Two subkeys are derived from the per-recording data key with HKDF-SHA256 (salt = recording id):
  one seals the metadata block once, the other seals chunks. Chunk nonces are the chunk index
  (deterministic): unique because a data key belongs to one recording and one writer that never
  seals an index twice, and free of any randomness on the per-second path.
- The header is authenticated by the metadata tag (its associated data is every header byte
  before it); each chunk is bound to the whole header by SHA-256(header) in its associated data,
  together with its index and final flag. Any flipped bit, dropped tail, swapped or spliced chunk
  fails a tag or a structural check that names the place.

The frame fields in clear are hints, never trusted: the reader authenticates each chunk with the
index it expects from the chunk's position, and uses the clear fields only to explain a failure.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import (
    ChunkAuthenticationError,
    ChunkOrderError,
    HeaderError,
    SplicedChunkError,
)

MAGIC = b"\x89VPXREC\n"  # high bit and newline catch 7-bit and text-mode copies, as in PNG
VERSION = 1
TAG_SIZE = 16
DATA_KEY_SIZE = 32

# magic, version, header_len, recording_id, key_id, cipher, codec, channels, reserved,
# sample_rate, start_time_us, meta_len
_FIXED = struct.Struct(">8sHI16s16sBBBBIqI")
FIXED_HEADER_SIZE = _FIXED.size  # 66
MAX_HEADER_SIZE = 64 * 1024

# body_len, chunk_index, flags, recording_id
_FRAME = struct.Struct(">IIB16s")
FRAME_HEADER_SIZE = _FRAME.size  # 25
MAX_CHUNK_BODY = 64 * 1024 * 1024
FLAG_FINAL = 0x01

_CHUNK_AAD = struct.Struct(">32sQB")
_META_NONCE = bytes(12)


class Cipher(enum.IntEnum):
    AES_256_GCM_HKDF_SHA256 = 1


class Codec(enum.IntEnum):
    """Codec of the stored payload bytes, exactly as carried in RTP."""

    PCMU = 1  # G.711 mu-law, 1 byte per sample
    PCMA = 2  # G.711 A-law, 1 byte per sample
    L16 = 3  # 16-bit linear PCM, network byte order (RFC 3551 §4.5.11)

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self is Codec.L16 else 1


class Direction(enum.IntEnum):
    """Channel of the stereo recording: left is what the caller said, right what the callee said."""

    FROM_CALLER = 0
    FROM_CALLEE = 1


class EventKind(enum.IntEnum):
    SENSITIVE_START = 1  # PCI pause: audio of both channels is dropped until SENSITIVE_END
    SENSITIVE_END = 2
    NOTE = 3  # free-form marker (hold, transfer...); detail must not carry personal data


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingMetadata:
    """Personal and call data. Sealed inside the header; never written in clear."""

    caller: str = ""
    callee: str = ""
    call_id: str = ""
    queue: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc = {
            "caller": self.caller,
            "callee": self.callee,
            "call_id": self.call_id,
            "queue": self.queue,
            "extra": self.extra,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RecordingMetadata:
        doc = json.loads(data)
        return cls(
            caller=doc["caller"],
            callee=doc["callee"],
            call_id=doc["call_id"],
            queue=doc["queue"],
            extra=dict(doc.get("extra", {})),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingHeader:
    recording_id: bytes  # 16 bytes
    key_id: bytes  # 16 bytes: names the data key in the keystore (not the KEK: rewrap changes that)
    codec: Codec
    sample_rate: int
    start_time_us: int  # wall clock at the first sample, microseconds since the Unix epoch (UTC)
    channels: int = 2
    cipher: Cipher = Cipher.AES_256_GCM_HKDF_SHA256


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    sample: int  # position on the recording timeline, in samples since the first sample
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Segment:
    """Contiguous codec payload of one channel starting at `sample`."""

    sample: int
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkPayload:
    events: Sequence[Event]
    channels: Sequence[Sequence[Segment]]  # one list per Direction, sorted, non-overlapping


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameHeader:
    body_len: int
    index: int
    final: bool
    recording_id: bytes


# -- keys ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordingKeys:
    meta: AESGCM
    chunk: AESGCM


def derive_keys(data_key: bytes, recording_id: bytes) -> RecordingKeys:
    if len(data_key) != DATA_KEY_SIZE:
        raise ValueError("data key must be 32 bytes")
    okm = HKDF(
        algorithm=hashes.SHA256(), length=64, salt=recording_id, info=b"vaultpbx recording v1"
    ).derive(data_key)
    return RecordingKeys(meta=AESGCM(okm[:32]), chunk=AESGCM(okm[32:]))


def chunk_nonce(index: int) -> bytes:
    return b"\x00\x00\x00\x00" + index.to_bytes(8, "big")


def chunk_aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return _CHUNK_AAD.pack(header_digest, index, 1 if final else 0)


# -- header ----------------------------------------------------------------------------------------


def seal_header(header: RecordingHeader, metadata: RecordingMetadata, keys: RecordingKeys) -> bytes:
    meta_plain = metadata.to_bytes()
    meta_len = len(meta_plain) + TAG_SIZE
    header_len = FIXED_HEADER_SIZE + meta_len
    if header_len > MAX_HEADER_SIZE:
        raise ValueError("recording metadata too large")
    fixed = _FIXED.pack(
        MAGIC,
        VERSION,
        header_len,
        header.recording_id,
        header.key_id,
        header.cipher,
        header.codec,
        header.channels,
        0,
        header.sample_rate,
        header.start_time_us,
        meta_len,
    )
    return fixed + keys.meta.encrypt(_META_NONCE, meta_plain, fixed)


def peek_header(prefix: bytes) -> tuple[RecordingHeader, int]:
    """Parse the clear fixed header (no key needed). Returns the header and the full header length.

    Nothing returned here is authenticated until `open_header` succeeds.
    """
    if len(prefix) < FIXED_HEADER_SIZE:
        raise HeaderError(f"file too short ({len(prefix)} bytes) for a recording header")
    (magic, version, header_len, rec_id, key_id, cipher, codec, channels, _reserved, rate, start,
     meta_len) = _FIXED.unpack_from(prefix)
    if magic != MAGIC:
        raise HeaderError("bad magic: not a vaultpbx sealed recording")
    if version != VERSION:
        raise HeaderError(f"unsupported version {version}")
    if header_len != FIXED_HEADER_SIZE + meta_len or header_len > MAX_HEADER_SIZE:
        raise HeaderError("inconsistent header length")
    try:
        header = RecordingHeader(
            recording_id=rec_id,
            key_id=key_id,
            cipher=Cipher(cipher),
            codec=Codec(codec),
            channels=channels,
            sample_rate=rate,
            start_time_us=start,
        )
    except ValueError as exc:
        raise HeaderError(f"unknown cipher or codec ({exc})") from None
    if channels != 2 or rate == 0:
        raise HeaderError(f"unsupported layout: {channels} channel(s) at {rate} Hz")
    return header, header_len


def open_header(raw: bytes, keys: RecordingKeys) -> RecordingMetadata:
    """Authenticate the whole header `raw` and return its metadata."""
    try:
        meta_plain = keys.meta.decrypt(
            _META_NONCE, raw[FIXED_HEADER_SIZE:], raw[:FIXED_HEADER_SIZE]
        )
    except InvalidTag:
        raise HeaderError("authentication failed (header altered, or wrong data key)") from None
    return RecordingMetadata.from_bytes(meta_plain)


def header_digest(raw_header: bytes) -> bytes:
    return hashlib.sha256(raw_header).digest()


# -- chunk payload -------------------------------------------------------------------------------
#
#   u16 n_events, then per event: u8 kind, u64 sample, u16 detail_len, detail (UTF-8)
#   per channel (2): u32 n_segments, then per segment: u64 sample, u32 len, payload

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_EVENT = struct.Struct(">BQH")
_SEGMENT = struct.Struct(">QI")


def encode_payload(payload: ChunkPayload) -> bytes:
    parts: list[bytes] = [_U16.pack(len(payload.events))]
    for event in payload.events:
        detail = event.detail.encode()
        parts.append(_EVENT.pack(event.kind, event.sample, len(detail)))
        parts.append(detail)
    for segments in payload.channels:
        parts.append(_U32.pack(len(segments)))
        for segment in segments:
            parts.append(_SEGMENT.pack(segment.sample, len(segment.payload)))
            parts.append(segment.payload)
    return b"".join(parts)


def decode_payload(data: bytes, channels: int = 2) -> ChunkPayload:
    """Decode an authenticated payload. A malformed one means a writer bug, not tampering."""
    view = memoryview(data)
    (n_events,) = _U16.unpack_from(view, 0)
    pos = _U16.size
    events: list[Event] = []
    for _ in range(n_events):
        kind, sample, detail_len = _EVENT.unpack_from(view, pos)
        pos += _EVENT.size
        events.append(Event(EventKind(kind), sample, bytes(view[pos : pos + detail_len]).decode()))
        pos += detail_len
    all_channels: list[list[Segment]] = []
    for _ in range(channels):
        (n_segments,) = _U32.unpack_from(view, pos)
        pos += _U32.size
        segments: list[Segment] = []
        for _ in range(n_segments):
            sample, length = _SEGMENT.unpack_from(view, pos)
            pos += _SEGMENT.size
            segments.append(Segment(sample, bytes(view[pos : pos + length])))
            pos += length
        all_channels.append(segments)
    if pos != len(data):
        raise ValueError("chunk payload has trailing bytes")
    return ChunkPayload(events=events, channels=all_channels)


# -- chunk frames ----------------------------------------------------------------------------------


def seal_chunk(
    keys: RecordingKeys,
    digest: bytes,
    recording_id: bytes,
    index: int,
    final: bool,
    plaintext: bytes,
) -> bytes:
    body = keys.chunk.encrypt(chunk_nonce(index), plaintext, chunk_aad(digest, index, final))
    frame = _FRAME.pack(len(body), index, FLAG_FINAL if final else 0, recording_id)
    return frame + body


def parse_frame_header(raw: bytes) -> FrameHeader:
    body_len, index, flags, rec_id = _FRAME.unpack(raw)
    return FrameHeader(body_len=body_len, index=index, final=bool(flags & FLAG_FINAL),
                       recording_id=rec_id)


def open_chunk(
    keys: RecordingKeys,
    digest: bytes,
    recording_id: bytes,
    position: int,
    frame: FrameHeader,
    body: bytes,
) -> bytes:
    """Authenticate the chunk found at `position`; explain a failure as precisely as we can."""
    try:
        return keys.chunk.decrypt(
            chunk_nonce(position), body, chunk_aad(digest, position, frame.final)
        )
    except InvalidTag:
        pass
    if frame.recording_id != recording_id:
        raise SplicedChunkError(position, frame.recording_id.hex())
    if frame.index != position:
        try:
            keys.chunk.decrypt(
                chunk_nonce(frame.index), body, chunk_aad(digest, frame.index, frame.final)
            )
        except InvalidTag:
            pass
        else:
            raise ChunkOrderError(position, frame.index)
    raise ChunkAuthenticationError(position, "authentication failed (chunk altered)")
