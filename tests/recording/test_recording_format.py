"""Round trip and tamper detection of the sealed container, through the public library calls."""

from __future__ import annotations

import shutil
import warnings
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from vaultpbx.recording.container import (
    FIXED_HEADER_SIZE,
    FRAME_HEADER_SIZE,
    ChunkPayload,
    Codec,
    Event,
    EventKind,
    Segment,
    decode_payload,
    encode_payload,
)
from vaultpbx.recording.errors import (
    ChunkAuthenticationError,
    ChunkOrderError,
    HeaderError,
    MissingFinalChunkError,
    SplicedChunkError,
    TrailingDataError,
    TruncatedChunkError,
)
from vaultpbx.recording.export import export_wav, verify_recording
from vaultpbx.recording.g711 import decode_alaw, decode_ulaw
from vaultpbx.recording.reader import RecordingReader

from .recording_helpers import flip_bit, frame_offsets, write_recording

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # removed in 3.13; here it is the reference G.711 decoder


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path)) as wav:
        assert wav.getnchannels() == 2 and wav.getsampwidth() == 2
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
        return wav.getframerate(), frames


def test_g711_tables_are_bit_exact_with_audioop() -> None:
    codes = bytes(range(256))
    ulaw = np.frombuffer(audioop.ulaw2lin(codes, 2), dtype="<i2")
    alaw = np.frombuffer(audioop.alaw2lin(codes, 2), dtype="<i2")
    assert np.array_equal(decode_ulaw(codes), ulaw)
    assert np.array_equal(decode_alaw(codes), alaw)


@pytest.mark.parametrize("codec", [Codec.PCMU, Codec.PCMA, Codec.L16])
def test_round_trip_exports_the_exact_samples(env, codec: Codec, tmp_path: Path) -> None:
    rid, _path, left, right = write_recording(env.store, env.directory, codec=codec)
    progress: list[tuple[int, int]] = []
    result = export_wav(env.store, rid, tmp_path / "out.wav", actor="qa1",
                        progress=lambda done, total: progress.append((done, total)))
    rate, frames = read_wav(tmp_path / "out.wav")
    if codec is Codec.PCMU:
        want_l, want_r = decode_ulaw(left), decode_ulaw(right)
    elif codec is Codec.PCMA:
        want_l, want_r = decode_alaw(left), decode_alaw(right)
    else:
        want_l = np.frombuffer(left, ">i2").astype("<i2")
        want_r = np.frombuffer(right, ">i2").astype("<i2")
    assert rate == 8000 and result.complete
    assert np.array_equal(frames[:, 0], want_l)
    assert np.array_equal(frames[:, 1], want_r)
    assert result.chunks == 5  # 4.2 s: four full seconds and a final chunk
    assert progress[-1][0] == progress[-1][1]  # the whole file was read
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_metadata_is_sealed_and_readable_with_the_key(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory, caller="+44 20 7946 0000")
    with RecordingReader(path, env.store.data_key(rid), expected_id=bytes.fromhex(rid)) as rd:
        assert rd.metadata.caller == "+44 20 7946 0000"
        assert rd.metadata.call_id == "abc@host"
        assert rd.header.codec is Codec.PCMU and rd.header.channels == 2
    raw = path.read_bytes()
    for needle in (b"7946", b"abc@host", b"1001"):
        assert needle not in raw


def expect(env, rid: str, path: Path, exc_type: type[Exception], match: str) -> None:
    """Both the strict reader and the verify report must name the same problem."""
    key = env.store.data_key(rid)
    with pytest.raises(exc_type, match=match):
        with RecordingReader(path, key, expected_id=bytes.fromhex(rid)) as reader:
            for _ in reader.iter_chunks():
                pass
    check = verify_recording(env.store, rid, actor="auditor")
    assert not check.passed
    assert any(p.kind == exc_type.__name__ for p in check.report.problems), check.report


@pytest.mark.parametrize("offset", [9, 12, 30, 50, 57, FIXED_HEADER_SIZE + 3])
def test_flipped_bit_in_header_is_named(env, offset: int) -> None:
    # 9: version, 12: header length, 30: key id, 50: sample rate, 57: start time, 69: metadata
    rid, path, _, _ = write_recording(env.store, env.directory)
    flip_bit(path, offset)
    expect(env, rid, path, HeaderError, r"^header: ")


def test_flipped_bit_in_recording_id_fails_the_header_tag(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory)
    flip_bit(path, 14 + 3)  # inside the recording id
    expect(env, rid, path, HeaderError, "authentication failed")


def test_flipped_magic_is_named(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory)
    flip_bit(path, 1)
    expect(env, rid, path, HeaderError, "bad magic")


@pytest.mark.parametrize("where", ["ciphertext", "tag", "flags"])
def test_flipped_bit_in_a_chunk_is_named(env, where: str) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory)
    offset, length = frame_offsets(path)[2]
    target = {
        "ciphertext": offset + FRAME_HEADER_SIZE + 100,
        "tag": offset + length - 5,
        "flags": offset + 8,
    }[where]
    flip_bit(path, target)
    expect(env, rid, path, ChunkAuthenticationError, r"^chunk 2: authentication failed")


def test_only_the_damaged_chunk_is_reported(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory)
    offset, length = frame_offsets(path)[1]
    flip_bit(path, offset + length - 1)
    report = verify_recording(env.store, rid, actor="auditor").report
    assert report.chunks_ok == 4 and report.chunks_bad == 1 and report.final_chunk
    assert [(p.where, p.position) for p in report.problems] == [("chunk", 1)]


def test_truncated_at_a_chunk_boundary_misses_the_final_chunk(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory)
    offset, _ = frame_offsets(path)[-1]
    with open(path, "r+b") as f:
        f.truncate(offset)
    expect(env, rid, path, MissingFinalChunkError, "after 4 chunk")


def test_truncated_inside_a_chunk_is_named(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory)
    offset, length = frame_offsets(path)[3]
    with open(path, "r+b") as f:
        f.truncate(offset + length // 2)
    expect(env, rid, path, TruncatedChunkError, r"^chunk 3: file ends inside the chunk")


def test_forged_final_flag_on_a_truncated_file_fails(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory)
    offsets = frame_offsets(path)
    with open(path, "r+b") as f:
        f.truncate(offsets[-1][0])
    flip_bit(path, offsets[-2][0] + 8)  # set the final flag on what is now the last chunk
    expect(env, rid, path, ChunkAuthenticationError, r"^chunk 3: ")


def test_swapped_chunks_are_named(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory)
    data = path.read_bytes()
    (a, la), (b, lb) = frame_offsets(path)[1:3]
    swapped = data[:a] + data[b : b + lb] + data[a : a + la] + data[b + lb :]
    path.write_bytes(swapped)
    expect(env, rid, path, ChunkOrderError, r"^chunk 1: holds chunk 2 of this recording")
    report = verify_recording(env.store, rid, actor="auditor").report
    assert [(p.kind, p.position) for p in report.problems] == [
        ("ChunkOrderError", 1), ("ChunkOrderError", 2)
    ]


def test_dropped_chunk_is_named(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory)
    data = path.read_bytes()
    a, la = frame_offsets(path)[1]
    path.write_bytes(data[:a] + data[a + la :])
    expect(env, rid, path, ChunkOrderError, r"^chunk 1: holds chunk 2")


def test_chunk_spliced_from_another_recording_is_named(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory, seed=1)
    other_rid, other, _, _ = write_recording(env.store, env.directory, seed=2)
    data, donor = path.read_bytes(), other.read_bytes()
    a, la = frame_offsets(path)[2]
    b, lb = frame_offsets(other)[2]
    path.write_bytes(data[:a] + donor[b : b + lb] + data[a + la :])
    expect(env, rid, path, SplicedChunkError, rf"^chunk 2: belongs to recording {other_rid}")


def test_spliced_chunk_with_forged_recording_id_still_fails(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory, seed=1)
    _, other, _, _ = write_recording(env.store, env.directory, seed=2)
    data, donor = path.read_bytes(), bytearray(other.read_bytes())
    a, la = frame_offsets(path)[2]
    b, lb = frame_offsets(other)[2]
    donor[b + 9 : b + 25] = bytes.fromhex(rid)
    path.write_bytes(data[:a] + bytes(donor[b : b + lb]) + data[a + la :])
    expect(env, rid, path, ChunkAuthenticationError, r"^chunk 2: ")


def test_data_after_the_final_chunk_is_named(env) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory)
    with open(path, "ab") as f:
        f.write(b"\x00" * 40)
    expect(env, rid, path, TrailingDataError, "after the final chunk")


def test_copied_file_cannot_stand_in_for_another_recording(env) -> None:
    rid_a, path_a, _, _ = write_recording(env.store, env.directory, seed=1)
    _, path_b, _, _ = write_recording(env.store, env.directory, seed=2)
    shutil.copyfile(path_b, path_a)  # same format, other key and id
    expect(env, rid_a, path_a, HeaderError, "authentication failed")


def test_failed_export_leaves_no_partial_wav(env, tmp_path: Path) -> None:
    rid, path, _, _ = write_recording(env.store, env.directory)
    offset, length = frame_offsets(path)[3]
    flip_bit(path, offset + length - 1)
    with pytest.raises(ChunkAuthenticationError):
        export_wav(env.store, rid, tmp_path / "out.wav", actor="qa1")
    assert not (tmp_path / "out.wav").exists()


segments = st.lists(
    st.tuples(st.integers(0, 2**40), st.binary(min_size=1, max_size=50)), max_size=5
).map(lambda items: [Segment(s, p) for s, p in items])


@given(
    events=st.lists(
        st.builds(Event, st.sampled_from(EventKind), st.integers(0, 2**40), st.text(max_size=20)),
        max_size=4,
    ),
    left=segments,
    right=segments,
)
def test_chunk_payload_encoding_round_trips(events, left, right) -> None:
    payload = ChunkPayload(events=events, channels=[left, right])
    decoded = decode_payload(encode_payload(payload))
    assert list(decoded.events) == events
    assert [list(c) for c in decoded.channels] == [left, right]
