"""Access control: the role × action table, TOTP, sessions, approvals, anomaly lockout."""

from __future__ import annotations

import pyotp
import pytest
from vaultpbx.hooks.registry import HookPoint, HookRegistry
from vaultpbx.security.anomaly import Alert, AnomalyConfig, AnomalyDetector
from vaultpbx.security.approvals import ApprovalError, ApprovalStore
from vaultpbx.security.mfa import TotpVerifier, new_totp_secret
from vaultpbx.security.rbac import AccessPolicy, Permission, PermissionDenied
from vaultpbx.security.sessions import SessionStore
from vaultpbx.security.throttle import CredentialThrottle, ThrottleConfig
from vaultpbx.security.users import Authenticator, UserStore, make_password_hasher

T0 = 1_767_225_600.0
P = Permission

# Expected outcome for each role and action: the table the API relies on.
TABLE: dict[Permission, set[str]] = {
    P.CALLS_HANDLE: {"agent", "supervisor"},
    P.CALLS_MONITOR: {"qa", "supervisor"},
    P.QUEUE_MANAGE: {"supervisor", "admin"},
    P.METADATA_READ: {"agent", "qa", "supervisor", "admin"},
    P.RECORDING_LIST: {"agent", "qa", "supervisor", "admin"},
    P.RECORDING_PLAY: {"agent", "qa", "supervisor", "admin"},
    P.RECORDING_EXPORT: {"supervisor", "admin"},
    P.RECORDING_DELETE: {"admin"},
    P.LEGAL_HOLD: {"admin"},
    P.APPROVE: {"admin"},
    P.CONFIG_READ: {"admin"},
    P.CONFIG_WRITE: {"admin"},
    P.USERS_MANAGE: {"admin"},
    P.KEYS_ROTATE: {"admin"},
    P.RETENTION_MANAGE: {"admin"},
    P.AUDIT_READ: {"auditor"},
    P.AUDIT_VERIFY: {"auditor"},
}
ROLES = ("agent", "qa", "supervisor", "admin", "auditor")


def test_table_covers_every_permission() -> None:
    assert set(TABLE) == set(Permission)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("permission", list(Permission))
def test_role_action_table(role: str, permission: Permission) -> None:
    policy = AccessPolicy.from_dict()
    expected = role in TABLE[permission]
    assert policy.allows(role, permission) is expected
    if not expected:
        with pytest.raises(PermissionDenied):
            policy.require(role, permission)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ({"agent": ["recording.export"]}, "may never hold"),
        ({"qa": ["recording.delete"]}, "may never hold"),
        ({"auditor": ["audit.read", "recording.list"]}, "may never hold"),
        ({"supervisor": ["approval.grant"]}, "may never hold"),
        ({"boss": []}, "unknown role"),
        ({"admin": ["fly"]}, r"admin\[0\]: unknown permission"),
    ],
)
def test_matrix_rules_cannot_be_weakened(matrix: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AccessPolicy.from_dict(matrix)


def test_matrix_loaded_from_dict() -> None:
    policy = AccessPolicy.from_dict({"supervisor": ["calls.monitor"]})
    assert policy.allows("supervisor", "calls.monitor")
    assert not policy.allows("supervisor", "recording.export")
    assert not policy.allows("nobody", "calls.monitor")


def test_totp_window_and_replay() -> None:
    secret = new_totp_secret()
    verifier = TotpVerifier()
    code = pyotp.TOTP(secret).at(T0)
    assert not verifier.verify("a", secret, "000000" if code != "000000" else "111111", T0)
    assert verifier.verify("a", secret, code, T0 + 20)
    assert not verifier.verify("a", secret, code, T0 + 25)  # replay refused
    assert not verifier.verify("b", secret, pyotp.TOTP(secret).at(T0), T0 + 120)  # too old
    assert not verifier.verify("b", secret, "12ab56", T0)


def test_sessions_expire_idle_and_revoke() -> None:
    store = SessionStore(lifetime=3600, idle_timeout=600)
    token = store.create("alice", "admin", T0, mfa=True)
    assert store.get(token, T0 + 300) is not None
    assert store.get(token, T0 + 899) is not None
    assert store.get(token, T0 + 1600) is None  # idle
    token = store.create("alice", "admin", T0, mfa=True)
    for t in range(0, 3600, 500):
        assert store.get(token, T0 + t) is not None
    assert store.get(token, T0 + 3600) is None  # absolute lifetime
    token = store.create("alice", "admin", T0, mfa=True)
    assert store.revoke_user("alice") == 1 and store.get(token, T0) is None
    assert token not in repr(store._sessions)  # only digests are kept


def test_export_needs_a_second_admin() -> None:
    policy = AccessPolicy.from_dict()
    approvals = ApprovalStore(policy, ttl=3600)
    with pytest.raises(PermissionDenied):
        approvals.request(action=P.RECORDING_EXPORT, target="rec-1", requester="ann",
                          role="agent", now=T0)
    req = approvals.request(action=P.RECORDING_EXPORT, target="rec-1", requester="sam",
                            role="supervisor", now=T0)
    with pytest.raises(ApprovalError, match="not approved"):
        approvals.consume(req.id, action=P.RECORDING_EXPORT, target="rec-1", requester="sam",
                          now=T0)
    with pytest.raises(PermissionDenied):
        approvals.approve(req.id, approver="sue", role="supervisor", now=T0)
    own = approvals.request(action=P.RECORDING_EXPORT, target="rec-2", requester="adam",
                            role="admin", now=T0)
    with pytest.raises(ApprovalError, match="second person"):
        approvals.approve(own.id, approver="adam", role="admin", now=T0)
    approvals.approve(own.id, approver="bea", role="admin", now=T0 + 5)
    approvals.approve(req.id, approver="bea", role="admin", now=T0 + 5)
    with pytest.raises(ApprovalError, match="does not cover"):
        approvals.consume(req.id, action=P.RECORDING_EXPORT, target="rec-9", requester="sam",
                          now=T0 + 6)
    approvals.consume(req.id, action=P.RECORDING_EXPORT, target="rec-1", requester="sam",
                      now=T0 + 6)
    with pytest.raises(ApprovalError, match="no open"):  # used once
        approvals.consume(req.id, action=P.RECORDING_EXPORT, target="rec-1", requester="sam",
                          now=T0 + 7)
    with pytest.raises(ApprovalError, match="expired"):
        approvals.consume(own.id, action=P.RECORDING_EXPORT, target="rec-2", requester="adam",
                          now=T0 + 3601)


FAST = make_password_hasher(time_cost=1, memory_cost=1024, parallelism=1)


def make_auth(**kw: object) -> tuple[Authenticator, UserStore, str, list[tuple[object, object]]]:
    users = UserStore(FAST)
    secret = new_totp_secret()
    users.add("ann", "agent", "agent-pw")
    users.add("adam", "admin", "admin-pw", totp_secret=secret)
    hooks = HookRegistry()
    seen: list[tuple[object, object]] = []
    for point in (HookPoint.LOGIN, HookPoint.USER_CHANGE):
        hooks.add_observer(point, lambda p, e: seen.append((p, e)))
    auth = Authenticator(users, SessionStore(), hooks=hooks, **kw)  # type: ignore[arg-type]
    return auth, users, secret, seen


def test_argon2id_hashes() -> None:
    users = UserStore(FAST)
    user = users.add("x", "agent", "pw")
    assert user.password_hash.startswith("$argon2id$")
    with pytest.raises(ValueError, match="TOTP"):
        users.add("y", "auditor", "pw")


def test_login_password_and_totp() -> None:
    auth, _, secret, seen = make_auth()
    ok = auth.login("ann", "agent-pw", None, source_ip="127.100.0.5", now=T0)
    assert ok.ok and ok.token and auth.sessions.get(ok.token, T0) is not None
    no_otp = auth.login("adam", "admin-pw", None, source_ip="127.100.0.5", now=T0)
    assert not no_otp.ok and no_otp.second_factor_required
    bad = auth.login("adam", "admin-pw", "000000", source_ip="127.100.0.5", now=T0)
    assert not bad.ok
    good = auth.login("adam", "admin-pw", pyotp.TOTP(secret).at(T0), source_ip="127.100.0.5",
                      now=T0)
    assert good.ok and auth.sessions.get(good.token or "", T0).mfa  # type: ignore[union-attr]
    assert [e["action"] for _, e in seen] == [  # type: ignore[index]
        "login", "login.failed", "login.failed", "login"]


def test_no_user_enumeration() -> None:
    auth, *_ = make_auth()
    unknown = auth.login("nobody", "x", None, source_ip="127.100.0.5", now=T0)
    wrong = auth.login("ann", "x", None, source_ip="127.100.0.5", now=T0)
    assert unknown.public_message == wrong.public_message == "invalid credentials"


def test_repeated_failures_throttle_the_source_but_never_revoke_sessions() -> None:
    """Issue 17 item 10: guessing someone's password must not log them out or lock them out
    elsewhere; the guessing source waits, growing, instead (NIST SP 800-63B §5.2.2)."""
    auth, _, _, seen = make_auth(throttle=CredentialThrottle(ThrottleConfig(
        delay_after=3, base_delay=10.0, max_delay=600.0, account_delay_after=50)))
    token = auth.login("ann", "agent-pw", None, source_ip="127.100.0.5", now=T0).token
    for i in range(3):
        assert auth.login("ann", "bad", None, source_ip="127.100.0.9", now=T0 + i).reason == (
            "bad password")
    assert auth.sessions.get(token or "", T0 + 5) is not None  # still logged in
    # The guesser's source waits 10 s (then 20, 40...), even with the right password.
    held = auth.login("ann", "agent-pw", None, source_ip="127.100.0.9", now=T0 + 5)
    assert not held.ok and held.throttled and held.reason == "throttled"
    assert held.retry_after == pytest.approx(7.0)
    # The owner, from their own address, is not affected.
    assert auth.login("ann", "agent-pw", None, source_ip="127.100.0.5", now=T0 + 6).ok
    assert auth.login("ann", "agent-pw", None, source_ip="127.100.0.9", now=T0 + 12).ok
    assert auth.users.get("ann").locked_until is None  # type: ignore[union-attr]
    assert not [e for _, e in seen if e.get("action") == "account.lock"]  # type: ignore[attr-defined]


def test_throttled_unknown_and_known_accounts_answer_alike() -> None:
    auth, *_ = make_auth(throttle=CredentialThrottle(ThrottleConfig(delay_after=2,
                                                                    base_delay=30.0)))
    answers = []
    for name in ("ann", "nobody"):
        for i in range(2):
            auth.login(name, "bad", None, source_ip="127.100.0.9", now=T0 + i)
        answers.append(auth.login(name, "bad", None, source_ip="127.100.0.9", now=T0 + 2))
    assert [(a.ok, a.reason, a.retry_after, a.public_message) for a in answers] == [
        (False, "throttled", 29.0, "invalid credentials")] * 2


def test_501_downloads_in_10_minutes_locks_the_account() -> None:
    alerts: list[Alert] = []
    detector = AnomalyDetector(AnomalyConfig.from_dict(
        {"downloads": {"max": 500, "window_seconds": 600}}), [alerts.append])
    auth, *_ = make_auth(anomaly=detector)
    token = auth.login("ann", "agent-pw", None, source_ip="127.100.0.5", now=T0).token
    for i in range(500):
        assert detector.record_download("ann", T0 + i)
    assert detector.record_download("ann", T0 + 599)  is False
    assert [a.kind for a in alerts] == ["download_burst"]
    assert "ann" in detector.locked
    assert auth.sessions.get(token or "", T0 + 600) is None
    assert not auth.login("ann", "agent-pw", None, source_ip="127.100.0.5", now=T0 + 700).ok
    auth.unlock("ann", by="adam")
    assert auth.login("ann", "agent-pw", None, source_ip="127.100.0.5", now=T0 + 800).ok


def test_500_downloads_or_a_slow_pace_do_not_lock() -> None:
    detector = AnomalyDetector()
    for i in range(2000):
        assert detector.record_download("q", T0 + i * 1.3)  # 461 per 10 minutes
    assert not detector.locked


def test_login_from_new_network_alerts_and_requires_second_factor() -> None:
    alerts: list[Alert] = []
    detector = AnomalyDetector(sinks=[alerts.append, lambda a: 1 / 0])
    auth, users, _, _ = make_auth(anomaly=detector)
    assert auth.login("ann", "agent-pw", None, source_ip="192.0.2.10", now=T0).ok  # seeds
    assert auth.login("ann", "agent-pw", None, source_ip="192.0.2.200", now=T0).ok  # same /24
    moved = auth.login("ann", "agent-pw", None, source_ip="198.51.100.7", now=T0)
    assert not moved.ok and moved.reason == "second factor required but not enrolled"
    assert [a.kind for a in alerts] == ["new_network"] and detector.sink_errors == 1
    secret = new_totp_secret()
    users.get("ann").totp_secret = secret  # type: ignore[union-attr]
    code = pyotp.TOTP(secret).at(T0 + 60)
    assert auth.login("ann", "agent-pw", code, source_ip="198.51.100.7", now=T0 + 60).ok
    assert auth.login("ann", "agent-pw", None, source_ip="198.51.100.8", now=T0 + 90).ok


def test_ipv6_networks_are_64s() -> None:
    detector = AnomalyDetector()
    assert detector.network_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert detector.network_of("::ffff:192.0.2.9") == "192.0.2.0/24"
    with pytest.raises(ValueError):
        AnomalyConfig.from_dict({"downloads": {"maxx": 1}})
