"""The hook registry: named lifecycle points where plug-ins may read or change what passes.

Invariants:
- A hook point is either read-only (observers are told, and nothing they return is used) or
  modifying (the value returned by each plug-in replaces the one passed on).
- A plug-in that raises is isolated: the error is counted and the value passes on unchanged.
- With no plug-in enabled, `mask` is the identity and `notify` costs one dict lookup.

The compliance layer (issue 6) fills this in with maskers, audit sinks and entry-point loading;
the SIP core already calls it at its hook points so that nothing needs to be re-plumbed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class HookPoint(enum.Enum):
    SIP_MESSAGE_IN = "sip_message_in"
    SIP_MESSAGE_OUT = "sip_message_out"
    CALL_STATE = "call_state"
    ROUTING_DECISION = "routing_decision"
    RECORDING_STARTED = "recording_started"
    RECORDING_STOPPED = "recording_stopped"
    RECORDING_ACCESSED = "recording_accessed"
    API_REQUEST = "api_request"
    LOG_RECORD = "log_record"


@dataclass(frozen=True, slots=True, kw_only=True)
class HookPointSpec:
    point: HookPoint
    may_modify: bool


HOOK_POINTS: dict[HookPoint, HookPointSpec] = {
    HookPoint.SIP_MESSAGE_IN: HookPointSpec(point=HookPoint.SIP_MESSAGE_IN, may_modify=False),
    HookPoint.SIP_MESSAGE_OUT: HookPointSpec(point=HookPoint.SIP_MESSAGE_OUT, may_modify=False),
    HookPoint.CALL_STATE: HookPointSpec(point=HookPoint.CALL_STATE, may_modify=False),
    HookPoint.ROUTING_DECISION: HookPointSpec(point=HookPoint.ROUTING_DECISION, may_modify=False),
    HookPoint.RECORDING_STARTED: HookPointSpec(point=HookPoint.RECORDING_STARTED, may_modify=False),
    HookPoint.RECORDING_STOPPED: HookPointSpec(point=HookPoint.RECORDING_STOPPED, may_modify=False),
    HookPoint.RECORDING_ACCESSED: HookPointSpec(
        point=HookPoint.RECORDING_ACCESSED, may_modify=False
    ),
    HookPoint.API_REQUEST: HookPointSpec(point=HookPoint.API_REQUEST, may_modify=False),
    HookPoint.LOG_RECORD: HookPointSpec(point=HookPoint.LOG_RECORD, may_modify=True),
}

# A masker takes (field kind, value, role) and returns the value to store or show.
Masker = Callable[[str, str, str], str]
Observer = Callable[[HookPoint, object], None]


class HookRegistry:
    __slots__ = ("_maskers", "_observers", "errors")

    def __init__(self) -> None:
        self._maskers: list[Masker] = []
        self._observers: dict[HookPoint, list[Observer]] = {}
        self.errors = 0

    def add_masker(self, masker: Masker) -> None:
        self._maskers.append(masker)

    def add_observer(self, point: HookPoint, observer: Observer) -> None:
        self._observers.setdefault(point, []).append(observer)

    def mask(self, kind: str, value: str, role: str = "system") -> str:
        """Shape `value` (a phone number, URI, free text...) for storage or display to `role`."""
        for masker in self._maskers:
            try:
                value = masker(kind, value, role)
            except Exception:
                self.errors += 1
        return value

    def notify(self, point: HookPoint, event: object) -> None:
        observers = self._observers.get(point)
        if not observers:
            return
        for observer in observers:
            try:
                observer(point, event)
            except Exception:
                self.errors += 1
