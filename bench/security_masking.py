"""Micro-benchmarks for the compliance layer's hot paths.

  .venv/bin/python bench/security_masking.py [--quick]

- masking throughput on realistic structlog records (records/s through `mask_processor`)
- flood guard `check()` cost per datagram for an allowed and a banned source (ns)
- `admit()` (check + scanner detection on a 500-byte INVITE header) per datagram (ns)

Prints a Markdown table and writes it to bench/results/security-masking.md.
"""

from __future__ import annotations

import datetime
import platform
import random
import sys
import time
from pathlib import Path

from vaultpbx.hooks.maskers import mask_processor, resident_id_check_char
from vaultpbx.security.floodguard import FloodGuard, FloodGuardConfig

RESULTS = Path(__file__).resolve().parent / "results" / "security-masking.md"


def _card(rng: random.Random) -> str:
    body = "62" + "".join(str(rng.randint(0, 9)) for _ in range(13))
    for check in "0123456789":
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i & 1 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError


def _rid(rng: random.Random) -> str:
    body = f"{rng.randint(110000, 659999)}{rng.randint(1950, 2005)}0{rng.randint(1, 9)}" \
           f"{rng.randint(10, 28)}{rng.randint(0, 999):03d}"
    return body + resident_id_check_char(body)


def realistic_records(n: int) -> list[dict[str, object]]:
    rng = random.Random(1)
    records: list[dict[str, object]] = []
    for i in range(n):
        phone = f"1{rng.choice('3589')}{rng.randint(0, 10**9 - 1):09d}"
        kind = i % 4
        if kind == 0:  # SIP signalling line, the most common record
            records.append({
                "event": "sip.request.in", "method": "INVITE", "call_id": f"{i}@127.100.0.1",
                "from": f'"Customer" <sip:{phone}@trunk.example.net>;tag=as{i:08x}',
                "to": "<sip:4001@pbx.example.com>", "source": "203.0.113.9:5060",
                "level": "info", "timestamp": "2026-05-01T10:00:00.123Z",
            })
        elif kind == 1:  # queue / routing line without personal data
            records.append({
                "event": "queue.assigned", "queue": "billing", "agent": f"agent{i % 40}",
                "wait_ms": rng.randint(100, 90000), "call_id": f"{i}@127.100.0.1",
                "level": "info", "timestamp": "2026-05-01T10:00:00.123Z",
            })
        elif kind == 2:  # CRM note typed by an agent
            records.append({
                "event": "crm.note", "agent": f"agent{i % 40}",
                "note": f"customer id {_rid(rng)} asked to refund card {_card(rng)}, "
                        f"call back on {phone} or mail li.wei{i}@example.cn",
                "level": "info", "timestamp": "2026-05-01T10:00:00.123Z",
            })
        else:  # auth line with secrets
            records.append({
                "event": "sip.auth.failed", "user": phone,
                "authorization": 'Digest username="x", nonce="abc", response="0123"',
                "sdp": "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewky|2^20",
                "level": "warning", "timestamp": "2026-05-01T10:00:00.123Z",
            })
    return records


def bench_masking(n: int) -> float:
    records = realistic_records(n)
    copies = [dict(r) for r in records]
    start = time.perf_counter()
    for record in copies:
        mask_processor(None, "info", record)
    return n / (time.perf_counter() - start)


def bench_check(loops: int) -> tuple[float, float, float, float]:
    guard = FloodGuard(FloodGuardConfig(rate=1e12, burst=1e12))
    allowed_ip, banned_ip = "198.51.100.20", "203.0.113.9"
    guard.check(allowed_ip, 0.0)
    guard.ban(banned_ip, 1e18)
    check = guard.check

    def per_call(ip: str) -> float:
        best = float("inf")
        for _ in range(5):
            now = 1.0
            start = time.perf_counter_ns()
            for _ in range(loops):
                check(ip, now)
            best = min(best, (time.perf_counter_ns() - start) / loops)
        return best

    def empty_loop() -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter_ns()
            for _ in range(loops):
                pass
            best = min(best, (time.perf_counter_ns() - start) / loops)
        return best

    invite = (b"INVITE sip:4001@pbx.example.com SIP/2.0\r\n"
              b"Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK776asdhds\r\n"
              b"Max-Forwards: 70\r\nTo: <sip:4001@pbx.example.com>\r\n"
              b'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n'
              b"Call-ID: a84b4c76e66710@pc33.example.com\r\nCSeq: 314159 INVITE\r\n"
              b"Contact: <sip:alice@198.51.100.20:5060>\r\nUser-Agent: Linphone/5.2.0\r\n"
              b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE\r\n"
              b"Content-Type: application/sdp\r\nContent-Length: 142\r\n\r\n" + b"v=0\r\n" * 28)
    admit = guard.admit
    best_admit = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(loops):
            admit(allowed_ip, invite, 1.0)
        best_admit = min(best_admit, (time.perf_counter_ns() - start) / loops)
    return per_call(allowed_ip), per_call(banned_ip), best_admit, empty_loop()


def main() -> None:
    quick = "--quick" in sys.argv
    n = 4000 if quick else 40000
    loops = 100_000 if quick else 1_000_000
    rps = bench_masking(n)
    allowed_ns, banned_ns, admit_ns, loop_ns = bench_check(loops)
    command = "python bench/security_masking.py" + (" --quick" if quick else "")
    lines = [
        "# Security hot paths: masking and flood guard",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- python: {platform.python_version()} on {platform.machine()} "
        f"({platform.system()}), one core",
        "",
        "| measurement | result |",
        "|---|---|",
        f"| `mask_processor` on realistic log records ({n}, 1/4 each: SIP line, queue line, "
        f"CRM note with ID+card+phone+e-mail, auth line with secrets) | {rps:,.0f} records/s |",
        f"| `FloodGuard.check()` allowed source | {allowed_ns:.0f} ns/datagram |",
        f"| `FloodGuard.check()` banned source | {banned_ns:.0f} ns/datagram |",
        f"| `FloodGuard.admit()` allowed source, 640-byte INVITE (check + scanner scan) "
        f"| {admit_ns:.0f} ns/datagram |",
        f"| empty Python loop iteration (baseline, included above) | {loop_ns:.0f} ns |",
        "",
    ]
    table = "\n".join(lines)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)


if __name__ == "__main__":
    main()
