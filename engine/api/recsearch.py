"""Searching the recordings listing (GET /recordings): by start time, queue, agent and the
caller's number as the asking role sees it.

Invariants:
- Queue and agent come from the call records (docs/cdr.md: each call's row has `recording_id`,
  `queue`, `agent`); a recording with no call record yet (the call is still going) has both "".
- The caller filter matches the number *after* masking for the role: a role that sees
  `+44******0123` can find it by `0123` but cannot probe the hidden digits (a search must not be
  an oracle for what the mask hides).
- Bad parameters are a ValueError naming the parameter (the API answers 400); nothing else is
  read or changed then.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class RecordingCalls(Protocol):
    def recording_calls(self, recording_ids: Sequence[str]) -> dict[str, dict[str, object]]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingFilter:
    start: float | None = None   # created_at >= start (Unix seconds)
    end: float | None = None     # created_at < end
    queue: str | None = None
    agent: str | None = None
    caller: str | None = None    # substring of the masked number

    @classmethod
    def parse(cls, query: Mapping[str, list[str]]) -> RecordingFilter:
        def text(name: str) -> str | None:
            value = (query.get(name) or [""])[0].strip()
            if len(value) > 64:
                raise ValueError(f"{name}: at most 64 characters")
            return value or None

        def number(name: str) -> float | None:
            value = text(name)
            if value is None:
                return None
            try:
                parsed = float(value)
            except ValueError:
                raise ValueError(f"{name}: expected Unix seconds") from None
            if not math.isfinite(parsed):
                raise ValueError(f"{name}: expected Unix seconds")
            return parsed

        return cls(start=number("from"), end=number("to"), queue=text("queue"),
                   agent=text("agent"), caller=text("caller"))

    def matches(self, row: Mapping[str, object]) -> bool:
        """`row` as the role sees it (already masked), with queue and agent."""
        created = row.get("created_at")
        created = float(created) if isinstance(created, (int, float)) else 0.0
        return ((self.start is None or created >= self.start)
                and (self.end is None or created < self.end)
                and (self.queue is None or row.get("queue") == self.queue)
                and (self.agent is None or row.get("agent") == self.agent)
                and (self.caller is None or self.caller in str(row.get("caller", ""))))


def with_calls(rows: list[dict[str, object]], cdr: object) -> list[dict[str, object]]:
    """Each listing row with `call_id`, `queue` and `agent` from its call record ("" if none)."""
    calls: dict[str, dict[str, object]] = {}
    if hasattr(cdr, "recording_calls"):
        calls = cdr.recording_calls([str(row["recording_id"]) for row in rows])
    empty: dict[str, object] = {"call_id": "", "queue": "", "agent": ""}
    return [{**row, **calls.get(str(row["recording_id"]), empty)} for row in rows]
