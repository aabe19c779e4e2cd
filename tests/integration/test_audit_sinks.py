"""The auditor's item 8 (issue 17), on disk against a real engine and the real `vaultpbx audit
verify`: someone who can write the data directory rewrites or deletes records, recomputes the
chain and the Merkle tree, re-signs with the key found there (or their own), and rewrites or
deletes every checkpoint file under the data directory. What stops them is outside it: the
checkpoint copies the engine sends out while it runs (a file beside var/, an HTTP receiver, a
syslog socket) and the public key pinned in the YAML. Also item 9 through the real /login."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.engine import RunningEngine, free_port, start_engine
from tests.security.audit_attacker import (
    change_actor,
    delete_record,
    keep_first,
    records,
    rewrite_history,
)

pytestmark = pytest.mark.integration


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vaultpbx.runtime.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def verify_cli(engine: RunningEngine, *extra: str) -> subprocess.CompletedProcess[str]:
    """`vaultpbx -c <the engine's config> audit verify` from the engine's working directory."""
    return run_cli("-c", str(engine.config_path), "audit", "verify", *extra,
                   cwd=engine.config_path.parent)


def post_login(engine: RunningEngine, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{engine.admin_port}/login", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def failed_login(engine: RunningEngine, user: str) -> None:
    assert post_login(engine, json.dumps({"user": user, "password": "wrong"}).encode()) == 401


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def tree_sizes(lines: list[str]) -> list[int]:
    marker = "vaultpbx-audit-checkpoint "
    out = []
    for line in lines:
        text = line.split(marker, 1)[-1].strip()
        if text:
            out.append(int(json.loads(text)["tree_size"]))
    return out


def log_size(engine: RunningEngine) -> int:
    path = engine.data_dir / "audit" / "audit.jsonl"
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def own_the_data_directory(data_dir: Path) -> None:
    """The rest of the attack: every checkpoint copy under the data directory (the local one, and
    an "outside" sink if someone put it there) made to agree with the rewritten log."""
    local = (data_dir / "audit" / "checkpoints.jsonl").read_bytes()
    for path in data_dir.rglob("*checkpoints*.jsonl"):
        path.write_bytes(local)


def outside_file(engine: RunningEngine) -> Path:
    return engine.config_path.parent / "audit-outside" / "checkpoints.jsonl"


# -- a file beside var/: the default outside sink ---------------------------------------------


def test_intruder_in_the_data_directory_cannot_make_verify_pass(tmp_path: Path) -> None:
    engine = start_engine(tmp_path, {"security": {"audit": {"checkpoint_every": 3}}})
    try:
        for i in range(6):
            failed_login(engine, f"nobody{i}")
    finally:
        assert engine.stop() == 0, engine.log()
    intact = verify_cli(engine)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "audit-outside" in intact.stdout
    audit_dir = engine.data_dir / "audit"
    pristine = tmp_path / "pristine"
    shutil.copytree(audit_dir, pristine)
    total = log_size(engine)

    def restore() -> None:
        shutil.rmtree(audit_dir)
        shutil.copytree(pristine, audit_dir)

    attacks: list[tuple[str, Callable[[], None], str]] = [
        ("rewrite a record", lambda: rewrite_history(
            audit_dir, change_actor(2, "someone-else"), now=time.time()), "altered"),
        ("delete a record", lambda: rewrite_history(
            audit_dir, delete_record(3), now=time.time()), "record"),
        ("cut the tail", lambda: rewrite_history(
            audit_dir, keep_first(total - 2), now=time.time()), "truncated after checkpoint"),
    ]
    for name, attack, expected in attacks:
        restore()
        attack()
        own_the_data_directory(engine.data_dir)
        done = verify_cli(engine)
        assert done.returncode == 1, (name, done.stdout, done.stderr)
        assert "audit log NOT intact: record " in done.stderr and expected in done.stderr, name
    # Both checkpoint files deleted (the local one, and the outside one: a sink that is gone).
    restore()
    rewrite_history(audit_dir, change_actor(1, "x"), now=time.time())
    (audit_dir / "checkpoints.jsonl").unlink()
    outside_file(engine).unlink()
    gone = verify_cli(engine)
    assert gone.returncode == 1
    assert f"outside copy unreadable: file {Path('audit-outside/checkpoints.jsonl')}: missing" \
        in gone.stderr


def test_pinned_key_in_the_yaml(tmp_path: Path) -> None:
    engine = start_engine(tmp_path)
    try:
        failed_login(engine, "nobody")
    finally:
        assert engine.stop() == 0
    audit_dir = engine.data_dir / "audit"
    pinned = (audit_dir / "audit-ed25519.pub").read_text().strip()
    config = yaml.safe_load(engine.config_path.read_text())
    config["security"]["audit"] = {"public_key": pinned}
    engine.config_path.write_text(yaml.safe_dump(config))
    assert verify_cli(engine).returncode == 0
    # The intruder brings their own key, re-signs everything and (worst case) also removes the
    # outside copy; --local-only so that only the pinned key stands in the way.
    rewrite_history(audit_dir, change_actor(0, "x"), now=time.time(),
                    own_key=Ed25519PrivateKey.generate())
    outside_file(engine).unlink()
    done = verify_cli(engine, "--local-only")
    assert done.returncode == 1
    assert "bad signature" in done.stderr and "untrusted key" in done.stderr
    # An engine whose signing key is not the pinned one refuses to start.
    (tmp_path / "restart").mkdir()
    with pytest.raises(RuntimeError, match="security.audit.public_key pins"):
        start_engine(tmp_path / "restart", config=config)


def test_a_running_engine_is_covered_within_the_interval(tmp_path: Path) -> None:
    engine = start_engine(tmp_path, {"security": {"audit": {"checkpoint_interval": 1}}})
    outside = outside_file(engine)
    try:
        for i in range(3):
            failed_login(engine, f"nobody{i}")
        size = log_size(engine)
        assert size >= 4  # engine.start and the three failures

        def covered() -> bool:
            return outside.exists() and max(tree_sizes(outside.read_text().splitlines()),
                                            default=0) >= size

        assert wait_for(covered), "no checkpoint reached the outside copy while running"
        metrics = engine.metrics()
        assert metrics["vaultpbx_audit_checkpoints_total"] >= 1
        assert metrics["vaultpbx_audit_sink_failures_total"] == 0
    finally:
        engine.kill()  # SIGKILL: no checkpoint at shutdown
    # The intruder deletes the last two records and cleans up after themselves.
    rewrite_history(engine.data_dir / "audit", keep_first(size - 2), now=time.time())
    own_the_data_directory(engine.data_dir)
    done = verify_cli(engine)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"record {size - 2} (seq {size - 2}): truncated after checkpoint" in done.stderr


# -- an HTTP receiver --------------------------------------------------------------------------


class Receiver:
    """A checkpoint store on 127.0.0.1: keeps what is POSTed, returns it on GET."""

    def __init__(self, port: int) -> None:
        self.lines: list[str] = []
        store = self.lines

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", "0"))
                store.append(self.rfile.read(length).decode())
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                data = "".join(line + "\n" for line in store).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}/checkpoints"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(free_port(False))
    yield made
    made.close()


def test_http_receiver_keeps_what_the_data_directory_cannot(tmp_path: Path,
                                                           receiver: Receiver) -> None:
    engine = start_engine(tmp_path, {"security": {"audit": {
        "http": receiver.url, "checkpoint_interval": 1}}})
    try:
        for i in range(3):
            failed_login(engine, f"nobody{i}")
        size = log_size(engine)
        assert wait_for(lambda: max(tree_sizes(list(receiver.lines)), default=0) >= size)
    finally:
        assert engine.stop() == 0, engine.log()
    done = verify_cli(engine)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"http {receiver.url}" in done.stdout
    # Rewritten, re-signed, and the outside file deleted too: the receiver's copy still says no.
    rewrite_history(engine.data_dir / "audit", change_actor(1, "x"), now=time.time())
    own_the_data_directory(engine.data_dir)
    outside_file(engine).unlink()
    done = verify_cli(engine, "--http", receiver.url)
    assert done.returncode == 1
    assert "altered" in done.stderr and "were rewritten" in done.stderr


def test_http_receiver_down_is_counted_and_verify_says_it_is_behind(tmp_path: Path) -> None:
    port = free_port(False)
    url = f"http://127.0.0.1:{port}/checkpoints"
    engine = start_engine(tmp_path, {"security": {"audit": {
        "http": url, "http_timeout": 1, "checkpoint_interval": 1}}})
    try:
        failed_login(engine, "nobody")
        assert wait_for(lambda: engine.metrics()["vaultpbx_audit_sink_failures_total"] >= 1)
    finally:
        assert engine.stop() == 0, engine.log()
    assert f"audit checkpoint receiver {url} failed" in engine.log()
    receiver = Receiver(port)  # back, but it never got a checkpoint
    try:
        done = verify_cli(engine, "--max-lag", "0")  # stopped: everything should be covered
    finally:
        receiver.close()
    assert done.returncode == 1
    assert "record 0 (seq 0): outside copy behind: http " + url + " covers 0 records" \
        in done.stderr


# -- syslog on a Unix datagram socket ----------------------------------------------------------


def test_syslog_socket_and_verify_from_an_export(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    collector = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    collector.bind(str(path))
    export = tmp_path / "syslog-export.log"
    received: list[str] = []

    def collect() -> None:
        with export.open("a") as out:
            while True:
                try:
                    data = collector.recv(65536)
                except OSError:
                    return
                line = data.decode().rstrip("\x00\n")
                received.append(line)
                out.write(line + "\n")
                out.flush()

    threading.Thread(target=collect, daemon=True).start()
    engine = start_engine(tmp_path, {"security": {"audit": {
        "sink": None, "syslog": str(path), "checkpoint_interval": 1}}})
    try:
        failed_login(engine, "nobody")
        size = log_size(engine)
        assert wait_for(lambda: max(tree_sizes(list(received)), default=0) >= size)
    finally:
        assert engine.stop() == 0, engine.log()
        collector.close()
    assert all(line.startswith("<") and "vaultpbx-audit-checkpoint {" in line
               for line in received)  # a syslog priority, then the marked checkpoint
    asks = verify_cli(engine)
    assert asks.returncode == 1 and "--checkpoints FILE" in asks.stderr
    done = verify_cli(engine, "--checkpoints", str(export))
    assert done.returncode == 0, done.stdout + done.stderr
    rewrite_history(engine.data_dir / "audit", change_actor(0, "x"), now=time.time())
    own_the_data_directory(engine.data_dir)
    done = verify_cli(engine, "--checkpoints", str(export))
    assert done.returncode == 1 and "altered" in done.stderr


# -- item 9 through the real /login ------------------------------------------------------------


def test_login_user_field_reaches_the_log_safely(tmp_path: Path) -> None:
    engine = start_engine(tmp_path)
    password = "Typed-Into-The-User-Field-1"
    try:
        failed_login(engine, password)
        failed_login(engine, "m" * 1_000_000)
        # A JSON escape JSON allows and UTF-8 cannot encode: a lone surrogate.
        assert post_login(engine, b'{"user": "ad\\udcffmin", "password": "wrong"}') == 401
    finally:
        assert engine.stop() == 0, engine.log()
    rows = records(engine.data_dir / "audit")
    failed = [r for r in rows if r["action"] == "login.failed"]
    assert len(failed) == 3
    assert all(r["actor"].startswith("unverified:") for r in failed)
    assert password not in (engine.data_dir / "audit" / "audit.jsonl").read_text()
    assert (engine.data_dir / "audit" / "audit.jsonl").stat().st_size < 16 * 1024
    assert verify_cli(engine).returncode == 0


def test_http_sink_delivers_what_waited_once_the_receiver_is_back(tmp_path: Path) -> None:
    from vaultpbx.security.audit import HttpSink

    port = free_port(False)
    sink = HttpSink(f"http://127.0.0.1:{port}/checkpoints", timeout=1, max_pending=2)
    try:
        sink.write('{"type":"checkpoint","tree_size":1}')
        sink.write('{"type":"checkpoint","tree_size":2}')
        assert wait_for(lambda: sink.failures >= 1)
        sink.write('{"type":"checkpoint","tree_size":3}')  # the oldest waiting one makes room
        assert sink.dropped == 1 and sink.pending() == 2
        receiver = Receiver(port)
        try:
            assert sink.flush(timeout=60)  # retried with backoff (at most 30 s apart)
            assert tree_sizes(receiver.lines) in ([2, 3], [1, 2, 3])  # 1 if in flight; in order
        finally:
            receiver.close()
    finally:
        sink.close(timeout=0)
    assert sink.delivered == len(receiver.lines)
