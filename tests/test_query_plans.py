"""The indexes SQLite's plans use: the queries of the job queue, the task readers, retention
and the console search an index instead of scanning a table whose size grows with the
deliveries, and each index left in the schema is one some query uses (every index costs pages
written on each delivery; see receiver/storage/migrations/0006_fewer_index_pages.sql)."""

from __future__ import annotations

import asyncio
import re
import sqlite3

import pytest

from receiver.storage.roles import sqlite_storage
from receiver.storage.sqlite import DIALECT

# statement -> the index its plan searches (SQLite names a UNIQUE constraint's index
# sqlite_autoindex_<table>_<n>)
SEARCHES = {
    "find_delivery": "sqlite_autoindex_deliveries_1",
    "get_delivery": "sqlite_autoindex_deliveries_1",
    "task_for_clips": "clips_clip",
    "task_before": "sqlite_autoindex_clips_1",
    "get_task": "sqlite_autoindex_tasks_1",
    "task_transitions": "sqlite_autoindex_transitions_1",
    "get_transitions": "sqlite_autoindex_transitions_1",
    "delivery_transitions": "sqlite_autoindex_transitions_1",
    "claim_jobs": "jobs_due",
    "release_jobs": "jobs_due",
    "next_due": "jobs_due",
    "oldest_queued": "jobs_due",
    "requeue_matching": "jobs_due",
    "pending_jobs": "jobs_due",
    "jobs_by_state_handler": "jobs_due",
    "prune_jobs": "jobs_finished",
    "prune_attempts": "jobs_finished",
    "count_prunable_jobs": "jobs_finished",
    "prune_bodies": "deliveries_received",
    "count_prunable_bodies": "deliveries_received",
    "prune_ids": "deliveries_received",
    "count_prunable_ids": "deliveries_received",
    "deliveries_per_minute": "deliveries_received",
    "stale_tasks": "tasks_state",
    "tasks_since": "tasks_first_seen",
    "list_tasks": "tasks_first_seen",
    # what the alert rules and the deadlines read each round (receiver/storage/watch.py)
    "tally_since": "sqlite_autoindex_tallies_1",
    "polled_since": "transitions_polled",
    "overdue_open": "tasks_state",
    "ended_since": "tasks_state",
    "dead_since": "jobs_due",
    "quarantined_since": "deliveries_quarantined",
    "downloads_pending": "jobs_due",
    "open_alerts": "alerts_open",
    "due_alert_messages": "alert_messages_due",
    "past_deadline": "tasks_state",
    "failed_by_category": "tasks_state",
    "recoveries": "transitions_polled",
    # a provider's callback: its token, its task's provider (receiver/providers)
    "find_token": "sqlite_autoindex_callback_tokens_1",
    "task_provider": "sqlite_autoindex_tasks_1",
}


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    path = tmp_path_factory.mktemp("plans") / "store.db"

    async def create() -> None:
        async with sqlite_storage(path):
            pass

    asyncio.run(create())
    conn = sqlite3.connect(path)
    try:
        found = {}
        for q, sql in DIALECT.statements().items():
            if not sql:  # a step SQLite needs nothing for ("lock_task")
                continue
            params = dict.fromkeys(re.findall(r"(?<![:\w]):([A-Za-z_]\w*)", sql))
            found[q] = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        return found
    finally:
        conn.close()


@pytest.mark.parametrize("q", list(SEARCHES), ids=str)
def test_the_query_searches_its_index(plans: dict[str, list[str]], q: str) -> None:
    plan = plans[q]
    assert any(f"INDEX {SEARCHES[q]} " in step or step.endswith(f"INDEX {SEARCHES[q]}")
               for step in plan), plan
    big = ("deliveries", "tasks", "clips", "transitions", "jobs")
    assert not [s for s in plan if re.fullmatch(rf"SCAN ({'|'.join(big)})\b.*", s)
                and "INDEX" not in s], plan


def test_every_index_is_used_by_some_query(plans: dict[str, list[str]]) -> None:
    used = {m.group(1) for plan in plans.values() for step in plan
            for m in [re.search(r"INDEX (\w+)", step)] if m}
    conn = sqlite3.connect(":memory:")
    try:
        for statement in DIALECT.migrations():
            conn.executescript(statement)
        indexes = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    finally:
        conn.close()
    # tasks_parent and deliveries_outcome are partial: they serve an equality on a rare value
    # (a child task's parent, a quarantined delivery), which no named statement filters on yet
    assert indexes - used == {"tasks_parent", "deliveries_outcome"}
