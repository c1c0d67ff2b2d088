"""Prometheus metrics, one registry per application so that tests (or two apps in one process) never collide."""
from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("rastau_http_requests", "HTTP requests by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("rastau_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.face_decisions = Counter("rastau_face_decisions", "Face verification decisions", ["decision"],
                                      registry=self.registry)
        self.code_outcomes = Counter("rastau_code_outcomes", "One-time code verification outcomes", ["outcome"],
                                     registry=self.registry)

        self.purges = _PurgeTotals()  # issue 16: the retention purge (run by the bot) as the database counts it
        self.registry.register(self.purges)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PurgeTotals(Collector):
    """rastau_purged_rows_total and rastau_purge_runs_total per kind, from the purge_totals table (the purge runs in
    the bot; every server process reports the same totals, read just before each scrape)."""

    def __init__(self) -> None:
        self.totals: dict[str, tuple[int, int]] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        rows = CounterMetricFamily("rastau_purged_rows", "Rows removed or reduced by the retention purge",
                                   labels=["kind"])
        runs = CounterMetricFamily("rastau_purge_runs", "Retention purge runs that removed something",
                                   labels=["kind"])
        for kind, (removed, times) in sorted(self.totals.items()):
            rows.add_metric([kind], removed)
            runs.add_metric([kind], times)
        yield rows
        yield runs
