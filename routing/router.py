"""The skills-based router: queued calls in, offers to agents out. No I/O; time is `now`.

Decisions never scan every call and every agent:
- when an agent frees up, only the buckets of the queues the agent could ever serve are looked
  at, and only the head of each bucket whose requirement the agent meets (a bucket groups one
  queue's waiting calls that share one effective requirement, ordered by priority then first
  arrival); the best head wins;
- when a call arrives (or its requirement loosens), only the available agents in the smallest
  of the per-(skill, level) availability sets of its requirement are looked at, and the queue's
  strategy picks among those who meet the whole requirement.

Invariant after every entry point returns (tests check it after every step): no available
agent with a free seat meets the requirement of any waiting call the agent may serve. It holds
because the only things that can create such a pair are an agent becoming available (the router
then fills the agent's free seats from its queues) and a call appearing or loosening (the router
then looks for an agent for that call); calls leaving and agents getting busy create none.

The router is deterministic: ties go to the earlier configured agent or the earlier call, so no
randomness needs injecting.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from .config import (
    MAX_PROFICIENCY,
    MIN_PROFICIENCY,
    AgentConfig,
    QueueConfig,
    RouterConfig,
    Strategy,
    relaxed_requirement,
)
from .errors import RoutingError
from .events import (
    AgentStateChanged,
    CallOverflowed,
    CallRelaxed,
    CancelOffer,
    DecisionTrigger,
    OfferCall,
    OfferEndReason,
    RouterEvent,
    RoutingDecision,
)
from .model import Agent, Call, CallBucket, CallState, HeapEntry, Queue, Requirement, Seat
from .states import (
    PRESENCE_TRANSITIONS,
    SEAT_TRANSITIONS,
    AgentState,
    Presence,
    PresenceInput,
    SeatInput,
    SeatState,
    derive_agent_state,
)
from .stats import AgentStats, QueueStats

# Timer kinds; a timer entry is (when, seq, kind, subject, epoch).
_RELAX: Final = 0
_MAX_WAIT: Final = 1
_RING: Final = 2
_WRAP: Final = 3

TimerEntry = tuple[float, int, int, "Call | Seat", int]


class Router:
    """Skills-based call router. Every entry point returns the events it caused, in order."""

    def __init__(self, config: RouterConfig, now: float) -> None:
        self._config = config
        self._queues: dict[str, Queue] = {}
        self._agents: dict[str, Agent] = {}
        self._calls: dict[str, Call] = {}
        # skill -> sets indexed by level: _available[skill][level] holds the available agents
        # whose proficiency in `skill` is at least `level` (index 0 unused).
        self._available: dict[str, list[set[Agent]]] = {}
        self._available_any: set[Agent] = set()
        self._timers: list[TimerEntry] = []
        self._seq = 0
        self._order_span = 1
        self._install(config, now, [])

    # -----------------------------------------------------------------------------------------
    # Calls

    def enqueue_call(
        self,
        *,
        call_id: str,
        queue: str,
        now: float,
        priority: int = 0,
        required_skills: Mapping[str, int] | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> list[RouterEvent]:
        """A caller enters `queue`. `required_skills` add to the queue's (e.g. a language the
        caller chose); `priority` adds to the queue's; `attributes` (vip, language...) travel
        with the call for the B2BUA and are not interpreted here."""
        if call_id in self._calls:
            raise RoutingError(f"call {call_id!r} is already in the router")
        q = self._queues.get(queue)
        if q is None or q.retired:
            raise RoutingError(f"unknown queue {queue!r}")
        own: dict[str, int] = {}
        for skill, level in (required_skills or {}).items():
            if skill not in self._config.skills:
                raise RoutingError(f"call {call_id!r}: unknown skill {skill!r}")
            if isinstance(level, bool) or not isinstance(level, int) or not (
                    MIN_PROFICIENCY <= level <= MAX_PROFICIENCY):
                raise RoutingError(f"call {call_id!r}: skill {skill!r} level must be 1..5")
            own[skill] = level
        self._seq += 1
        call = Call(
            call_id=call_id, queue=q, own_priority=priority, own_skills=tuple(sorted(own.items())),
            attributes=MappingProxyType(dict(attributes or {})), enqueued_at=now, seq=self._seq,
            queue_entered_at=now,
        )
        self._calls[call_id] = call
        q.counters.entered += 1
        out: list[RouterEvent] = []
        self._enter_waiting(call, now, out)
        self._dispatch_call(call, now, DecisionTrigger.CALL_ARRIVED, out)
        return out

    def caller_abandoned(self, *, call_id: str, now: float) -> list[RouterEvent]:
        """The caller hung up before an agent answered (waiting, or while ringing)."""
        call = self._call(call_id)
        out: list[RouterEvent] = []
        q = call.queue
        if call.state is CallState.WAITING:
            self._leave_waiting(call)
        elif call.state is CallState.RINGING:
            seat = call.seat
            assert seat is not None
            agent = seat.agent
            self._seat_input(seat, SeatInput.CALLER_ABANDONED)
            q.ringing -= 1
            out.append(CancelOffer(call_id=call_id, agent_id=agent.agent_id,
                                   reason=OfferEndReason.CALLER_ABANDONED))
            self._fill_agent(agent, now, out)
        else:
            raise RoutingError(f"call {call_id!r} is connected: use call_ended")
        q.counters.abandoned += 1
        del self._calls[call_id]
        self._drop_if_retired(q)
        return out

    def caller_left_empty(self, *, call_id: str, now: float) -> list[RouterEvent]:
        """The engine takes a waiting call out because its queue has no agent left to serve it
        (`announce.leave_when_empty`). Not an abandon (the caller did not hang up) and not an
        overflow (no max_wait passed): no queue counter moves; the bridge counts it."""
        call = self._call(call_id)
        if call.state is not CallState.WAITING:
            raise RoutingError(f"call {call_id!r} is not waiting")
        self._leave_waiting(call)
        del self._calls[call_id]
        self._drop_if_retired(call.queue)
        return []

    def agent_answered(self, *, call_id: str, agent_id: str, now: float) -> list[RouterEvent]:
        """The agent picked up the call they were offered."""
        seat = self._ringing_seat(call_id, agent_id)
        call = self._calls[call_id]
        self._seat_input(seat, SeatInput.ANSWERED)
        seat.answered_at = now
        call.state = CallState.CONNECTED
        q = call.queue
        q.ringing -= 1
        q.counters.answered += 1
        if now - call.queue_entered_at <= q.config.service_level.answer_within:
            q.counters.answered_in_target += 1
        seat.agent.counters.answered += 1
        out: list[RouterEvent] = []
        self._refresh_agent(seat.agent, now, out)
        return out

    def agent_no_answer(self, *, call_id: str, agent_id: str, now: float) -> list[RouterEvent]:
        """The offer was refused or rang out at the B2BUA: the agent stops getting offers until
        ready; the call goes back to the head of its queue (it keeps its first arrival time)."""
        seat = self._ringing_seat(call_id, agent_id)
        out: list[RouterEvent] = []
        self._ring_out(seat, now, out)
        return out

    def call_ended(self, *, call_id: str, now: float) -> list[RouterEvent]:
        """The conversation ended; the agent's seat goes to wrap-up for the queue's time."""
        call = self._call(call_id)
        if call.state is not CallState.CONNECTED:
            raise RoutingError(f"call {call_id!r} was never answered: use caller_abandoned")
        seat = call.seat
        assert seat is not None
        self._seat_input(seat, SeatInput.CALL_ENDED)
        seat.talk_time = now - seat.answered_at
        seat.wrap_started = now
        del self._calls[call_id]
        out: list[RouterEvent] = []
        wrap = seat.queue.config.wrap_up
        if wrap > 0:
            self._push_timer(now + wrap, _WRAP, seat, 0)
            self._refresh_agent(seat.agent, now, out)
        else:
            self._end_wrap_up(seat, now, out)
        return out

    # -----------------------------------------------------------------------------------------
    # Agents

    def agent_login(self, *, agent_id: str, now: float) -> list[RouterEvent]:
        agent = self._agent(agent_id)
        return self._presence_input(agent, PresenceInput.LOGIN, now, None)

    def agent_logout(self, *, agent_id: str, now: float) -> list[RouterEvent]:
        """Signs the agent out; calls already held (even ringing) run to their end."""
        agent = self._agent(agent_id)
        return self._presence_input(agent, PresenceInput.LOGOUT, now, None)

    def agent_pause(self, *, agent_id: str, reason: str, now: float) -> list[RouterEvent]:
        """Break with a reason; calls already held run to their end, no new offers."""
        agent = self._agent(agent_id)
        return self._presence_input(agent, PresenceInput.PAUSE, now, reason)

    def agent_ready(self, *, agent_id: str, now: float) -> list[RouterEvent]:
        """Back from a break or from not-responding: offers resume at once."""
        agent = self._agent(agent_id)
        return self._presence_input(agent, PresenceInput.READY, now, None)

    # -----------------------------------------------------------------------------------------
    # Time

    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called (None: nothing pending)."""
        timers = self._timers
        while timers:
            if self._timer_is_live(timers[0]):
                return timers[0][0]
            heapq.heappop(timers)
        return None

    def handle_timer(self, now: float) -> list[RouterEvent]:
        """Run everything due at or before `now`: relaxation steps, max-wait overflows, ring
        timeouts, wrap-up ends, in the order they fell due. What they cause is stamped `now`
        (never earlier than what the router already saw), so call this as soon as
        `get_timer()` says."""
        out: list[RouterEvent] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            if not self._timer_is_live(entry):
                continue
            _, _, kind, subject, _ = entry
            if kind == _RELAX:
                assert isinstance(subject, Call)
                self._relax(subject, now, out)
            elif kind == _MAX_WAIT:
                assert isinstance(subject, Call)
                self._overflow(subject, now, out)
            elif kind == _RING:
                assert isinstance(subject, Seat)
                out.append(CancelOffer(call_id=subject.call_id, agent_id=subject.agent.agent_id,
                                       reason=OfferEndReason.RING_TIMEOUT))
                self._ring_out(subject, now, out)
            else:
                assert isinstance(subject, Seat)
                self._end_wrap_up(subject, now, out)
        return out

    # -----------------------------------------------------------------------------------------
    # Configuration

    @property
    def config(self) -> RouterConfig:
        return self._config

    def apply_config(self, new_config: RouterConfig, now: float) -> list[RouterEvent]:
        """Switch to `new_config` without dropping a call. A removed queue keeps routing its
        calls under its old settings and accepts no new ones; a removed agent is signed out and
        forgotten once its held calls end. Waiting calls of a changed queue take the new
        requirements, relaxation and timers at once (their clocks keep running)."""
        out: list[RouterEvent] = []
        self._install(new_config, now, out)
        for agent in sorted(self._agents.values(), key=lambda a: a.order):
            self._fill_agent(agent, now, out, DecisionTrigger.CONFIG_APPLIED)
        return out

    # -----------------------------------------------------------------------------------------
    # Read-only views (supervisors, metrics, tests). These may scan; they are not on the hot
    # path.

    def agent_state(self, agent_id: str) -> AgentState:
        return self._agent(agent_id).shown

    def can_take_call(self, agent_id: str) -> bool:
        """True when the agent is available and has a free seat."""
        return self._agent(agent_id).indexed

    def waiting_requirement(self, call_id: str) -> tuple[str, tuple[tuple[str, int], ...], int]:
        """(queue, effective requirement, relaxation stage) of a waiting call."""
        call = self._call(call_id)
        if call.state is not CallState.WAITING:
            raise RoutingError(f"call {call_id!r} is not waiting")
        return call.queue.name, call.requirement, call.stage

    def waiting_call_ids(self) -> list[str]:
        return [c.call_id for c in self._calls.values() if c.state is CallState.WAITING]

    def call_agent(self, call_id: str) -> str | None:
        """The agent a ringing or connected call is on; None while it waits."""
        seat = self._call(call_id).seat
        return seat.agent.agent_id if seat is not None else None

    def queue_stats(self, queue: str, now: float) -> QueueStats:
        q = self._queues.get(queue)
        if q is None:
            raise RoutingError(f"unknown queue {queue!r}")
        c = q.counters
        oldest = q.oldest_waiting()
        settled = c.answered + c.abandoned + c.overflowed
        return QueueStats(
            queue=queue, waiting=q.waiting, ringing=q.ringing,
            longest_wait=now - oldest.queue_entered_at if oldest is not None else 0.0,
            entered=c.entered, answered=c.answered, answered_in_target=c.answered_in_target,
            abandoned=c.abandoned, overflowed=c.overflowed,
            service_level=c.answered_in_target / settled if settled else None,
            average_handle_time=c.handle_time_total / c.handled if c.handled else None,
        )

    def agent_stats(self, agent_id: str, now: float) -> AgentStats:
        agent = self._agent(agent_id)
        c = agent.counters
        busy, idle = c.busy_time, c.idle_time
        if agent.busy_since is not None:
            busy += now - agent.busy_since
        if agent.idle_from is not None:
            idle += now - agent.idle_from
        return AgentStats(
            agent_id=agent_id, state=agent.shown,
            break_reason=agent.break_reason if agent.presence is Presence.BREAK else None,
            busy_seats=agent.busy_seats, capacity=agent.config.capacity, offered=c.offered,
            answered=c.answered, missed=c.missed, handled=c.handled,
            average_handle_time=c.handle_time_total / c.handled if c.handled else None,
            occupancy=busy / (busy + idle) if busy + idle > 0 else None,
        )

    # -----------------------------------------------------------------------------------------
    # Decisions. These two methods are the only places that choose; a subclass may replace them
    # (the benchmark's naive router does) as long as it keeps the same tie-breaks.

    def _pick_call_for_agent(self, agent: Agent) -> tuple[Call | None, int]:
        """The best waiting call `agent` can take: highest priority, then earliest arrival."""
        best: HeapEntry | None = None
        considered = 0
        get_level = agent.skills.get
        for q in agent.candidate_queues:
            if not q.waiting:
                continue
            for requirement, bucket in q.buckets.items():
                considered += 1
                # heap[0] bounds the live head from below (stale entries only sit above or at
                # the top), so a bucket whose top cannot beat `best` needs no skill check.
                if best is not None and bucket.heap[0] >= best:
                    continue
                for skill, level in requirement:
                    if get_level(skill, 0) < level:
                        break
                else:
                    entry = bucket.head()
                    if entry is not None and (best is None or entry < best):
                        best = entry
        return (best[4] if best is not None else None), considered

    def _pick_agent_for_call(self, call: Call, now: float) -> tuple[Agent | None, int]:
        """The agent the call's queue strategy prefers among available agents who match."""
        requirement = call.requirement
        pool: set[Agent] = self._available_any
        for skill, level in requirement:
            levels = self._available.get(skill)
            if levels is None:
                return None, 0
            if len(levels[level]) < len(pool):
                pool = levels[level]
        if not pool:
            return None, 0
        q = call.queue
        candidates = [a for a in pool if a.meets(requirement) and a.may_serve(q.name)]
        if not candidates:
            return None, len(pool)
        return self._by_strategy(q, candidates, requirement, now), len(pool)

    def _by_strategy(self, q: Queue, candidates: list[Agent], requirement: Requirement,
                     now: float) -> Agent:
        strategy = q.config.strategy
        if strategy is Strategy.LONGEST_IDLE:
            return min(candidates, key=lambda a: (a.idle_since, a.order))
        if strategy is Strategy.MOST_SKILLED_FIRST:
            return min(candidates, key=lambda a: (
                -sum(a.skills.get(s, 0) for s, _ in requirement), a.idle_since, a.order))
        if strategy is Strategy.LEAST_OCCUPIED:
            return min(candidates, key=lambda a: (
                a.busy_seats / a.config.capacity, self._occupancy(a, now), a.idle_since, a.order))
        span, cursor = self._order_span, q.rr_cursor
        return min(candidates, key=lambda a: (a.order - cursor - 1) % span)

    def _occupancy(self, agent: Agent, now: float) -> float:
        busy, idle = agent.counters.busy_time, agent.counters.idle_time
        if agent.busy_since is not None:
            busy += now - agent.busy_since
        if agent.idle_from is not None:
            idle += now - agent.idle_from
        return busy / (busy + idle) if busy + idle > 0 else 0.0

    def _fill_agent(self, agent: Agent, now: float, out: list[RouterEvent],
                    trigger: DecisionTrigger = DecisionTrigger.AGENT_FREED) -> None:
        """Offer the agent's free seats the best waiting calls, then publish its state once
        (an agent whose wrap-up ends straight into a new offer goes wrap-up -> reserved)."""
        while (agent.presence is Presence.READY and not agent.retired
               and agent.busy_seats < agent.config.capacity):
            call, considered = self._pick_call_for_agent(agent)
            if call is None:
                break
            self._offer(call, agent, now, trigger, considered, out, refresh=False)
        self._refresh_agent(agent, now, out)

    def _dispatch_call(self, call: Call, now: float, trigger: DecisionTrigger,
                       out: list[RouterEvent]) -> None:
        agent, considered = self._pick_agent_for_call(call, now)
        if agent is not None:
            self._offer(call, agent, now, trigger, considered, out)

    def _offer(self, call: Call, agent: Agent, now: float, trigger: DecisionTrigger,
               considered: int, out: list[RouterEvent], refresh: bool = True) -> None:
        q = call.queue
        out.append(RoutingDecision(
            at=now, call_id=call.call_id, agent_id=agent.agent_id, queue=q.name, trigger=trigger,
            strategy=q.config.strategy, required=call.requirement, relaxation_stage=call.stage,
            priority=call.priority, waited=now - call.enqueued_at, considered=considered,
        ))
        self._leave_waiting(call)
        call.state = CallState.RINGING
        q.ringing += 1
        seat = Seat(agent=agent, call_id=call.call_id, queue=q, state=SeatState.RESERVED)
        call.seat = seat
        agent.seats[call.call_id] = seat
        agent.reserved += 1
        agent.counters.offered += 1
        q.rr_cursor = agent.order
        ring = q.config.ring_timeout
        self._push_timer(now + ring, _RING, seat, 0)
        out.append(OfferCall(call_id=call.call_id, agent_id=agent.agent_id, queue=q.name,
                             ring_timeout=ring))
        if refresh:
            self._refresh_agent(agent, now, out)

    # -----------------------------------------------------------------------------------------
    # Waiting calls

    def _enter_waiting(self, call: Call, now: float, out: list[RouterEvent]) -> None:
        """Put `call` in its queue's bucket for its current relaxation stage; arm its timers."""
        q = call.queue
        steps = q.config.relaxation
        stage = 0
        while stage < len(steps) and call.queue_entered_at + steps[stage].after <= now:
            stage += 1
        call.state = CallState.WAITING
        call.seat = None
        call.wait_epoch += 1
        q.waiting += 1
        q.note_waiting(call)
        if stage != call.stage and stage:
            call.stage = stage
            self._bucket(call)
            out.append(CallRelaxed(call_id=call.call_id, queue=q.name, stage=stage,
                                   required=call.requirement))
        else:
            call.stage = stage
            self._bucket(call)
        if stage < len(steps):
            self._push_timer(call.queue_entered_at + steps[stage].after, _RELAX, call,
                             call.wait_epoch)
        if q.config.max_wait is not None:
            self._push_timer(max(call.queue_entered_at + q.config.max_wait, now), _MAX_WAIT,
                             call, call.wait_epoch)

    def _bucket(self, call: Call) -> None:
        q = call.queue
        requirement = q.requirement(call.own_skills, call.stage)
        call.requirement = requirement
        bucket = q.buckets.get(requirement)
        if bucket is None:
            bucket = q.buckets[requirement] = CallBucket(requirement)
        call.token += 1
        bucket.push(call)

    def _unbucket(self, call: Call) -> None:
        bucket = call.bucket
        assert bucket is not None
        bucket.discard(call)
        if not bucket.live:
            del call.queue.buckets[bucket.requirement]

    def _leave_waiting(self, call: Call) -> None:
        self._unbucket(call)
        call.queue.waiting -= 1
        call.wait_epoch += 1

    def _relax(self, call: Call, now: float, out: list[RouterEvent]) -> None:
        q = call.queue
        self._unbucket(call)
        call.stage += 1
        self._bucket(call)
        out.append(CallRelaxed(call_id=call.call_id, queue=q.name, stage=call.stage,
                               required=call.requirement))
        steps = q.config.relaxation
        if call.stage < len(steps):
            self._push_timer(call.queue_entered_at + steps[call.stage].after, _RELAX, call,
                             call.wait_epoch)
        self._dispatch_call(call, now, DecisionTrigger.REQUIREMENTS_RELAXED, out)

    def _overflow(self, call: Call, now: float, out: list[RouterEvent]) -> None:
        q = call.queue
        self._leave_waiting(call)
        q.counters.overflowed += 1
        target = q.config.overflow
        to_queue = self._queues.get(target.queue) if target and target.queue else None
        if to_queue is not None and to_queue.retired:
            to_queue = None
        out.append(CallOverflowed(
            call_id=call.call_id, from_queue=q.name,
            to_queue=to_queue.name if to_queue is not None else None,
            destination=target.destination if target is not None else None,
            waited=now - call.enqueued_at,
        ))
        if to_queue is None:
            del self._calls[call.call_id]
            self._drop_if_retired(q)
            return
        call.queue = to_queue
        call.queue_entered_at = now
        call.stage = 0
        to_queue.counters.entered += 1
        self._enter_waiting(call, now, out)
        self._drop_if_retired(q)
        self._dispatch_call(call, now, DecisionTrigger.OVERFLOWED_IN, out)

    def _ring_out(self, seat: Seat, now: float, out: list[RouterEvent]) -> None:
        agent = seat.agent
        call = self._calls[seat.call_id]
        self._seat_input(seat, SeatInput.NO_ANSWER)
        agent.counters.missed += 1
        self._presence_change(agent, PresenceInput.NO_ANSWER, None)
        call.queue.ringing -= 1
        self._refresh_agent(agent, now, out)
        self._enter_waiting(call, now, out)
        self._dispatch_call(call, now, DecisionTrigger.CALL_REQUEUED, out)

    # -----------------------------------------------------------------------------------------
    # Agents and seats

    def _presence_input(self, agent: Agent, event: PresenceInput, now: float,
                        reason: str | None) -> list[RouterEvent]:
        was_ready = agent.presence is Presence.READY
        self._presence_change(agent, event, reason)
        out: list[RouterEvent] = []
        if agent.presence is Presence.READY and not was_ready:
            agent.idle_since = now
        self._fill_agent(agent, now, out)
        return out

    def _presence_change(self, agent: Agent, event: PresenceInput, reason: str | None) -> None:
        transition = PRESENCE_TRANSITIONS.get((agent.presence, event))
        if transition is None:
            raise RoutingError(
                f"agent {agent.agent_id!r}: cannot {event.value} while {agent.presence.value}")
        agent.presence = transition[0]
        if event is PresenceInput.PAUSE:
            agent.break_reason = reason

    def _seat_input(self, seat: Seat, event: SeatInput) -> None:
        transition = SEAT_TRANSITIONS.get((seat.state, event))
        if transition is None:  # pragma: no cover - callers check the call state first
            raise RoutingError(f"call {seat.call_id!r}: cannot {event.value} while "
                               f"{seat.state.value}")
        agent = seat.agent
        _count_seat(agent, seat.state, -1)
        new = transition[0]
        if new is None:
            del agent.seats[seat.call_id]
            call = self._calls.get(seat.call_id)
            if call is not None and call.seat is seat:
                call.seat = None
        else:
            seat.state = new
            _count_seat(agent, new, +1)

    def _end_wrap_up(self, seat: Seat, now: float, out: list[RouterEvent]) -> None:
        agent = seat.agent
        self._seat_input(seat, SeatInput.WRAP_UP_DONE)
        handle = seat.talk_time + (now - seat.wrap_started)
        for counters in (seat.queue.counters, agent.counters):
            counters.handled += 1
            counters.handle_time_total += handle
        agent.idle_since = now
        self._drop_if_retired(seat.queue)
        self._fill_agent(agent, now, out)

    def _refresh_agent(self, agent: Agent, now: float, out: list[RouterEvent]) -> None:
        """Re-derive the shown state, time accounting and availability-index membership."""
        busy = agent.busy_seats
        eligible = (agent.presence is Presence.READY and busy < agent.config.capacity
                    and not agent.retired)
        if eligible != agent.indexed:
            if eligible:
                self._index_add(agent)
            else:
                self._index_remove(agent)
        c = agent.counters
        if busy:
            if agent.idle_from is not None:
                c.idle_time += now - agent.idle_from
                agent.idle_from = None
            if agent.busy_since is None:
                agent.busy_since = now
        else:
            if agent.busy_since is not None:
                c.busy_time += now - agent.busy_since
                agent.busy_since = None
            if agent.presence is Presence.READY:
                if agent.idle_from is None:
                    agent.idle_from = now
            elif agent.idle_from is not None:
                c.idle_time += now - agent.idle_from
                agent.idle_from = None
        shown = derive_agent_state(agent.presence, agent.reserved, agent.on_call, agent.wrap_up)
        if shown is not agent.shown:
            old, agent.shown = agent.shown, shown
            out.append(AgentStateChanged(
                agent_id=agent.agent_id, old=old, new=shown,
                reason=agent.break_reason if shown is AgentState.BREAK else None, at=now))
        if agent.retired and not agent.seats:
            del self._agents[agent.agent_id]

    def _index_add(self, agent: Agent) -> None:
        agent.indexed = True
        for members in agent.index_sets:
            members.add(agent)

    def _index_remove(self, agent: Agent) -> None:
        agent.indexed = False
        for members in agent.index_sets:
            members.discard(agent)

    def _resolve_index_sets(self, agent: Agent) -> None:
        """The availability sets `agent` belongs to while available, resolved once per config
        so that joining and leaving them is a flat loop (it happens twice per decision)."""
        sets = [self._available_any]
        for skill, proficiency in agent.skills.items():
            levels = self._available.get(skill)
            if levels is None:
                levels = self._available[skill] = [set() for _ in range(MAX_PROFICIENCY + 1)]
            sets.extend(levels[MIN_PROFICIENCY:proficiency + 1])
        agent.index_sets = tuple(sets)

    # -----------------------------------------------------------------------------------------
    # Timers

    def _push_timer(self, when: float, kind: int, subject: Call | Seat, epoch: int) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, kind, subject, epoch))

    @staticmethod
    def _timer_is_live(entry: TimerEntry) -> bool:
        _, _, kind, subject, epoch = entry
        if kind == _RELAX or kind == _MAX_WAIT:
            assert isinstance(subject, Call)
            return subject.state is CallState.WAITING and subject.wait_epoch == epoch
        assert isinstance(subject, Seat)
        state = SeatState.RESERVED if kind == _RING else SeatState.WRAP_UP
        return subject.state is state and subject.agent.seats.get(subject.call_id) is subject

    # -----------------------------------------------------------------------------------------
    # Configuration install

    def _install(self, config: RouterConfig, now: float, out: list[RouterEvent]) -> None:
        self._config = config
        changed: set[Queue] = set()
        for name, qc in config.queues.items():
            q = self._queues.get(name)
            if q is None:
                self._queues[name] = Queue(name=name, config=qc)
            elif q.config != qc or q.retired:
                q.retired = False
                if q.config != qc:
                    q.config = qc
                    q.forget_requirements()
                    changed.add(q)
        for name, q in list(self._queues.items()):
            if name not in config.queues and not q.retired:
                q.retired = True
                self._drop_if_retired(q)

        order = 0
        for agent_id, ac in config.agents.items():
            agent = self._agents.get(agent_id)
            if agent is None:
                agent = self._agents[agent_id] = Agent(agent_id=agent_id, order=order, config=ac,
                                                       skills=dict(ac.skills))
                self._resolve_index_sets(agent)
            else:
                self._reconfigure_agent(agent, ac)
                agent.order = order
            order += 1
        for agent_id, agent in list(self._agents.items()):
            if agent_id not in config.agents and not agent.retired:
                agent.order = order
                order += 1
                agent.retired = True
                if agent.presence is not Presence.OFFLINE:
                    self._presence_change(agent, PresenceInput.LOGOUT, None)
                self._refresh_agent(agent, now, out)
        self._order_span = max(order, 1)

        # Waiting calls of changed queues take the new requirements and timers at once.
        if changed:
            for call in list(self._calls.values()):
                if call.state is CallState.WAITING and call.queue in changed:
                    self._leave_waiting(call)
                    self._enter_waiting(call, now, out)
        self._compute_candidate_queues()

    def _reconfigure_agent(self, agent: Agent, ac: AgentConfig) -> None:
        if agent.config == ac and not agent.retired:
            return
        was_indexed = agent.indexed
        if was_indexed:
            self._index_remove(agent)
        agent.config = ac
        agent.skills = dict(ac.skills)
        self._resolve_index_sets(agent)
        agent.retired = False
        if was_indexed:
            self._index_add(agent)
        # A lower capacity or an un-retire may change availability; the caller re-dispatches.
        eligible = agent.presence is Presence.READY and agent.busy_seats < ac.capacity
        if eligible != agent.indexed:
            (self._index_add if eligible else self._index_remove)(agent)

    def _compute_candidate_queues(self) -> None:
        """For each agent, the queues whose most relaxed requirement the agent meets."""
        loosest: list[tuple[Queue, Requirement]] = []
        for q in self._queues.values():
            qc: QueueConfig = q.config
            loosest.append((q, relaxed_requirement(qc.skills, qc.relaxation,
                                                   len(qc.relaxation))))
        for agent in self._agents.values():
            agent.candidate_queues = tuple(
                q for q, requirement in loosest
                if agent.may_serve(q.name) and agent.meets(requirement))

    def _drop_if_retired(self, q: Queue) -> None:
        if q.retired and not q.waiting and not q.ringing and self._queues.get(q.name) is q:
            del self._queues[q.name]
            for agent in self._agents.values():
                if q in agent.candidate_queues:
                    agent.candidate_queues = tuple(c for c in agent.candidate_queues if c is not q)

    # -----------------------------------------------------------------------------------------
    # Lookups

    def _call(self, call_id: str) -> Call:
        call = self._calls.get(call_id)
        if call is None:
            raise RoutingError(f"unknown call {call_id!r}")
        return call

    def _agent(self, agent_id: str) -> Agent:
        agent = self._agents.get(agent_id)
        if agent is None or agent.retired:
            raise RoutingError(f"unknown agent {agent_id!r}")
        return agent

    def _ringing_seat(self, call_id: str, agent_id: str) -> Seat:
        call = self._call(call_id)
        seat = call.seat
        if call.state is not CallState.RINGING or seat is None or seat.agent.agent_id != agent_id:
            raise RoutingError(f"call {call_id!r} is not ringing at agent {agent_id!r}")
        return seat


def _count_seat(agent: Agent, state: SeatState, delta: int) -> None:
    if state is SeatState.RESERVED:
        agent.reserved += delta
    elif state is SeatState.ON_CALL:
        agent.on_call += delta
    else:
        agent.wrap_up += delta
