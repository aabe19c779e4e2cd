"""Per-queue and per-agent statistics: running counters and the snapshots handed out.

Definitions (stated once, so dashboards and tests agree):
- service level = calls answered within the queue's `answer_within` / calls whose fate in the
  queue is settled (answered + abandoned + overflowed out). None before the first such call.
- handle time = talk time + wrap-up time of one call; the average is over calls whose wrap-up
  ended.
- occupancy = time with at least one busy seat (reserved, on-call, wrap-up) / that time plus
  time available with no busy seat. Breaks, not-responding and offline time count in neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from .states import AgentState


@dataclass(slots=True)
class QueueCounters:
    entered: int = 0
    answered: int = 0
    answered_in_target: int = 0
    abandoned: int = 0
    overflowed: int = 0
    handled: int = 0
    handle_time_total: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    queue: str
    waiting: int
    """Calls waiting now (not those ringing at an agent)."""
    ringing: int
    """Calls offered to an agent and not yet answered."""
    longest_wait: float
    """Seconds the longest-waiting call has waited (0 when none waits)."""
    entered: int
    answered: int
    answered_in_target: int
    abandoned: int
    overflowed: int
    service_level: float | None
    average_handle_time: float | None


@dataclass(slots=True)
class AgentCounters:
    offered: int = 0
    answered: int = 0
    missed: int = 0
    handled: int = 0
    handle_time_total: float = 0.0
    busy_time: float = 0.0
    idle_time: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStats:
    agent_id: str
    state: AgentState
    break_reason: str | None
    busy_seats: int
    capacity: int
    offered: int
    answered: int
    missed: int
    """Offers that rang out or were refused."""
    handled: int
    average_handle_time: float | None
    occupancy: float | None
