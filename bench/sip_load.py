"""SIP load bench: SIPp UAC -> vaultpbx (configs/loadtest.yaml) -> SIPp UAS, on 127.0.0.1.

Measures, in one run:
  1. the generator's own ceiling: SIPp UAC straight to SIPp UAS;
  2. calls/s through vaultpbx held for --duration seconds at each rate, with failures,
     retransmissions and the engine's CPU (utime+stime from /proc) per call;
  3. --hold-calls concurrent calls held for --hold-seconds, with the engine's RSS per call, the
     longest garbage-collector pause and the open file descriptors.
Writes a Markdown table to bench/results/sip.md (or --out).

    .venv/bin/python bench/sip_load.py                       # the full run (~15 min)
    .venv/bin/python bench/sip_load.py --quick               # a 2-minute smoke run
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ENGINE_PORT, UAS_PORT, UAC_PORT, ADMIN_PORT = 5060, 5070, 5062, 8080
SIPP_FLAGS = ["-default_behaviors", "all,-abortunexp", "-recv_timeout", "10000", "-nostdin"]


@dataclass
class RunResult:
    label: str
    rate: float
    calls: int
    successful: int
    failed: int
    retransmissions: int
    elapsed: float
    engine_cpu: float | None = None  # seconds of CPU used by the engine during the run
    workers_cpu: float | None = None  # seconds of CPU used by its media workers
    uac_cpu: float | None = None
    uas_cpu: float | None = None

    @property
    def achieved_rate(self) -> float:
        return self.successful / self.elapsed if self.elapsed else 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def child_pids(pid: int) -> list[int]:
    """The engine's media workers (its child processes), from /proc/*/stat's ppid field."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """The engine and its media workers (live ones; a worker that died is not counted)."""
    total = cpu_seconds(pid)
    for child in child_pids(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            pass
    return total


def metrics() -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def sipp_stats(path: Path) -> dict[str, str]:
    rows = list(csv.reader(path.open(), delimiter=";"))
    return dict(zip(rows[0], rows[-1], strict=False))


def start_uas(workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(UAS_PORT), "-nostdin",
         "-max_socket", "50000"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return proc


class Engine:
    def __init__(self, workdir: Path) -> None:
        config = yaml.safe_load((ROOT / "configs" / "loadtest.yaml").read_text())
        config["data_dir"] = str(workdir / "var")
        self.config_path = workdir / "loadtest.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = (workdir / "engine.log").open("wb")
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "vaultpbx"), "run", "-c", str(self.config_path)],
            cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                metrics()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("engine did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def sipp_run(workdir: Path, *, target_port: int, rate: float, calls: int, hold_ms: int,
             label: str, limit: int | None = None, engine: Engine | None = None,
             uas: subprocess.Popen[bytes] | None = None,
             sample: list[dict[str, float]] | None = None) -> RunResult:
    stats = workdir / f"{label}.csv"
    if stats.exists():
        stats.unlink()
    expected = calls / rate + hold_ms / 1000
    cmd = ["sipp", "-sn", "uac", f"127.0.0.1:{target_port}", "-i", "127.0.0.1",
           "-p", str(UAC_PORT), "-r", str(rate), "-m", str(calls), "-d", str(hold_ms),
           "-timeout", str(int(expected + 60)), "-trace_stat", "-stf", str(stats), "-fd", "1",
           "-max_socket", "50000", *SIPP_FLAGS]
    if limit:
        cmd += ["-l", str(limit)]
    engine_cpu0 = cpu_seconds(engine.proc.pid) if engine else 0.0
    tree_cpu0 = tree_cpu_seconds(engine.proc.pid) if engine else 0.0
    uas_cpu0 = cpu_seconds(uas.pid) if uas else 0.0
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    uac_cpu = 0.0
    while proc.poll() is None:
        try:
            uac_cpu = cpu_seconds(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
        if sample is not None and engine is not None:
            m = metrics()
            workers = child_pids(engine.proc.pid)
            worker_fds = [open_fds(w) for w in workers]
            sample.append({"t": time.monotonic() - started,
                           "active": m.get("vaultpbx_active_calls", 0),
                           "media": m.get("vaultpbx_media_calls", 0),
                           "rss_kib": rss_kib(engine.proc.pid),
                           "workers_rss_kib": sum(rss_kib(w) for w in workers),
                           "fds": open_fds(engine.proc.pid),
                           "worker_fds_max": max(worker_fds, default=0),
                           "worker_fds": sum(worker_fds)})
        time.sleep(1.0)
    elapsed = time.monotonic() - started
    s = sipp_stats(stats)
    return RunResult(
        label=label, rate=rate, calls=int(s["TotalCallCreated"]),
        successful=int(s["SuccessfulCall(C)"]), failed=int(s["FailedCall(C)"]),
        retransmissions=int(s["Retransmissions(C)"]), elapsed=elapsed - hold_ms / 1000,
        engine_cpu=(cpu_seconds(engine.proc.pid) - engine_cpu0) if engine else None,
        workers_cpu=(tree_cpu_seconds(engine.proc.pid) - tree_cpu0
                     - (cpu_seconds(engine.proc.pid) - engine_cpu0)) if engine else None,
        uac_cpu=uac_cpu, uas_cpu=(cpu_seconds(uas.pid) - uas_cpu0) if uas else None,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="600,800,1000,1200,1400",
                        help="calls/s to try through vaultpbx, comma-separated")
    parser.add_argument("--duration", type=float, default=60, help="seconds per rate")
    parser.add_argument("--ceiling-rates", default="1000,2000,3000")
    parser.add_argument("--hold-calls", type=int, default=10000)
    parser.add_argument("--hold-seconds", type=float, default=60)
    parser.add_argument("--hold-rate", type=float, default=500)
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sip.md"))
    args = parser.parse_args()
    if args.quick:
        args.rates, args.duration, args.ceiling_rates = "300,600", 10, "1000"
        args.hold_calls, args.hold_seconds, args.hold_rate = 2000, 10, 400
    if shutil.which("sipp") is None:
        print("sipp is not installed (Debian package sip-tester)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="vaultpbx-bench-"))
    ceiling: list[RunResult] = []
    through: list[RunResult] = []
    hold: RunResult | None = None
    samples: list[dict[str, float]] = []
    baseline_rss = 0
    gc_pause = {}

    for rate in [float(r) for r in args.ceiling_rates.split(",")]:
        uas = start_uas(workdir)
        try:
            result = sipp_run(workdir, target_port=UAS_PORT, rate=rate,
                              calls=int(rate * args.duration), hold_ms=0,
                              label=f"direct-{int(rate)}", uas=uas)
        finally:
            uas.kill()
            uas.wait()
        ceiling.append(result)
        print(f"direct {rate:.0f}/s: {result.successful}/{result.calls} ok, "
              f"{result.failed} failed, {result.retransmissions} retrans", flush=True)

    for rate in [float(r) for r in args.rates.split(",")]:
        uas = start_uas(workdir)
        engine = Engine(workdir)
        try:
            result = sipp_run(workdir, target_port=ENGINE_PORT, rate=rate,
                              calls=int(rate * args.duration), hold_ms=0,
                              label=f"engine-{int(rate)}", engine=engine, uas=uas)
            m = metrics()
            gc_pause[rate] = max(m.get(f"vaultpbx_gc_gen{g}_longest_pause_seconds", 0)
                                 for g in range(3))
        finally:
            engine.stop()
            uas.kill()
            uas.wait()
        through.append(result)
        print(f"engine {rate:.0f}/s: {result.successful}/{result.calls} ok, {result.failed} "
              f"failed, {result.retransmissions} retrans, engine CPU "
              f"{result.engine_cpu / result.elapsed * 100:.0f}%", flush=True)

    uas = start_uas(workdir)
    engine = Engine(workdir)
    try:
        baseline_rss = rss_kib(engine.proc.pid)
        ramp = args.hold_calls / args.hold_rate
        hold = sipp_run(workdir, target_port=ENGINE_PORT, rate=args.hold_rate,
                        calls=args.hold_calls, hold_ms=int((args.hold_seconds + ramp) * 1000),
                        label="hold", limit=args.hold_calls + 1000, engine=engine, uas=uas,
                        sample=samples)
        m = metrics()
        hold_gc = {g: m.get(f"vaultpbx_gc_gen{g}_longest_pause_seconds", 0) for g in range(3)}
    finally:
        engine.stop()
        uas.kill()
        uas.wait()

    peak = max(samples, key=lambda s: s["active"]) if samples else {"active": 0, "rss_kib": 0}
    at_peak = [s for s in samples if s["active"] >= args.hold_calls]
    held_for = (at_peak[-1]["t"] - at_peak[0]["t"]) if len(at_peak) > 1 else 0.0
    per_call_kb = ((peak["rss_kib"] - baseline_rss) / peak["active"]) if peak["active"] else 0

    lines = [
        "# SIP load: SIPp UAC → vaultpbx (configs/loadtest.yaml) → SIPp UAS",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{platform.node() or 'this machine'}: {os.cpu_count()} cores shared by the engine, "
        f"the SIPp UAC and the SIPp UAS (noisy), Python {platform.python_version()}, uvloop.",
        f"Command: `.venv/bin/python bench/sip_load.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "Each call: INVITE, 100, 180, 200, ACK, BYE, 200 on each leg. Media is anchored as "
        "loadtest.yaml ships it (`media.anchor: true`, 4 workers on 127.0.0.1-4): every call "
        "opens a relay session in a media worker (two legs, each an RTP and an RTCP socket, "
        "since SIPp does not offer rtcp-mux), both SDPs are rewritten, and BYE deletes the "
        "session. SIPp's built-in scenarios send no RTP, so these tables measure signalling "
        "with anchoring; the relay's packet work is in media.md.",
        "",
        "## 1. The generator's own ceiling: SIPp UAC → SIPp UAS directly",
        "",
        "| offered calls/s | seconds | calls | successful | failed | retransmissions |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ceiling:
        lines.append(f"| {r.rate:.0f} | {r.elapsed:.0f} | {r.calls} | {r.successful} | "
                     f"{r.failed} | {r.retransmissions} |")
    lines += [
        "",
        f"## 2. Calls/s through vaultpbx, each rate held {args.duration:.0f} s",
        "",
        "| offered calls/s | achieved calls/s | calls | successful | failed | retransmissions "
        "| engine CPU (% of one core) | engine CPU µs/call | media workers CPU µs/call "
        "| longest GC pause ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    best = None
    for r in through:
        cpu_pct = r.engine_cpu / r.elapsed * 100 if r.engine_cpu is not None else 0
        per_call = r.engine_cpu / r.successful * 1e6 if r.successful and r.engine_cpu else 0
        per_call_workers = (r.workers_cpu / r.successful * 1e6
                            if r.successful and r.workers_cpu else 0)
        lines.append(f"| {r.rate:.0f} | {r.achieved_rate:.0f} | {r.calls} | {r.successful} | "
                     f"{r.failed} | {r.retransmissions} | {cpu_pct:.0f} | {per_call:.0f} | "
                     f"{per_call_workers:.0f} | {gc_pause.get(r.rate, 0) * 1000:.1f} |")
        if r.failed == 0 and r.successful == r.calls:
            best = r
    lines += ["", f"Highest rate with zero failed calls: "
              f"**{best.rate:.0f} calls/s**" if best else "No rate completed without failures."]
    if hold is not None:
        lines += [
            "",
            f"## 3. {args.hold_calls} concurrent calls held {args.hold_seconds:.0f} s "
            f"(ramp at {args.hold_rate:.0f} calls/s)",
            "",
            "| calls | successful | failed | retransmissions | peak concurrent | anchored "
            "media sessions at peak | seconds at full load | engine RSS idle MiB | at peak MiB "
            "| RSS per call KB | engine fds at peak | media workers: RSS MiB, fds total / "
            "largest worker | longest GC pause ms (gen0/1/2) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
            f"| {hold.calls} | {hold.successful} | {hold.failed} | {hold.retransmissions} | "
            f"{peak['active']:.0f} | {peak.get('media', 0):.0f} | {held_for:.0f} | "
            f"{baseline_rss / 1024:.0f} | "
            f"{peak['rss_kib'] / 1024:.0f} | {per_call_kb * 1.024:.1f} | "
            f"{peak.get('fds', 0):.0f} | {peak.get('workers_rss_kib', 0) / 1024:.0f}, "
            f"{peak.get('worker_fds', 0):.0f} / {peak.get('worker_fds_max', 0):.0f} | "
            + "/".join(f"{hold_gc[g] * 1000:.1f}" for g in range(3)) + " |",
        ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    (workdir / "samples.json").write_text(json.dumps(samples))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
