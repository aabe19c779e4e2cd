"""ACD statistics on /metrics are labelled series of fixed metric names
(`vaultpbx_agent_state{agent="2001",state="available"}`, `vaultpbx_queue_waiting{queue="support"}`),
never one metric name per agent or queue (`vaultpbx_agent_2001_...`): a dashboard sums and filters
by label, and adding an agent must not add metric names. Rendered by the engine's own collector
and read back with prometheus_client's parser, as a scraper would."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from vaultpbx.api.metrics import make_registry, render

from tests.b2bua.test_acd import Acd


def scrape(acd: Acd) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Metric name -> [(labels, value)], from the text a scraper gets."""
    text = render(make_registry(lambda: acd.bridge.metric_samples(acd.h.now))).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def test_agent_and_queue_statistics_are_labels_not_metric_names() -> None:
    acd = Acd()
    acd.agent("2001")  # registered and logged in: available
    acd.phones["1001"].invite("700", "m1")
    metrics = scrape(acd)
    for name in metrics:
        assert not any(part in name for part in (*acd.bridge.stats(acd.h.now)["agents"],
                                                 *acd.bridge.stats(acd.h.now)["queues"])), name
    states = {(labels["agent"], labels["state"]): value
              for labels, value in metrics["vaultpbx_agent_state"]}
    assert states[("2001", "available")] == 0  # the waiting call is ringing at 2001 now
    assert sum(v for (agent, _), v in states.items() if agent == "2001") == 1
    assert sum(v for (agent, _), v in states.items() if agent == "2002") == 1
    assert states[("2002", "offline")] == 1
    current_2001 = [state for (agent, state), v in states.items() if agent == "2001" and v]
    assert current_2001 == ["reserved"]
    offered = {labels["agent"]: v for labels, v in metrics["vaultpbx_agent_offered_total"]}
    assert offered.pop("2001") == 1 and set(offered.values()) == {0}
    entered = {labels["queue"]: v for labels, v in metrics["vaultpbx_queue_entered_total"]}
    assert entered["support"] == 1
    assert set(entered) == set(acd.bridge.stats(acd.h.now)["queues"])
    assert [v for _, v in metrics["vaultpbx_acd_waiting"]] == [0]  # an unlabelled total stays

