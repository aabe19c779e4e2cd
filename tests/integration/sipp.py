"""Run SIPp (Debian `sip-tester`, binary `sipp`) against a test engine, bounded in time.

Every run gets its own working directory and explicit file names for every trace, so runs never
share files; a run is bounded three times over: SIPp's `-timeout` (with `-timeout_error`, so a
timeout is a failure), `-recv_timeout` (a call waiting for a message that never comes is aborted)
and a subprocess deadline after which the process is killed. `SippRunner.cleanup()` kills whatever
is still running (use it in fixture teardown).

Exit codes (SIPp 3.6): 0 every call succeeded, 1 at least one call failed, 97 internal exit
command, 99 no call processed, 255 fatal error, 254 could not bind its socket.
"""

from __future__ import annotations

import csv
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP = shutil.which("sipp")
EXIT_CODES = {0: "all calls succeeded", 1: "at least one call failed", 97: "internal exit",
              99: "no call processed", 255: "fatal error", 254: "cannot bind socket"}


def sipp_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 in 10000-19999: outside the ephemeral range
    (32768-60999 here), where the outgoing connections of busy neighbours (load benches) would
    take a port between our check and SIPp's bind, and below the RTP range (20000 up)."""
    for _ in range(500):
        port = random.randrange(10000, 20000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port in 10000-19999")


@dataclass
class SippResult:
    name: str
    returncode: int
    workdir: Path
    stats: dict[str, str] = field(default_factory=dict)
    killed: bool = False

    def _read(self, suffix: str) -> str:
        path = self.workdir / f"{self.name}.{suffix}"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def messages(self) -> str:
        """Every SIP message sent and received (`-trace_msg`)."""
        return self._read("messages.log")

    @property
    def logs(self) -> str:
        """Lines written by the scenarios' <log> actions (`-trace_logs`)."""
        return self._read("logs.log")

    @property
    def errors(self) -> str:
        return self._read("errors.log")

    @property
    def screen(self) -> str:
        return self._read("screen.log")

    @property
    def stdout(self) -> str:
        return self._read("stdout.log")

    def count(self, column: str) -> int:
        """A cumulative counter from the last `-trace_stat` row, e.g. "SuccessfulCall"."""
        value = self.stats.get(f"{column}(C)", self.stats.get(column, "0"))
        return int(float(value or 0))

    @property
    def successful(self) -> int:
        return self.count("SuccessfulCall")

    @property
    def failed(self) -> int:
        return self.count("FailedCall")

    @property
    def stopped_from_outside(self) -> bool:
        """Exit 0 with no call finished and no final screen: what SIGTERM does to SIPp (its
        handler exits 0). Seen here when a neighbour stopped every `sipp` by name."""
        return (self.returncode == 0 and not self.killed and self.successful == 0
                and self.failed == 0 and not self.screen)

    def describe(self) -> str:
        tail = "\n".join(self.screen.splitlines()[-40:])
        outside = ("\nSIPp was STOPPED FROM OUTSIDE (SIGTERM: exit 0, no call finished, no "
                   "final screen) - did another process kill sipp by name?"
                   if self.stopped_from_outside else "")
        return (f"sipp {self.name}: exit {self.returncode} "
                f"({EXIT_CODES.get(self.returncode, 'unknown')}"
                f"{', killed at the deadline' if self.killed else ''}), "
                f"successful={self.successful} failed={self.failed}{outside}\n"
                f"--- errors ---\n{self.errors[-3000:]}\n--- screen ---\n{tail}\n"
                f"--- logs ---\n{self.logs[-2000:]}")

    def assert_ok(self, calls: int | None = None) -> None:
        """Exit 0 and, given `calls`, exactly that many successful calls: SIPp also exits 0
        when stopped by SIGTERM (say, someone's `pkill sipp`), so the count is the real check."""
        assert self.returncode == 0 and not self.killed, self.describe()
        if calls is not None:
            assert self.successful == calls and self.failed == 0, self.describe()


class SippProcess:
    def __init__(self, name: str, process: subprocess.Popen[bytes], workdir: Path,
                 deadline: float) -> None:
        self.name = name
        self.process = process
        self.workdir = workdir
        self.deadline = deadline

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for the exit (at most until the run's deadline, or `timeout` seconds)."""
        remaining = self.deadline - time.monotonic()
        if timeout is not None:
            remaining = min(remaining, timeout)
        killed = False
        try:
            self.process.wait(max(remaining, 0.1))
        except subprocess.TimeoutExpired:
            killed = True
            self.kill()
        return SippResult(self.name, self.process.returncode, self.workdir,
                          _last_stats(self.workdir / f"{self.name}.stat.csv"), killed)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                pass


class SippRunner:
    """Starts SIPp processes for one test and kills the leftovers in `cleanup`."""

    def __init__(self, workdir: Path) -> None:
        if SIPP is None:
            raise RuntimeError("sipp is not installed (Debian package sip-tester)")
        self.workdir = workdir
        self.processes: list[SippProcess] = []

    def start(
        self,
        name: str,
        *,
        scenario: str,
        port: int | None = None,
        remote: str | None = None,
        service: str | None = None,
        transport: str = "u1",
        calls: int = 1,
        rate: float | None = None,
        limit: int | None = None,
        timeout: float = 20.0,
        recv_timeout_ms: int = 10000,
        auth: tuple[str, str] | None = None,
        auth_uri: str | None = None,
        keys: dict[str, str] | None = None,
        ooc: str | None = None,
        trace_msg: bool = True,
        extra: list[str] | None = None,
    ) -> SippProcess:
        """Start SIPp. `scenario` is a built-in name ("uac", "uas") or a file under scenarios/.

        `remote` is host:port of the engine (None for a pure UAS). Without `port`, one is
        picked, and picked again if SIPp cannot bind it (a neighbour took it meanwhile). The
        run is killed `timeout` + 10 s after its start if SIPp's own `-timeout` did not end it.
        """
        if port is not None:
            return self._start(name, scenario=scenario, port=port, remote=remote,
                               service=service, transport=transport, calls=calls, rate=rate,
                               limit=limit, timeout=timeout, recv_timeout_ms=recv_timeout_ms,
                               auth=auth, auth_uri=auth_uri, keys=keys, ooc=ooc,
                               trace_msg=trace_msg, extra=extra)
        for _ in range(3):
            process = self._start(name, scenario=scenario, port=sipp_port(), remote=remote,
                                  service=service, transport=transport, calls=calls,
                                  rate=rate, limit=limit, timeout=timeout,
                                  recv_timeout_ms=recv_timeout_ms, auth=auth,
                                  auth_uri=auth_uri, keys=keys, ooc=ooc,
                                  trace_msg=trace_msg, extra=extra)
            try:
                if process.process.wait(0.15) == 254:  # "Unable to bind main socket"
                    self.processes.remove(process)
                    continue
            except subprocess.TimeoutExpired:
                pass
            return process
        return process

    def _start(self, name: str, *, scenario: str, port: int, remote: str | None,
               service: str | None, transport: str, calls: int, rate: float | None,
               limit: int | None, timeout: float, recv_timeout_ms: int,
               auth: tuple[str, str] | None, auth_uri: str | None,
               keys: dict[str, str] | None, ooc: str | None, trace_msg: bool,
               extra: list[str] | None) -> SippProcess:
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        args = [SIPP]
        if remote is not None:
            args.append(remote)
        if scenario.endswith(".xml"):
            args += ["-sf", str(SCENARIOS / scenario)]
        else:
            args += ["-sn", scenario]
        if ooc is not None:
            args += ["-oocsf", str(SCENARIOS / ooc)]
        args += [
            "-i", "127.0.0.1", "-p", str(port), "-t", transport,
            "-m", str(calls), "-timeout", f"{timeout:g}s", "-timeout_error",
            "-recv_timeout", str(recv_timeout_ms), "-nostdin",
            "-trace_err", "-error_file", str(workdir / f"{name}.errors.log"),
            "-trace_logs", "-log_file", str(workdir / f"{name}.logs.log"),
            "-trace_screen", "-screen_file", str(workdir / f"{name}.screen.log"),
            "-trace_stat", "-stf", str(workdir / f"{name}.stat.csv"), "-fd", "1",
        ]
        if trace_msg:
            args += ["-trace_msg", "-message_file", str(workdir / f"{name}.messages.log")]
        if not scenario.endswith(".xml"):
            # The built-in uac aborts calls on reordered answers (a 180 after the 200) unless
            # told not to (TESTING.md); our own scenarios keep failing fast on the unexpected.
            args += ["-default_behaviors", "all,-abortunexp"]
        if service is not None:
            args += ["-s", service]
        if rate is not None:
            args += ["-r", f"{rate:g}"]
        if limit is not None:
            args += ["-l", str(limit)]
        if auth is not None:
            args += ["-au", auth[0], "-ap", auth[1]]
        if auth_uri is not None:
            args += ["-auth_uri", auth_uri]
        for key, value in (keys or {}).items():
            args += ["-key", key, value]
        args += extra or []
        stdout = open(workdir / f"{name}.stdout.log", "wb")  # noqa: SIM115 - owned by the child
        try:
            # Own session: signals aimed at the test runner's process group miss SIPp; the
            # runner ends it by pid (cleanup, deadline).
            process = subprocess.Popen(args, cwd=workdir, stdin=subprocess.DEVNULL,
                                       stdout=stdout, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        finally:
            stdout.close()
        (workdir / f"{name}.cmd").write_text(" ".join(args) + "\n")
        running = SippProcess(name, process, workdir, time.monotonic() + timeout + 10)
        self.processes.append(running)
        return running

    def run(self, name: str, **kwargs: object) -> SippResult:
        return self.start(name, **kwargs).wait()  # type: ignore[arg-type]

    def cleanup(self) -> None:
        for process in self.processes:
            process.kill()
        self.processes.clear()


def _last_stats(path: Path) -> dict[str, str]:
    """The last row of a SIPp `-trace_stat` CSV (semicolon separated), by column name."""
    if not path.exists():
        return {}
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return dict(zip(header, last, strict=False))
