"""The announcement composer, the wait estimate and the `announce:` config (no I/O)."""

from __future__ import annotations

import pytest
from vaultpbx.routing.announce import (
    WINDOW,
    WaitEstimate,
    compose_periodic,
    number_prompts,
    prompts_needed,
    queue_staffed,
    wait_prompts,
)
from vaultpbx.routing.config import AnnounceConfig, RouterConfig

from scripts.make_prompts import PROMPTS


def test_numbers_are_said_with_at_most_two_prompts_and_every_one_exists() -> None:
    assert number_prompts(0) == ("digit-0",)
    assert number_prompts(7) == ("digit-7",)
    assert number_prompts(13) == ("digit-13",)
    assert number_prompts(20) == ("digit-20",)
    assert number_prompts(23) == ("digit-20", "digit-3")
    assert number_prompts(99) == ("digit-90", "digit-9")
    assert number_prompts(100) == ("queue-more-than", "digit-90", "digit-9")
    for n in range(0, 150):
        assert set(number_prompts(n)) <= set(PROMPTS), n  # make_prompts.py generates them
    with pytest.raises(ValueError):
        number_prompts(-1)


def test_every_prompt_a_queue_may_play_is_generated() -> None:
    everything = AnnounceConfig(greeting="queue-welcome", position=True, estimated_wait=True,
                                join_empty=False)
    assert set(prompts_needed(everything)) <= set(PROMPTS)
    assert prompts_needed(AnnounceConfig()) == ()


def test_wait_wording() -> None:
    assert wait_prompts(None) == ("queue-wait-unknown",)
    assert wait_prompts(0) == ("queue-estimated-wait", "queue-less-than-a-minute")
    assert wait_prompts(59.9) == ("queue-estimated-wait", "queue-less-than-a-minute")
    assert wait_prompts(60) == ("queue-estimated-wait", "digit-1", "minute")
    assert wait_prompts(5 * 60 + 20) == ("queue-estimated-wait", "digit-5", "minutes")
    assert wait_prompts(42 * 60) == ("queue-estimated-wait", "digit-40", "digit-2", "minutes")


def test_periodic_announcement_composition() -> None:
    both = AnnounceConfig(position=True, estimated_wait=True)
    assert compose_periodic(both, position=3, estimate=300.0) == (
        "queue-you-are-caller", "digit-3", "queue-estimated-wait", "digit-5", "minutes",
        "queue-thank-you")
    assert compose_periodic(both, position=1, estimate=None) == (
        "queue-you-are-caller", "digit-1", "queue-wait-unknown", "queue-thank-you")
    only_position = AnnounceConfig(position=True)
    assert compose_periodic(only_position, position=21, estimate=5.0) == (
        "queue-you-are-caller", "digit-20", "digit-1", "queue-thank-you")
    assert compose_periodic(AnnounceConfig(), position=1, estimate=1.0) == ()


def test_wait_estimate_is_the_mean_of_the_last_window_minus_the_wait_so_far() -> None:
    estimate = WaitEstimate()
    assert estimate.mean() is None and estimate.remaining(10) is None
    estimate.record(100)
    estimate.record(200)
    assert estimate.mean() == 150
    assert estimate.remaining(30) == 120
    assert estimate.remaining(500) == 0.0  # waited longer than usual: "less than a minute"
    for _ in range(WINDOW):
        estimate.record(60)
    assert estimate.mean() == 60  # the two old waits fell out of the window
    estimate.record(float("nan"))
    estimate.record(-5)
    assert estimate.mean() == 60 and len(estimate.waits) == WINDOW


def test_wait_estimate_costs_the_same_per_record_whatever_the_history() -> None:
    """O(1): the running sum, not a sum over the window or the whole history."""
    estimate = WaitEstimate()
    for n in range(10_000):
        estimate.record(float(n % 7))
    assert len(estimate.waits) == WINDOW
    assert estimate.total == pytest.approx(sum(estimate.waits))


ROUTING = {
    "skills": ["english", "french"],
    "agents": {"a1": {"skills": {"english": 3}}, "a2": {"skills": {"french": 1},
                                                      "queues": ["other"]}},
    "queues": {"support": {"skills": {"english": 2}}, "french": {"skills": {"french": 2}},
               "other": {}},
}


def test_a_queue_is_staffed_by_a_signed_in_agent_who_may_serve_it() -> None:
    config = RouterConfig.from_dict(ROUTING)
    queues, agents = config.queues, config.agents
    assert queue_staffed(queues["support"], agents, ["a1"])
    assert not queue_staffed(queues["support"], agents, ["a2"])
    assert not queue_staffed(queues["support"], agents, [])
    assert not queue_staffed(queues["french"], agents, ["a2"])  # level 1 < 2, and not listed
    assert queue_staffed(queues["other"], agents, ["a2"])
    assert not queue_staffed(queues["other"], agents, ["ghost"])


def test_announce_config_parses_and_rejects_with_the_key_path() -> None:
    raw = {**ROUTING, "queues": {**ROUTING["queues"], "support": {"announce": {
        "greeting": True, "position": True, "estimated_wait": True, "period": 20,
        "join_empty": False, "leave_when_empty": True}}}}
    announce = RouterConfig.from_dict(raw).queues["support"].announce
    assert announce == AnnounceConfig(greeting="queue-welcome", position=True,
                                      estimated_wait=True, period=20.0, join_empty=False,
                                      leave_when_empty=True)
    assert RouterConfig.from_dict(ROUTING).queues["support"].announce == AnnounceConfig()
    custom = {**ROUTING, "queues": {**ROUTING["queues"],
                                    "support": {"announce": {"greeting": "our-welcome"}}}}
    assert RouterConfig.from_dict(custom).queues["support"].announce.greeting == "our-welcome"
    bad = [
        ({"greeting": "../../etc/passwd"}, "routing.queues.support.announce.greeting"),
        ({"greeting": 3}, "routing.queues.support.announce.greeting"),
        ({"period": 0}, "routing.queues.support.announce.period"),
        ({"join_empty": "no"}, "routing.queues.support.announce.join_empty"),
        ({"volume": 3}, "routing.queues.support.announce.volume"),
    ]
    for announce_raw, path in bad:
        raw = {**ROUTING, "queues": {**ROUTING["queues"], "support": {"announce": announce_raw}}}
        with pytest.raises(ValueError) as caught:
            RouterConfig.from_dict(raw)
        assert str(caught.value).startswith(path + ":"), caught.value
