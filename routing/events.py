"""What the router tells the B2BUA: commands to carry out and records to audit.

Every router entry point returns a list of these, in the order they happened. Commands
(`OfferCall`, `CancelOffer`, `CallOverflowed`) need action; records (`RoutingDecision`,
`CallRelaxed`, `AgentStateChanged`) are for the audit hook point, metrics and supervisors.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .config import Strategy
from .states import AgentState


class DecisionTrigger(enum.Enum):
    """Why the router made a decision at this moment."""

    CALL_ARRIVED = "call-arrived"
    """A call entered a queue and a matching agent was free."""
    AGENT_FREED = "agent-freed"
    """An agent became ready or a seat freed; the best waiting call was chosen for them."""
    REQUIREMENTS_RELAXED = "requirements-relaxed"
    """A waiting call's requirements loosened and a newly matching agent was free."""
    CALL_REQUEUED = "call-requeued"
    """An offer rang out; the call went back to the head of its queue and found another agent."""
    OVERFLOWED_IN = "overflowed-in"
    """A call overflowed from another queue into this one and found an agent."""
    CONFIG_APPLIED = "config-applied"
    """A new configuration made an agent and a call match."""


class OfferEndReason(enum.Enum):
    RING_TIMEOUT = "ring-timeout"
    """The queue's ring timeout passed without an answer."""
    CALLER_ABANDONED = "caller-abandoned"
    """The caller hung up while the agent's phone rang."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OfferCall:
    """Command: ring `agent_id` with `call_id`; the agent's seat is reserved until answered."""

    call_id: str
    agent_id: str
    queue: str
    ring_timeout: float
    """Seconds; the router itself treats the offer as not answered after this (`handle_timer`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelOffer:
    """Command: stop ringing `agent_id` for `call_id`."""

    call_id: str
    agent_id: str
    reason: OfferEndReason


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOverflowed:
    """A call waited a queue's `max_wait`. With `to_queue` it is still routed (in that queue);
    otherwise it left the router and the B2BUA sends it to `destination` (None: B2BUA's choice).
    """

    call_id: str
    from_queue: str
    to_queue: str | None
    destination: str | None
    waited: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRelaxed:
    """A waiting call's requirements loosened (relaxation step `stage`, counted from 1)."""

    call_id: str
    queue: str
    stage: int
    required: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStateChanged:
    agent_id: str
    old: AgentState
    new: AgentState
    reason: str | None
    """The break reason when `new` is BREAK."""
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingDecision:
    """Audit record of one routing decision: which call went to which agent, and why."""

    at: float
    call_id: str
    agent_id: str
    queue: str
    trigger: DecisionTrigger
    strategy: Strategy
    required: tuple[tuple[str, int], ...]
    """The call's requirement when decided, as (skill, minimum proficiency) pairs."""
    relaxation_stage: int
    priority: int
    """Effective priority: the queue's priority plus the call's."""
    waited: float
    """Seconds since the call first entered any queue of this router."""
    considered: int
    """How many candidates (agents, or call buckets) the decision looked at."""


RouterEvent = (
    OfferCall | CancelOffer | CallOverflowed | CallRelaxed | AgentStateChanged | RoutingDecision
)
