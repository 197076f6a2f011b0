"""/metrics parses with prometheus_client's parser and its counters match the database after a
run of known deliveries."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from receiver.app import create_app
from receiver.clock import FakeClock
from receiver.states import State
from receiver.storage.admin import TaskFilter
from receiver.storage.roles import sqlite_storage
from tests.console.support import AUTH, TOKEN, dead_jobs
from tests.support import app_client, callback, clip, post_signed, settings_for

pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


async def test_counters_match_the_database(tmp_path: Path) -> None:
    """5 recorded deliveries (one sent twice), 2 quarantined, 2 dead jobs: the scrape says so,
    and every count equals the database's."""
    clock = FakeClock(1_800_000_000)
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off")
    async with app_client(create_app(settings, clock=clock)) as client:
        for i in range(5):
            body = callback(f"t-{i}", [clip(f"c-{i}", "succeeded")], event="song.completed")
            assert (await post_signed(client, body, clock=clock,
                                      delivery_id=f"d-{i}")).status_code == 200
        again = callback("t-0", [clip("c-0", "succeeded")], event="song.completed")
        assert (await post_signed(client, again, clock=clock,
                                  delivery_id="d-0")).json()["status"] == "duplicate"
        for i in range(2):
            assert (await post_signed(client, b'{"data": 1}', clock=clock,
                                      delivery_id=f"q-{i}")).status_code == 422
        await dead_jobs(tmp_path, clock, 2, "download_audio")
        clock.advance(30)
        answer = await client.get("/metrics", headers=AUTH)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        got = samples(answer.text)
        assert (await client.get("/metrics")).status_code == 401
    assert got[("receiver_deliveries_total", (("outcome", "recorded"), ("provider", "sonic"),
                                              ("scheme", "musicapi")))] == 5
    assert got[("receiver_deliveries_total", (("outcome", "quarantined"), ("provider", "sonic"),
                                              ("scheme", "musicapi")))] == 2
    assert got[("receiver_transitions_total", (("entity", "task"),
                                               ("state", "succeeded")))] == 5
    assert got[("receiver_jobs", (("handler", "download_audio"), ("state", "dead")))] == 2
    assert got[("receiver_dead_jobs", ())] == 2
    ingest = got[("receiver_ingest_seconds_count", (("outcome", "recorded"),
                                                    ("provider", "sonic")))]
    assert ingest >= 6  # process-wide: other tests in this process add to it
    async with sqlite_storage(tmp_path / "receiver.db") as store:
        counts = await store.admin.counts()
        repeated = await store.admin.get_delivery("d-0")
        succeeded = await store.admin.list_tasks(TaskFilter(state=State.SUCCEEDED), limit=100)
    assert repeated is not None
    assert got[("receiver_deliveries_total", (("outcome", "duplicate"), ("provider", "sonic"),
                                              ("scheme", "musicapi")))] == repeated.row.duplicates
    assert repeated.row.duplicates == 1
    assert got[("receiver_transitions_total", (("entity", "task"),
                                               ("state", "succeeded")))] == len(succeeded.items)
    stored = sum(v for (name, labels), v in got.items()
                 if name == "receiver_deliveries_total" and ("outcome", "duplicate") not in labels)
    assert stored == counts["deliveries"]


def test_job_timer_labels_how_the_handler_ended() -> None:
    """The job histogram counts one run per result: done, later, permanent, failed."""
    from prometheus_client import REGISTRY

    from receiver import metrics
    from receiver.jobs import PermanentError, Retry

    def count(result: str) -> float:
        value = REGISTRY.get_sample_value("receiver_job_duration_seconds_count",
                                          {"handler": "timer-test", "result": result})
        return value or 0.0

    before = {r: count(r) for r in ("done", "later", "permanent", "failed")}
    with metrics.job_timer("timer-test"):
        pass
    for error in (Retry(after=1, counted=False), PermanentError("no"), ValueError("x")):
        with pytest.raises(type(error)), metrics.job_timer("timer-test"):
            raise error
    assert {r: count(r) - before[r] for r in before} == {
        "done": 1, "later": 1, "permanent": 1, "failed": 1}


def test_process_metrics_are_summed_across_processes(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, what two web processes observed is summed by a scrape
    in a third (prometheus_client's multiprocess mode, chosen when it is imported)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    observe = ("from receiver import metrics\n"
               "metrics.observe_ingest(0.01, 200)\nmetrics.observe_ingest(0.02, 503)\n")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", observe], env=env, check=True, timeout=60)
    scrape = ("from prometheus_client import generate_latest\n"
              "from receiver.console.metrics import process_registry\n"
              "print(generate_latest(process_registry()).decode())\n")
    text = subprocess.run([sys.executable, "-c", scrape], env=env, check=True, timeout=60,
                          capture_output=True, text=True).stdout
    got = samples(text)
    assert got[("receiver_ingest_seconds_count", (("outcome", "recorded"),
                                                  ("provider", "sonic")))] == 2
    assert got[("receiver_store_errors_total", (("where", "ingest"),))] == 2
