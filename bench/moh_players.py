"""Music-on-hold cost in one media worker: N callers listening at once, plain RTP and SRTP.

In process, on uvloop, with the worker's own `Relay` and `Players` (one 20 ms timer for all):
N sessions on 127.0.0.1 whose caller leg points at one sink socket (drained by the kernel's
buffer limit, so the receive side costs us nothing). For each N it measures, over a few seconds
of steady playing: CPU seconds of this process per second (share of one core), CPU per frame
sent, frames sent against frames due (the player skips rather than bursts when late), and how
late the 20 ms tick fired (p50/p99/max).

    flock /tmp/vaultpbx-bench.lock python bench/moh_players.py [--seconds 4] [--counts 100,500,1000]
Writes bench/results/moh.md.

With `--announce PERIOD` each caller starts with the queue greeting (a prompt before the music)
and, spread evenly over every PERIOD seconds, gets its position/wait announcement (the composed
prompt sequence interrupting its music, as the ACD has the worker do), e.g.

    flock /tmp/vaultpbx-bench.lock python bench/moh_players.py --announce 5 --media rtp \
        --counts 500,1000,1500 --output bench/results/apps.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vaultpbx.media import player as player_module  # noqa: E402
from vaultpbx.media.player import FRAME_SECONDS, Players  # noqa: E402
from vaultpbx.media.ports import PortPool, PortRange  # noqa: E402
from vaultpbx.media.prompts import BUILTIN_PROMPTS  # noqa: E402
from vaultpbx.media.relay import Relay  # noqa: E402
from vaultpbx.media.srtp import SRTP_SUITES  # noqa: E402
from vaultpbx.routing.announce import compose_periodic  # noqa: E402
from vaultpbx.routing.config import AnnounceConfig  # noqa: E402

MUSIC = str(ROOT / "sounds" / "moh-default.wav")
SUITE = "AES_CM_128_HMAC_SHA1_80"
SAMPLED = 10  # callers whose packet arrival gaps another process records

# A separate process (so its work does not load the measured loop): binds SAMPLED sockets,
# prints their ports, records arrival times for `seconds`, prints the gaps between packets.
GAP_SAMPLER = """
import json, selectors, socket, sys, time
seconds = float(sys.argv[1])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(int(sys.argv[2]))]
selector = selectors.DefaultSelector()
for s in socks:
    s.bind(("127.0.0.1", 0)); s.setblocking(False); selector.register(s, selectors.EVENT_READ)
selector.register(sys.stdin, selectors.EVENT_READ)
print(json.dumps([s.getsockname()[1] for s in socks]), flush=True)
last, gaps, end = {}, [], None
while end is None or time.monotonic() < end:
    for key, _ in selector.select(0.05):
        now = time.monotonic()
        if key.fileobj is sys.stdin:  # "go": from now on, record (before: just keep up)
            sys.stdin.readline(); selector.unregister(sys.stdin)
            end, last = now + seconds, {}
            continue
        while True:
            try:
                key.fileobj.recv(2048)
            except BlockingIOError:
                break
            if end is not None and key.fileobj in last:
                gaps.append(now - last[key.fileobj])
            last[key.fileobj] = now
print(json.dumps(gaps), flush=True)
"""


def prompt_files(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(BUILTIN_PROMPTS / f"{name}.wav") for name in names)


GREETING = prompt_files(("queue-welcome",))
ANNOUNCE = AnnounceConfig(position=True, estimated_wait=True)


async def announce_loop(players: Players, count: int, period: float,
                        done: list[int]) -> None:
    """Each caller's announcement once per `period`, the callers spread evenly over it (as the
    ACD's per-call deadlines fall): the composed sequence interrupts its music."""
    step = period / count
    start = time.monotonic()
    n = 0
    while True:
        delay = start + n * step - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        while start + n * step <= now:  # all that fell due (a late wake-up catches up)
            caller = n % count
            names = compose_periodic(ANNOUNCE, position=caller + 1, estimate=60.0 * (caller % 7))
            players.play(f"s{caller}", 0, None, 0, "PCMU", prompt_files(names))
            done[0] += 1
            n += 1


async def measure(count: int, srtp: bool, seconds: float, port_low: int,
                  announce: float = 0.0) -> dict[str, float]:
    relay = Relay(address="127.0.0.1", pool=PortPool(PortRange(port_low, port_low + 4 * count + 9)))
    players = Players(relay, clock=time.monotonic)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink_address = sink.getsockname()
    lateness: list[float] = []
    tick = players._tick

    def timed_tick() -> None:  # the same tick, with how late it fired written down
        lateness.append(time.monotonic() - players._next_tick)
        tick()

    sampler = subprocess.Popen([sys.executable, "-c", GAP_SAMPLER, str(seconds), str(SAMPLED)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert sampler.stdout is not None and sampler.stdin is not None
    sampled_ports = json.loads(sampler.stdout.readline())
    try:
        key = os.urandom(SRTP_SUITES[SUITE].key_material_length)
        for n in range(count):
            session = f"s{n}"
            await relay.open_session(session, f"call-{n}")
            target = ("127.0.0.1", sampled_ports[n]) if n < SAMPLED else sink_address
            await relay.update_leg(session, 0, remote=target,
                                   srtp_out=(SUITE, key) if srtp else None)
        players._tick = timed_tick  # type: ignore[method-assign]
        for n in range(count):
            players.play(f"s{n}", 0, MUSIC, 0, "PCMU", GREETING if announce else ())
        announced = [0]
        announcer = asyncio.ensure_future(announce_loop(players, count, announce, announced)) \
            if announce else None
        await asyncio.sleep(1.0)  # settle: every player on the 20 ms grid
        frames_before = players.counters()["player-frames"]
        announced_before = announced[0]
        lateness.clear()
        cpu_before, wall_before = time.process_time(), time.monotonic()
        sampler.stdin.write("go\n")
        sampler.stdin.flush()
        await asyncio.sleep(seconds)
        cpu = time.process_time() - cpu_before
        wall = time.monotonic() - wall_before
        announcements = announced[0] - announced_before
        if announcer is not None:
            announcer.cancel()
        counters = players.counters()
        frames = counters["player-frames"] - frames_before
        late = sorted(lateness)
        line = await asyncio.get_running_loop().run_in_executor(None, sampler.stdout.readline)
        gaps = sorted(json.loads(line))
        return {
            "gap_p1_ms": gaps[int(0.01 * (len(gaps) - 1))] * 1e3,
            "gap_p50_ms": statistics.median(gaps) * 1e3,
            "gap_p99_ms": gaps[int(0.99 * (len(gaps) - 1))] * 1e3,
            "gap_max_ms": gaps[-1] * 1e3,
            "cpu_share": cpu / wall,
            "us_per_frame": cpu / frames * 1e6 if frames else float("nan"),
            "sent_share": frames / (count * wall / FRAME_SECONDS),
            "late_p50_ms": statistics.median(late) * 1e3 if late else 0.0,
            "late_p99_ms": late[int(0.99 * (len(late) - 1))] * 1e3 if late else 0.0,
            "late_max_ms": late[-1] * 1e3 if late else 0.0,
            "skipped": counters["player-frames-skipped"],
            "announcements_per_s": announcements / wall,
        }
    finally:
        players.close()
        relay.close()
        sink.close()
        sampler.kill()
        sampler.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--counts", default="100,500,1000")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "moh.md"))
    parser.add_argument("--announce", type=float, default=0.0,
                        help="seconds between each caller's announcements (0: music only)")
    parser.add_argument("--media", choices=("both", "rtp", "srtp"), default="both")
    parser.add_argument("--port-low", type=int, default=22000,
                        help="first RTP port (4 per caller; the range must end below 32768)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    modes = {"both": (False, True), "rtp": (False,), "srtp": (True,)}[args.media]
    rows = []
    for count in counts:
        for srtp in modes:
            result = uvloop.run(measure(count, srtp, args.seconds, args.port_low, args.announce))
            rows.append((count, srtp, result))
            print(count, "SRTP" if srtp else "RTP", {k: round(v, 3) for k, v in result.items()},
                  flush=True)
    command = "flock /tmp/vaultpbx-bench.lock python bench/moh_players.py " + " ".join(
        sys.argv[1:])
    title = ("# Music on hold: players in one media worker" if not args.announce else
             "# Contact-center applications in one media worker\n\n## Queue announcements")
    lines = [
        title,
        "",
        f"- command: `{command.strip()}`",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, uvloop; other engineers' jobs share the 2 cores",
        f"- method: N sessions in process (Relay + Players, one 20 ms timer), caller legs sending "
        f"{Path(MUSIC).name} as PCMU to one sink socket; {args.seconds:g} s measured after 1 s "
        f"of settling; CPU is this process's (`time.process_time`); "
        + (f"every caller starts with the greeting (queue-welcome, "
           f"{len(GREETING)} file) and gets its position/wait announcement (4-7 prompts "
           f"interrupting the music, the sequence built per command from the worker's cached "
           f"frames) once every {args.announce:g} s, spread evenly; "
           if args.announce else "") + f"arrival gaps between packets "
        f"of {SAMPLED} callers as another process receives them (20 ms is perfect); 'late' is "
        f"how long after its "
        f"grid time the shared tick ran (MAX_LATE = "
        f"{player_module.MAX_LATE * 1e3:g} ms)",
        "",
        "| callers | media | CPU (share of one core) | CPU per frame (µs) | frames sent / due "
        "| tick late p50 / p99 / max (ms) | arrival gap p1 / p50 / p99 / max (ms) "
        "| frames skipped |" + (" announcements/s |" if args.announce else ""),
        "|---:|---|---:|---:|---:|---|---|---:|" + ("---:|" if args.announce else ""),
    ]
    for count, srtp, r in rows:
        lines.append(
            f"| {count} | {'SRTP ' + SUITE if srtp else 'RTP'} | {r['cpu_share']:.1%} | "
            f"{r['us_per_frame']:.1f} | {r['sent_share']:.3f} | {r['late_p50_ms']:.1f} / "
            f"{r['late_p99_ms']:.1f} / {r['late_max_ms']:.1f} | {r['gap_p1_ms']:.1f} / "
            f"{r['gap_p50_ms']:.1f} / {r['gap_p99_ms']:.1f} / {r['gap_max_ms']:.1f} | "
            f"{int(r['skipped'])} |"
            + (f" {r['announcements_per_s']:.0f} |" if args.announce else "")
        )
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("wrote", args.output)


if __name__ == "__main__":
    main()
