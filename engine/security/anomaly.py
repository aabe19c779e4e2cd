"""Anomaly rules: bulk recording downloads and logins from unseen networks.

Invariants:
- Sliding windows are exact: an account is locked when it makes more than `max` downloads within
  any `window` seconds (a deque of at most max+1 timestamps per account: O(1) per download).
- A login is "from a new network" when its /24 (IPv4) or /64 (IPv6) was never seen for that
  account after a fully successful login. The account's first login only seeds the list, unless
  configured otherwise.
- Alerts go to every sink; a sink that raises is counted and the others still get the alert.
- `now` is passed in; nothing here reads a clock.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_log = logging.getLogger("vaultpbx.security.anomaly")


@dataclass(frozen=True, slots=True, kw_only=True)
class AnomalyConfig:
    download_max: int = 500
    """More than this many recording downloads by one account within the window → lock."""
    download_window: float = 600.0
    """Seconds (10 minutes)."""
    lock_on_download_burst: bool = True
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    alert_on_first_login: bool = False
    """Alert even when an account has no known network yet (first login ever)."""
    webhook_url: str | None = None
    """POST every alert as JSON to this URL (e.g. a SIEM or chat hook); None: no webhook."""
    webhook_timeout: float = 5.0
    """Seconds a webhook delivery may take before it is given up (and counted)."""

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None) -> AnomalyConfig:
        """`{"downloads": {"max": 500, "window_seconds": 600, "lock": true},
             "new_network": {"ipv4_prefix": 24, "ipv6_prefix": 64, "alert_on_first_login": false}}`
        """
        config = config or {}
        downloads = dict(config.get("downloads") or {})
        network = dict(config.get("new_network") or {})
        webhook = dict(config.get("webhook") or {})
        unknown = (set(config) - {"downloads", "new_network", "webhook"}) | {
            f"webhook.{k}" for k in set(webhook) - {"url", "timeout_seconds"}} | {
            f"downloads.{k}" for k in set(downloads) - {"max", "window_seconds", "lock"}} | {
            f"new_network.{k}" for k in set(network) - {
                "ipv4_prefix", "ipv6_prefix", "alert_on_first_login"}}
        if unknown:
            raise ValueError(f"anomaly: unknown setting(s) {sorted(unknown)}")
        made = cls(
            download_max=_typed(downloads, "max", 500, int, "downloads"),
            download_window=float(_typed(downloads, "window_seconds", 600, float, "downloads")),
            lock_on_download_burst=_typed(downloads, "lock", True, bool, "downloads"),
            ipv4_prefix=_typed(network, "ipv4_prefix", 24, int, "new_network"),
            ipv6_prefix=_typed(network, "ipv6_prefix", 64, int, "new_network"),
            alert_on_first_login=_typed(network, "alert_on_first_login", False, bool,
                                        "new_network"),
            webhook_url=_typed(webhook, "url", None, str, "webhook") or None,
            webhook_timeout=float(_typed(webhook, "timeout_seconds", 5.0, float, "webhook")),
        )
        if made.webhook_url is not None and not made.webhook_url.startswith(
                ("http://", "https://")):
            raise ValueError("anomaly.webhook.url: must be an http:// or https:// URL")
        if made.download_max < 1 or made.download_window <= 0:
            raise ValueError("anomaly.downloads: max must be >= 1 and window_seconds > 0")
        if not 0 <= made.ipv4_prefix <= 32 or not 0 <= made.ipv6_prefix <= 128:
            raise ValueError("anomaly.new_network: prefix out of range")
        return made


def _typed(section: Mapping[str, Any], key: str, default: Any, kind: type, where: str) -> Any:
    """`section[key]` if it has type `kind` (a number for float; bool is no number), else a
    ValueError naming `anomaly.<where>.<key>`: a value is checked, never coerced."""
    value = section.get(key, default)
    if value is None and default is None:
        return None
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        wanted = {int: "an integer", float: "a number", bool: "true or false",
                  str: "a string"}[kind]
        raise ValueError(f"anomaly.{where}.{key}: must be {wanted}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    kind: str  # "download_burst" | "new_network" | ...
    account: str
    time: float
    detail: Mapping[str, Any] = field(default_factory=dict)


AlertSink = Callable[[Alert], None]


def log_sink(logger: logging.Logger = _log) -> AlertSink:
    def deliver(alert: Alert) -> None:
        logger.warning("security alert %s for %s: %s", alert.kind, alert.account,
                       dict(alert.detail))
    return deliver


class WebhookSink:
    """POST each alert as JSON to a URL from one background thread, so a slow or dead receiver
    never blocks the engine. Failures are counted and logged without the URL (it may carry a
    token)."""

    def __init__(self, url: str, timeout: float = 5.0, max_queue: int = 1000) -> None:
        import queue
        import threading

        self.url = url
        self.timeout = timeout
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def __call__(self, alert: Alert) -> None:
        import queue

        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        import json
        import urllib.request

        while True:
            alert = self._queue.get()
            if alert is None:
                return
            body = json.dumps({"kind": alert.kind, "account": alert.account,
                               "time": alert.time, "detail": dict(alert.detail)},
                              default=str).encode()
            request = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                self.delivered += 1
            except Exception as exc:  # noqa: BLE001 - a receiver's fault must not stop us
                self.failed += 1
                _log.warning("security alert webhook failed: %s", type(exc).__name__)

    def close(self, timeout: float = 2.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)


def audit_sink(audit_log: Any) -> AlertSink:
    """Append each alert to an `AuditLog`."""
    def deliver(alert: Alert) -> None:
        audit_log.append(actor="system", action=f"alert.{alert.kind}", target=alert.account,
                         details=dict(alert.detail), now=alert.time)
    return deliver


def hook_sink(registry: Any) -> AlertSink:
    """Publish on the SECURITY_ALERT hook point (the audit observer then records it)."""
    from ..hooks.registry import HookPoint

    def deliver(alert: Alert) -> None:
        registry.notify(HookPoint.SECURITY_ALERT, {
            "actor": "system", "action": f"alert.{alert.kind}", "target": alert.account,
            "details": dict(alert.detail)})
    return deliver


@dataclass(frozen=True, slots=True)
class LoginRisk:
    new_network: bool
    network: str

    @property
    def require_second_factor(self) -> bool:
        return self.new_network


class AnomalyDetector:
    def __init__(
        self,
        config: AnomalyConfig | None = None,
        sinks: Iterable[AlertSink] = (),
        *,
        on_lock: Callable[[str, float], None] | None = None,
    ) -> None:
        self.config = config or AnomalyConfig()
        self.sinks = list(sinks)
        self.on_lock = on_lock
        self._downloads: dict[str, deque[float]] = {}
        self._networks: dict[str, set[str]] = {}
        self.locked: set[str] = set()
        self.alerts = 0
        self.sink_errors = 0
        self.locks = 0

    # -- downloads ----------------------------------------------------------------------------

    def record_download(self, account: str, now: float) -> bool:
        """Count one recording download; False when the account is (now) locked."""
        if account in self.locked:
            return False
        cfg = self.config
        window = self._downloads.get(account)
        if window is None:
            window = self._downloads[account] = deque(maxlen=cfg.download_max + 1)
        window.append(now)
        if len(window) > cfg.download_max and now - window[0] <= cfg.download_window:
            self._alert(Alert(kind="download_burst", account=account, time=now, detail={
                "downloads": len(window), "window_seconds": cfg.download_window}))
            if cfg.lock_on_download_burst:
                self.lock(account, now)
                return False
            window.clear()
        return True

    def lock(self, account: str, now: float) -> None:
        if account in self.locked:
            return
        self.locked.add(account)
        self.locks += 1
        if self.on_lock is not None:
            try:
                self.on_lock(account, now)
            except Exception:
                _log.exception("on_lock callback failed for %s", account)

    def unlock(self, account: str) -> None:
        self.locked.discard(account)
        self._downloads.pop(account, None)

    # -- logins -------------------------------------------------------------------------------

    def network_of(self, source_ip: str) -> str:
        addr = ipaddress.ip_address(source_ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        prefix = self.config.ipv4_prefix if addr.version == 4 else self.config.ipv6_prefix
        return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))

    def check_login(self, account: str, source_ip: str, now: float) -> LoginRisk:
        """Call after the password checked out; alerts when the network is new for the account."""
        network = self.network_of(source_ip)
        known = self._networks.get(account)
        if known is None and not self.config.alert_on_first_login:
            return LoginRisk(False, network)
        if known is not None and network in known:
            return LoginRisk(False, network)
        self._alert(Alert(kind="new_network", account=account, time=now, detail={
            "network": network, "source_ip": source_ip}))
        return LoginRisk(True, network)

    def remember_network(self, account: str, source_ip: str) -> None:
        """Call after a fully successful login (second factor included when asked for)."""
        self._networks.setdefault(account, set()).add(self.network_of(source_ip))

    def known_networks(self, account: str) -> frozenset[str]:
        return frozenset(self._networks.get(account, ()))

    def load_known_networks(self, account: str, networks: Iterable[str]) -> None:
        self._networks[account] = set(networks)

    # -- alerts -------------------------------------------------------------------------------

    def _alert(self, alert: Alert) -> None:
        self.alerts += 1
        for sink in self.sinks:
            try:
                sink(alert)
            except Exception:
                self.sink_errors += 1
                _log.exception("alert sink %r failed", sink)

    def counters(self) -> dict[str, int]:
        return {
            "anomaly_alerts_total": self.alerts,
            "anomaly_locks_total": self.locks,
            "anomaly_sink_errors_total": self.sink_errors,
            "anomaly_locked_accounts": len(self.locked),
        }
