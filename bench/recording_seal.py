"""Recording seal micro-benchmark: AES-256-GCM chunk sealing and the whole writer path.

Measures, on one core (process CPU time, so other load on the host does not count):
  - seal MB/s for a 1 s stereo G.711 chunk (16,000 bytes of audio) and a 64 KiB chunk,
    through `container.seal_chunk` (AAD, frame header, encryption);
  - CPU per recorded call-second through `RecordingWriter` (50 frames/s per direction appended,
    chunk payload encoding, sealing, write(), periodic fsync) to a temporary directory;
  - verify (open) MB/s for the same chunks.

Run: .venv/bin/python bench/recording_seal.py [--seconds 600]
Writes bench/results/recording-seal.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from vaultpbx.recording.container import (
    Codec,
    Direction,
    derive_keys,
    header_digest,
    open_chunk,
    parse_frame_header,
    seal_chunk,
)
from vaultpbx.recording.writer import RecordingWriter

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "recording-seal.md"


def cpu() -> float:
    return time.process_time()


def bench_seal(size: int, min_time: float) -> tuple[float, float]:
    keys = derive_keys(os.urandom(32), os.urandom(16))
    digest = header_digest(b"header")
    rid = os.urandom(16)
    plain = os.urandom(size)
    n = 0
    start = cpu()
    while cpu() - start < min_time:
        for _ in range(100):
            seal_chunk(keys, digest, rid, n, False, plain)
            n += 1
    seal_s = cpu() - start
    sealed = seal_chunk(keys, digest, rid, 7, False, plain)
    frame = parse_frame_header(sealed[:25])
    body = sealed[25:]
    m = 0
    start = cpu()
    while cpu() - start < min_time:
        for _ in range(100):
            open_chunk(keys, digest, rid, 7, frame, body)
            m += 1
    open_s = cpu() - start
    return n * size / seal_s / 1e6, m * size / open_s / 1e6


def bench_writer(seconds: int, directory: Path, fsync_every: int) -> float:
    """CPU seconds per recorded call-second, 20 ms PCMU frames on both channels."""
    payload_a = os.urandom(160)
    payload_b = os.urandom(160)
    calls = 20
    writers = [
        RecordingWriter(directory / f"{fsync_every}-{i}.vrec", recording_id=os.urandom(16),
                        key_id=os.urandom(16), data_key=os.urandom(32), codec=Codec.PCMU,
                        sample_rate=8000, now=0.0, wall_time=time.time(), fsync_every=fsync_every)
        for i in range(calls)
    ]
    per_call = max(1, seconds // calls)
    start = cpu()
    for tick in range(per_call * 50):
        now = tick * 0.02
        for w in writers:
            w.append(Direction.FROM_CALLER, payload_a, now)
            w.append(Direction.FROM_CALLEE, payload_b, now)
            w.maybe_seal(now)
    for w in writers:
        w.close(per_call)
    used = cpu() - start
    return used / (per_call * calls)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=600, help="call-seconds for the writer run")
    parser.add_argument("--min-time", type=float, default=1.0, help="CPU seconds per seal size")
    args = parser.parse_args()

    rows = []
    for label, size in (("1 s stereo G.711 (16,000 B)", 16_000), ("64 KiB", 65_536)):
        seal, opened = bench_seal(size, args.min_time)
        rows.append((label, seal, opened))

    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
        writer_rows = [
            (every, bench_writer(args.seconds, Path(tmp), every)) for every in (5, 1)
        ]

    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = [
        "# Recording seal benchmark",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- host: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.platform()}",
        "- one core, process CPU time; AES-256-GCM via `cryptography` (OpenSSL)",
        "",
        "| chunk | seal MB/s per core | open (verify) MB/s per core |",
        "|---|---:|---:|",
        *[f"| {label} | {seal:,.0f} | {opened:,.0f} |" for label, seal, opened in rows],
        "",
        "| writer path (append 2x50 frames/s + encode + seal + write) | CPU per call-second "
        "| call-seconds per core-second |",
        "|---|---:|---:|",
        *[
            f"| fsync every {every} chunk(s) | {per * 1e6:,.0f} µs | {1 / per:,.0f} |"
            for every, per in writer_rows
        ],
        "",
        "Call-seconds per core-second is the number of concurrent recorded calls one core "
        "could seal in real time (recording work only, no SRTP or relay). fsync runs on the "
        "writer's thread here; its wall-clock cost depends on the disk and is not CPU.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
