"""Errors of the recording package.

Every integrity error says *where* the file went wrong: the header, a chunk by its position, or the
end of the file. `position` is the chunk's place in the file (0-based), which is also the index the
chunk must carry when the file is intact; a verify report and an operator both need that number.
"""

from __future__ import annotations


class RecordingError(Exception):
    """Base class of everything the recording package raises on purpose."""


class RecordingFormatError(RecordingError):
    """The file is not a sealed recording, or the file is damaged in a way found before any tag."""


class HeaderError(RecordingFormatError):
    """The header is unreadable, of an unknown version, or fails authentication."""

    def __init__(self, message: str) -> None:
        super().__init__(f"header: {message}")


class ChunkError(RecordingFormatError):
    """A chunk is wrong; `position` names it."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"chunk {position}: {message}")
        self.position = position


class ChunkAuthenticationError(ChunkError):
    """The chunk's tag does not verify: ciphertext, tag, flags or header were altered."""


class ChunkOrderError(ChunkError):
    """An intact chunk of this recording sits at the wrong place (chunks swapped or dropped)."""

    def __init__(self, position: int, found_index: int) -> None:
        super().__init__(
            position, f"holds chunk {found_index} of this recording (chunks reordered or dropped)"
        )
        self.found_index = found_index


class SplicedChunkError(ChunkError):
    """The chunk belongs to another recording."""

    def __init__(self, position: int, other_recording_id: str) -> None:
        super().__init__(
            position, f"belongs to recording {other_recording_id} (spliced from another file)"
        )
        self.other_recording_id = other_recording_id


class TruncatedChunkError(ChunkError):
    """The file ends inside this chunk."""


class FrameLengthError(ChunkError):
    """The frame's length field is impossible: the frame was altered, or is crash debris at the
    end of an unfinished file (a filesystem may show zeros or garbage after a power cut)."""


class MissingFinalChunkError(RecordingFormatError):
    """The file ends after a complete chunk that is not marked final: truncated, or writer crash."""

    def __init__(self, chunks_read: int) -> None:
        super().__init__(
            f"missing final chunk: the file ends after {chunks_read} chunk(s) and none is final "
            "(truncated, or the writer stopped before close)"
        )
        self.chunks_read = chunks_read


class TrailingDataError(RecordingFormatError):
    """Bytes follow the final chunk."""

    def __init__(self, position: int) -> None:
        super().__init__(f"data after the final chunk, at chunk position {position}")
        self.position = position


class RecordingKeyError(RecordingError):
    """Base for data-key and KEK problems."""


class UnknownRecordingError(RecordingKeyError):
    def __init__(self, recording_id: str) -> None:
        super().__init__(f"unknown recording {recording_id}")
        self.recording_id = recording_id


class KeyShreddedError(RecordingKeyError):
    """The data key was destroyed: the recording, and every copy of it, is unreadable."""

    def __init__(self, recording_id: str) -> None:
        super().__init__(f"recording {recording_id}: data key destroyed (crypto-shredded)")
        self.recording_id = recording_id


class UnknownKekError(RecordingKeyError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"key-encryption key {key_id!r} is not available")
        self.key_id = key_id


class KekMissingError(RecordingKeyError):
    """A KEK the keystore needs is not where the configuration says. Nothing is created in its
    place: the operator restores it (the message says which key and from where)."""


class KekInUseError(RecordingKeyError):
    """Retiring a KEK that a data key or a running engine still needs."""

    def __init__(self, key_id: str, reason: str, *, engines: bool = False) -> None:
        super().__init__(f"key-encryption key {key_id} not retired: {reason}")
        self.key_id = key_id
        self.reason = reason
        self.engines = engines  # held back by running engines only: they follow within seconds


class AccessDeniedError(RecordingError):
    def __init__(self, actor: str, action: str, recording_id: str) -> None:
        super().__init__(f"{actor!r} may not {action} recording {recording_id}")
        self.actor = actor
        self.action = action
        self.recording_id = recording_id


class LegalHoldError(RecordingError):
    """A legal-hold request broke the two-person rule, or the recording is held."""
