"""Flood guard: a flooding source is banned while others pass; scanners and auth failures."""

from __future__ import annotations

import pytest
from vaultpbx.security.floodguard import FloodGuard, FloodGuardConfig, is_scanner

T0 = 1000.0


def options(ua: bytes) -> bytes:
    return (
        b"OPTIONS sip:100@198.51.100.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bK-1\r\n"
        b'From: "100" <sip:100@198.51.100.1>;tag=1\r\nTo: <sip:100@198.51.100.1>\r\n'
        b"Call-ID: 1@x\r\nCSeq: 1 OPTIONS\r\nUser-Agent: " + ua + b"\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


def test_flood_from_one_source_is_banned_while_another_passes() -> None:
    guard = FloodGuard(FloodGuardConfig(rate=50, burst=100, ban_seconds=60))
    now = T0
    flood_results = []
    for i in range(5000):  # 5000 datagrams/s from the attacker
        now = T0 + i / 5000
        flood_results.append(guard.check("203.0.113.9", now))
        if i % 100 == 0:  # 50/s from a well-behaved phone
            assert guard.check("198.51.100.20", now)
    assert sum(flood_results) <= 101  # the burst, then nothing
    assert not flood_results[-1] and guard.is_banned("203.0.113.9", now)
    assert guard.counters()["floodguard_bans_total"] == 1
    assert guard.counters()["floodguard_dropped_banned_total"] > 4000
    assert not guard.check("203.0.113.9", T0 + 30)  # ban holds
    assert guard.check("203.0.113.9", T0 + 62)  # and expires


def test_sustained_rate_under_limit_never_banned() -> None:
    guard = FloodGuard(FloodGuardConfig(rate=50, burst=10))
    assert all(guard.check("192.0.2.1", T0 + i / 45) for i in range(10_000))


def test_trusted_networks_never_limited() -> None:
    guard = FloodGuard(FloodGuardConfig.from_dict(
        {"rate": 1, "burst": 1, "trusted": ["127.0.0.0/8", "2001:db8::/32"]}))
    assert all(guard.check("127.0.0.1", T0) for _ in range(1000))
    assert all(guard.check("2001:db8::5", T0) for _ in range(10))
    for _ in range(100):
        guard.auth_failed("127.0.0.1", T0)
    assert guard.admit("127.0.0.1", options(b"friendly-scanner"), T0) is False
    assert guard.check("127.0.0.1", T0)  # dropped that scanner-looking packet but not banned


@pytest.mark.parametrize(
    "ua", [b"friendly-scanner", b"sipvicious", b"SIPVicious 0.3.4", b"sipcli/v1.8",
           b"VaxSIPUserAgent/3.1", b"sundayddr", b"iWar", b"sip-scan"],
)
def test_scanner_user_agents_banned(ua: bytes) -> None:
    guard = FloodGuard()
    assert is_scanner(options(ua))
    assert not guard.admit("203.0.113.50", options(ua), T0)
    assert guard.is_banned("203.0.113.50", T0 + 10)
    assert guard.admit("198.51.100.1", options(b"Linphone/5.2"), T0)


def test_scanner_from_header_and_body_ignored() -> None:
    msg = options(b"X").replace(b"User-Agent: X\r\n", b"").replace(b'"100"', b'"sipvicious"')
    assert is_scanner(msg)
    assert not is_scanner(options(b"MySipClient/2.0"))  # "sipcli" inside a real name
    body = options(b"Zoiper 5").replace(b"Content-Length: 0\r\n\r\n",
                                        b"Content-Length: 20\r\n\r\nfriendly-scanner....")
    assert not is_scanner(body)


def test_auth_failures_ban() -> None:
    guard = FloodGuard(FloodGuardConfig(auth_failures=5, auth_window=60))
    results = [guard.auth_failed("203.0.113.7", T0 + i) for i in range(5)]
    assert results == [False] * 4 + [True]
    assert not guard.check("203.0.113.7", T0 + 6)
    guard.auth_failed("192.0.2.8", T0)
    guard.auth_succeeded("192.0.2.8")
    assert [guard.auth_failed("192.0.2.8", T0 + i * 20) for i in range(8)] == [False] * 8


def test_tables_are_bounded_and_swept() -> None:
    guard = FloodGuard(FloodGuardConfig(max_sources=100, rate=10, burst=10))
    for i in range(1000):
        guard.check(f"10.0.{i // 256}.{i % 256}", T0)
    assert guard.counters()["floodguard_sources"] == 100
    guard.ban("192.0.2.1", T0 + 5)
    assert guard.sweep(T0 + 10) == 101


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown"):
        FloodGuardConfig.from_dict({"ratee": 1})
    with pytest.raises(ValueError):
        FloodGuardConfig.from_dict({"trusted": ["not-a-net"]})


def test_connection_strikes_ban_untrusted_sources_only() -> None:
    guard = FloodGuard(FloodGuardConfig(connection_strikes=3, connection_window=10,
                                        connection_ban_seconds=100, trusted=("127.0.0.1/32",)))
    assert [guard.connection_abuse("203.0.113.9", T0 + i) for i in range(3)] == [
        False, False, True]
    assert guard.is_banned("203.0.113.9", T0 + 50) and not guard.is_banned("203.0.113.9",
                                                                            T0 + 103)
    assert not any(guard.connection_abuse("127.0.0.1", T0 + i) for i in range(10))
    assert guard.is_trusted("127.0.0.1") and not guard.is_trusted("203.0.113.9")
    # Strikes spread wider than the window never add up to a ban.
    assert not any(guard.connection_abuse("192.0.2.5", T0 + i * 6) for i in range(10))
    assert guard.counters()["floodguard_connection_bans_total"] == 1
