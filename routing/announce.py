"""Queue announcements without I/O: what a waiting caller is told, as a sequence of prompt names.

The media plane plays prompts by name (`sounds/prompts/<name>.wav`, or the operator's `sounds:`
directory); this module only composes names, estimates waits and decides whether a queue is
staffed. Time comes in as seconds; nothing here reads a file or a clock.

- `number_prompts(n)`: 0..99 as at most two prompts ("digit-20" "digit-3"); above 99,
  "more than" "ninety nine" (a position or a wait that long is not worth reading out exactly).
- `WaitEstimate`: a queue's recent answered waits (entering the queue -> an agent answering), the
  last `WINDOW` of them, kept with a running sum so recording and estimating are O(1). A caller's
  estimated wait is that mean minus what it has already waited (as Asterisk's `holdtime`
  announcement), never below zero; None while the queue has answered nothing yet, which is
  announced as "we cannot estimate your waiting time yet".
- `compose_periodic(...)`: "you are caller number" N, "your estimated wait is about" M
  "minutes" (or "less than a minute"), "thank you for waiting".
- `queue_staffed(...)`: a queue is empty when no signed-in agent (ready, busy, on a break or
  not responding) may serve it: the agent's `queues` list allows it and the agent has every
  skill the queue requires at its base minimum (relaxation is ignored: it loosens only for calls
  that waited).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping

from .config import AgentConfig, AnnounceConfig, QueueConfig

__all__ = [
    "MAX_SPOKEN",
    "PROMPT_ESTIMATED_WAIT",
    "PROMPT_NO_ONE_AVAILABLE",
    "PROMPT_WELCOME",
    "WINDOW",
    "AnnounceConfig",
    "WaitEstimate",
    "compose_periodic",
    "number_prompts",
    "prompts_needed",
    "queue_staffed",
    "wait_prompts",
]

WINDOW = 20  # answered waits the estimate averages over: recent enough to follow the day
MAX_SPOKEN = 99
PROMPT_WELCOME = "queue-welcome"
PROMPT_YOU_ARE_CALLER = "queue-you-are-caller"
PROMPT_ESTIMATED_WAIT = "queue-estimated-wait"
PROMPT_WAIT_UNKNOWN = "queue-wait-unknown"
PROMPT_LESS_THAN_A_MINUTE = "queue-less-than-a-minute"
PROMPT_MORE_THAN = "queue-more-than"
PROMPT_THANK_YOU = "queue-thank-you"
PROMPT_NO_ONE_AVAILABLE = "queue-no-one-available"
SPOKEN_NUMBERS = (PROMPT_MORE_THAN, *(f"digit-{n}" for n in range(20)),
                  *(f"digit-{n}" for n in range(20, 100, 10)))


def prompts_needed(config: AnnounceConfig) -> tuple[str, ...]:
    """Every prompt a queue with `config` may play (the engine checks they exist at load)."""
    out: list[str] = []
    if config.greeting is not None:
        out.append(config.greeting)
    if config.position:
        out += [PROMPT_YOU_ARE_CALLER, *SPOKEN_NUMBERS]
    if config.estimated_wait:
        out += [PROMPT_ESTIMATED_WAIT, PROMPT_WAIT_UNKNOWN, PROMPT_LESS_THAN_A_MINUTE,
                *SPOKEN_NUMBERS, "minute", "minutes"]
    if config.periodic:
        out.append(PROMPT_THANK_YOU)
    if not config.join_empty or config.leave_when_empty:
        out.append(PROMPT_NO_ONE_AVAILABLE)
    return tuple(dict.fromkeys(out))


def number_prompts(n: int) -> tuple[str, ...]:
    if n < 0:
        raise ValueError(f"cannot say {n}")
    if n > MAX_SPOKEN:
        return (PROMPT_MORE_THAN, *number_prompts(MAX_SPOKEN))
    if n < 20:
        return (f"digit-{n}",)
    tens, units = divmod(n, 10)
    return (f"digit-{tens * 10}",) + ((f"digit-{units}",) if units else ())


def wait_prompts(estimate: float | None) -> tuple[str, ...]:
    """The spoken estimate of `estimate` seconds still to wait (None: no history yet)."""
    if estimate is None:
        return (PROMPT_WAIT_UNKNOWN,)
    if estimate < 60:
        return (PROMPT_ESTIMATED_WAIT, PROMPT_LESS_THAN_A_MINUTE)
    minutes = max(1, round(estimate / 60))
    return (PROMPT_ESTIMATED_WAIT, *number_prompts(minutes),
            "minute" if minutes == 1 else "minutes")


def compose_periodic(config: AnnounceConfig, *, position: int,
                     estimate: float | None) -> tuple[str, ...]:
    """What a waiting caller hears every `period`: position and/or wait, then thanks."""
    out: tuple[str, ...] = ()
    if config.position:
        out += (PROMPT_YOU_ARE_CALLER, *number_prompts(max(1, position)))
    if config.estimated_wait:
        out += wait_prompts(estimate)
    return out + (PROMPT_THANK_YOU,) if out else ()


class WaitEstimate:
    """The mean of a queue's last `WINDOW` answered waits (O(1) per record and per estimate)."""

    __slots__ = ("waits", "total")

    def __init__(self) -> None:
        self.waits: deque[float] = deque()
        self.total = 0.0

    def record(self, waited: float) -> None:
        if not math.isfinite(waited) or waited < 0:
            return  # a clock oddity must not poison the mean
        self.waits.append(waited)
        self.total += waited
        if len(self.waits) > WINDOW:
            self.total -= self.waits.popleft()

    def mean(self) -> float | None:
        return self.total / len(self.waits) if self.waits else None

    def remaining(self, waited: float) -> float | None:
        """What a caller who has waited `waited` seconds may still expect; None: no history."""
        mean = self.mean()
        return None if mean is None else max(0.0, mean - waited)


def agent_serves(agent: AgentConfig, queue: QueueConfig) -> bool:
    if agent.queues is not None and queue.name not in agent.queues:
        return False
    return all(agent.skills.get(skill, 0) >= level for skill, level in queue.skills.items())


def queue_staffed(queue: QueueConfig, agents: Mapping[str, AgentConfig],
                  signed_in: Iterable[str]) -> bool:
    """True when a signed-in agent may serve `queue` (see the module comment)."""
    for agent_id in signed_in:
        agent = agents.get(agent_id)
        if agent is not None and agent_serves(agent, queue):
            return True
    return False
