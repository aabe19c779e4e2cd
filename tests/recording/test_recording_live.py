"""The media worker's side of recording, without sockets: RTP packets in through `tap` (as the
relay calls it), sealed chunks out. Placement by RTP timestamp, payload-type filtering, RTP
header walking, the PCI pause as a clean interval, and the end-of-control-channel seal."""

from __future__ import annotations

import base64
import struct
import wave
from pathlib import Path

import numpy as np
from vaultpbx.recording.container import Codec, Direction, EventKind
from vaultpbx.recording.export import export_wav
from vaultpbx.recording.g711 import decode_ulaw
from vaultpbx.recording.live import SWEEP_SECONDS, LiveRecordings
from vaultpbx.recording.reader import scan_structure
from vaultpbx.recording.recorder import recover_unfinished, start_recording

from .recording_helpers import FRAME, T0, WALL, audio

_RTP = struct.Struct("!BBHII")


def rtp(seq: int, ts: int, payload: bytes, *, pt: int = 0, csrcs: int = 0,
        extension: bytes = b"", padding: int = 0) -> bytes:
    first = 0x80 | csrcs | (0x10 if extension else 0) | (0x20 if padding else 0)
    head = _RTP.pack(first, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x1234) + bytes(4 * csrcs)
    if extension:
        head += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    tail = bytes(padding - 1) + bytes([padding]) if padding else b""
    return head + payload + tail


def live_session(env, recordings: LiveRecordings, session: str = "0-1") -> str:
    """Index a recording (as the signalling process does) and start it in `recordings`."""
    new = env.store.create_recording(env.directory, created_at=WALL)
    env.directory.mkdir(parents=True, exist_ok=True)
    recordings.start(session, "call-1", {
        "path": str(new.path), "recording-id": new.recording_id.hex(),
        "key-id": new.key_id.hex(), "data-key": base64.b64encode(new.data_key).decode(),
        "codec": "PCMU", "rate": 8000, "payload-types": [0],
        "metadata": {"caller": "1001", "callee": "1002", "call_id": "x@y"},
    }, T0)
    return new.recording_id.hex()


def channel(path: Path, index: int) -> np.ndarray:
    with wave.open(str(path)) as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    return frames[:, index]


def test_bursty_arrival_is_stored_back_to_back_by_rtp_timestamp(env, tmp_path: Path) -> None:
    """Frames that arrive late and then in a burst (a stalled sender, a loaded core) are placed
    by their timestamps, so the export is bit-exact where arrival times would cut gaps."""
    events: list[dict] = []
    recordings = LiveRecordings(on_event=events.append)
    rid = live_session(env, recordings)
    a = audio(1.0, 11)
    rng = np.random.default_rng(3)
    now = T0
    for i in range(50):
        now += 0.02 + (0.15 if i % 10 == 9 else 0.0) - (0.015 if i % 10 < 9 else 0)
        now += float(rng.uniform(0, 0.01))
        packet = rtp(i, 5000 + i * FRAME, a[i * FRAME:(i + 1) * FRAME])
        recordings.tap("0-1", 0, packet, now)
    recordings.stop("0-1", now)
    assert events[-1]["state"] == "closed" and events[-1]["frames"] == 50
    env.store.mark_closed(rid)
    export_wav(env.store, rid, tmp_path / "o.wav", actor="qa")
    assert decode_ulaw(a).tobytes() in channel(tmp_path / "o.wav", 0).tobytes()


def test_only_the_recorded_payload_types_reach_the_writer(env, tmp_path: Path) -> None:
    recordings = LiveRecordings()
    rid = live_session(env, recordings)
    a = audio(0.2, 12)
    for i in range(10):
        frame = a[i * FRAME:(i + 1) * FRAME]
        # CSRCs, a header extension and padding must all be stepped over exactly.
        packet = rtp(i, i * FRAME, frame, csrcs=i % 3, extension=b"\x10\xff\x00\x00" * (i % 2),
                     padding=4 * (i % 2))
        recordings.tap("0-1", 1, packet, T0 + i * 0.02)
        # An RFC 4733 event (digit 5) between the frames: counted, never stored.
        recordings.tap("0-1", 1, rtp(100 + i, i * FRAME, struct.pack("!BBH", 5, 10, 160),
                                     pt=101), T0 + i * 0.02)
    recordings.tap("0-1", 1, b"\x90\x00" + bytes(10), T0)  # extension header cut short
    recordings.tap("other", 0, rtp(1, 0, a[:FRAME]), T0)  # a session nobody records
    report = recordings.stop("0-1", T0 + 0.3)
    assert report is not None
    assert (report["frames"], report["skipped"], report["malformed"]) == (10, 10, 1)
    env.store.mark_closed(rid)
    export_wav(env.store, rid, tmp_path / "o.wav", actor="qa")
    right = channel(tmp_path / "o.wav", 1)
    assert decode_ulaw(a).tobytes() in right.tobytes()
    assert not channel(tmp_path / "o.wav", 0).any()


def test_a_forged_timestamp_cannot_move_audio_far_from_its_arrival(env, tmp_path: Path) -> None:
    w = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL)
    a = audio(0.1, 13)
    w.append_rtp(Direction.FROM_CALLER, a[:FRAME], 1000, T0)
    w.append_rtp(Direction.FROM_CALLER, a[FRAME:2 * FRAME], 1000 + 8000 * 3600, T0 + 0.02)
    # The same timestamp again (a duplicate): behind what is stored, dropped.
    w.append_rtp(Direction.FROM_CALLER, a[2 * FRAME:3 * FRAME], 1000 + 8000 * 3600, T0 + 0.04)
    w.close(T0 + 0.1)
    assert w.stats.frames == 2 and w.stats.frames_late == 1
    assert w.duration < 0.1  # not an hour of silence


def test_the_pci_pause_is_a_clean_interval_even_when_timestamps_run_ahead(
        env, tmp_path: Path) -> None:
    w = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0, wall_time=WALL)
    a = audio(2.0, 14)
    # 1 s of audio arrives in 0.5 s (timestamps ahead of arrival), then the pause starts.
    for i in range(50):
        w.append_rtp(Direction.FROM_CALLER, a[i * FRAME:(i + 1) * FRAME], i * FRAME, T0 + i * 0.01)
    w.sensitive_start(T0 + 0.5)
    for i in range(50, 60):  # typed during the pause
        w.append_rtp(Direction.FROM_CALLER, a[i * FRAME:(i + 1) * FRAME], i * FRAME, T0 + i * 0.01)
    w.sensitive_end(T0 + 0.7)
    for i in range(60, 100):
        w.append_rtp(Direction.FROM_CALLER, a[i * FRAME:(i + 1) * FRAME], i * FRAME,
                     T0 + 0.7 + (i - 60) * 0.02)
    w.close(T0 + 2.0)
    result = export_wav(env.store, w.recording_id.hex(), tmp_path / "o.wav", actor="qa")
    start, end = (e.sample for e in result.events)
    assert [e.kind for e in result.events] == [EventKind.SENSITIVE_START, EventKind.SENSITIVE_END]
    assert start == 50 * FRAME  # after the audio already stored, not at the arrival clock
    left = channel(tmp_path / "o.wav", 0)
    assert not left[start:end].any()
    pcm = decode_ulaw(a)
    assert pcm[: 50 * FRAME].tobytes() in left.tobytes()
    assert pcm[60 * FRAME: 100 * FRAME].tobytes() in left[end:].tobytes()
    assert pcm[50 * FRAME: 60 * FRAME].tobytes() not in left.tobytes()


def test_a_quiet_call_is_sealed_within_a_second_and_eof_loses_nothing(env) -> None:
    recordings = LiveRecordings()
    rid = live_session(env, recordings)
    a = audio(0.1, 15)
    for i in range(5):  # 0.1 s of audio, then nothing more: only the sweep can seal it
        recordings.tap("0-1", 0, rtp(i, i * FRAME, a[i * FRAME:(i + 1) * FRAME]), T0 + i * 0.02)
    path = env.directory / f"{rid}.vrec"
    now = T0
    while scan_structure(path).complete_chunks == 0:
        now += SWEEP_SECONDS
        recordings.sweep(now)
        assert now - T0 <= 1.0 + 1e-9, "nothing sealed after a second"
    recordings.tap("0-1", 0, rtp(5, 5 * FRAME, a[:FRAME]), now)
    recordings.close_all_unfinished()  # the control channel closed: the engine is gone
    scan = scan_structure(path)
    assert not scan.finished and scan.complete_chunks == 2
    report = recover_unfinished(env.store, env.directory)
    assert report.incomplete == [rid]


def _messy_stream(seed: int) -> list[tuple[bytes, float]]:
    """Mostly steady 20 ms frames, with what real networks add: lost, reordered and duplicated
    packets, RFC 4733 events, a resized frame, CSRCs and padding, a new source far away in
    timestamp, a marker bit, a timestamp wrap and a packet too short to be RTP."""
    rng = np.random.default_rng(seed)
    a = audio(4.0, seed)
    out: list[tuple[bytes, float]] = []
    ts = int(rng.choice([0, 0xFFFFFFFF - 30 * FRAME, int(rng.integers(0, 2**31))]))
    now, seq, i = T0, int(rng.integers(0, 65536)), 0
    while i < 190:
        kind = rng.choice(["next"] * 14 + ["lost", "swap", "dup", "event", "resize", "csrc",
                                           "jump", "marker", "short"])
        frame = a[(i % 190) * FRAME:(i % 190 + 1) * FRAME]
        now += 0.02 + float(rng.uniform(-0.004, 0.004))
        if kind == "lost":
            ts, seq, i = ts + FRAME, seq + 1, i + 1
            continue
        if kind == "event":
            out.append((rtp(seq, ts, struct.pack("!BBH", 3, 10, 160), pt=101), now))
            seq += 1
            continue
        if kind == "short":
            out.append((bytes([0x80, 0]) + bytes(6), now))
            continue
        if kind == "jump":
            ts += int(rng.integers(8000 * 5, 2**31))  # a source the rewriter did not smooth
        size = FRAME // 2 if kind == "resize" else FRAME
        packet = rtp(seq, ts, frame[:size], pt=0x80 if kind == "marker" else 0,
                     csrcs=2 if kind == "csrc" else 0, padding=4 if kind == "csrc" else 0)
        if kind == "swap" and out:
            out.insert(len(out) - 1, (packet, now))
        else:
            out.append((packet, now))
        if kind == "dup":
            out.append((packet, now + 0.001))
        ts, seq, i = ts + size, seq + 1, i + 1
    return out


def test_batches_from_the_relay_store_what_packet_by_packet_stores(env, tmp_path: Path) -> None:
    """The relay's buffers drained in batches (C-level checks for a steady batch, a loop
    otherwise) and the plain per-packet path (append_rtp) leave the same recording, sample for
    sample and counter for counter, over many messy streams and batch boundaries."""
    from vaultpbx.recording.writer import rtp_payload

    for seed in range(25):
        stream = _messy_stream(seed)
        rng = np.random.default_rng(1000 + seed)
        batched = LiveRecordings()
        rid_batched = live_session(env, batched, session=f"b{seed}")
        reference = start_recording(env.store, env.directory, codec=Codec.PCMU, now=T0,
                                    wall_time=WALL)
        skipped = malformed = 0
        for packet, now in stream:
            batched.tap(f"b{seed}", 0, packet, now)
            if rng.random() < 0.15:
                batched.sweep(now)
            if len(packet) < 12:
                malformed += 1
            elif packet[1] & 0x7F != 0:
                skipped += 1
            else:
                payload = rtp_payload(packet)
                assert payload is not None
                reference.append_rtp(Direction.FROM_CALLER, payload,
                                     struct.unpack_from("!I", packet, 4)[0], now)
                reference.maybe_seal(now, early=SWEEP_SECONDS)
        end = stream[-1][1] + 0.1
        report = batched.stop(f"b{seed}", end)
        reference.close(end)
        assert report is not None
        stats = reference.stats
        assert (report["frames"], report["frames-late"], report["skipped"],
                report["malformed"]) == (stats.frames, stats.frames_late, skipped, malformed)
        for rid in (rid_batched, reference.recording_id.hex()):
            env.store.mark_closed(rid)
            export_wav(env.store, rid, tmp_path / f"{rid}.wav", actor="qa")
        ours = (tmp_path / f"{rid_batched}.wav").read_bytes()
        theirs = (tmp_path / f"{reference.recording_id.hex()}.wav").read_bytes()
        assert ours[44:] == theirs[44:], f"seed {seed}"
