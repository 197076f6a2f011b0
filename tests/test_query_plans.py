"""The indexes SQLite's plans use: the queries of the job queue, the task readers, retention
and the console search an index instead of scanning a table whose size grows with the
deliveries, and each index left in the schema is one some query uses (every index costs pages
written on each delivery; see migration 6 in :mod:`receiver.storage.statements`)."""

from __future__ import annotations

import asyncio
import re
import sqlite3

import pytest

from receiver.storage import sqlite_store
from receiver.storage.sqlite import DIALECT
from receiver.storage.statements import Q

# statement -> the index its plan searches (SQLite names a UNIQUE constraint's index
# sqlite_autoindex_<table>_<n>)
SEARCHES = {
    Q.FIND_DELIVERY: "sqlite_autoindex_deliveries_1",
    Q.GET_DELIVERY: "sqlite_autoindex_deliveries_1",
    Q.TASK_FOR_CLIPS: "clips_clip",
    Q.TASK_BEFORE: "sqlite_autoindex_clips_1",
    Q.GET_TASK: "sqlite_autoindex_tasks_1",
    Q.TASK_TRANSITIONS: "sqlite_autoindex_transitions_1",
    Q.GET_TRANSITIONS: "sqlite_autoindex_transitions_1",
    Q.DELIVERY_TRANSITIONS: "sqlite_autoindex_transitions_1",
    Q.CLAIM_JOBS: "jobs_due",
    Q.RELEASE_JOBS: "jobs_due",
    Q.NEXT_DUE: "jobs_due",
    Q.OLDEST_QUEUED: "jobs_due",
    Q.REQUEUE_MATCHING: "jobs_due",
    Q.PENDING_DOWNLOADS: "jobs_due",
    Q.JOBS_BY_STATE_HANDLER: "jobs_due",
    Q.PRUNE_JOBS: "jobs_finished",
    Q.PRUNE_ATTEMPTS: "jobs_finished",
    Q.COUNT_PRUNABLE_JOBS: "jobs_finished",
    Q.PRUNE_BODIES: "deliveries_received",
    Q.COUNT_PRUNABLE_BODIES: "deliveries_received",
    Q.PRUNE_IDS: "deliveries_received",
    Q.COUNT_PRUNABLE_IDS: "deliveries_received",
    Q.DELIVERIES_PER_MINUTE: "deliveries_received",
    Q.STALE_TASKS: "tasks_state",
    Q.TASKS_SINCE: "tasks_first_seen",
    Q.LIST_TASKS: "tasks_first_seen",
}


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[Q, list[str]]:
    path = tmp_path_factory.mktemp("plans") / "store.db"

    async def create() -> None:
        async with sqlite_store(path):
            pass

    asyncio.run(create())
    conn = sqlite3.connect(path)
    try:
        found = {}
        for q, sql in DIALECT.statements().items():
            if not sql:  # a step SQLite needs nothing for (Q.LOCK_TASK)
                continue
            params = dict.fromkeys(re.findall(r"(?<![:\w]):([A-Za-z_]\w*)", sql))
            found[q] = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        return found
    finally:
        conn.close()


@pytest.mark.parametrize("q", list(SEARCHES), ids=lambda q: q.value)
def test_the_query_searches_its_index(plans: dict[Q, list[str]], q: Q) -> None:
    plan = plans[q]
    assert any(f"INDEX {SEARCHES[q]} " in step or step.endswith(f"INDEX {SEARCHES[q]}")
               for step in plan), plan
    big = ("deliveries", "tasks", "clips", "transitions", "jobs")
    assert not [s for s in plan if re.fullmatch(rf"SCAN ({'|'.join(big)})\b.*", s)
                and "INDEX" not in s], plan


def test_every_index_is_used_by_some_query(plans: dict[Q, list[str]]) -> None:
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
