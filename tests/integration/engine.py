"""Start a real vaultpbx process on 127.0.0.1 for integration tests.

Each engine gets its own data directory and free ports (SIP UDP+TCP share a number; TLS and the
admin API get their own), and is stopped with SIGTERM (or SIGKILL when a test says so).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def free_port(both: bool = True) -> int:
    """A port free on 127.0.0.1 for UDP and (when `both`) TCP, picked at random above the
    ephemeral range (32768-60999 here), so that no client socket of a neighbouring test or
    bench can take it between this check and the engine's bind."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(61000, 65500)
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)]
        if both:
            sockets.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        try:
            for sock in sockets:
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return port
    raise RuntimeError("no free port")


@dataclass
class RunningEngine:
    process: subprocess.Popen[bytes]
    config_path: Path
    data_dir: Path
    sip_port: int
    tls_port: int
    admin_port: int
    log_path: Path
    config: dict = field(default_factory=dict)

    @property
    def admin_url(self) -> str:
        tls = self.config.get("admin", {}).get("tls", False)
        return f"{'https' if tls else 'http'}://127.0.0.1:{self.admin_port}"

    def admin_tls_context(self) -> ssl.SSLContext:
        """A client context that trusts the engine's (self-signed) admin certificate."""
        admin = self.config.get("admin", {})
        cert = admin.get("certificate") or self.config["sip"]["tls"]["certificate"]
        context = ssl.create_default_context(cafile=cert)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        return context

    def _open(self, path: str):  # type: ignore[no-untyped-def]
        url = self.admin_url + path
        context = self.admin_tls_context() if url.startswith("https") else None
        return urllib.request.urlopen(url, timeout=5, context=context)

    def metrics(self) -> dict[str, float]:
        with self._open("/metrics") as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def health(self) -> dict:
        with self._open("/health") as r:
            return json.loads(r.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def base_config(data_dir: Path, sip_port: int, tls_port: int, admin_port: int) -> dict:
    return {
        "data_dir": str(data_dir),
        "drain_timeout": 2,
        "sip": {
            "listen": [
                {"transport": "udp", "host": "127.0.0.1", "port": sip_port},
                {"transport": "tcp", "host": "127.0.0.1", "port": sip_port},
                {"transport": "tls", "host": "127.0.0.1", "port": tls_port},
            ],
            "tls": {
                "certificate": str(data_dir / "tls" / "cert.pem"),
                "private_key": str(data_dir / "tls" / "key.pem"),
                "create_self_signed": True,
            },
            "domain": "vaultpbx.test",
            "keepalive_probe_interval": 0,
        },
        "admin": {"host": "127.0.0.1", "port": admin_port, "tls": False},
        "logging": {"level": "info"},
        "security": {"floodguard": {"trusted": ["127.0.0.1/32"]}},
        # Signalling tests do not anchor media; tests of the media plane turn it on.
        "media": {"anchor": False},
    }


def start_engine(tmp_path: Path, overrides: dict | None = None, *,
                 config: dict | None = None) -> RunningEngine:
    """Start `vaultpbx run` with the base config deep-merged with `overrides`."""
    data_dir = tmp_path / "var"
    sip_port, tls_port, admin_port = free_port(), free_port(False), free_port(False)
    cfg = config or base_config(data_dir, sip_port, tls_port, admin_port)
    if config is not None:  # a full config brings its own ports and data directory
        data_dir = Path(cfg.get("data_dir", data_dir))
        listen = {item["transport"]: item["port"] for item in cfg["sip"]["listen"]}
        sip_port = listen.get("udp", listen.get("tcp", sip_port))
        tls_port = listen.get("tls", tls_port)
        admin_port = cfg.get("admin", {}).get("port", admin_port)
    if overrides:
        _merge(cfg, overrides)
    config_path = tmp_path / "vaultpbx.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log_path = tmp_path / "engine.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "vaultpbx.runtime.cli", "run", "-c", str(config_path)],
        cwd=tmp_path, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env,
    )
    engine = RunningEngine(process, config_path, data_dir, sip_port, tls_port, admin_port,
                           log_path, cfg)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"engine exited {process.returncode}:\n{engine.log()}")
        try:
            engine.health()
            return engine
        except OSError:
            time.sleep(0.1)
    engine.kill()
    raise RuntimeError(f"engine did not start:\n{engine.log()}")


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
