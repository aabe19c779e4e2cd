#!/usr/bin/env python3
"""Long fuzz runs over vaultpbx's SIP input path (issue 17). The suite runs the same targets
for a few thousand examples (tests/sip/test_fuzz_targets.py); this runs them for as long as you
like and writes what it found.

Targets (tests/sip/fuzzing.py): `parse_message` + `check_request`; one datagram through the
transaction layer and the B2BUA, then an OPTIONS probe; one TCP stream cut into random segments
through the framer, then the probe on the same connection; the same bytes from two sources (a
response may only go to the source of its request). A finding is any exception out of those,
an internal error (answered 500), a response sent elsewhere, or a probe left unanswered.

Engines:
  random   (default) seeded random mutation of the RFC 4475/5118 messages and our own; fast,
           no extra dependency.
  atheris  coverage-guided (libFuzzer through PyPI `atheris`, the `fuzz` extra of
           pyproject.toml): the same targets, instrumented; libFuzzer mutates, with the seeds
           as corpus and the mutation tokens as its dictionary.
  network  a real engine process on 127.0.0.1 (tests/integration/engine.py): mutated messages
           over UDP and over TCP connections, an OPTIONS probe on both every --probe-every
           inputs, and at the end the engine's counters and log (internal errors, tracebacks,
           "Fatal error on transport"). Must run in a private network namespace:
             unshare -n sh -c 'ip link set lo up &&
                               .venv/bin/python scripts/fuzz_sip.py --engine network'

Usage:
  .venv/bin/python scripts/fuzz_sip.py --seconds 600 [--engine random|atheris|network]
                                       [--seed N] [--findings DIR]
Each distinct finding (target, exception type, place) is saved once in --findings (default
var/fuzz/findings) as the input that triggered it; the summary line gives executions, their
rate, findings and the slowest execution with its input size. Exit status 1 when something was
found. Inputs that took unusually long are saved too (slow-*.bin) so that a super-linear path
can be turned into a growth test (tests/sip/test_linear_cost.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Findings:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.seen: dict[str, int] = {}
        self.slowest = (0.0, 0)

    def record(self, target: str, exc: BaseException, data: bytes) -> None:
        cause = exc.__cause__ or exc
        frames = traceback.extract_tb(cause.__traceback__)
        place = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        key = f"{target} {type(cause).__name__} {place} {str(exc)[:60]}"
        if key in self.seen:
            self.seen[key] += 1
            return
        self.seen[key] = 1
        name = hashlib.sha1(key.encode()).hexdigest()[:12]
        (self.folder / f"{name}.bin").write_bytes(data)
        (self.folder / f"{name}.txt").write_text(f"{key}\n{exc}\n")
        print(f"FOUND {key}", flush=True)

    def timed(self, seconds: float, data: bytes) -> None:
        if seconds > self.slowest[0]:
            self.slowest = (seconds, len(data))
            if seconds > 0.05:
                (self.folder / f"slow-{len(data)}.bin").write_bytes(data)


def run_random(args: argparse.Namespace, findings: Findings) -> int:
    from tests.sip.fuzzing import Escape, Target, mutate, seed_messages

    rng = random.Random(args.seed)
    seeds = seed_messages()
    target = Target()
    names = ("parse", "datagram", "stream", "two_sources")
    deadline = time.monotonic() + args.seconds
    executions = 0
    while time.monotonic() < deadline:
        for _ in range(200):
            data = mutate(rng.choice(seeds), rng)
            name = rng.choice(names)
            start = time.perf_counter()
            try:
                if name == "stream":
                    cuts = [rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 4))]
                    target.stream(data, cuts)
                else:
                    getattr(target, name)(data)
            except Escape as exc:
                findings.record(name, exc, data)
                target.fresh()
            findings.timed(time.perf_counter() - start, data)
            executions += 1
        target.fresh()  # bounded state: dialogs and transactions do not pile up
    return executions


def run_atheris(args: argparse.Namespace, findings: Findings) -> int:
    import atheris

    with atheris.instrument_imports():
        import vaultpbx.sip.digest  # noqa: F401
        import vaultpbx.sip.endpoint  # noqa: F401
        import vaultpbx.sip.headers  # noqa: F401
        import vaultpbx.sip.parser  # noqa: F401
        import vaultpbx.sip.uri  # noqa: F401
        import vaultpbx.sip.validate  # noqa: F401
    from tests.sip.fuzzing import TOKENS, Escape, Target, seed_messages

    target = Target()
    names = ("parse", "datagram", "stream", "two_sources")
    counter = {"n": 0}
    started = time.monotonic()
    deadline = started + args.seconds

    def one_input(raw: bytes) -> None:
        if time.monotonic() > deadline:
            # libFuzzer ends the process with exit(): report from here, while Python runs.
            status = report(args, counter["n"], findings, started)
            sys.stdout.flush()
            os._exit(status)
        if len(raw) < 2:
            return
        name = names[raw[0] % len(names)]
        data = raw[2:]
        counter["n"] += 1
        start = time.perf_counter()
        try:
            if name == "stream":
                target.stream(data, [raw[1] * 37, raw[1] * 211])
            else:
                getattr(target, name)(data)
        except Escape as exc:
            findings.record(name, exc, data)
            target.fresh()
        findings.timed(time.perf_counter() - start, data)
        if counter["n"] % 200 == 0:
            target.fresh()

    corpus = Path(tempfile.mkdtemp(prefix="sipfuzz-corpus-"))
    for index, seed in enumerate(seed_messages()):
        for lead in range(4):
            (corpus / f"seed-{index}-{lead}").write_bytes(bytes((lead, 7)) + seed)
    dictionary = corpus.parent / f"{corpus.name}.dict"
    dictionary.write_text("".join(
        '"' + "".join(f"\\x{b:02x}" for b in token) + '"\n' for token in TOKENS))
    argv = [sys.argv[0], str(corpus), f"-max_total_time={args.seconds + 60}", "-max_len=65535",
            f"-dict={dictionary}", f"-seed={args.seed or 1}", "-print_final_stats=1"]
    atheris.Setup(argv, one_input)
    try:
        atheris.Fuzz()
    except SystemExit:
        pass
    return counter["n"]


def run_network(args: argparse.Namespace, findings: Findings) -> int:
    from tests.integration.engine import start_engine
    from tests.sip.fuzzing import mutate, seed_messages

    rng = random.Random(args.seed)
    seeds = seed_messages()
    workdir = Path(tempfile.mkdtemp(prefix="sipfuzz-net-"))
    engine = start_engine(workdir)
    address = ("127.0.0.1", engine.sip_port)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    tcp: socket.socket | None = None
    executions = reconnects = 0
    recent: list[bytes] = []

    def drain(sock: socket.socket | None) -> bool:
        """Read what the engine answered; False when it closed the connection."""
        while sock is not None:
            try:
                if not sock.recv(65536):
                    return False
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
        return True

    def probe() -> bool:
        nonlocal tcp
        ok = True
        for transport in ("udp", "tcp"):
            branch = f"z9hG4bKprobe{executions}{transport}"
            message = (f"OPTIONS sip:{address[0]}:{address[1]} SIP/2.0\r\n"
                       f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:5999;branch={branch}\r\n"
                       "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\n"
                       f"To: <sip:{address[0]}>\r\nCall-ID: probe-{executions}\r\n"
                       "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
            sock = socket.create_connection(address, 5) if transport == "tcp" else \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(3)
            try:
                if transport == "tcp":
                    sock.sendall(message)
                else:
                    sock.sendto(message, address)
                got = b""
                while branch.encode() not in got:
                    got += sock.recv(65536)
                ok = ok and got.startswith(b"SIP/2.0 200")
            except OSError:
                ok = False
            finally:
                sock.close()
        return ok

    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline:
            data = mutate(rng.choice(seeds), rng)
            recent.append(data)
            if rng.random() < 0.5 and len(data) <= 65507:
                udp.sendto(data, address)
                drain(udp)
            else:
                if tcp is None:
                    tcp = socket.create_connection(address, 5)
                    tcp.setblocking(False)
                    reconnects += 1
                try:
                    _send_all(tcp, data)
                    alive = drain(tcp)
                except OSError:
                    alive = False
                if not alive:  # closed after a frame it could not delimit: a new connection
                    tcp.close()
                    tcp = None
            executions += 1
            if executions % args.probe_every == 0:
                if engine.process.poll() is not None or not probe():
                    blob = b"\n----\n".join(recent)
                    findings.record("network", RuntimeError("engine stopped answering"), blob)
                    break
                recent.clear()
                # A connection that saw a framing error is closed by the engine; start anew.
                if tcp is not None:
                    tcp.close()
                    tcp = None
    finally:
        metrics = engine.metrics() if engine.process.poll() is None else {}
        engine.stop()
        log = engine.log()
    summary = {name: value for name, value in metrics.items()
               if name.startswith(("vaultpbx_sip_", "vaultpbx_transport_"))}
    print(json.dumps({"tcp_connections": reconnects, **summary}, indent=1))
    if summary.get("vaultpbx_sip_internal_errors_total", 0):
        findings.record("network", RuntimeError("internal errors counted"), b"")
    for marker in ("sip.internal_error", "Traceback", "Fatal error on transport"):
        if marker in log:
            findings.record("network", RuntimeError(f"engine log has {marker!r}"),
                            log.encode()[-20000:])
    return executions


def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    deadline = time.monotonic() + 5
    while view:
        try:
            sent = sock.send(view)
            view = view[sent:]
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("random", "atheris", "network"), default="random")
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--findings", type=Path, default=ROOT / "var" / "fuzz" / "findings")
    parser.add_argument("--probe-every", type=int, default=200)
    args = parser.parse_args()
    findings = Findings(args.findings)
    started = time.monotonic()
    run = {"random": run_random, "atheris": run_atheris, "network": run_network}[args.engine]
    executions = run(args, findings)
    return report(args, executions, findings, started)


def report(args: argparse.Namespace, executions: int, findings: Findings, started: float
           ) -> int:
    elapsed = time.monotonic() - started
    slow_s, slow_len = findings.slowest
    print(f"engine={args.engine} executions={executions} seconds={elapsed:.0f} "
          f"rate={executions / elapsed:.0f}/s findings={len(findings.seen)} "
          f"slowest={slow_s * 1000:.1f}ms ({slow_len} bytes)", flush=True)
    for key, count in findings.seen.items():
        print(f"  {count:6d}x {key}")
    return 1 if findings.seen else 0


if __name__ == "__main__":
    sys.exit(main())
