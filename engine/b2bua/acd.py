"""The ACD bridge: the skills-based router (`vaultpbx.routing`) driving real calls.

`AcdBridge` is the B2BUA's `QueueRouter`. It owns one `Router` and carries out its commands on
the B2BUA: `OfferCall` rings the agent's extension (`offer_to_agent`), `CancelOffer` stops the
ringing (`withdraw_offer`), `CallOverflowed` out of the router sends the caller to the overflow
destination (`redirect_call`) or ends the call (480). Routing records (`RoutingDecision`,
`CallRelaxed`, `AgentStateChanged`, `CallOverflowed`) go to the ROUTING_DECISION hook point.

Invariants:
- Router commands are carried out in the order the router emitted them, including those caused
  while carrying out earlier ones (an offer that cannot ring is a no-answer at once, which may
  offer the call to someone else): one FIFO, drained by whoever started it, so a nested router
  call never acts ahead of what came before it.
- The router's deadlines ride the transaction layer's single timer heap through one
  `RouterTimer`; a heap entry is only added when the router's next deadline is earlier than
  every entry still pending, and an entry that fires early or twice does nothing.
- A call is in `self.calls` exactly while the router holds it (waiting, ringing or connected);
  the B2BUA's `call_ended` for any other call is ignored, so a call that overflowed out of the
  router is never also counted as abandoned.
- Agent presence (signed in, on a break and why) is mirrored here with the router's own
  transition table and written to SQLite at every change, so a restarted engine restores it.
  Calls are not restored: they died with the process.
- Queue events (Asterisk queue_log style, docs/cdr.md) are appended to `queue_events` as they
  happen, stamped with the core's monotonic `now`; the engine drains the list into cdr.db with
  the call records, once a second, in one transaction (never a write per event).
- Nothing here raises into the B2BUA: a router refusal on the signalling path is counted
  (`counters["errors"]`) and the call carries on. Agent control refusals raise `RoutingError`
  to the caller (the admin API answers 409).

- Announcements (docs/prompts.md): a queued caller with media hears its queue's greeting before
  the music (`opening_prompts`, asked by the media port when it starts the music), then every
  `announce.period` seconds of music its position and estimated wait (`Announcer`). The
  deadlines share the router's one heap entry (`_agenda`, lazily invalidated: an entry whose
  call left or was rescheduled is dropped when it comes up). A caller refused by an empty queue
  (`join_empty: false`, `leave_when_empty: true`) hears the no-one-available prompt and is ended
  with 480 when the prompt's length has passed; without media, at once.
- The estimated wait is the mean of the queue's last 20 answered waits (enqueue -> agent answer,
  `WaitEstimate`) minus what the caller has waited already.

No asyncio, socket or clock here: time comes in as `now` (or from the injected `clock` in the
admin handlers); SQLite is the one I/O, at agent-control rate, never per message.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..hooks.registry import HookPoint
from ..routing import (
    CallOverflowed,
    CancelOffer,
    OfferCall,
    OfferEndReason,
    Router,
    RouterConfig,
    RouterEvent,
    RoutingError,
)
from ..routing.announce import (
    PROMPT_NO_ONE_AVAILABLE,
    WaitEstimate,
    compose_periodic,
    queue_staffed,
)
from ..routing.config import QueueConfig
from ..routing.states import PRESENCE_TRANSITIONS, AgentState, Presence, PresenceInput

if TYPE_CHECKING:
    # Types only: the admin API's server is asyncio; this module stays free of it.
    from ..api.messages import HttpRequest, HttpResponse
    from ..api.metrics import Sample
    from .b2bua import B2BUA
    from .call import Call

OVERFLOW_NO_DESTINATION_STATUS = 480
"""What the caller hears when a queue's max wait passes with nowhere to overflow to."""
RESTORED_NOT_RESPONDING_REASON = "not-responding"
"""Break reason given on restart to an agent who had stopped answering: the router has no way
in to not-responding but a missed offer, and a break keeps the same meaning (no offers until
the agent says ready)."""

QUEUE_EMPTY_STATUS = 480
"""What a caller refused by an empty queue gets, after the no-one-available prompt."""
PROMPT_GRACE = 0.2
"""Seconds added to a prompt's length before the call that follows it ends (the prompt starts
a round trip to the media worker after the decision)."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_presence (
    agent_id TEXT PRIMARY KEY,
    presence TEXT NOT NULL,
    reason TEXT
);
"""


class AgentPresenceStore:
    """Agent presence in SQLite (WAL): one row per agent who is not offline."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def load(self) -> dict[str, tuple[Presence, str | None]]:
        out: dict[str, tuple[Presence, str | None]] = {}
        for agent_id, presence, reason in self.db.execute(
                "SELECT agent_id, presence, reason FROM agent_presence ORDER BY rowid"):
            try:
                out[agent_id] = (Presence(presence), reason)
            except ValueError:
                continue  # a value from a future version: treat the agent as signed out
        return out

    def save(self, agent_id: str, presence: Presence, reason: str | None) -> None:
        if presence is Presence.OFFLINE:
            self.db.execute("DELETE FROM agent_presence WHERE agent_id = ?", (agent_id,))
        else:
            self.db.execute(
                "INSERT INTO agent_presence (agent_id, presence, reason) VALUES (?, ?, ?) "
                "ON CONFLICT(agent_id) DO UPDATE SET presence = excluded.presence, "
                "reason = excluded.reason", (agent_id, presence.value, reason))

    def close(self) -> None:
        self.db.close()


class Announcer(Protocol):
    """The media plane as announcements need it: play prompts (by name) to a queued caller,
    interrupting its music, which resumes after them (`resume` False: it does not)."""

    def play_prompts(self, call_id: str, prompts: tuple[str, ...], *,
                     resume: bool = True) -> None: ...


class RouterTimer:
    """The bridge's one entry on the transaction layer's heap (anything with `on_timer`)."""

    __slots__ = ("bridge",)

    def __init__(self, bridge: AcdBridge) -> None:
        self.bridge = bridge

    def on_timer(self, now: float) -> None:
        self.bridge.on_timer(now)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedCall:
    """What the bridge keeps about a call the router holds."""

    queue: str
    enqueued_at: float
    position: int = 0
    """Callers in the queue (waiting or ringing an agent) when it entered, itself included."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueEvent:
    """One line of the queue log, named and laid out as Asterisk's queue_log (docs/cdr.md):
    `at` is the engine's monotonic clock (the CDR writer stores UTC); agent "NONE" and queue
    "NONE" as Asterisk writes them when there is none."""

    at: float
    call_id: str
    queue: str
    agent: str
    event: str
    data1: str = ""
    data2: str = ""
    data3: str = ""
    data4: str = ""
    data5: str = ""


def _secs(seconds: float) -> str:
    return str(max(0, round(seconds)))


def _ms(seconds: float) -> str:
    return str(max(0, round(seconds * 1000)))


def router_config(routing: Mapping[str, Any] | RouterConfig | None) -> RouterConfig:
    """The typed config of a YAML `routing:` section; empty or missing: no queues, no agents."""
    if isinstance(routing, RouterConfig):
        return routing
    if not routing:
        return RouterConfig(skills=frozenset(), agents={}, queues={})
    return RouterConfig.from_dict(routing)


class AcdBridge:
    """The B2BUA's `QueueRouter`: one `Router`, its timers, agent control and statistics.

    Build it after `b2bua.attach(layer)` and set `b2bua.queue_router` to it. `flush` is called
    after agent control and reloads (they may ring agents and move timers outside any SIP
    message, so the engine must drain its outbox and re-arm its loop timer); `clock` gives
    `now` to the admin handlers (the engine's loop time, the clock the B2BUA runs on).
    """

    def __init__(
        self,
        b2bua: B2BUA,
        routing: Mapping[str, Any] | RouterConfig | None,
        now: float,
        *,
        state_path: Path | None = None,
        clock: Callable[[], float] | None = None,
        flush: Callable[[], None] | None = None,
    ) -> None:
        self.b2bua = b2bua
        self.router = Router(router_config(routing), now)
        self.clock = clock
        self.flush = flush
        self.calls: dict[str, QueuedCall] = {}
        self.queue_events: list[QueueEvent] = []  # drained by the engine into cdr.db
        self._ringing: dict[str, tuple[str, float]] = {}  # call -> (agent, ringing since)
        self.counters = {"offers_failed": 0, "errors": 0, "overflowed_out": 0}
        self.presence: dict[str, tuple[Presence, str | None]] = {}
        self.store = AgentPresenceStore(state_path) if state_path is not None else None
        self._pending: deque[RouterEvent] = deque()
        self._draining = False
        self._timer = RouterTimer(self)
        self._armed_at: float | None = None
        # Announcements and empty-queue endings (set by the runtime when media is anchored).
        self.announcer: Announcer | None = None
        self.prompt_seconds: Mapping[str, float] = {}
        self._estimates: dict[str, WaitEstimate] = {}
        self._agenda: list[tuple[float, int, str, str]] = []  # (at, seq, kind, call id)
        self._agenda_seq = 0
        self._next_announce: dict[str, float] = {}  # call -> when its next announcement is due
        self._leaving: dict[str, float] = {}  # call -> when it ends (after the prompt)
        self._opened: dict[str, bool] = {}  # call -> refused at its opening (media port asked)
        self.counters.update({"refused_empty": 0, "left_empty": 0, "announcements": 0})
        self._restore(now)

    # -- QueueRouter (called by the B2BUA) ------------------------------------------------------
    def handles(self, queue: str) -> bool:
        return queue in self.router.config.queues

    def opening_prompts(self, call_id: str) -> tuple[tuple[str, ...], bool]:
        """What a queued caller hears first, asked when its music starts: (prompt names, whether
        the music follows them). The greeting, then music; or, when the queue is empty and its
        rules refuse the caller, the no-one-available prompt alone (`enqueue` then ends it)."""
        call = self.b2bua.calls.get(call_id)
        config = self.router.config.queues.get(call.acd_queue or "") if call else None
        if config is None:
            return (), True
        refused = self._refuses(config)
        self._opened[call_id] = refused
        if refused:
            return (PROMPT_NO_ONE_AVAILABLE,), False
        greeting = config.announce.greeting
        return ((greeting,) if greeting else ()), True

    def _refuses(self, config: QueueConfig) -> bool:
        rules = config.announce
        if rules.join_empty and not rules.leave_when_empty:
            return False
        return not queue_staffed(config, self.router.config.agents, self.presence)

    def enqueue(self, call: Call, queue: str, now: float) -> None:
        config = self.router.config.queues.get(queue)
        has_media = call.early_sdp is not None
        decided = self._opened.pop(call.id, None)
        refused = decided if decided is not None else (
            config is not None and self._refuses(config))
        if refused:
            self.counters["refused_empty"] += 1
            self._log(now, call.id, queue, "NONE", "EXITEMPTY", "1", "1", "0")
            self._leave(call.id, now, has_media=has_media, prompt_playing=decided is True)
            self._arm()
            return
        try:
            q = self.router.queue_stats(queue, now)
            events = self.router.enqueue_call(call_id=call.id, queue=queue, now=now,
                                              attributes={"caller": call.caller})
        except RoutingError:
            self.counters["errors"] += 1
            self.b2bua.end_queued_call(call.id, 503, "queue_refused", now)
            return
        position = q.waiting + q.ringing + 1
        self.calls[call.id] = QueuedCall(queue=queue, enqueued_at=now, position=position)
        # data2 of Asterisk's ENTERQUEUE is the caller id: left empty, so that the caller's
        # number lives only in the calls row (where erasure and masking act on it).
        self._log(now, call.id, queue, "NONE", "ENTERQUEUE", "", "", str(position))
        if has_media and config is not None and config.announce.periodic:
            greeting = config.announce.greeting
            self._schedule_announcement(
                call.id, now + self._length((greeting,) if greeting else ())
                + config.announce.period)
        self._run(events, now)

    def agent_answered(self, call: Call, agent: str, now: float) -> None:
        held = self.calls.get(call.id)
        ringing = self._ringing.pop(call.id, None)
        self._next_announce.pop(call.id, None)  # never a prompt over the agent's voice
        if held is not None:
            self._estimates.setdefault(held.queue, WaitEstimate()).record(now - held.enqueued_at)
            rang = now - ringing[1] if ringing is not None else 0.0
            b_leg = call.b.dialog.call_id if call.b is not None else ""
            self._log(now, call.id, held.queue, agent, "CONNECT", _secs(now - held.enqueued_at),
                      b_leg, _secs(rang))
        self._router_call(lambda: self.router.agent_answered(
            call_id=call.id, agent_id=agent, now=now), now)

    def agent_no_answer(self, call: Call, agent: str, now: float) -> None:
        self._no_answer(call.id, agent, now)
        self._drain(now)

    def call_ended(self, call: Call, answered: bool, now: float) -> None:
        self._next_announce.pop(call.id, None)
        self._leaving.pop(call.id, None)
        self._opened.pop(call.id, None)
        held = self.calls.pop(call.id, None)
        if held is None:
            return  # overflowed out of the router, or never in it
        ringing = self._ringing.pop(call.id, None)
        agent = call.agent or "NONE"
        if answered and call.answered_at is not None:
            # Asterisk has two endings; an end by the engine (timers, errors, shutdown) is not
            # the caller's doing, so it is COMPLETEAGENT with the cause in data4.
            event = "COMPLETECALLER" if call.ended_by == "caller" else "COMPLETEAGENT"
            self._log(now, call.id, held.queue, agent, event,
                      _secs(call.answered_at - held.enqueued_at), _secs(now - call.answered_at),
                      str(held.position), call.cause if call.ended_by == "system" else "")
            config = self.router.config.queues.get(held.queue)
            # The seat table has one way out of wrap-up, the timer the router sets now for
            # the queue's wrap_up; so this call's after-call work is that long (docs/cdr.md).
            call.wrap_up_seconds = config.wrap_up if config is not None else None
        else:
            if ringing is not None:
                self._log(now, call.id, held.queue, ringing[0], "RINGCANCELED",
                          _ms(now - ringing[1]))
            self._log(now, call.id, held.queue, "NONE", "ABANDON", "", str(held.position),
                      _secs(now - held.enqueued_at))
        if answered:
            try:
                self._run(self.router.call_ended(call_id=call.id, now=now), now)
                return
            except RoutingError:
                self.counters["errors"] += 1  # answered outside the router's offer: unlikely
        try:
            events = self.router.caller_abandoned(call_id=call.id, now=now)
        except RoutingError:
            self.counters["errors"] += 1
            return
        self._run(events, now)

    # -- agent control (admin API, phones' feature codes) ---------------------------------------
    def login(self, agent: str, now: float) -> None:
        self._control(agent, PresenceInput.LOGIN, None, now)

    def logout(self, agent: str, now: float) -> None:
        self._control(agent, PresenceInput.LOGOUT, None, now)

    def pause(self, agent: str, reason: str, now: float) -> None:
        self._control(agent, PresenceInput.PAUSE, reason, now)

    def ready(self, agent: str, now: float) -> None:
        self._control(agent, PresenceInput.READY, None, now)

    def _control(self, agent: str, action: PresenceInput, reason: str | None,
                 now: float) -> None:
        router = self.router
        if action is PresenceInput.LOGIN:
            events = router.agent_login(agent_id=agent, now=now)
        elif action is PresenceInput.LOGOUT:
            events = router.agent_logout(agent_id=agent, now=now)
        elif action is PresenceInput.PAUSE:
            events = router.agent_pause(agent_id=agent, reason=reason or "", now=now)
        else:
            events = router.agent_ready(agent_id=agent, now=now)
        # The router accepted it (it raises before changing anything), so the mirror may follow.
        self._mirror(agent, action, reason, now)
        self._run(events, now)
        if action is PresenceInput.LOGOUT:
            self._leave_empty_queues(now)
        self._flush()

    # -- configuration -------------------------------------------------------------------------
    def apply_config(self, routing: Mapping[str, Any] | RouterConfig | None,
                     now: float) -> None:
        """A reload: queued calls keep their place (see `Router.apply_config`). A bad section
        raises `ValueError` naming the key path, before anything changes."""
        config = router_config(routing)
        events = self.router.apply_config(config, now)
        for agent in list(self.presence):
            if agent not in config.agents:
                self._set_presence(agent, Presence.OFFLINE, None, now)  # the router signed out
        self._run(events, now)
        self._leave_empty_queues(now)
        self._flush()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- timers --------------------------------------------------------------------------------
    def on_timer(self, now: float) -> None:
        self._armed_at = None
        self._run_agenda(now)
        self._run(self.router.handle_timer(now), now)

    def _arm(self) -> None:
        at = self.router.get_timer()
        if self._agenda:
            head = self._agenda[0][0]
            at = head if at is None else min(at, head)
        layer = self.b2bua.layer
        if at is None or layer is None:
            return
        if self._armed_at is not None and self._armed_at <= at:
            return  # an entry at or before `at` is pending; it re-arms when it fires
        layer.schedule(self._timer, at)
        self._armed_at = at

    # -- announcements and empty queues --------------------------------------------------------
    def _length(self, prompts: tuple[str, ...]) -> float:
        return sum(self.prompt_seconds.get(name, 0.0) for name in prompts)

    def _push(self, at: float, kind: str, call_id: str) -> None:
        self._agenda_seq += 1
        heapq.heappush(self._agenda, (at, self._agenda_seq, kind, call_id))

    def _schedule_announcement(self, call_id: str, at: float) -> None:
        self._next_announce[call_id] = at
        self._push(at, "announce", call_id)

    def _leave(self, call_id: str, now: float, *, has_media: bool, prompt_playing: bool) -> None:
        """End a caller the queue will not hold: the no-one-available prompt first when it has
        media (and the prompt is known), then 480."""
        length = self._length((PROMPT_NO_ONE_AVAILABLE,))
        if not has_media or length == 0.0 or (self.announcer is None and not prompt_playing):
            self.b2bua.end_queued_call(call_id, QUEUE_EMPTY_STATUS, "queue_empty", now)
            return
        if not prompt_playing:
            assert self.announcer is not None
            self.announcer.play_prompts(call_id, (PROMPT_NO_ONE_AVAILABLE,), resume=False)
        at = now + length + PROMPT_GRACE
        self._leaving[call_id] = at
        self._push(at, "end", call_id)

    def _leave_empty_queues(self, now: float) -> None:
        """`leave_when_empty`: waiting callers of queues no signed-in agent can serve leave."""
        queues = self.router.config.queues
        empty = {name for name, config in queues.items()
                 if config.announce.leave_when_empty and not queue_staffed(
                     config, self.router.config.agents, self.presence)}
        if not empty:
            return
        for call_id, held in list(self.calls.items()):
            if held.queue not in empty or call_id in self._ringing:
                continue
            try:
                self.router.caller_left_empty(call_id=call_id, now=now)
            except RoutingError:
                continue  # ringing or connected after all: an agent has it
            del self.calls[call_id]
            self._next_announce.pop(call_id, None)
            self.counters["left_empty"] += 1
            self._log(now, call_id, held.queue, "NONE", "EXITEMPTY", str(held.position),
                      str(held.position), _secs(now - held.enqueued_at))
            call = self.b2bua.calls.get(call_id)
            self._leave(call_id, now, has_media=call is not None and call.early_sdp is not None,
                        prompt_playing=False)
        self._arm()

    def _position(self, call_id: str, queue: str) -> int:
        """1 + the waiting callers of `queue` (not ringing an agent, not connected) who entered
        before this one; the bridge's dict is in arrival order. O(callers held) per
        announcement."""
        ahead = 0
        for other, held in self.calls.items():
            if other == call_id:
                break
            if held.queue == queue and self._waiting(other):
                ahead += 1
        return ahead + 1

    def _waiting(self, call_id: str) -> bool:
        try:
            return self.router.call_agent(call_id) is None
        except RoutingError:
            return False

    def _run_agenda(self, now: float) -> None:
        agenda = self._agenda
        while agenda and agenda[0][0] <= now:
            at, _, kind, call_id = heapq.heappop(agenda)
            if kind == "end":
                if self._leaving.get(call_id) == at:
                    del self._leaving[call_id]
                    self.b2bua.end_queued_call(call_id, QUEUE_EMPTY_STATUS, "queue_empty", now)
                continue
            if self._next_announce.get(call_id) != at:
                continue  # the call left, or its announcement moved
            del self._next_announce[call_id]
            self._announce(call_id, now)

    def _announce(self, call_id: str, now: float) -> None:
        held = self.calls.get(call_id)
        config = self.router.config.queues.get(held.queue) if held is not None else None
        if held is None or config is None or not config.announce.periodic:
            return
        rules = config.announce
        if not self._waiting(call_id) or self.announcer is None:
            self._schedule_announcement(call_id, now + rules.period)  # not over an agent's ring
            return
        estimate = self._estimates.get(held.queue)
        prompts = compose_periodic(
            rules, position=self._position(call_id, held.queue),
            estimate=estimate.remaining(now - held.enqueued_at) if estimate else None)
        self.announcer.play_prompts(call_id, prompts)
        self.counters["announcements"] += 1
        self._schedule_announcement(call_id, now + self._length(prompts) + rules.period)

    # -- carrying out router events ------------------------------------------------------------
    def _router_call(self, call: Callable[[], list[RouterEvent]], now: float) -> None:
        try:
            events = call()
        except RoutingError:
            self.counters["errors"] += 1
            events = []
        self._run(events, now)

    def _run(self, events: list[RouterEvent], now: float) -> None:
        self._pending.extend(events)
        self._drain(now)

    def _drain(self, now: float) -> None:
        if self._draining:
            return  # the outer drain carries these out after what came before them
        self._draining = True
        try:
            pending = self._pending
            while pending:
                self._carry_out(pending.popleft(), now)
        finally:
            self._draining = False
        self._arm()

    def _carry_out(self, event: RouterEvent, now: float) -> None:
        b2bua = self.b2bua
        if isinstance(event, OfferCall):
            if b2bua.offer_to_agent(event.call_id, event.agent_id, event.ring_timeout, now):
                self._ringing[event.call_id] = (event.agent_id, now)
            else:
                self.counters["offers_failed"] += 1
                if event.call_id in b2bua.calls:
                    self._no_answer(event.call_id, event.agent_id, now)
                elif self.calls.pop(event.call_id, None) is not None:
                    # The call ended without telling us: let it go as abandoned.
                    self._pending.extend(self._safe(lambda: self.router.caller_abandoned(
                        call_id=event.call_id, now=now)))
            return
        if isinstance(event, CancelOffer):
            if event.reason is OfferEndReason.RING_TIMEOUT:
                self._rang_out(event.call_id, event.agent_id, now)
                self._mirror(event.agent_id, PresenceInput.NO_ANSWER, None, now)
                b2bua.withdraw_offer(event.call_id, now)
            # CALLER_ABANDONED: the B2BUA is ending the call and cancels the ringing itself.
            b2bua.hooks.notify(HookPoint.ROUTING_DECISION, event)
            return
        if isinstance(event, CallOverflowed):
            b2bua.hooks.notify(HookPoint.ROUTING_DECISION, event)
            held = self.calls.get(event.call_id)
            if held is not None:
                self._log(now, event.call_id, held.queue, "NONE", "EXITWITHTIMEOUT", "",
                          str(held.position), _secs(event.waited))
            if event.to_queue is not None:
                if held is not None:  # still routed, in the overflow queue
                    self.calls[event.call_id] = QueuedCall(queue=event.to_queue,
                                                           enqueued_at=held.enqueued_at,
                                                           position=held.position)
                    self._log(now, event.call_id, event.to_queue, "NONE", "ENTERQUEUE", "", "",
                              str(held.position))
                return
            self.calls.pop(event.call_id, None)
            self.counters["overflowed_out"] += 1
            if event.destination is not None:
                b2bua.redirect_call(event.call_id, event.destination, now)
            else:
                b2bua.end_queued_call(event.call_id, OVERFLOW_NO_DESTINATION_STATUS,
                                      "max_wait", now)
            return
        # RoutingDecision, CallRelaxed, AgentStateChanged: records for audit and supervisors.
        b2bua.hooks.notify(HookPoint.ROUTING_DECISION, event)

    def _no_answer(self, call_id: str, agent: str, now: float) -> None:
        try:
            events = self.router.agent_no_answer(call_id=call_id, agent_id=agent, now=now)
        except RoutingError:
            self.counters["errors"] += 1  # the router already timed the offer out
            return
        self._rang_out(call_id, agent, now)
        self._mirror(agent, PresenceInput.NO_ANSWER, None, now)
        self._pending.extend(events)

    def _rang_out(self, call_id: str, agent: str, now: float) -> None:
        """RINGNOANSWER: the offer rang out, was refused, or could not ring at all (0 ms)."""
        ringing = self._ringing.pop(call_id, None)
        held = self.calls.get(call_id)
        since = ringing[1] if ringing is not None and ringing[0] == agent else now
        self._log(now, call_id, held.queue if held is not None else "NONE", agent,
                  "RINGNOANSWER", _ms(now - since))

    def _log(self, at: float, call_id: str, queue: str, agent: str, event: str,
             data1: str = "", data2: str = "", data3: str = "", data4: str = "",
             data5: str = "") -> None:
        self.queue_events.append(QueueEvent(
            at=at, call_id=call_id, queue=queue, agent=agent, event=event, data1=data1,
            data2=data2, data3=data3, data4=data4, data5=data5))

    def _safe(self, call: Callable[[], list[RouterEvent]]) -> list[RouterEvent]:
        try:
            return call()
        except RoutingError:
            self.counters["errors"] += 1
            return []

    def _flush(self) -> None:
        if self.flush is not None and not self._draining:
            self.flush()

    # -- presence mirror and store -------------------------------------------------------------
    def _mirror(self, agent: str, action: PresenceInput, reason: str | None,
                now: float) -> None:
        presence, old_reason = self.presence.get(agent, (Presence.OFFLINE, None))
        transition = PRESENCE_TRANSITIONS.get((presence, action))
        if transition is None:  # pragma: no cover - the router accepted the same input
            return
        new = transition[0]
        new_reason = reason if action is PresenceInput.PAUSE else (
            old_reason if new is Presence.BREAK else None)
        self._set_presence(agent, new, new_reason, now)

    def _set_presence(self, agent: str, presence: Presence, reason: str | None,
                      now: float | None = None) -> None:
        old = self.presence.get(agent, (Presence.OFFLINE, None))
        if old == (presence, reason):
            return
        if now is not None:  # None: restoring after a restart, nothing new happened
            self._log_presence(agent, old[0], presence, reason, now)
        if presence is Presence.OFFLINE:
            self.presence.pop(agent, None)
        else:
            self.presence[agent] = (presence, reason)
        if self.store is not None:
            self.store.save(agent, presence, reason)

    def _log_presence(self, agent: str, old: Presence, new: Presence, reason: str | None,
                      now: float) -> None:
        """Agent sessions and pauses in the queue log (queue "NONE": they span all queues),
        as Asterisk's AGENTLOGIN/AGENTLOGOFF and PAUSE/UNPAUSE; a missed offer is a PAUSE
        with reason not-responding, as Asterisk's auto-pause."""
        if old is Presence.OFFLINE:
            self._log(now, "NONE", "NONE", agent, "AGENTLOGIN")
        if new is Presence.OFFLINE:
            self._log(now, "NONE", "NONE", agent, "AGENTLOGOFF")
        elif new is Presence.BREAK:
            self._log(now, "NONE", "NONE", agent, "PAUSE", reason or "")
        elif new is Presence.NOT_RESPONDING:
            self._log(now, "NONE", "NONE", agent, "PAUSE", Presence.NOT_RESPONDING.value)
        elif old is not Presence.OFFLINE:
            self._log(now, "NONE", "NONE", agent, "UNPAUSE")

    def _restore(self, now: float) -> None:
        if self.store is None:
            return
        agents = self.router.config.agents
        for agent, (presence, reason) in self.store.load().items():
            if agent not in agents:
                continue  # no longer configured; the row stays until the agent is back
            events = self.router.agent_login(agent_id=agent, now=now)
            self.presence[agent] = (Presence.READY, None)
            if presence is not Presence.READY:
                reason = reason if presence is Presence.BREAK else RESTORED_NOT_RESPONDING_REASON
                events += self.router.agent_pause(agent_id=agent, reason=reason, now=now)
                self._set_presence(agent, Presence.BREAK, reason)
            self._pending.extend(events)
        self._drain(now)

    # -- statistics ----------------------------------------------------------------------------
    def stats(self, now: float) -> dict[str, Any]:
        """Per queue and per agent, as plain JSON-able values (see `vaultpbx.routing.stats` for
        the definitions of service level, handle time and occupancy)."""
        router = self.router
        queues: dict[str, Any] = {}
        for name in router.config.queues:
            q = router.queue_stats(name, now)
            queues[name] = {
                "waiting": q.waiting, "ringing": q.ringing,
                "longest_wait": round(q.longest_wait, 3), "entered": q.entered,
                "answered": q.answered, "answered_in_target": q.answered_in_target,
                "abandoned": q.abandoned, "overflowed": q.overflowed,
                "service_level": q.service_level,
                "service_level_target": router.config.queues[name].service_level.target_share,
                "average_handle_time": q.average_handle_time,
            }
        agents: dict[str, Any] = {}
        for agent_id in router.config.agents:
            a = router.agent_stats(agent_id, now)
            agents[agent_id] = {
                "state": a.state.value, "break_reason": a.break_reason,
                "busy_seats": a.busy_seats, "capacity": a.capacity, "offered": a.offered,
                "answered": a.answered, "missed": a.missed, "handled": a.handled,
                "average_handle_time": a.average_handle_time, "occupancy": a.occupancy,
            }
        return {"queues": queues, "agents": agents}

    def metric_samples(self, now: float) -> list[Sample]:
        """Samples in the engine's /metrics format: one metric name per statistic, the queue or
        agent as a label (`vaultpbx_queue_waiting{queue="support"}`,
        `vaultpbx_agent_state{agent="2001",state="available"}`), so that a dashboard sums or
        filters by label and adding an agent adds series, not metric names."""
        stats = self.stats(now)
        samples: list[Sample] = []
        totals = {"waiting": 0, "abandoned": 0}
        for name, q in stats["queues"].items():
            queue = {"queue": name}
            totals["waiting"] += q["waiting"]
            totals["abandoned"] += q["abandoned"]
            samples += [
                ("vaultpbx_queue_waiting", "gauge", q["waiting"], "Calls waiting in the queue",
                 queue),
                ("vaultpbx_queue_ringing", "gauge", q["ringing"],
                 "Calls of the queue ringing at an agent", queue),
                ("vaultpbx_queue_longest_wait_seconds", "gauge", q["longest_wait"],
                 "Longest current wait in the queue", queue),
                ("vaultpbx_queue_entered", "counter", q["entered"],
                 "Calls that entered the queue", queue),
                ("vaultpbx_queue_answered", "counter", q["answered"],
                 "Calls of the queue answered by an agent", queue),
                ("vaultpbx_queue_answered_in_target", "counter", q["answered_in_target"],
                 "Calls of the queue answered within the service-level time", queue),
                ("vaultpbx_queue_abandoned", "counter", q["abandoned"],
                 "Callers who hung up in the queue before an agent answered", queue),
                ("vaultpbx_queue_overflowed", "counter", q["overflowed"],
                 "Calls that overflowed out of the queue", queue),
            ]
            if q["service_level"] is not None:
                samples.append(("vaultpbx_queue_service_level", "gauge", q["service_level"],
                                "Share of settled calls of the queue answered in target", queue))
            if q["average_handle_time"] is not None:
                samples.append(("vaultpbx_queue_average_handle_time_seconds", "gauge",
                                q["average_handle_time"],
                                "Average talk plus wrap-up time in the queue", queue))
        by_state = dict.fromkeys((s.value for s in AgentState), 0)
        for agent_id, a in stats["agents"].items():
            by_state[a["state"]] += 1
            agent = {"agent": agent_id}
            # One series per state, 1 for the agent's current one (a state set): a state
            # change flips values instead of making series appear and vanish.
            samples += [
                ("vaultpbx_agent_state", "gauge", 1 if a["state"] == state else 0,
                 "1 for the agent's current state, 0 for the others",
                 {"agent": agent_id, "state": state})
                for state in by_state
            ]
            samples += [
                ("vaultpbx_agent_busy_seats", "gauge", a["busy_seats"],
                 "Seats of the agent reserved, on a call or in wrap-up", agent),
                ("vaultpbx_agent_offered", "counter", a["offered"],
                 "Calls offered to the agent", agent),
                ("vaultpbx_agent_missed", "counter", a["missed"],
                 "Offers the agent let ring out", agent),
                ("vaultpbx_agent_handled", "counter", a["handled"],
                 "Calls the agent finished", agent),
            ]
            if a["occupancy"] is not None:
                samples.append(("vaultpbx_agent_occupancy", "gauge", a["occupancy"],
                                "Share of staffed time the agent was busy", agent))
            if a["average_handle_time"] is not None:
                samples.append(("vaultpbx_agent_average_handle_time_seconds", "gauge",
                                a["average_handle_time"],
                                "Average talk plus wrap-up time of the agent", agent))
        for state, count in by_state.items():
            samples.append((f"vaultpbx_acd_agents_{state.replace('-', '_')}", "gauge", count,
                            f"Agents now {state}"))
        samples.append(("vaultpbx_acd_waiting", "gauge", totals["waiting"],
                        "Calls waiting in all queues"))
        samples.append(("vaultpbx_acd_abandoned", "counter", totals["abandoned"],
                        "Callers who hung up in a queue before an agent answered"))
        for name, value in self.counters.items():
            samples.append((f"vaultpbx_acd_{name}", "counter", value, name.replace("_", " ")))
        return samples

    # -- admin API -----------------------------------------------------------------------------
    def admin_routes(self) -> dict[tuple[str, str], Callable[[HttpRequest], HttpResponse]]:
        """GET /queues, GET /agents, POST /agents/{login,logout,pause,ready} with JSON
        `{"agent": "2001", "reason": "lunch"}` (reason: pause only). Unauthenticated as yet:
        mount them behind the admin API's session check."""
        return {
            ("GET", "/queues"): self._get_queues,
            ("GET", "/agents"): self._get_agents,
            ("POST", "/agents/login"): self._post_login,
            ("POST", "/agents/logout"): self._post_logout,
            ("POST", "/agents/pause"): self._post_pause,
            ("POST", "/agents/ready"): self._post_ready,
        }

    def _now(self) -> float:
        if self.clock is None:
            raise RuntimeError("AcdBridge needs a clock to serve the admin API")
        return self.clock()

    def _get_queues(self, request: HttpRequest) -> HttpResponse:
        return _json({"queues": self.stats(self._now())["queues"]})

    def _get_agents(self, request: HttpRequest) -> HttpResponse:
        return _json({"agents": self.stats(self._now())["agents"]})

    def _post_login(self, request: HttpRequest) -> HttpResponse:
        return self._agent_request(request, PresenceInput.LOGIN)

    def _post_logout(self, request: HttpRequest) -> HttpResponse:
        return self._agent_request(request, PresenceInput.LOGOUT)

    def _post_pause(self, request: HttpRequest) -> HttpResponse:
        return self._agent_request(request, PresenceInput.PAUSE)

    def _post_ready(self, request: HttpRequest) -> HttpResponse:
        return self._agent_request(request, PresenceInput.READY)

    def _agent_request(self, request: HttpRequest, action: PresenceInput) -> HttpResponse:
        try:
            body = request.json()
        except (ValueError, UnicodeDecodeError):
            return _json({"error": "body must be JSON"}, 400)
        if not isinstance(body, dict) or not isinstance(body.get("agent"), str):
            return _json({"error": 'expected {"agent": "<id>"}'}, 400)
        agent = body["agent"]
        reason = body.get("reason")
        if action is PresenceInput.PAUSE:
            if reason is None:
                reason = "break"
            if not isinstance(reason, str) or not 0 < len(reason) <= 64:
                return _json({"error": "reason must be 1-64 characters"}, 400)
        if agent not in self.router.config.agents:
            return _json({"error": "unknown agent"}, 404)
        now = self._now()
        try:
            self._control(agent, action, reason, now)
        except RoutingError as exc:
            return _json({"error": str(exc)}, 409)
        return _json({"agent": agent, **self.stats(now)["agents"][agent]})


def _json(value: object, status: int = 200) -> HttpResponse:
    from ..api.messages import HttpResponse

    return HttpResponse.of_json(value, status)
