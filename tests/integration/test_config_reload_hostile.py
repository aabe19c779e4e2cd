"""SIGHUP with a hostile or heavy file on a real engine: signalling keeps answering while the
file is read (it is read in a worker thread, applied on the loop), the bad file is rejected with
its path and line in the log, and the old configuration stays.

What is measured is counted, not timed: SIP OPTIONS are sent one at a time (each waits for its
answer) from the SIGHUP until the log says the reload was rejected. A reload that blocks the
event loop answers none of them in that window (the OPTIONS waits in the socket until the loop
is back, which is after the log line); a reload off the loop answers one every few milliseconds.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import yaml

from tests.integration.engine import RunningEngine, start_engine
from tests.integration.sipclient import UdpClient

BOMB = "\n".join(
    ['lol0: &a0 ["lol"]']
    + [f"lol{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
) + "\n"  # 10^9 strings once expanded, in 540 bytes


def options(client: UdpClient, engine: RunningEngine) -> int:
    request = client.request("OPTIONS", f"sip:127.0.0.1:{engine.sip_port}", user="1001")
    return client.exchange(request, timeout=10).status


def rejections(engine: RunningEngine) -> list[dict]:
    out = []
    for line in engine.log().splitlines():
        if "config.reload_rejected" in line and line.startswith("{"):
            out.append(json.loads(line))
    return out


def answered_during_reload(engine: RunningEngine, client: UdpClient, before: int) -> int:
    """Send SIGHUP, then OPTIONS one at a time until a new rejection is logged; how many
    were answered 200 before it was."""
    engine.signal(signal.SIGHUP)
    answered = 0
    deadline = time.monotonic() + 120
    while len(rejections(engine)) == before:
        assert time.monotonic() < deadline, "the reload was never rejected"
        assert options(client, engine) == 200
        if len(rejections(engine)) == before:
            answered += 1
    return answered


def big_config(good: dict, limit: int = 1 << 20) -> str:
    """The engine's own config with extensions up to ~1 MiB (the largest file accepted), then
    an unknown key on the last line: the whole file is read and built before it is refused."""
    head = yaml.safe_dump({k: v for k, v in good.items() if k != "extensions"})
    lines = [head.rstrip("\n"), "extensions:", '  "1001": {password: "pw-1001"}']
    size = len(head) + 50
    n = 0
    while size < limit - 100:
        line = f'  "{50000 + n}": {{password: "pw-{n:06d}-secret", display_name: "Agent {n}"}}'
        lines.append(line)
        size += len(line) + 1
        n += 1
    lines.append("bogus_key_at_the_end: 1")
    return "\n".join(lines) + "\n"


def test_sighup_with_an_alias_bomb_or_a_heavy_file_keeps_signalling_up(tmp_path: Path) -> None:
    engine = start_engine(tmp_path, {"extensions": {"1001": {"password": "pw-1001"}}})
    client = UdpClient(engine.sip_port)
    try:
        good = engine.config_path.read_text()
        assert client.register("1001", "pw-1001").status == 200
        assert options(client, engine) == 200

        # 1. An alias bomb: refused at the alias that crosses the bound, path and line logged.
        engine.config_path.write_text(good + BOMB)
        answered_during_reload(engine, client, 0)
        [rejected] = rejections(engine)
        bomb_line = len(good.splitlines()) + 5  # lol4 is where the count passes 10,000
        assert f"{engine.config_path}:line {bomb_line}:" in rejected["error"], rejected
        assert "alias" in rejected["error"]

        # 2. A heavy but plain file (~1 MiB, refused only at its last line): SIP is answered
        #    all the while it is read.
        heavy = big_config(yaml.safe_load(good))
        engine.config_path.write_text(heavy)
        answered = answered_during_reload(engine, client, 1)
        assert f"line {len(heavy.splitlines())}:" in rejections(engine)[1]["error"]
        assert "bogus_key_at_the_end" in rejections(engine)[1]["error"]
        assert answered >= 10, f"only {answered} OPTIONS answered while the file was read"

        # The old configuration stays: 1001 registers, the heavy file's extensions do not exist.
        assert client.register("1001", "pw-1001").status == 200
        assert client.register("50000", "pw-000000-secret").status in (401, 403)
        assert "config.reloaded" not in engine.log()
    finally:
        client.close()
        assert engine.stop() == 0
