"""Connection budgets without sockets (engine/io/connlimits.py): a listener's total and
per-source ceilings, the process-wide descriptor reserve shared by listeners, and the
once-per-source refusal log."""

from __future__ import annotations

import pytest
from vaultpbx.io.connlimits import (
    ConnectionLimitsConfig,
    DescriptorBudget,
    ListenerBudget,
    Refusal,
    RefusalLog,
)


def test_per_source_ceiling_then_listener_ceiling() -> None:
    descriptors = DescriptorBudget(1000, 100)
    budget = ListenerBudget("tcp", ConnectionLimitsConfig(max_connections=5, max_per_source=2),
                            descriptors)
    assert [budget.admit("127.0.0.2") for _ in range(3)] == [None, None, Refusal.SOURCE]
    assert [budget.admit(f"127.0.0.{i}") for i in range(3, 7)] == [None, None, None,
                                                                   Refusal.LISTENER]
    assert budget.total == descriptors.in_use == 5
    budget.release("127.0.0.2")
    assert budget.admit("127.0.0.2") is None  # its unit came back
    assert budget.refused[Refusal.SOURCE] == budget.refused[Refusal.LISTENER] == 1


def test_exempt_sources_have_no_per_source_ceiling() -> None:
    budget = ListenerBudget("tls", ConnectionLimitsConfig(max_connections=10, max_per_source=1),
                            DescriptorBudget(1000, 100), exempt=lambda host: host == "127.0.0.1")
    assert [budget.admit("127.0.0.1") for _ in range(10)] == [None] * 10
    assert budget.admit("127.0.0.1") is Refusal.LISTENER  # but the listener's is theirs too


def test_listeners_share_the_descriptor_reserve_but_not_their_budgets() -> None:
    descriptors = DescriptorBudget(limit=300, reserve=100)
    config = ConnectionLimitsConfig(max_connections=150, max_per_source=1000)
    tcp = ListenerBudget("tcp", config, descriptors)
    tls = ListenerBudget("tls", config, descriptors)
    assert all(tcp.admit("127.0.0.2") is None for _ in range(150))
    assert tcp.admit("127.0.0.2") is Refusal.LISTENER  # tcp's own share is used up
    assert all(tls.admit("127.0.0.3") is None for _ in range(50))
    assert tls.admit("127.0.0.3") is Refusal.DESCRIPTORS  # 200 = limit - reserve
    assert descriptors.in_use == 200 and descriptors.refused == 1
    for _ in range(150):
        tcp.release("127.0.0.2")
    assert tcp.per_source == {} and descriptors.in_use == 50
    assert tls.admit("127.0.0.3") is None


def test_a_reserve_as_large_as_the_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="reserve"):
        DescriptorBudget(100, 100)
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionLimitsConfig(max_per_source=0).validate()


def test_refusals_are_logged_once_per_source_per_interval() -> None:
    log = RefusalLog(interval=60.0)
    reports = [log.note("127.0.0.2", Refusal.SOURCE, 1000.0 + i * 0.01) for i in range(2000)]
    assert reports[0] == 1 and sum(reports) == 1  # 2,000 refusals, one line
    assert log.note("127.0.0.3", Refusal.SOURCE, 1001.0) == 1  # another source: its own line
    assert log.note("127.0.0.2", Refusal.HEADER_TIMEOUT, 1001.0) == 1  # another reason too
    assert log.note("127.0.0.2", Refusal.SOURCE, 1061.0) == 2000  # a minute on: the count
    assert log.sweep(1200.0) == []  # nothing owed: every count was reported
    log.note("127.0.0.4", Refusal.SOURCE, 1300.0)
    log.note("127.0.0.4", Refusal.SOURCE, 1301.0)
    assert log.sweep(1400.0) == [("127.0.0.4", Refusal.SOURCE, 1)]


def test_the_framer_tells_how_much_of_a_message_is_waiting() -> None:
    """The transports time out a message that stays incomplete (slowloris) by this."""
    from vaultpbx.sip.parser import StreamFramer

    framer = StreamFramer()
    assert framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\nREGISTER sip:") == [
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n"]
    assert framer.pending_bytes == len(b"REGISTER sip:")
    framer.feed(b"x SIP/2.0\r\nContent-Length: 0\r\n\r\n")
    assert framer.pending_bytes == 0


def test_a_listener_may_have_its_own_budget_but_udp_has_none() -> None:
    from vaultpbx.runtime.config import ConfigError, parse_config

    loaded = parse_config("sip:\n  listen:\n    - {transport: tls, port: 5061, "
                          "max_connections: 300}\n")
    assert loaded.config.sip.listen[0].max_connections == 300
    with pytest.raises(ConfigError, match=r"line 3: sip.listen\[0\]: max_connections is for"):
        parse_config("sip:\n  listen:\n    - {transport: udp, max_connections: 300}\n")
