"""The audit observer: every security-relevant hook point leaves an audit record.

Invariants:
- Subscribes only to read-only points (`AUDITED_POINTS`); it never changes what passes.
- An event may be a mapping or any object with attributes; `actor`, `action`, `target` and
  `details` are read from it, the action defaults to the hook point's name. Anything else the
  event carries goes into `details` (masked by the audit log before it is written).
- Recording events name their object by `recording_id` and a bare verb ("export", "shred"):
  the id becomes the target and the verb `recording.<verb>`, as the admin API writes them.
- The clock is injected: runtime passes `time.time`, tests pass a fake.
- An `Unverified` actor or target (a name nobody vouched for) is passed on as it is: the log
  stores its keyed hash, never the text.
- A record that cannot be written raises (the registry counts the essential observer's error
  and logs it; callers that must fail closed check `HookRegistry.essential_errors`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

from ..hooks.registry import AUDITED_POINTS, HookPoint, HookRegistry
from .audit import AuditLog, Unverified

_KNOWN = ("actor", "action", "target", "details")
_RECORDING_POINTS = (HookPoint.RECORDING_ACCESSED, HookPoint.RECORDING_SHREDDED)


def _as_mapping(event: object) -> dict[str, Any]:
    if isinstance(event, Mapping):
        return dict(event)
    if is_dataclass(event) and not isinstance(event, type):
        return asdict(event)
    if hasattr(event, "__dict__"):
        return dict(vars(event))
    slots = getattr(type(event), "__slots__", ())
    if slots:
        return {name: getattr(event, name) for name in slots if hasattr(event, name)}
    return {"value": str(event)}


class AuditObserver:
    __slots__ = ("log", "clock")

    def __init__(self, log: AuditLog, clock: Callable[[], float]) -> None:
        self.log = log
        self.clock = clock

    def __call__(self, point: HookPoint, event: object) -> None:
        fields = _as_mapping(event)
        if "target" not in fields and "recording_id" in fields:
            fields["target"] = fields.pop("recording_id")
        action = str(fields.get("action") or "")
        if action and "." not in action and point in _RECORDING_POINTS:
            action = f"recording.{action}"
        details = dict(fields.get("details") or {})
        for key, value in fields.items():
            if key not in _KNOWN:
                details[key] = value
        actor, target = fields.get("actor", "system"), fields.get("target", "")
        self.log.append(
            actor=actor if isinstance(actor, Unverified) else str(actor),
            action=action or point.value,
            target=target if isinstance(target, Unverified) else str(target),
            details=details,
            now=self.clock(),
        )

    def attach(
        self, registry: HookRegistry, points: tuple[HookPoint, ...] = AUDITED_POINTS
    ) -> None:
        for point in points:
            registry.add_observer(point, self, name="audit", essential=True)
