"""Per-packet costs of the media hot path, in microseconds.

    .venv/bin/python bench/media_micro.py [--quick]

Prints a Markdown table and writes it, with the command and date, to bench/results/media-micro.md.
Each figure is the best of several timed rounds (min is the least noisy estimate of the cost
itself on a shared machine). SRTP figures use a fresh session per round, and the unprotect side
is fed packets that the protect side really produced, so replay checks pass as in a live call.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import struct
import sys
import timeit

import numpy as np
import pylibsrtp
from vaultpbx.codecs.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from vaultpbx.media.rtp import RtpStreamRewriter, parse_rtp_header
from vaultpbx.media.srtp import SrtpSession

RESULTS = pathlib.Path(__file__).parent / "results" / "media-micro.md"
PAYLOAD = 160


def rtp_packets(count: int, payload: int = PAYLOAD) -> list[bytes]:
    return [
        struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0xCAFEBABE) + b"\xd5" * payload
        for seq in range(1, count + 1)
    ]


def best_per_call(stmt, number: int, repeat: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6


def bench_srtp(suite: str, number: int, repeat: int) -> tuple[float, float]:
    key = os.urandom(44 if "256" in suite else (28 if "GCM" in suite else 30))
    packets = rtp_packets(number)
    protect_times, unprotect_times = [], []
    for _ in range(repeat):
        sender = SrtpSession.sender(suite, key)
        receiver = SrtpSession.receiver(suite, key)
        protect = sender.protect
        protected = []
        append = protected.append
        start = timeit.default_timer()
        for p in packets:
            append(protect(p))
        protect_times.append(timeit.default_timer() - start)
        unprotect = receiver.unprotect
        start = timeit.default_timer()
        for p in protected:
            unprotect(p)  # type: ignore[arg-type]
        unprotect_times.append(timeit.default_timer() - start)
        assert receiver.failures == 0 and sender.failures == 0
    return min(protect_times) / number * 1e6, min(unprotect_times) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    args = parser.parse_args()
    number, repeat = (2000, 3) if args.quick else (20000, 7)

    rows: list[tuple[str, float, str]] = []
    packet = rtp_packets(1)[0]
    rows.append(
        (
            "RTP header parse (`parse_rtp_header`)",
            best_per_call(lambda: parse_rtp_header(packet), number * 5, repeat),
            "per packet",
        )
    )
    rewriter = RtpStreamRewriter()
    rewriter.rewrite(packet, 0.0)
    rows.append(
        (
            "RTP rewrite, pass-through (same source)",
            best_per_call(lambda: rewriter.rewrite(packet, 0.0), number * 5, repeat),
            "per packet",
        )
    )
    shifting = RtpStreamRewriter(ssrc=0x12345678)
    shifting.rewrite(packet, 0.0)
    rows.append(
        (
            "RTP rewrite, SSRC/seq/ts changed (one copy)",
            best_per_call(lambda: shifting.rewrite(packet, 0.0), number * 5, repeat),
            "per packet",
        )
    )
    raw = [
        pylibsrtp.Session(
            pylibsrtp.Policy(key=os.urandom(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        )
        for _ in range(repeat)
    ]
    packets = rtp_packets(number)
    raw_times = []
    for session in raw:
        start = timeit.default_timer()
        for p in packets:
            session.protect(p)
        raw_times.append(timeit.default_timer() - start)
    rows.append(
        (
            "reference: bare pylibsrtp protect AES_CM_128_HMAC_SHA1_80",
            min(raw_times) / number * 1e6,
            f"per packet, {PAYLOAD} B payload",
        )
    )
    for suite in ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_256_GCM"):
        protect_us, unprotect_us = bench_srtp(suite, number, repeat)
        rows.append((f"SRTP protect {suite}", protect_us, f"per packet, {PAYLOAD} B payload"))
        rows.append((f"SRTP unprotect {suite}", unprotect_us, f"per packet, {PAYLOAD} B payload"))

    rng = np.random.default_rng(1)
    frame = rng.integers(-20000, 20000, size=160, dtype=np.int16)
    batch = rng.integers(-20000, 20000, size=(1000, 160), dtype=np.int16)
    for name, encode, decode in (
        ("µ-law", ulaw_encode, ulaw_decode),
        ("A-law", alaw_encode, alaw_decode),
    ):
        encoded = encode(frame)
        encoded_batch = encode(batch)
        rows.append(
            (
                f"G.711 {name} encode, one frame",
                best_per_call(lambda e=encode: e(frame), number, repeat),
                "per 160-sample frame",
            )
        )
        rows.append(
            (
                f"G.711 {name} decode, one frame",
                best_per_call(lambda d=decode, x=encoded: d(x), number, repeat),
                "per 160-sample frame",
            )
        )
        rows.append(
            (
                f"G.711 {name} encode, 1000 frames batched",
                best_per_call(lambda e=encode: e(batch), 50, repeat) / 1000,
                "per 160-sample frame",
            )
        )
        rows.append(
            (
                f"G.711 {name} decode, 1000 frames batched",
                best_per_call(lambda d=decode, x=encoded_batch: d(x), 50, repeat) / 1000,
                "per 160-sample frame",
            )
        )

    command = "python bench/media_micro.py" + (" --quick" if args.quick else "")
    lines = [
        "# Media micro-benchmarks",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"numpy {np.__version__}",
        f"- method: best of {repeat} rounds of {number} calls (G.711 batched: 50 calls of 1000 "
        "frames); fresh SRTP sessions each round",
        "",
        "| operation | µs | unit |",
        "|---|---:|---|",
        *(f"| {name} | {value:.2f} | {unit} |" for name, value, unit in rows),
        "",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table)


if __name__ == "__main__":
    main()
