"""The router's mutable runtime records: agents, seats, calls, queues and their indexes.

These are private to the package; the B2BUA sees only events and frozen snapshots.

Invariants (kept by `router.Router`):
- a call is WAITING in exactly one bucket of exactly one queue, or RINGING/CONNECTED on exactly
  one agent's seat, never both;
- a bucket holds the waiting calls of one queue that share one effective requirement; its heap
  is ordered by (-priority, first enqueue time, seq) and may hold stale entries (lazy deletion),
  an entry being live only while its token equals the call's token;
- an agent is in the available index exactly while presence is READY, busy seats < capacity
  and the agent is still configured.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

from .config import AgentConfig, QueueConfig, relaxed_requirement
from .states import AgentState, Presence, SeatState
from .stats import AgentCounters, QueueCounters

Requirement = tuple[tuple[str, int], ...]
"""Sorted (skill, minimum proficiency) pairs; equal requirements compare and hash equal."""


class CallState(enum.Enum):
    WAITING = "waiting"
    RINGING = "ringing"
    CONNECTED = "connected"


@dataclass(slots=True, eq=False)
class Seat:
    """One call held by an agent, from offer to the end of wrap-up."""

    agent: Agent
    call_id: str
    queue: Queue
    state: SeatState
    answered_at: float = 0.0
    talk_time: float = 0.0
    wrap_started: float = 0.0


@dataclass(slots=True, eq=False)
class Agent:
    agent_id: str
    order: int
    config: AgentConfig
    skills: dict[str, int]
    """A plain-dict copy of `config.skills`: the hot path reads it (a mappingproxy is slower)."""
    presence: Presence = Presence.OFFLINE
    break_reason: str | None = None
    seats: dict[str, Seat] = field(default_factory=dict)
    reserved: int = 0
    on_call: int = 0
    wrap_up: int = 0
    idle_since: float = 0.0
    shown: AgentState = AgentState.OFFLINE
    busy_since: float | None = None
    idle_from: float | None = None
    indexed: bool = False
    index_sets: tuple[set[Agent], ...] = ()
    """The availability-index sets this agent sits in while available (see Router)."""
    retired: bool = False
    candidate_queues: tuple[Queue, ...] = ()
    counters: AgentCounters = field(default_factory=AgentCounters)

    @property
    def busy_seats(self) -> int:
        return self.reserved + self.on_call + self.wrap_up

    def may_serve(self, queue_name: str) -> bool:
        allowed = self.config.queues
        return allowed is None or queue_name in allowed

    def meets(self, requirement: Requirement) -> bool:
        skills = self.skills
        for skill, level in requirement:
            if skills.get(skill, 0) < level:
                return False
        return True


@dataclass(slots=True, eq=False)
class Call:
    call_id: str
    queue: Queue
    own_priority: int
    own_skills: Requirement
    attributes: Mapping[str, str]
    enqueued_at: float
    """First entry into any queue: the FIFO key, kept through ring-outs and overflows."""
    seq: int
    queue_entered_at: float
    """Entry into the current queue: relaxation, max wait and service level count from here."""
    state: CallState = CallState.WAITING
    token: int = 0
    """Bumped at every bucket push: tells a live heap entry from a stale one."""
    wait_epoch: int = 0
    """Bumped at every entry into WAITING: tells live waiting timers and age entries."""
    stage: int = 0
    requirement: Requirement = ()
    bucket: CallBucket | None = None
    seat: Seat | None = None

    @property
    def priority(self) -> int:
        return self.queue.config.priority + self.own_priority


HeapEntry = tuple[int, float, int, int, Call]
"""(-priority, enqueued_at, seq, token, call); seq is unique so `call` is never compared."""


@dataclass(slots=True, eq=False)
class CallBucket:
    """Waiting calls of one queue with one effective requirement, best first."""

    requirement: Requirement
    heap: list[HeapEntry] = field(default_factory=list)
    live: int = 0

    def push(self, call: Call) -> None:
        heapq.heappush(self.heap, (-call.priority, call.enqueued_at, call.seq, call.token, call))
        self.live += 1
        call.bucket = self

    def discard(self, call: Call) -> None:
        """Forget `call` (its heap entry goes stale and is dropped when it surfaces)."""
        call.bucket = None
        self.live -= 1
        if len(self.heap) > 2 * self.live + 32:
            self.heap = [e for e in self.heap if e[4].bucket is self and e[4].token == e[3]]
            heapq.heapify(self.heap)

    def head(self) -> HeapEntry | None:
        heap = self.heap
        while heap:
            entry = heap[0]
            call = entry[4]
            if call.bucket is self and call.token == entry[3]:
                return entry
            heapq.heappop(heap)
        return None


@dataclass(slots=True, eq=False)
class Queue:
    name: str
    config: QueueConfig
    buckets: dict[Requirement, CallBucket] = field(default_factory=dict)
    waiting: int = 0
    ringing: int = 0
    by_age: list[tuple[float, int, int, Call]] = field(default_factory=list)
    """(queue_entered_at, seq, wait_epoch, call) for the longest-wait statistic; lazy."""
    rr_cursor: int = -1
    retired: bool = False
    counters: QueueCounters = field(default_factory=QueueCounters)
    _requirements: dict[tuple[Requirement, int], Requirement] = field(default_factory=dict)

    def requirement(self, own_skills: Requirement, stage: int) -> Requirement:
        """The effective requirement of a call with `own_skills` at relaxation `stage`."""
        key = (own_skills, stage)
        cached = self._requirements.get(key)
        if cached is None:
            base = dict(self.config.skills)
            for skill, level in own_skills:
                base[skill] = max(level, base.get(skill, 0))
            cached = relaxed_requirement(base, self.config.relaxation, stage)
            self._requirements[key] = cached
        return cached

    def forget_requirements(self) -> None:
        self._requirements.clear()

    def oldest_waiting(self) -> Call | None:
        by_age = self.by_age
        while by_age:
            if self._is_live(by_age[0]):
                return by_age[0][3]
            heapq.heappop(by_age)
        return None

    def note_waiting(self, call: Call) -> None:
        heapq.heappush(self.by_age, (call.queue_entered_at, call.seq, call.wait_epoch, call))
        if len(self.by_age) > 2 * self.waiting + 64:
            self.by_age = [e for e in self.by_age if self._is_live(e)]
            heapq.heapify(self.by_age)

    def _is_live(self, entry: tuple[float, int, int, Call]) -> bool:
        call = entry[3]
        return (call.state is CallState.WAITING and call.queue is self
                and call.wait_epoch == entry[2])
