"""The pieces under the admin listener: the connection budget's bookkeeping, the `admin:` keys
that configure it, and the loop-stall monitor that tells a stall of our own making (CPU on the
loop thread) from time the host gave to someone else."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop
from vaultpbx.api.listener import ConnectionBudget, ListenerLimits
from vaultpbx.runtime.config import ConfigError, parse_config
from vaultpbx.runtime.loopstall import LoopStallMonitor


def test_budget_counts_in_all_and_per_source() -> None:
    budget = ConnectionBudget(ListenerLimits(max_connections=5, max_per_source=2))
    assert [budget.admit("127.0.0.2", 0.0) for _ in range(3)] == [None, None, "per_source"]
    assert [budget.admit("127.0.0.3", 0.0) for _ in range(2)] == [None, None]
    assert budget.admit("127.0.0.4", 0.0) is None
    assert budget.admit("127.0.0.5", 0.0) == "budget"  # five open: the total wins
    assert budget.open == 5 and budget.by_source == {"127.0.0.2": 2, "127.0.0.3": 2,
                                                     "127.0.0.4": 1}
    budget.release("127.0.0.2")
    assert budget.admit("127.0.0.2", 0.0) is None
    for source in ("127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3", "127.0.0.4"):
        budget.release(source)
    assert budget.open == 0 and budget.by_source == {}  # no empty entries left behind


def test_new_connections_are_rate_limited_in_all_and_per_source() -> None:
    budget = ConnectionBudget(ListenerLimits(max_connections=10_000, max_per_source=10_000,
                                             max_new_per_second=50,
                                             max_new_per_source_per_second=5))
    # One source: a burst of two seconds' worth, then what the rate refills.
    one = [budget.admit("127.0.0.2", 0.0) for _ in range(12)]
    assert one == [None] * 10 + ["source_rate"] * 2
    assert budget.admit("127.0.0.2", 0.1) == "source_rate"  # half a token so far
    assert budget.admit("127.0.0.2", 0.2) is None
    # Many sources: the total's burst (100) runs out whatever the sources.
    many = [budget.admit(f"127.1.{n // 250}.{n % 250 + 1}", 0.2) for n in range(200)]
    assert many.count(None) == 100 - 1 and set(many) == {None, "rate"}  # 0.2 s refilled 10
    assert budget.admit("127.2.0.1", 0.2 + 1.0) is None  # a second later: 50 more tokens
    # Refusals open nothing.
    assert budget.open == 10 + 1 + 99 + 1


def test_source_buckets_stay_bounded() -> None:
    class Small(ConnectionBudget):
        SOURCES_KEPT = 100

    budget = Small(ListenerLimits(max_connections=10**6, max_per_source=10,
                                  max_new_per_second=10**6, max_new_per_source_per_second=1))
    for n in range(1000):
        source = f"127.0.{n // 250}.{n % 250 + 1}"
        assert budget.admit(source, float(n)) is None
        budget.release(source)
    assert len(budget._source_rates) <= 100


@pytest.mark.parametrize(("yaml", "message"), [
    ("admin:\n  max_connections: 10\n  max_connections_per_source: 20\n",
     "max_connections_per_source must be from 1 to max_connections"),
    ("admin:\n  header_timeout: 0\n", "header_timeout must be positive"),
    ("admin:\n  idle_timeout: -1\n", "idle_timeout must be positive"),
    ("admin:\n  max_head_size: 10\n", "at least 1024"),
    ("admin:\n  max_conections: 10\n", "unknown"),
])
def test_bad_admin_limits_name_the_yaml_path(yaml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(yaml)
    assert "admin" in str(caught.value)


def test_admin_limits_from_yaml() -> None:
    admin = parse_config("admin:\n  max_connections: 100\n  max_connections_per_source: 4\n"
                         "  header_timeout: 2.5\n").config.admin
    assert (admin.max_connections, admin.max_connections_per_source, admin.header_timeout,
            admin.idle_timeout) == (100, 4, 2.5, 60.0)


def test_loop_stall_monitor_tells_our_cpu_from_the_hosts() -> None:
    async def scenario() -> LoopStallMonitor:
        monitor = LoopStallMonitor(asyncio.get_running_loop())
        monitor.start()
        await asyncio.sleep(0.05)
        time.sleep(0.06)  # the loop held, but off the CPU: the host's time, not our work
        await asyncio.sleep(0.05)
        assert monitor.stalls >= 1 and monitor.cpu_stalls == 0
        spent = time.thread_time() + 0.06
        while time.thread_time() < spent:  # the loop held by 60 ms of our own CPU work
            pass
        await asyncio.sleep(0.05)
        monitor.stop()
        return monitor

    monitor = uvloop.run(scenario())
    assert monitor.cpu_stalls == 1 and monitor.stalls >= 2
    # A tick falls due at most one interval (5 ms) after a stall starts: it sees the rest.
    assert monitor.longest_cpu >= 0.055 - 0.001 and monitor.longest >= 0.055 - 0.001
    samples = {name: value for name, _, value, _ in monitor.samples()}
    assert samples["vaultpbx_loop_cpu_stalls_over_50ms"] == 1
    assert samples["vaultpbx_loop_cpu_stalls_over_100ms"] == 0
    assert samples["vaultpbx_loop_ticks"] > 10
