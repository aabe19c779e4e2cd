"""vaultpbx.routing: the skills-based call router (no I/O; time and config passed in).

The B2BUA drives one `Router`: it reports calls entering queues, agents' presence and what
happened to offers, calls `handle_timer(now)` when `get_timer()` says, and carries out the
commands in the returned event lists (`OfferCall`, `CancelOffer`, `CallOverflowed`), passing
`RoutingDecision` records to the audit hook point.
"""

from __future__ import annotations

from .config import (
    AgentConfig,
    OverflowTarget,
    QueueConfig,
    RelaxationStep,
    RouterConfig,
    ServiceLevelTarget,
    Strategy,
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
from .router import Router
from .states import AgentState
from .stats import AgentStats, QueueStats

__all__ = [
    "AgentConfig",
    "AgentState",
    "AgentStateChanged",
    "AgentStats",
    "CallOverflowed",
    "CallRelaxed",
    "CancelOffer",
    "DecisionTrigger",
    "OfferCall",
    "OfferEndReason",
    "OverflowTarget",
    "QueueConfig",
    "QueueStats",
    "RelaxationStep",
    "Router",
    "RouterConfig",
    "RouterEvent",
    "RoutingDecision",
    "RoutingError",
    "ServiceLevelTarget",
    "Strategy",
]
