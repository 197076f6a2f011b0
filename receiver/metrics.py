"""Prometheus metrics, correct however many web and worker processes run.

Two kinds, both served by ``GET /metrics`` (:mod:`receiver.console.metrics`):

- **Counts that the database already holds** (deliveries by outcome and scheme, transitions by
  state, jobs by state and handler, the oldest queued job, bytes downloaded, reconcile
  recoveries) are computed from it at scrape time. They are right by construction across
  processes and restarts: every process writes the same database.
- **What only a process sees** (ingest latency, job durations, store errors) is observed here,
  by one-line calls from the webhook and the worker. In one process this is the default
  registry. With several processes, a scrape must sum them (prometheus_client's multiprocess
  mode): ``serve --workers N`` gives its processes a fresh shared folder by itself; for a
  separate ``worker`` too, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder shared by all
  of them before they start.

Nothing here is created at import time beyond the metric objects, which prometheus_client keeps
in its registry (or, in multiprocess mode, in files under the folder).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import Counter, Histogram

INGEST_SECONDS = Histogram(
    "receiver_ingest_seconds",
    "Time from reading a webhook to answering it, store commit included, by outcome and "
    "provider.",
    ["outcome", "provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
JOB_SECONDS = Histogram(
    "receiver_job_duration_seconds",
    "Time a handler ran, by handler and result (done, later, permanent, failed, cancelled).",
    ["handler", "result"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0),
)
STORE_ERRORS = Counter(
    "receiver_store_errors",
    "Store operations that failed (the database could not be read or written), by where.",
    ["where"],
)
STORE_OUTAGES = Counter(
    "receiver_store_outages",
    "Times this process found the database away (an operation failed after one succeeded).",
)
STORE_RECONNECTS = Counter(
    "receiver_store_reconnects",
    "Times this process found the database back (an operation succeeded after it was away).",
)


_OUTCOMES = {200: "recorded", 422: "quarantined", 401: "refused", 413: "too_large",
             503: "store_unavailable", 404: "not_found"}
# labels() takes a lock and builds a key: once a status (and provider)
_ingest_by_status: dict[int, Any] = {}
_ingest_by_provider: dict[tuple[int, str], Any] = {}


def observe_ingest(seconds: float, status: int, provider: str = "sonic") -> None:
    """A webhook of ``provider`` was answered with ``status`` after ``seconds``."""
    if provider == "sonic":
        histogram = _ingest_by_status.get(status)
    else:
        histogram = _ingest_by_provider.get((status, provider))
    if histogram is None:
        histogram = INGEST_SECONDS.labels(outcome=_OUTCOMES.get(status, str(status)),
                                          provider=provider)
        if provider == "sonic":
            _ingest_by_status[status] = histogram
        else:
            _ingest_by_provider[(status, provider)] = histogram
    histogram.observe(seconds)
    if status == 503:
        STORE_ERRORS.labels(where="ingest").inc()


class job_timer:
    """Times one handler run; the result label comes from how it ended."""

    def __init__(self, handler: str) -> None:
        self.handler = handler
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 *_: object) -> None:
        from receiver.jobs import PermanentError, Retry

        if kind is None:
            result = "done"
        elif isinstance(value, Retry) and not value.counted:
            result = "later"
        elif issubclass(kind, PermanentError):
            result = "permanent"
        elif issubclass(kind, asyncio.CancelledError):
            result = "cancelled"
        else:
            result = "failed"
        JOB_SECONDS.labels(handler=self.handler, result=result).observe(
            time.perf_counter() - self.started)


def store_error(where: str) -> None:
    STORE_ERRORS.labels(where=where).inc()


def store_outage() -> None:
    STORE_OUTAGES.inc()


def store_reconnect() -> None:
    STORE_RECONNECTS.inc()
