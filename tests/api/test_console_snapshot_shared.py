"""The console's live feed builds one snapshot per role and scope for all its WebSockets.

Building a snapshot masks every live call; the feed looks five times a second per socket, so a
snapshot built per socket cost clients x calls on the SIP loop (bench/results/console.md, part 2:
at 100 clients and 300 calls/s, loop stalls over 100 ms and failed calls). These tests count the
builds, not time: N sockets looking within one tick cost one build whatever N, each role still
gets its own masking, and a change is seen once the shared snapshot is older than its limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaultpbx.api.console import SNAPSHOT_SHARED, ConsoleApi, _dumps

from tests.api.api_helpers import make_harness

NUMBER = "+8613812345678"


class Ticker:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _console(tmp_path: Path, calls: list[dict[str, Any]]) -> tuple[ConsoleApi, Ticker, list[int]]:
    h = make_harness(tmp_path)
    built = [0]

    def live_calls() -> list[dict[str, Any]]:
        built[0] += 1
        return [dict(call) for call in calls]

    ticker = Ticker()
    console = ConsoleApi(h.api, live_calls=live_calls, ticker=ticker, clock=lambda: 1.0e9)
    return console, ticker, built


def test_many_sockets_in_one_tick_cost_one_build(tmp_path: Path) -> None:
    calls = [{"id": f"c{i}", "from": f"sip:{NUMBER}@x", "agent": "2001"} for i in range(50)]
    console, ticker, built = _console(tmp_path, calls)
    for clients in (10, 1000):
        before = built[0]
        bodies = {console.snapshot_body("supervisor") for _ in range(clients)}
        assert built[0] - before == 1  # not `clients`
        assert len(bodies) == 1
        ticker.now += SNAPSHOT_SHARED + 1e-6
    assert console.counters["console_snapshots_built_total"] == 2


def test_each_role_and_scope_gets_its_own_masking(tmp_path: Path) -> None:
    calls = [{"id": "c1", "from": f"sip:{NUMBER}@x", "agent": "2001"},
             {"id": "c2", "from": "sip:+8613900001111@x", "agent": "2002"}]
    console, _, built = _console(tmp_path, calls)
    views = [("supervisor", "*"), ("admin", "*"), ("qa", "*"), ("supervisor", "2001")]
    for role, scope in views:
        for _ in range(3):
            assert console.snapshot_body(role, scope) == _dumps(console.snapshot(role, scope))
    # One build per view (plus the direct snapshot() calls above, one per comparison).
    assert console.counters["console_snapshots_built_total"] == len(views)
    assert built[0] == len(views) + 3 * len(views)
    # Within the same tick: the supervisor's view (this policy shows the number) never reaches
    # a role whose policy masks it.
    assert NUMBER in console.snapshot_body("supervisor")
    assert NUMBER not in console.snapshot_body("admin")
    assert "+86138****5678" in console.snapshot_body("qa")
    assert '"c2"' not in console.snapshot_body("supervisor", "2001")  # the scope filters


def test_a_change_is_seen_once_the_shared_snapshot_is_old(tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = [{"id": "c1", "from": "sip:1001@x"}]
    console, ticker, _ = _console(tmp_path, calls)
    first = console.snapshot_body("supervisor")
    calls.append({"id": "c2", "from": "sip:1002@x"})
    ticker.now += SNAPSHOT_SHARED * 0.9
    assert console.snapshot_body("supervisor") == first  # still within the shared tick
    ticker.now += SNAPSHOT_SHARED * 0.2
    assert '"c2"' in console.snapshot_body("supervisor")
