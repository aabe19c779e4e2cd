"""Prometheus /metrics: a collector that reads the engine's plain counters at scrape time, so
nothing on the per-message path touches a metrics library."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Sample = tuple[str, str, float, str]  # (name, kind "counter"|"gauge", value, help)


class EngineCollector(Collector):
    def __init__(self, sample: Callable[[], list[Sample]]) -> None:
        self.sample = sample

    def collect(self) -> Iterator[Metric]:
        for name, kind, value, help_text in self.sample():
            family: Metric
            if kind == "counter":
                family = CounterMetricFamily(name, help_text)
                family.add_metric([], value)
            else:
                family = GaugeMetricFamily(name, help_text)
                family.add_metric([], value)
            yield family


def make_registry(sample: Callable[[], list[Sample]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(sample))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
