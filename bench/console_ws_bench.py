"""The console's live feed next to SIP load: how many WebSocket clients one engine serves.

A real engine (uvloop, admin API over TLS 1.3 with the console, every call anchored and
recorded as in configs/loadtest.yaml) carries SIPp calls at `--rate` calls/s (each held
`--hold-ms`) from a SIPp UAC to a SIPp UAS on 127.0.0.1:5070. A supervisor logs in as the
browser does (POST /session with password and TOTP: the `__Host-vaultpbx` cookie); for each step
N, two client processes open N WebSockets to /ws in all (that cookie, a same-origin Origin, from
25 connections per loopback source address 127.0.1.x / 127.0.2.x), and count, for each
connection, the snapshots it receives per second and how late each is (receive time minus the
snapshot's `at`). The step's window opens once every client is connected and SIP has run a few
seconds. Reported per step: clients connected (and still open at the end), snapshots/s per
client (median, p5), lateness (median, p99), SIPp's calls attempted / failed / retransmissions,
the engine's CPU (utime+stime of its main process over the window; 100% = one core), and its
loop stalls over the window (the loop-stall monitor's counters in /metrics).

The admin listener's budget is raised for the bench (max_connections 4096, 64 per source, 1000
new connections/s) so that N > 512 can be tried; the defaults (512, 32 per source) cap a real
engine's WebSockets below that.

Run (never next to another bench): flock /tmp/vaultpbx-bench.lock unshare -n sh -c \
    'ip link set lo up && .venv/bin/python bench/console_ws_bench.py \
    [--steps 100,250,500,750,1000] [--window 15] [--rate 300] [--hold-ms 2000]'
Appends a section to bench/results/console.md (--no-write: print it only).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULT = ROOT / "bench" / "results" / "console.md"
UAS_PORT, UAC_PORT = 5070, 5062
SIPP_FLAGS = ["-default_behaviors", "all,-abortunexp", "-recv_timeout", "10000", "-nostdin"]
PER_SOURCE = 25
CLIENT_PROCESSES = 2
WARMUP = 4.0


# -- the client processes ------------------------------------------------------------------------

async def client_main(args: argparse.Namespace) -> None:
    import aiohttp

    context = ssl.create_default_context(cafile=args.cafile)
    url = args.url.replace("https://", "wss://") + "/ws"
    headers = {"Cookie": f"__Host-vaultpbx={args.cookie}", "Origin": args.url}
    sessions: list[aiohttp.ClientSession] = []
    window: dict[str, float] = {"start": float("inf"), "end": float("inf")}
    counts = [0] * args.count
    late: list[list[float]] = [[] for _ in range(args.count)]
    opened = [False] * args.count
    closed = [False] * args.count

    async def one(index: int, http: aiohttp.ClientSession) -> None:
        try:
            async with http.ws_connect(url, headers=headers, ssl=context, autoping=True,
                                       max_msg_size=0) as socket:
                opened[index] = True
                async for message in socket:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    now = time.time()
                    if not window["start"] <= now < window["end"]:
                        continue
                    at = re.search(r'"at":([0-9.e+]+)', message.data[:80])
                    if at is None:
                        continue
                    counts[index] += 1
                    late[index].append(now - float(at.group(1)))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            print(f"client {index}: {exc!r}", file=sys.stderr)
        closed[index] = True

    tasks = []
    for index in range(args.count):
        if index % PER_SOURCE == 0:
            source = f"127.{args.net}.{index // PER_SOURCE + 1}"
            sessions.append(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=(source, 0), limit=0),
                cookie_jar=aiohttp.DummyCookieJar()))
        tasks.append(asyncio.ensure_future(one(index, sessions[-1])))
        await asyncio.sleep(1 / args.pace)
    deadline = time.monotonic() + 60
    while sum(opened) + sum(closed) < args.count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    print(json.dumps({"ready": sum(opened)}), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    window["start"], window["end"] = (float(x) for x in line.split())
    await asyncio.sleep(max(0.0, window["end"] - time.time()) + 0.5)
    still_open = sum(1 for o, c in zip(opened, closed, strict=True) if o and not c)
    lateness = sorted(x for each in late for x in each)
    print(json.dumps({"counts": counts, "opened": sum(opened), "still_open": still_open,
                      "lateness": lateness[::max(1, len(lateness) // 20000)]}), flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for each in sessions:
        await each.close()


# -- the driver ----------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def login(engine, user: str, password: str, secret: str) -> str:  # type: ignore[no-untyped-def]
    import http.client

    import pyotp
    client = http.client.HTTPSConnection("127.0.0.1", engine.admin_port, timeout=30,
                                         context=engine.admin_tls_context())
    client.request("POST", "/session", body=json.dumps(
        {"user": user, "password": password, "otp": pyotp.TOTP(secret).now()}),
        headers={"Origin": engine.admin_url, "Content-Type": "application/json"})
    answer = client.getresponse()
    body = answer.read()
    if answer.status != 200:
        raise RuntimeError(f"login: {answer.status} {body!r}")
    cookie = answer.getheader("Set-Cookie") or ""
    client.close()
    return cookie.partition("=")[2].split(";", 1)[0]


def sipp_stats(path: Path) -> dict[str, str]:
    rows = list(csv.reader(path.open(), delimiter=";"))
    return dict(zip(rows[0], rows[-1], strict=False))


def stalls(before: dict[str, float], after: dict[str, float], prefix: str) -> str:
    from vaultpbx.runtime.loopstall import OVER_MS
    return " / ".join(str(int(after[f"{prefix}{ms}ms_total"] - before[f"{prefix}{ms}ms_total"]))
                      for ms in OVER_MS if ms in (10, 50, 100, 500))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def step(engine, work: Path, cookie: str, n: int, args: argparse.Namespace) -> str:  # type: ignore[no-untyped-def]
    cafile = engine.config.get("admin", {}).get("certificate") or \
        engine.config["sip"]["tls"]["certificate"]
    shares = [n // CLIENT_PROCESSES + (1 if i < n % CLIENT_PROCESSES else 0)
              for i in range(CLIENT_PROCESSES)]
    clients = [subprocess.Popen(
        [sys.executable, __file__, "--client", "--url", engine.admin_url, "--cookie", cookie,
         "--cafile", str(cafile), "--count", str(share), "--net", str(i + 1),
         "--pace", str(400 / CLIENT_PROCESSES)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for i, share in enumerate(shares) if share]
    ready = sum(json.loads(c.stdout.readline())["ready"] for c in clients)  # type: ignore[union-attr]
    stats = work / f"sipp-{n}.csv"
    calls = int(args.rate * (WARMUP + args.window + 1))
    sipp = subprocess.Popen(
        ["sipp", "-sn", "uac", f"127.0.0.1:{engine.sip_port}", "-i", "127.0.0.1",
         "-p", str(UAC_PORT), "-r", str(args.rate), "-m", str(calls), "-d", str(args.hold_ms),
         "-timeout", str(int(calls / args.rate + args.hold_ms / 1000 + 60)), "-trace_stat",
         "-stf", str(stats), "-fd", "1", "-max_socket", "50000", *SIPP_FLAGS],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(WARMUP)
    start = time.time()
    end = start + args.window
    for client in clients:
        client.stdin.write(f"{start} {end}\n")  # type: ignore[union-attr]
        client.stdin.flush()  # type: ignore[union-attr]
    before, cpu0 = engine.metrics(), cpu_seconds(engine.process.pid)
    time.sleep(max(0.0, end - time.time()))
    after, cpu1 = engine.metrics(), cpu_seconds(engine.process.pid)
    results = [json.loads(c.stdout.readline()) for c in clients]  # type: ignore[union-attr]
    for client in clients:
        client.stdin.close()  # type: ignore[union-attr]
        client.wait(30)
    sipp.wait(calls / args.rate + args.hold_ms / 1000 + 90)
    s = sipp_stats(stats)
    rates = [count / args.window for r in results for count in r["counts"]] or [float("nan")]
    lateness = sorted(x for r in results for x in r["lateness"])
    print(f"N={n}: longest stall since start "
          f"{after.get('vaultpbx_loop_longest_stall_seconds', 0) * 1e3:.0f} ms wall, "
          f"{after.get('vaultpbx_loop_longest_cpu_stall_seconds', 0) * 1e3:.0f} ms CPU; "
          f"WebSockets open {after.get('vaultpbx_console_ws_open')}", file=sys.stderr)
    still = sum(r["still_open"] for r in results)
    feed = (f"{statistics.median(rates):.2f} / {pct(rates, 0.05):.2f} | "
            f"{pct(lateness, 0.5) * 1e3:.0f} / {pct(lateness, 0.99) * 1e3:.0f} ms"
            if lateness else "– | –")
    return (f"| {n:,} | {ready:,} / {still:,} | {feed} | {int(s['TotalCallCreated']):,} / "
            f"{int(s['FailedCall(C)']):,} / {int(s['Retransmissions(C)']):,} | "
            f"{(cpu1 - cpu0) / args.window:.0%} | "
            f"{stalls(before, after, 'vaultpbx_loop_stalls_over_')} | "
            f"{stalls(before, after, 'vaultpbx_loop_cpu_stalls_over_')} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--cookie", help=argparse.SUPPRESS)
    parser.add_argument("--cafile", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--net", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pace", type=float, default=200.0, help=argparse.SUPPRESS)
    parser.add_argument("--steps", default="100,250,500,750,1000")
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--hold-ms", type=int, default=2000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.client:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        asyncio.run(client_main(args))
        return 0
    if shutil.which("sipp") is None:
        print("sipp is not installed (Debian package sip-tester)", file=sys.stderr)
        return 1

    import pyotp
    from argon2 import PasswordHasher

    from tests.integration.engine import start_engine

    secret = pyotp.random_base32(32)
    users = [{"name": "sup", "role": "supervisor", "totp_secret": secret,
              "password_hash": PasswordHasher().hash("sup-password-123")}]
    load = os.getloadavg()
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    uas = None
    with tempfile.TemporaryDirectory(prefix="console-ws-") as tmp:
        work = Path(tmp)
        uas = subprocess.Popen(
            ["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(UAS_PORT), "-nostdin",
             "-max_socket", "50000"], cwd=work, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        engine = start_engine(work, {
            "sip": {"max_call_duration": 7200},
            "auth": {"trusted_sources": ["127.0.0.1"]},
            "trunks": {"uas": {"target": f"sip:127.0.0.1:{UAS_PORT}", "transport": "udp",
                               "max_calls": 0}},
            "dialplan": [{"match": ".*", "trunk": "uas"}],
            "media": {"anchor": True, "workers": 2, "address": "127.0.0.1",
                      "addresses": ["127.0.0.2"], "timeout": 600},
            "recording": {"enabled": True, "retention_days": 180, "chunk_seconds": 1.0},
            "admin": {"tls": True, "max_connections": 4096, "max_connections_per_source": 64,
                      "max_new_connections_per_second": 1000.0,
                      "max_new_connections_per_source_per_second": 500.0},
            "logging": {"level": "warning"},
            "security": {"floodguard": {"trusted": ["127.0.0.1/32"]}, "users": users},
        })
        rows = []
        try:
            cookie = login(engine, "sup", "sup-password-123", secret)
            for n in (int(x) for x in args.steps.split(",")):
                row = step(engine, work, cookie, n, args)
                print(row, flush=True)
                rows.append(row)
                time.sleep(2)  # the previous step's calls end
        finally:
            engine.stop(timeout=30)
            uas.terminate()
            uas.wait(10)
    took = time.monotonic() - t0
    section = "\n".join([
        "",
        "# Console, part 2: WebSocket clients while SIP runs",
        "",
        f"- command: `flock /tmp/vaultpbx-bench.lock unshare -n sh -c 'ip link set lo up && "
        f".venv/bin/python bench/console_ws_bench.py --steps {args.steps} --window "
        f"{args.window:g} --rate {args.rate:g} --hold-ms {args.hold_ms}'`",
        f"- date: {started_at:%Y-%m-%d %H:%M} UTC (the run took {took:.0f} s)",
        f"- machine: {os.cpu_count()} cores, python {platform.python_version()} on "
        f"{platform.machine()}, engine on uvloop; the engine and its 2 media workers, SIPp's "
        "UAC and UAS, the two WebSocket client processes and every other process on the host "
        f"share these cores (a noisy host); load average at the start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"- SIP: SIPp UAC at {args.rate:g} calls/s, each held {args.hold_ms} ms, through the "
        "engine (media anchored, every call recorded) to a SIPp UAS; one supervisor session "
        "(cookie) shared by every WebSocket, 25 per loopback source address; admin budget "
        "raised to 4096 connections, 64 per source",
        f"- each step: clients connect, SIP starts, after {WARMUP:g} s a {args.window:g} s window "
        "is measured. \"updates/s\" counts the snapshots each client received in the window "
        "(the engine pushes one at least once a second, and sooner when the picture changed, "
        "checked every 0.2 s: with calls starting and ending, up to 5/s); \"lateness\" is "
        "receive time minus the snapshot's `at`. SIP calls are SIPp's counts for the whole "
        "step (warm-up included). Loop stalls: the engine's monitor counters over the window, "
        "≥ 10 / ≥ 50 / ≥ 100 / ≥ 500 ms, wall clock and on the loop thread's CPU.",
        "",
        "| N | connected / open at end | updates/s per client (median / p5) | lateness "
        "(median / p99) | SIP calls attempted / failed / retransmissions | engine CPU | "
        "loop stalls wall | loop stalls CPU |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    print(section)
    if not args.no_write:
        with RESULT.open("a") as out:
            out.write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
