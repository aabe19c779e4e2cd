"""Typed, frozen router configuration, built once from the YAML's plain dict.

`RouterConfig.from_dict(d)` checks every key and value and raises `ValueError` whose message
starts with the key path (``routing.queues.sales.relaxation[1].after: ...``); the YAML loader
adds the line. The router never sees a raw dict.

Invariants a valid config keeps:
- every skill named by an agent, a queue or a relaxation step is in the `skills` catalogue;
- proficiencies and minimum proficiencies are integers 1..5;
- relaxation steps of a queue have strictly increasing `after` and only ever loosen the
  requirement (each step applies on top of the earlier ones);
- an overflow queue exists and is not the queue itself.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

MIN_PROFICIENCY = 1
MAX_PROFICIENCY = 5


class Strategy(enum.Enum):
    """How a queue picks among several available agents who all match a call."""

    LONGEST_IDLE = "longest-idle"
    """The agent whose last call (or ready) is oldest: spreads work evenly."""
    MOST_SKILLED_FIRST = "most-skilled-first"
    """Highest total proficiency over the call's required skills, then longest idle."""
    LEAST_OCCUPIED = "least-occupied"
    """Fewest busy seats per capacity, then lowest occupancy since login, then longest idle."""
    ROUND_ROBIN = "round-robin"
    """The next agent, in configuration order, after the one this queue picked last."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceLevelTarget:
    """A queue's promise, e.g. 80 % of calls answered within 20 s."""

    answer_within: float = 20.0
    """Seconds from entering the queue to the agent answering that count as 'in target'."""
    target_share: float = 0.8
    """Share (0..1] of calls the queue aims to answer within `answer_within`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RelaxationStep:
    """A loosening of a waiting call's requirements once it has waited `after` seconds."""

    after: float
    """Seconds since the call entered the queue at which this step applies."""
    min_proficiency: int | None = None
    """Cap every still-required skill's minimum proficiency at this level (None: unchanged)."""
    drop_skills: frozenset[str] = frozenset()
    """Skills no longer required at all from this step on (queue or caller skills)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OverflowTarget:
    """Where a call goes when it has waited a queue's `max_wait`; exactly one field is set."""

    queue: str | None = None
    """Another queue of this router: the call keeps its place by original arrival time."""
    destination: str | None = None
    """Anything else (a SIP URI, 'voicemail'): the call leaves the router; the B2BUA routes it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AnnounceConfig:
    """A queue's announcements and empty-queue rules (the YAML `routing.queues.<q>.announce`)."""

    greeting: str | None = None
    """Prompt played once when the caller enters the queue, before the music; None: none."""
    position: bool = False
    """Announce the caller's position every `period` seconds."""
    estimated_wait: bool = False
    """Announce the estimated wait every `period` seconds."""
    period: float = 30.0
    """Seconds of music between two periodic announcements."""
    join_empty: bool = True
    """False: a caller into a queue no signed-in agent can serve is refused at once (it hears
    the no-one-available prompt, then 480) instead of waiting for `max_wait`."""
    leave_when_empty: bool = False
    """True: waiting callers leave the same way when the queue's last agent signs out (and a
    caller arriving at an empty queue is refused, as with `join_empty: false`)."""

    @property
    def periodic(self) -> bool:
        return self.position or self.estimated_wait


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """One queue: who may answer its calls, in what order, and what happens on long waits."""

    name: str
    """The queue's name, as the dialplan refers to it."""
    skills: Mapping[str, int]
    """Required skill -> minimum proficiency (1..5). Empty: any agent who may serve the queue."""
    priority: int = 0
    """Added to each call's own priority; higher is served first, across all an agent's queues."""
    strategy: Strategy = Strategy.LONGEST_IDLE
    """How to pick among several matching available agents when a call arrives."""
    service_level: ServiceLevelTarget = field(default_factory=ServiceLevelTarget)
    """The answer-time target the statistics measure against."""
    max_wait: float | None = None
    """Seconds a call may wait in this queue before it overflows (None: forever)."""
    overflow: OverflowTarget | None = None
    """Where a call goes after `max_wait`; None with a `max_wait` means the B2BUA decides."""
    relaxation: tuple[RelaxationStep, ...] = ()
    """Loosening steps, by increasing `after`; each applies on top of the earlier ones."""
    wrap_up: float = 0.0
    """Seconds of after-call work, during which the agent's seat stays busy."""
    ring_timeout: float = 15.0
    """Seconds an offered call rings at an agent before it counts as not answered."""
    music_on_hold: str | None = None
    """WAV file waiting callers hear (the engine checks the file); None: `media.music_on_hold`;
    empty: none."""
    announce: AnnounceConfig = field(default_factory=lambda: AnnounceConfig())
    """Greeting, periodic position/wait announcements and empty-queue rules (docs/prompts.md)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """One agent: what they can do and how many calls at once."""

    agent_id: str
    """The agent's identifier, as used by login/logout and in events."""
    skills: Mapping[str, int]
    """Skill -> proficiency 1 (novice) .. 5 (expert)."""
    capacity: int = 1
    """Calls held at once (reserved + on-call + wrap-up seats)."""
    queues: frozenset[str] | None = None
    """Queues this agent may serve; None: every queue whose skills the agent has."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterConfig:
    """The whole router configuration (the YAML's `routing:` section)."""

    skills: frozenset[str]
    """The skill catalogue; naming any other skill anywhere is an error (catches typos)."""
    agents: Mapping[str, AgentConfig]
    """Agents by id, in configuration order (round-robin follows this order)."""
    queues: Mapping[str, QueueConfig]
    """Queues by name."""

    @classmethod
    def from_dict(cls, d: Any, path: str = "routing") -> RouterConfig:
        """Build and check a config from plain data; `ValueError` names the bad key path."""
        return _parse_router(d, path)


# ---------------------------------------------------------------------------------------------
# Parsing. Each helper takes the value and its key path and raises ValueError("path: problem").


def _fail(path: str, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}")


def _mapping(value: Any, path: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise _fail(path, f"keys must be strings, got {key!r}")
        if key not in allowed:
            raise _fail(f"{path}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return value


def _named_mapping(value: Any, path: str) -> Mapping[str, Any]:
    """A mapping whose keys are names chosen by the operator (agents, queues, skills)."""
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be a mapping, got {type(value).__name__}")
    for key in value:
        _name(key, f"{path}.{key}")
    return value


def _name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value or value != value.strip():
        raise _fail(path, f"must be a non-empty name without surrounding spaces, got {value!r}")
    return value


def _int(value: Any, path: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise _fail(path, f"must be {bounds}, got {value}")
    return value


def _seconds(value: Any, path: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, f"must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        raise _fail(path, f"must be {'> 0' if positive else '>= 0'} seconds, got {value!r}")
    return seconds


def _proficiency(value: Any, path: str) -> int:
    return _int(value, path, MIN_PROFICIENCY, MAX_PROFICIENCY)


def _skill_levels(value: Any, path: str, catalogue: frozenset[str]) -> Mapping[str, int]:
    """`{skill: level}`, or a list of skills meaning level 1 each."""
    levels: dict[str, int] = {}
    if isinstance(value, list | tuple):
        for i, skill in enumerate(value):
            levels[_known_skill(skill, f"{path}[{i}]", catalogue)] = MIN_PROFICIENCY
        if len(levels) != len(value):
            raise _fail(path, "lists a skill twice")
        return MappingProxyType(levels)
    for skill, level in _named_mapping(value, path).items():
        _known_skill(skill, f"{path}.{skill}", catalogue)
        levels[skill] = _proficiency(level, f"{path}.{skill}")
    return MappingProxyType(levels)


def _known_skill(value: Any, path: str, catalogue: frozenset[str]) -> str:
    skill = _name(value, path)
    if skill not in catalogue:
        raise _fail(path, f"unknown skill {skill!r} (not in routing.skills)")
    return skill


_ROUTER_KEYS = frozenset({"skills", "agents", "queues"})
_AGENT_KEYS = frozenset({"skills", "capacity", "queues"})
_QUEUE_KEYS = frozenset({
    "skills", "priority", "strategy", "service_level", "max_wait", "overflow", "relaxation",
    "wrap_up", "ring_timeout", "music_on_hold", "announce",
})
_ANNOUNCE_KEYS = frozenset({
    "greeting", "position", "estimated_wait", "period", "join_empty", "leave_when_empty",
})
PROMPT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""A prompt's name: its file is <name>.wav in the `sounds:` directory or sounds/prompts/."""
_SERVICE_LEVEL_KEYS = frozenset({"answer_within", "target_share"})
_STEP_KEYS = frozenset({"after", "min_proficiency", "drop_skills"})
_OVERFLOW_KEYS = frozenset({"queue", "destination"})


def _or_empty(value: Any) -> Any:
    return {} if value is None else value


def _parse_router(d: Any, path: str) -> RouterConfig:
    top = _mapping(d, path, _ROUTER_KEYS)
    if "skills" not in top:
        raise _fail(f"{path}.skills", "is required (the list of skill names)")
    raw_skills = top["skills"]
    if not isinstance(raw_skills, list | tuple):
        raise _fail(f"{path}.skills", f"must be a list of names, got {raw_skills!r}")
    catalogue = frozenset(_name(s, f"{path}.skills[{i}]") for i, s in enumerate(raw_skills))
    if len(catalogue) != len(raw_skills):
        raise _fail(f"{path}.skills", "lists a skill twice")

    # An empty YAML section (`agents:` with nothing under it) loads as None: same as {}.
    raw_queues = _named_mapping(_or_empty(top.get("queues")), f"{path}.queues")
    queue_names = frozenset(raw_queues)
    queues: dict[str, QueueConfig] = {}
    for qname, raw in raw_queues.items():
        qpath = f"{path}.queues.{qname}"
        queues[qname] = _parse_queue(qname, raw, qpath, catalogue, queue_names)

    raw_agents = _named_mapping(_or_empty(top.get("agents")), f"{path}.agents")
    agents: dict[str, AgentConfig] = {}
    for agent_id, raw in raw_agents.items():
        apath = f"{path}.agents.{agent_id}"
        agents[agent_id] = _parse_agent(agent_id, raw, apath, catalogue, queue_names)
    return RouterConfig(skills=catalogue, agents=MappingProxyType(agents),
                        queues=MappingProxyType(queues))


def _parse_agent(agent_id: str, raw: Any, path: str, catalogue: frozenset[str],
                 queue_names: frozenset[str]) -> AgentConfig:
    m = _mapping(raw, path, _AGENT_KEYS)
    if "skills" not in m:
        raise _fail(f"{path}.skills", "is required")
    skills = _skill_levels(m["skills"], f"{path}.skills", catalogue)
    capacity = _int(m.get("capacity", 1), f"{path}.capacity", 1)
    queues: frozenset[str] | None = None
    if m.get("queues") is not None:
        raw_q = m["queues"]
        if not isinstance(raw_q, list | tuple):
            raise _fail(f"{path}.queues", f"must be a list of queue names, got {raw_q!r}")
        for i, q in enumerate(raw_q):
            if _name(q, f"{path}.queues[{i}]") not in queue_names:
                raise _fail(f"{path}.queues[{i}]", f"unknown queue {q!r}")
        queues = frozenset(raw_q)
    return AgentConfig(agent_id=agent_id, skills=skills, capacity=capacity, queues=queues)


def _parse_queue(name: str, raw: Any, path: str, catalogue: frozenset[str],
                 queue_names: frozenset[str]) -> QueueConfig:
    m = _mapping(raw, path, _QUEUE_KEYS)
    skills = _skill_levels(m.get("skills", {}), f"{path}.skills", catalogue)
    priority = _int(m.get("priority", 0), f"{path}.priority", -1_000_000, 1_000_000)

    raw_strategy = m.get("strategy", Strategy.LONGEST_IDLE.value)
    try:
        strategy = Strategy(raw_strategy)
    except ValueError:
        choices = ", ".join(s.value for s in Strategy)
        raise _fail(f"{path}.strategy", f"must be one of {choices}, got {raw_strategy!r}") from None

    sl_path = f"{path}.service_level"
    sl = _mapping(m.get("service_level", {}), sl_path, _SERVICE_LEVEL_KEYS)
    share = sl.get("target_share", 0.8)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise _fail(f"{sl_path}.target_share", f"must be a share in (0, 1], got {share!r}")
    service_level = ServiceLevelTarget(
        answer_within=_seconds(sl.get("answer_within", 20.0), f"{sl_path}.answer_within",
                               positive=False),
        target_share=float(share),
    )

    max_wait = None
    if m.get("max_wait") is not None:
        max_wait = _seconds(m["max_wait"], f"{path}.max_wait", positive=True)

    overflow = None
    if m.get("overflow") is not None:
        o_path = f"{path}.overflow"
        o = _mapping(m["overflow"], o_path, _OVERFLOW_KEYS)
        if len(o) != 1:
            raise _fail(o_path, "must set exactly one of queue, destination")
        if "queue" in o:
            target = _name(o["queue"], f"{o_path}.queue")
            if target not in queue_names:
                raise _fail(f"{o_path}.queue", f"unknown queue {target!r}")
            if target == name:
                raise _fail(f"{o_path}.queue", "cannot overflow into itself")
            overflow = OverflowTarget(queue=target)
        else:
            overflow = OverflowTarget(destination=_name(o["destination"], f"{o_path}.destination"))
        if max_wait is None:
            raise _fail(o_path, "needs max_wait (when to overflow)")

    r_path = f"{path}.relaxation"
    raw_steps = m.get("relaxation", [])
    if not isinstance(raw_steps, list | tuple):
        raise _fail(r_path, f"must be a list of steps, got {raw_steps!r}")
    steps: list[RelaxationStep] = []
    for i, raw_step in enumerate(raw_steps):
        s_path = f"{r_path}[{i}]"
        s = _mapping(raw_step, s_path, _STEP_KEYS)
        if "after" not in s:
            raise _fail(f"{s_path}.after", "is required")
        after = _seconds(s["after"], f"{s_path}.after", positive=True)
        if steps and after <= steps[-1].after:
            raise _fail(f"{s_path}.after", f"must be later than the previous step ({after:g})")
        min_prof = None
        if s.get("min_proficiency") is not None:
            min_prof = _proficiency(s["min_proficiency"], f"{s_path}.min_proficiency")
        raw_drop = s.get("drop_skills", [])
        if not isinstance(raw_drop, list | tuple):
            raise _fail(f"{s_path}.drop_skills", f"must be a list of skills, got {raw_drop!r}")
        drop = frozenset(_known_skill(k, f"{s_path}.drop_skills[{j}]", catalogue)
                         for j, k in enumerate(raw_drop))
        if min_prof is None and not drop:
            raise _fail(s_path, "must set min_proficiency or drop_skills")
        steps.append(RelaxationStep(after=after, min_proficiency=min_prof, drop_skills=drop))

    return QueueConfig(
        name=name,
        skills=skills,
        priority=priority,
        strategy=strategy,
        service_level=service_level,
        max_wait=max_wait,
        overflow=overflow,
        relaxation=tuple(steps),
        wrap_up=_seconds(m.get("wrap_up", 0.0), f"{path}.wrap_up", positive=False),
        ring_timeout=_seconds(m.get("ring_timeout", 15.0), f"{path}.ring_timeout", positive=True),
        music_on_hold=_optional_text(m.get("music_on_hold"), f"{path}.music_on_hold"),
        announce=_parse_announce(m.get("announce"), f"{path}.announce"),
    )


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"must be true or false, got {value!r}")
    return value


def _parse_announce(raw: Any, path: str) -> AnnounceConfig:
    m = _mapping(_or_empty(raw), path, _ANNOUNCE_KEYS)
    greeting: str | None = None
    raw_greeting = m.get("greeting", False)
    if raw_greeting is True:
        greeting = "queue-welcome"
    elif isinstance(raw_greeting, str):
        if not PROMPT_NAME.fullmatch(raw_greeting):
            raise _fail(f"{path}.greeting", "must be true, false or a prompt name (lower-case "
                        f"letters, digits, - and _; the file is <name>.wav), got {raw_greeting!r}")
        greeting = raw_greeting
    elif raw_greeting is not False and raw_greeting is not None:
        raise _fail(f"{path}.greeting", f"must be true, false or a prompt name, got "
                    f"{raw_greeting!r}")
    return AnnounceConfig(
        greeting=greeting,
        position=_bool(m.get("position", False), f"{path}.position"),
        estimated_wait=_bool(m.get("estimated_wait", False), f"{path}.estimated_wait"),
        period=_seconds(m.get("period", 30.0), f"{path}.period", positive=True),
        join_empty=_bool(m.get("join_empty", True), f"{path}.join_empty"),
        leave_when_empty=_bool(m.get("leave_when_empty", False), f"{path}.leave_when_empty"),
    )


def _optional_text(value: Any, path: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _fail(path, f"must be a file path (or empty for none), got {value!r}")
    return value


def relaxed_requirement(
    base: Mapping[str, int], steps: tuple[RelaxationStep, ...], stage: int
) -> tuple[tuple[str, int], ...]:
    """The requirement after the first `stage` steps, as sorted (skill, minimum) pairs.

    Steps are cumulative and only loosen: a later step's higher `min_proficiency` cannot raise
    a minimum an earlier step lowered. Sorted pairs make equal requirements share one key.
    """
    cap = MAX_PROFICIENCY
    dropped: set[str] = set()
    for step in steps[:stage]:
        if step.min_proficiency is not None:
            cap = min(cap, step.min_proficiency)
        dropped.update(step.drop_skills)
    return tuple(sorted((s, min(level, cap)) for s, level in base.items() if s not in dropped))
