"""The streaming writer: timing, PCI pause, sealing cadence, no plaintext, crash survival."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
from vaultpbx.hooks.registry import HookPoint
from vaultpbx.recording.container import Codec, Direction, EventKind, RecordingMetadata
from vaultpbx.recording.export import export_wav, verify_all, verify_recording
from vaultpbx.recording.g711 import decode_ulaw
from vaultpbx.recording.reader import RecordingReader
from vaultpbx.recording.recorder import recover_unfinished, scan_unfinished, start_recording
from vaultpbx.recording.writer import DirectorySync

from .recording_helpers import FRAME, T0, WALL, audio, frame_offsets, write_recording

CALLER, CALLEE = Direction.FROM_CALLER, Direction.FROM_CALLEE


def read_frames(path: Path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)


def chunks_of(env, rid: str, path: Path):
    key = env.store.data_key(rid)
    with RecordingReader(path, key, expected_id=bytes.fromhex(rid)) as reader:
        return list(reader.iter_chunks(allow_incomplete=True))


def test_gaps_become_silence_at_the_right_place(env, tmp_path: Path) -> None:
    w = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL)
    a = audio(0.2, 5)
    # caller speaks 0.0-0.1 s, is silent (no packets) until 0.5 s, then speaks 0.1 s more
    for i in range(5):
        w.append(CALLER, a[i * FRAME : (i + 1) * FRAME], T0 + i * 0.02)
    for i in range(5, 10):
        w.append(CALLER, a[i * FRAME : (i + 1) * FRAME], T0 + 0.4 + i * 0.02)
    w.close(T0 + 1.0)
    export_wav(env.store, w.recording_id.hex(), tmp_path / "o.wav", actor="qa")
    frames = read_frames(tmp_path / "o.wav")
    pcm = decode_ulaw(a)
    assert len(frames) == 4800
    assert np.array_equal(frames[:800, 0], pcm[:800])
    assert not frames[800:4000, 0].any()
    assert np.array_equal(frames[4000:, 0], pcm[800:])
    assert not frames[:, 1].any()  # the callee channel never spoke


def test_jitter_within_tolerance_keeps_audio_contiguous(env, tmp_path: Path) -> None:
    w = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL)
    a = audio(1.0, 6)
    rng = np.random.default_rng(0)
    for i in range(50):
        w.append(CALLER, a[i * FRAME : (i + 1) * FRAME], T0 + i * 0.02 + rng.uniform(0, 0.04))
    w.close(T0 + 1.1)
    export_wav(env.store, w.recording_id.hex(), tmp_path / "o.wav", actor="qa")
    assert np.array_equal(read_frames(tmp_path / "o.wav")[:, 0], decode_ulaw(a))


def test_sensitive_mode_drops_audio_and_keeps_the_pause_events(env, tmp_path: Path) -> None:
    w = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL)
    a, b = audio(3.0, 7), audio(3.0, 8)
    for i in range(150):
        now = T0 + i * 0.02
        if i == 50:
            w.sensitive_start(now)
        if i == 100:
            w.sensitive_end(now)
        w.append(CALLER, a[i * FRAME : (i + 1) * FRAME], now)
        w.append(CALLEE, b[i * FRAME : (i + 1) * FRAME], now)
        w.maybe_seal(now)
    w.close(T0 + 3.0)
    assert w.stats.frames_dropped_sensitive == 100
    result = export_wav(env.store, w.recording_id.hex(), tmp_path / "o.wav", actor="qa")
    frames = read_frames(tmp_path / "o.wav")
    assert not frames[8000:16000].any()
    assert np.array_equal(frames[:8000, 0], decode_ulaw(a)[:8000])
    assert np.array_equal(frames[16000:, 1], decode_ulaw(b)[16000:])
    assert [(e.kind, e.sample) for e in result.events] == [
        (EventKind.SENSITIVE_START, 8000), (EventKind.SENSITIVE_END, 16000)
    ]


def test_a_full_second_seals_a_chunk_without_waiting_for_the_timer(env) -> None:
    w = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL)
    a = audio(1.0, 9)
    for i in range(50):
        w.append(CALLER, a[i * FRAME : (i + 1) * FRAME], T0 + i * 0.02)
    assert w.stats.chunks == 1  # sealed by append, no maybe_seal call
    size = w.path.stat().st_size
    w.close(T0 + 1.0)
    assert w.path.stat().st_size > size


def test_maybe_seal_flushes_a_quiet_call_every_second(env) -> None:
    w = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL)
    w.append(CALLER, audio(0.02, 1), T0)
    assert not w.maybe_seal(T0 + 0.5)
    assert w.maybe_seal(T0 + 1.0)
    assert not w.maybe_seal(T0 + 1.5)
    assert not w.maybe_seal(T0 + 2.1)  # nothing buffered: no empty chunk
    w.close(T0 + 3)
    assert [c.final for c in chunks_of(env, w.recording_id.hex(), w.path)] == [False, True]


def test_file_is_private_and_holds_no_plaintext(env, tmp_path: Path) -> None:
    marker = b"CARD 4111 1111 1111 1111 ... SAID OUT LOUD " * 40  # recognisable "audio"
    caller = "+33 6 12 34 56 78"
    w = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL,
                        metadata=RecordingMetadata(caller=caller, callee="agent-bob"))
    for i in range(len(marker) // FRAME):
        w.append(CALLER, marker[i * FRAME : (i + 1) * FRAME], T0 + i * 0.02)
        w.append(CALLEE, marker[i * FRAME : (i + 1) * FRAME], T0 + i * 0.02)
    w.append(CALLER, marker[:FRAME], T0 + 2.0)  # still buffered when we look
    assert stat.S_IMODE(w.path.stat().st_mode) == 0o600
    needles = [marker[i : i + 16] for i in range(0, len(marker) - 16, 97)]
    needles += [b"4111 1111", b"12 34 56 78", b"agent-bob"]

    def scan() -> None:
        for path in env.directory.rglob("*"):
            data = path.read_bytes()
            assert not any(n in data for n in needles), path

    scan()
    w.close(T0 + 3)
    scan()
    assert [p.name for p in env.directory.iterdir()] == [w.path.name]  # no temp files


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from vaultpbx.recording.container import Codec, Direction, RecordingMetadata
    from vaultpbx.recording.kek import LocalFileKek
    from vaultpbx.recording.keystore import Keystore
    from vaultpbx.recording.recorder import start_recording
    sys.path.insert(0, sys.argv[2])
    from recording_helpers import audio, FRAME, T0, WALL

    root = Path(sys.argv[1])
    store = Keystore(root / "keystore.db", LocalFileKek(root / "kek.key"))
    w = start_recording(store, root / "recordings", codec=Codec.PCMU, now=T0, wall_time=WALL,
                        metadata=RecordingMetadata(caller="+1 555 0100"))
    a, b = audio(3.5, 21), audio(3.5, 22)
    for i in range(175):  # 3.5 s: three sealed chunks and half a second only in memory
        w.append(Direction.FROM_CALLER, a[i * FRAME:(i + 1) * FRAME], T0 + i * 0.02)
        w.append(Direction.FROM_CALLEE, b[i * FRAME:(i + 1) * FRAME], T0 + i * 0.02)
    print(w.recording_id.hex(), w.stats.chunks, flush=True)
    time.sleep(60)
    """
)


def test_sigkill_mid_call_leaves_readable_sealed_chunks(env, tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(env.root), str(Path(__file__).parent)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        rid, chunks = child.stdout.readline().split()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL and chunks == "3"

    unfinished = scan_unfinished(env.directory)
    assert [(u.recording_id, u.complete_chunks) for u in unfinished] == [(rid, 3)]
    assert env.store.get(rid).state == "recording"
    assert recover_unfinished(env.store, env.directory).incomplete == [rid]
    assert env.store.get(rid).state == "incomplete"

    check = verify_recording(env.store, rid, actor="auditor")
    assert check.passed and check.report.chunks_ok == 3 and not check.report.final_chunk
    assert verify_all(env.store, actor="auditor").ok

    result = export_wav(env.store, rid, tmp_path / "o.wav", actor="qa")
    frames = read_frames(tmp_path / "o.wav")
    # A chunk is sealed by whichever channel fills a second first, so the two channels take
    # turns: the sealed part holds 149 caller frames and 148 callee frames.
    assert not result.complete and len(frames) == 149 * FRAME
    assert np.array_equal(frames[:, 0], decode_ulaw(audio(3.5, 21))[: 149 * FRAME])
    assert np.array_equal(frames[: 148 * FRAME, 1], decode_ulaw(audio(3.5, 22))[: 148 * FRAME])
    assert not frames[148 * FRAME :, 1].any()

    # debris after the last sealed chunk (a frame cut by a power loss, zeros or garbage that a
    # filesystem shows after a crash) is tolerated for a file the index marks incomplete
    path = Path(env.store.get(rid).path)
    sealed = path.read_bytes()
    last_frame = sealed[frame_offsets(path)[-1][0] :]
    for debris in (last_frame[:300], bytes(300), os.urandom(300)):
        path.write_bytes(sealed + debris)
        assert verify_recording(env.store, rid, actor="auditor").passed
        assert export_wav(env.store, rid, tmp_path / "o2.wav", actor="qa").frames == 149 * FRAME


def test_close_marks_the_index_and_notifies(env) -> None:
    rid, _, _, _ = write_recording(env.store, env.directory)
    row = env.store.get(rid)
    assert row.state == "closed" and row.closed_at is not None
    points = [p for p, _ in env.events]
    assert HookPoint.RECORDING_STARTED in points and HookPoint.RECORDING_STOPPED in points
    assert scan_unfinished(env.directory) == []


def test_export_memory_stays_bounded_for_a_long_call(env, tmp_path: Path) -> None:
    import tracemalloc

    w = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL)
    frame = audio(0.02, 3)
    seconds = 600  # 10 minutes; the WAV is 19 MB
    for i in range(seconds * 50):
        now = T0 + i * 0.02
        w.append(CALLER, frame, now)
        if i % 3000 < 1500:  # the callee speaks only half of each minute
            w.append(CALLEE, frame, now)
        w.maybe_seal(now)
    w.close(T0 + seconds)
    tracemalloc.start()
    try:
        result = export_wav(env.store, w.recording_id.hex(), tmp_path / "o.wav", actor="qa")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.frames == seconds * 8000
    assert (tmp_path / "o.wav").stat().st_size == 44 + seconds * 8000 * 4
    assert peak < 2_000_000, peak


def test_recovery_marks_a_file_without_a_whole_header_incomplete_never_closed(env) -> None:
    """A power cut before a file's first fsync can leave it empty or cut inside its header;
    its row must not be taken for a finished recording."""
    cut = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL)
    empty = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL)
    done = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL)
    done.close(T0 + 0.1)
    for writer, size in ((cut, 20), (empty, 0)):
        writer.abort()
        os.truncate(writer.path, size)
    cut_id, empty_id = cut.recording_id.hex(), empty.recording_id.hex()
    report = recover_unfinished(env.store, env.directory)
    assert sorted(report.incomplete) == sorted([cut_id, empty_id]) and report.closed == []
    assert env.store.get(cut_id).state == env.store.get(empty_id).state == "incomplete"
    assert env.store.get(done.recording_id.hex()).state == "closed"


def test_workers_fsync_the_directory_once_per_sweep_and_each_file_when_due(
        env, monkeypatch) -> None:
    """With a shared DirectorySync, opening files costs no fsync; one flush makes all their
    directory entries durable; the header rides on each file's first periodic fsync or its
    close. Without one, a writer fsyncs file and directory before accepting audio."""
    synced: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    shared = DirectorySync()
    writers = [start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0,
                               wall_time=WALL, directory_sync=shared, fsync_every=2)
               for _ in range(3)]
    assert synced == []
    shared.flush()
    assert synced == ["directory"]
    shared.flush()
    assert synced == ["directory"]  # nothing new since
    frame = audio(0.02, 3)
    w = writers[0]
    w.append(CALLER, frame, T0)
    w.maybe_seal(T0 + 1.0)  # chunk 1 + the header: fsync_every (2) reached
    assert synced == ["directory", "file"]
    for writer in writers:
        writer.close(T0 + 1.5)
    assert synced == ["directory", "file", "file", "file", "file"]
    synced.clear()
    alone = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL)
    assert synced == ["file", "directory"]
    alone.close(T0 + 0.1)
    assert verify_all(env.store, actor="auditor").ok
