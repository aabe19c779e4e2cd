"""The hook registry: named lifecycle points where plug-ins may read or change what passes.

Invariants:
- A hook point is either read-only (observers are told, and nothing they return is used) or
  modifying (the value returned by each plug-in replaces the one passed on).
- A plug-in that raises is isolated: the error is counted against it and the value passes on
  unchanged. A plug-in slower than the time budget gets a strike; after `max_strikes` strikes (or
  errors) it is disabled with one log line. The caller never sees an exception from a plug-in.
- With no plug-in enabled, `mask` is the identity and `notify` costs one dict lookup.
- Plug-ins are found by name: built-ins registered in code, third-party ones through the Python
  entry-point group `vaultpbx.hooks`; only the names listed in the config are enabled.

A plug-in is a callable `setup(registry) -> None` that calls `add_masker` / `add_observer`.
Everything it registers while `setup` runs is accounted under its name.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "vaultpbx.hooks"

_log = logging.getLogger("vaultpbx.hooks")


class HookPoint(enum.Enum):
    SIP_MESSAGE_IN = "sip_message_in"
    SIP_MESSAGE_OUT = "sip_message_out"
    CALL_STATE = "call_state"
    ROUTING_DECISION = "routing_decision"
    RECORDING_STARTED = "recording_started"
    RECORDING_STOPPED = "recording_stopped"
    RECORDING_ACCESSED = "recording_accessed"
    # PCI pause switched on or off for a recorded call (by the admin API or a plug-in through
    # `registry.controls["recording.sensitive"]`): audited.
    RECORDING_SENSITIVE = "recording_sensitive"
    API_REQUEST = "api_request"
    LOG_RECORD = "log_record"
    # Security events: each one leaves an audit record (see vaultpbx.security.audit).
    LOGIN = "login"
    LOGOUT = "logout"
    ACCESS_DENIED = "access_denied"
    CONFIG_CHANGE = "config_change"
    USER_CHANGE = "user_change"
    KEY_ROTATION = "key_rotation"
    RECORDING_SHREDDED = "recording_shredded"
    RETENTION_CHANGE = "retention_change"
    APPROVAL = "approval"
    SECURITY_ALERT = "security_alert"
    # Bulk exports of personal data (CDR / queue-event CSV): who, what, which range, how many.
    DATA_EXPORT = "data_export"
    # A person acted on a live call (hang up from the console): who, which call, why.
    CALL_CONTROL = "call_control"


@dataclass(frozen=True, slots=True, kw_only=True)
class HookPointSpec:
    point: HookPoint
    may_modify: bool


HOOK_POINTS: dict[HookPoint, HookPointSpec] = {
    point: HookPointSpec(point=point, may_modify=point is HookPoint.LOG_RECORD)
    for point in HookPoint
}

# Points the audit observer subscribes to (everything that touches data or privileges).
AUDITED_POINTS: tuple[HookPoint, ...] = (
    HookPoint.RECORDING_ACCESSED,
    HookPoint.CALL_CONTROL,
    HookPoint.RECORDING_SENSITIVE,
    HookPoint.LOGIN,
    HookPoint.LOGOUT,
    HookPoint.ACCESS_DENIED,
    HookPoint.CONFIG_CHANGE,
    HookPoint.USER_CHANGE,
    HookPoint.KEY_ROTATION,
    HookPoint.RECORDING_SHREDDED,
    HookPoint.RETENTION_CHANGE,
    HookPoint.APPROVAL,
    HookPoint.SECURITY_ALERT,
    HookPoint.DATA_EXPORT,
)

# A masker takes (field kind, value, role) and returns the value to store or show.
Masker = Callable[[str, str, str], str]
Observer = Callable[[HookPoint, object], None]
PluginSetup = Callable[["HookRegistry"], None]


class PluginNotFound(LookupError):
    pass


class PluginStats:
    """Per-plug-in accounting; `disabled` plug-ins are skipped without a call."""

    __slots__ = ("name", "calls", "errors", "slow", "strikes", "disabled", "total_ns",
                 "essential")

    def __init__(self, name: str) -> None:
        self.name = name
        # Essential plug-ins (the audit log) are counted but never disabled: an audit trail
        # that switches itself off after five slow fsyncs would be worse than a slow one.
        self.essential = False
        self.calls = 0
        self.errors = 0
        self.slow = 0
        self.strikes = 0
        self.disabled = False
        self.total_ns = 0


class HookRegistry:
    __slots__ = (
        "_maskers",
        "_observers",
        "_stats",
        "_builtins",
        "_current",
        "_clock_ns",
        "budget_ns",
        "max_strikes",
        "errors",
        "essential_errors",
        "log_processor",
        "controls",
    )

    def __init__(
        self,
        *,
        budget_seconds: float = 0.005,
        max_strikes: int = 5,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self._maskers: list[tuple[Masker, PluginStats]] = []
        self._observers: dict[HookPoint, list[tuple[Observer, PluginStats]]] = {}
        self._stats: dict[str, PluginStats] = {}
        self._builtins: dict[str, PluginSetup] = {}
        self._current: PluginStats | None = None
        self._clock_ns = clock_ns
        self.budget_ns = int(budget_seconds * 1e9)
        self.max_strikes = max_strikes
        self.errors = 0
        self.essential_errors = 0  # failures of essential observers (the audit log)
        # What the engine lets plug-ins drive, by name (an IVR or payment plug-in switches the
        # PCI pause with controls["recording.sensitive"](call_id, on, actor) -> bool). Filled by
        # the runtime; a name is absent when that part of the engine is not running.
        self.controls: dict[str, Callable[..., Any]] = {}
        # runtime/logs.py runs every structlog record through this: built-in masking and secret
        # redaction always, then the enabled plug-in maskers. Replace it to change the policies:
        # `registry.log_processor = MaskProcessor(TextMasker(policies), registry=registry)`.
        from .maskers import MaskProcessor

        self.log_processor: Callable[..., Any] = MaskProcessor(registry=self)

    # -- registration -----------------------------------------------------------------------

    def _owner(self, name: str | None, fallback: str) -> PluginStats:
        if name is None and self._current is not None:
            return self._current
        key = name or fallback
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = PluginStats(key)
        return stats

    def add_masker(self, masker: Masker, *, name: str | None = None) -> None:
        fallback = getattr(masker, "__qualname__", None) or repr(masker)
        self._maskers.append((masker, self._owner(name, fallback)))

    def add_observer(
        self, point: HookPoint, observer: Observer, *, name: str | None = None,
        essential: bool = False,
    ) -> None:
        fallback = getattr(observer, "__qualname__", None) or repr(observer)
        stats = self._owner(name, fallback)
        stats.essential = stats.essential or essential
        self._observers.setdefault(point, []).append((observer, stats))

    def register_builtin(self, name: str, setup: PluginSetup) -> None:
        """Make a plug-in available by name without an entry point (it still must be enabled)."""
        self._builtins[name] = setup

    def available(self) -> dict[str, str]:
        """Name → where it comes from ("builtin" or the entry point's value)."""
        found = {name: "builtin" for name in self._builtins}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            found.setdefault(ep.name, ep.value)
        return found

    def enable(self, names: Iterable[str]) -> None:
        """Load and set up the plug-ins listed in the config, in that order.

        Unknown names raise `PluginNotFound` (a config error, caught at load time). A plug-in
        whose `setup` raises is counted, logged and left disabled: the engine still starts.
        """
        eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        for name in names:
            setup = self._builtins.get(name)
            if setup is None:
                ep = eps.get(name)
                if ep is None:
                    raise PluginNotFound(f"hook plug-in {name!r} is neither built in nor "
                                         f"installed under entry-point group {ENTRY_POINT_GROUP}")
                try:
                    setup = ep.load()
                except Exception as exc:
                    self._fail_setup(name, exc)
                    continue
            self._current = self._owner(name, name)
            try:
                setup(self)
            except Exception as exc:
                self._fail_setup(name, exc)
            finally:
                self._current = None

    def _fail_setup(self, name: str, exc: BaseException) -> None:
        stats = self._owner(name, name)
        stats.errors += 1
        self.errors += 1
        self._disable(stats, f"setup failed: {type(exc).__name__}: {exc}")

    # -- isolation ----------------------------------------------------------------------------

    def _disable(self, stats: PluginStats, why: str) -> None:
        if not stats.disabled:
            stats.disabled = True
            _log.warning("hook plug-in %s disabled: %s", stats.name, why)

    def _account(self, stats: PluginStats, elapsed_ns: int, failed: bool) -> None:
        stats.calls += 1
        stats.total_ns += elapsed_ns
        if failed:
            stats.errors += 1
            stats.strikes += 1
            self.errors += 1
        if elapsed_ns > self.budget_ns:
            stats.slow += 1
            stats.strikes += 1
        if stats.strikes >= self.max_strikes and not stats.essential:
            self._disable(
                stats,
                f"{stats.strikes} strikes ({stats.errors} errors, {stats.slow} over "
                f"{self.budget_ns / 1e6:g} ms)",
            )

    def mask(self, kind: str, value: str, role: str = "system", *, skip: object = None) -> str:
        """Shape `value` (a phone number, URI, free text...) for storage or display to `role`.

        `skip`: a masker already applied by the caller (the log processor's built-in one).
        """
        clock = self._clock_ns
        for masker, stats in self._maskers:
            if stats.disabled or masker is skip:
                continue
            start = clock()
            failed = False
            try:
                result = masker(kind, value, role)
                if isinstance(result, str):
                    value = result
                else:
                    failed = True
            except Exception:
                failed = True
            self._account(stats, clock() - start, failed)
        return value

    def notify(self, point: HookPoint, event: object) -> None:
        observers = self._observers.get(point)
        if not observers:
            return
        clock = self._clock_ns
        for observer, stats in observers:
            if stats.disabled:
                continue
            start = clock()
            failed = False
            try:
                observer(point, event)
            except Exception as exc:
                failed = True
                if stats.essential:
                    # The audit trail: a lost record must be loud, and callers that must not
                    # go on without one (a login) see the count move.
                    self.essential_errors += 1
                    _log.error("essential hook %s failed at %s: %s: %s", stats.name,
                               point.value, type(exc).__name__, exc)
            self._account(stats, clock() - start, failed)

    @property
    def has_maskers(self) -> bool:
        return bool(self._maskers)

    def has_masker_other_than(self, masker: object) -> bool:
        return any(m is not masker and not s.disabled for m, s in self._maskers)

    def counters(self) -> dict[str, int]:
        """Flat counters for /metrics: `hooks_<plugin>_<counter>` plus totals."""
        out: dict[str, int] = {"hooks_errors_total": self.errors}
        for stats in self._stats.values():
            prefix = f"hooks_{stats.name}_"
            out[prefix + "calls"] = stats.calls
            out[prefix + "errors"] = stats.errors
            out[prefix + "slow"] = stats.slow
            out[prefix + "disabled"] = int(stats.disabled)
            out[prefix + "time_ns"] = stats.total_ns
        return out

    def stats(self, name: str) -> PluginStats:
        return self._stats[name]
