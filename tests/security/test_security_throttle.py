"""The password-guessing throttle (engine/security/throttle.py) with time moved by hand: waits
grow per (account, source) and per account, the owner's remembered sources keep working, at
most `account_max_failures` consecutive guesses reach an account from new places (NIST SP
800-63B §5.2.2), and nothing a waiting source does makes its wait longer."""

from __future__ import annotations

import ast
import math
import pathlib

import pytest
from vaultpbx.security.throttle import CredentialThrottle, ThrottleConfig, backoff

T0 = 1_000.0
CONFIG = ThrottleConfig(delay_after=3, base_delay=1.0, max_delay=8.0, account_delay_after=10,
                        account_max_delay=60.0, account_max_failures=30)


def fail_until_waiting(throttle: CredentialThrottle, account: str, source: str,
                       now: float) -> float:
    """Fail as fast as allowed; the wait once one is imposed."""
    for _ in range(1000):
        wait = throttle.check(account, source, now)
        if wait:
            return wait
        throttle.failed(account, source, now)
    raise AssertionError("never throttled")


def test_backoff_doubles_from_the_threshold_and_is_capped() -> None:
    assert [backoff(n, 3, 1.0, 8.0) for n in range(8)] == [0, 0, 0, 1, 2, 4, 8, 8]
    assert backoff(10_000, 3, 1.0, 8.0) == 8.0  # no overflow however long it goes on


def test_a_source_waits_longer_after_each_failure_up_to_the_cap() -> None:
    throttle = CredentialThrottle(CONFIG)
    now = T0
    waits = []
    for _ in range(7):
        wait = fail_until_waiting(throttle, "ann", "127.0.0.2", now)
        waits.append(wait)
        now += wait  # exactly when it may try again
        assert throttle.check("ann", "127.0.0.2", now) == 0.0
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]


def test_waiting_attempts_change_nothing() -> None:
    throttle = CredentialThrottle(CONFIG)
    wait = fail_until_waiting(throttle, "ann", "127.0.0.2", T0)
    for i in range(500):  # hammering while throttled does not extend the wait
        assert throttle.check("ann", "127.0.0.2", T0 + i * wait / 1000) > 0
    assert throttle.check("ann", "127.0.0.2", T0 + wait) == 0.0
    assert throttle.failures == 3 and throttle.throttled_source == 501


def test_one_sources_failures_do_not_hold_back_another_source() -> None:
    throttle = CredentialThrottle(CONFIG)
    fail_until_waiting(throttle, "ann", "127.0.0.2", T0)
    assert throttle.check("ann", "127.0.0.3", T0) == 0.0
    throttle.succeeded("ann", "127.0.0.3", T0)
    # The owner's success does not release the guesser.
    assert throttle.check("ann", "127.0.0.2", T0) > 0
    # Nor do the guesser's failures on one account touch another account.
    assert throttle.check("bob", "127.0.0.2", T0) == 0.0


def test_success_starts_the_count_again() -> None:
    throttle = CredentialThrottle(CONFIG)
    wait = fail_until_waiting(throttle, "ann", "127.0.0.2", T0)
    throttle.succeeded("ann", "127.0.0.2", T0 + wait)
    for _ in range(2):
        throttle.failed("ann", "127.0.0.2", T0 + wait)
    assert throttle.check("ann", "127.0.0.2", T0 + wait) == 0.0


def test_many_sources_together_trip_the_account_wait_but_not_for_the_owner() -> None:
    """A botnet (each address below its own threshold) is held back per account; the owner's
    remembered source is not, a source never seen is."""
    throttle = CredentialThrottle(CONFIG)
    throttle.succeeded("ann", "127.0.0.10", T0)  # the owner's desk
    now = T0 + 1
    for i in range(10):  # ten addresses, one guess each: no pair is throttled
        assert throttle.check("ann", f"127.1.0.{i}", now) == 0.0
        throttle.failed("ann", f"127.1.0.{i}", now)
    assert throttle.check("ann", "127.1.0.200", now) == 1.0  # a new address waits
    assert throttle.check("ann", "127.0.0.10", now) == 0.0  # the owner does not
    assert throttle.throttled_account == 1


def test_at_most_account_max_failures_consecutive_guesses_from_new_places() -> None:
    throttle = CredentialThrottle(CONFIG)
    throttle.succeeded("ann", "127.0.0.10", T0)
    now, guesses, source = T0, 0, 0
    while now < T0 + 100_000:
        source += 1
        address = f"127.2.{source // 250}.{source % 250}"
        wait = throttle.check("ann", address, now)
        if wait == math.inf:
            break
        if wait:
            now += wait
            continue
        throttle.failed("ann", address, now)
        guesses += 1
    assert guesses == CONFIG.account_max_failures
    assert throttle.check("ann", "127.9.9.9", now + 10**9) == math.inf  # time does not help
    assert throttle.check("ann", "127.0.0.10", now) == 0.0  # the owner still logs in
    throttle.succeeded("ann", "127.0.0.10", now)
    assert throttle.check("ann", "127.9.9.9", now) == 0.0
    throttle.failed("ann", "127.9.9.9", now)
    throttle.reset("ann")  # an administrator's unlock clears the rest
    assert throttle.check("ann", "127.9.9.9", now) == 0.0


def test_remembered_sources_are_forgotten_after_remember_sources() -> None:
    config = ThrottleConfig(account_delay_after=2, account_max_failures=5,
                            remember_sources=100.0)
    throttle = CredentialThrottle(config)
    throttle.succeeded("ann", "127.0.0.10", T0)
    for i in range(2):
        throttle.failed("ann", f"127.1.0.{i}", T0 + 200)
    assert throttle.check("ann", "127.0.0.10", T0 + 50) == 0.0
    assert throttle.check("ann", "127.0.0.10", T0 + 200) > 0  # no longer the owner's place


def test_tables_are_bounded_and_swept() -> None:
    throttle = CredentialThrottle(ThrottleConfig(max_entries=100, forget_after=10.0))
    for i in range(1000):
        throttle.failed(f"user{i}", "127.0.0.2", T0)
    counters = throttle.counters("t")
    assert counters["t_pairs"] == counters["t_accounts"] == 100
    assert counters["t_evicted_total"] == 2 * 900
    assert throttle.sweep(T0 + 5) == 0
    assert throttle.sweep(T0 + 11) == 200
    assert throttle.counters("t")["t_pairs"] == 0


def test_sweep_keeps_accounts_at_the_hard_limit() -> None:
    throttle = CredentialThrottle(ThrottleConfig(account_delay_after=1, account_max_failures=3,
                                                 forget_after=1.0, delay_after=100))
    for i in range(3):
        throttle.failed("ann", f"127.1.0.{i}", T0)
    throttle.sweep(T0 + 10**6)
    assert throttle.check("ann", "127.1.0.9", T0 + 10**6) == math.inf


@pytest.mark.parametrize(("settings", "message"), [
    ({"account_max_failures": 101}, "NIST"),
    ({"delay_after": 0}, "at least 1"),
    ({"base_delay": -1.0}, "base_delay"),
    ({"max_delay": float("inf")}, "max_delay"),
    ({"base_delay": 10.0, "max_delay": 5.0}, "exceed"),
])
def test_config_is_checked(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThrottleConfig(**settings).validate()  # type: ignore[arg-type]


def test_throttle_module_does_no_io() -> None:
    path = pathlib.Path(__file__).parents[2] / "engine" / "security" / "throttle.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "ssl", "time", "random", "os", "sqlite3"}


def test_yaml_settings_are_typed_and_errors_name_the_path() -> None:
    from vaultpbx.runtime.config import ConfigError, parse_config
    from vaultpbx.security.config import SecurityConfig

    loaded = parse_config("sip:\n  digest_throttle: {base_delay: 0.5, max_delay: 4}\n"
                          "  connections: {max_per_source: 7}\ndescriptors: {reserve: 500}\n")
    assert loaded.config.sip.digest_throttle == ThrottleConfig(base_delay=0.5, max_delay=4.0)
    assert loaded.config.sip.connections.max_per_source == 7
    assert loaded.config.descriptors.reserve == 500
    with pytest.raises(ConfigError, match=r"line 3: sip.digest_throttle: .*NIST"):
        parse_config("sip:\n  digest_throttle:\n    account_max_failures: 1000\n")
    with pytest.raises(ConfigError, match=r"line 2: sip.connections.header_timout: unknown"):
        parse_config("sip:\n  connections: {header_timout: 5}\n")
    assert SecurityConfig.from_dict({"login_throttle": {"delay_after": 3}}).login_throttle == (
        ThrottleConfig(delay_after=3))
    with pytest.raises(ValueError, match=r"^security.login_throttle: .*NIST"):
        SecurityConfig.from_dict({"login_throttle": {"account_max_failures": 101}})
    with pytest.raises(ValueError, match=r"^security.login_throttle.delay_after: .*integer"):
        SecurityConfig.from_dict({"login_throttle": {"delay_after": "5"}})
