"""Prometheus /metrics: a collector that reads the engine's plain counters at scrape time, so
nothing on the per-message path touches a metrics library.

A sample is `(name, kind, value, help)` or, for one series of a labelled metric (per queue, per
agent), `(name, kind, value, help, {label: value})`. Samples of one name and kind form one
family: they must share help and label names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Sample = tuple[str, str, float, str] | tuple[str, str, float, str, Mapping[str, str]]


class EngineCollector(Collector):
    def __init__(self, sample: Callable[[], list[Sample]]) -> None:
        self.sample = sample

    def collect(self) -> Iterator[Metric]:
        # By name and kind: a gauge and a counter may share a name (`vaultpbx_registrations`
        # and its `_total`), and stay two families as they always were.
        families: dict[tuple[str, str], Metric] = {}
        for sample in self.sample():
            name, kind, value, help_text = sample[0], sample[1], sample[2], sample[3]
            labels: Mapping[str, str] = sample[4] if len(sample) > 4 else {}
            family = families.get((name, kind))
            if family is None:
                maker = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                family = families[(name, kind)] = maker(name, help_text, labels=list(labels))
            family.add_metric(list(labels.values()), value)  # type: ignore[attr-defined]
        yield from families.values()


def make_registry(sample: Callable[[], list[Sample]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(sample))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
