"""``GET /metrics``: the Prometheus text format, behind the admin token.

The database's counts are computed at scrape time
(:meth:`receiver.storage.admin.Admin.totals`) and joined with the process-local instruments of
:mod:`receiver.metrics` (summed across processes from ``PROMETHEUS_MULTIPROC_DIR`` when it is
set).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from receiver.alerts import RULES
from receiver.console.api import reads_of
from receiver.errors import StoreError
from receiver.failures import FailureCategory
from receiver.metrics import store_error
from receiver.runtime import runtime_of
from receiver.storage.admin import JOB_STATES, Totals

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class TotalsCollector(Collector):
    """One scrape's database counts as metric families."""

    def __init__(self, totals: Totals, now: float) -> None:
        self.totals = totals
        self.now = now

    def collect(self) -> Iterable[Metric]:
        t = self.totals
        deliveries = CounterMetricFamily(
            "receiver_deliveries",
            "Deliveries stored, by outcome, signature scheme and provider.",
            labels=["outcome", "scheme", "provider"])
        for (outcome, scheme, provider), n in sorted(t.deliveries.items()):
            deliveries.add_metric([outcome, scheme, provider], n)
        for (scheme, provider), n in sorted(t.duplicates.items()):
            deliveries.add_metric(["duplicate", scheme, provider], n)
        yield deliveries
        transitions = CounterMetricFamily(
            "receiver_transitions", "State transitions recorded, by entity and state entered.",
            labels=["entity", "state"])
        for (entity, state), n in sorted(t.transitions.items()):
            transitions.add_metric([entity, state], n)
        yield transitions
        jobs = GaugeMetricFamily("receiver_jobs", "Jobs by state and handler.",
                                 labels=["state", "handler"])
        handlers = sorted({h for _, h in t.jobs})
        for state in JOB_STATES:
            for handler in handlers:
                jobs.add_metric([state, handler], t.jobs.get((state, handler), 0))
        yield jobs
        dead = sum(n for (state, _), n in t.jobs.items() if state == "dead")
        yield GaugeMetricFamily("receiver_dead_jobs", "Jobs that gave up (state dead).",
                                value=dead)
        age = 0.0 if t.oldest_queued_at is None else max(0.0, self.now - t.oldest_queued_at)
        yield GaugeMetricFamily("receiver_oldest_queued_job_age_seconds",
                                "Age of the oldest job waiting to run (0 when none).", value=age)
        yield CounterMetricFamily("receiver_downloaded_bytes",
                                  "Bytes of media files kept by handlers.",
                                  value=t.bytes_downloaded)
        yield CounterMetricFamily("receiver_reconcile_recoveries",
                                  "Task transitions recorded from a poll (reconciliation).",
                                  value=t.recoveries)
        failed = CounterMetricFamily(
            "receiver_tasks_failed",
            "Tasks that failed, by why (receiver.failures) and provider.",
            labels=["category", "provider"])
        providers = sorted({"sonic", *(p for _, p in t.failed_by_category)})
        for category in FailureCategory:
            for provider in providers:
                failed.add_metric([category.value, provider],
                                  t.failed_by_category.get((category.value, provider), 0))
        yield failed
        yield GaugeMetricFamily("receiver_tasks_overdue",
                                "Open tasks past their type's deadline ([deadlines]).",
                                value=t.overdue)
        fired = CounterMetricFamily("receiver_alerts_fired",
                                    "Alerts the receiver raised, by rule.", labels=["rule"])
        active = GaugeMetricFamily("receiver_alerts_active",
                                   "Alerts firing now, by rule (0 or more per subject).",
                                   labels=["rule"])
        for rule in RULES:
            count, open_now = t.alerts.get(rule, (0, 0))
            fired.add_metric([rule], count)
            active.add_metric([rule], open_now)
        yield fired
        yield active


def process_registry() -> CollectorRegistry:
    """The process-local instruments: summed over every process in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


async def metrics(request: Request) -> Response:
    """The Prometheus text format (version 0.0.4)."""
    runtime = runtime_of(request)
    body = generate_latest(process_registry())
    try:
        totals = await reads_of(request).totals(now=runtime.clock.now())
    except StoreError:
        store_error("metrics")
        body = generate_latest(process_registry())
    else:
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(TotalsCollector(totals, runtime.clock.now()))
        body = generate_latest(scrape) + body
    return Response(body, media_type=CONTENT_TYPE)


def metrics_routes() -> list[BaseRoute]:
    return [Route("/metrics", metrics, methods=["GET"])]
