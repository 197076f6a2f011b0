"""Migration 7 (clips, transitions and jobs keyed by the task's number) on a database that
migration 6 left with data in it, on both backends: every row is kept, with its job ids and
the order of its transitions, and the upgraded tables take new writes by their new keys."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from receiver.jobs import JobState
from receiver.models import JobFilter, Outcome
from receiver.routing import HandlerRef, Route, Router
from receiver.states import State
from receiver.storage import sqlite
from tests.backends import StoreOpener
from tests.support import callback, clip, delivery

pytestmark = pytest.mark.anyio

# what version 6 held: two tasks, their clips, transitions (ids out of task order, as
# interleaved deliveries leave them), two jobs and an attempt of one of them
ROWS = [
    """INSERT INTO tasks (task_id, state, platform, error, first_seen_at, updated_at,
                          last_event_at, last_delivery_id, task_type, parent_task_id)
       VALUES ('t-2', 'running', 'sonic', NULL, 2.0, 2.0, 2.0, 'd-3', NULL, NULL),
              ('t-1', 'succeeded', 'sonic', NULL, 1.0, 4.0, 4.0, 'd-4', 'create', NULL)""",
    """INSERT INTO clips (task_id, clip_id, state, title, tags, lyrics, audio_url, image_url,
                          video_url, duration, mv, created_at, data, updated_at)
       VALUES ('t-1', 'c-a', 'succeeded', 'A', 'pop', NULL, 'https://cdn/a.mp3', NULL, NULL,
               10.0, NULL, '2025-01-01T00:00:00Z', '{"clip_id": "c-a"}', 4.0),
              ('t-1', 'c-b', 'succeeded', 'B', 'rock', NULL, 'https://cdn/b.mp3', NULL, NULL,
               20.0, NULL, '2025-01-01T00:00:01Z', '{"clip_id": "c-b"}', 4.0),
              ('t-2', 'c-c', 'running', 'C', 'jazz', NULL, NULL, NULL, NULL, NULL, NULL,
               '2025-01-01T00:00:02Z', '{"clip_id": "c-c"}', 2.0)""",
    """INSERT INTO transitions (id, task_id, entity, entity_id, from_state, to_state,
                                delivery_id, source, at)
       VALUES (1, 't-1', 'task', 't-1', NULL, 'running', 'd-1', 'webhook', 1.0),
              (2, 't-2', 'task', 't-2', NULL, 'running', 'd-3', 'webhook', 2.0),
              (3, 't-1', 'clip', 'c-a', NULL, 'succeeded', 'd-4', 'webhook', 4.0),
              (4, 't-1', 'task', 't-1', 'running', 'succeeded', 'd-4', 'webhook', 4.0)""",
    """INSERT INTO jobs (id, key, handler, route, options, task_id, trigger, delivery_id,
                         state, attempts, max_attempts, run_after, created_at, updated_at)
       VALUES (5, 't-1/task:succeeded/r/h', 'h', 'r', '{}', 't-1', 'task:succeeded', 'd-4',
               'done', 1, 3, 4.0, 4.0, 5.0),
              (9, 't-2/task:running/r/h', 'h', 'r', '{}', 't-2', 'task:running', 'd-3',
               'queued', 0, 3, 2.0, 2.0, 2.0)""",
    """INSERT INTO job_attempts (job_id, run, attempt, owner, started_at, finished_at,
                                 outcome, error)
       VALUES (5, 1, 1, 'w', 4.5, 5.0, 'done', NULL)""",
]


def _version_6_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        for script in sqlite.DIALECT.migrations()[:6]:
            for statement in sqlite._split(script):
                conn.execute(statement)
        for statement in ROWS:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 6")


def _version_6_postgres(dsn: str) -> None:
    import psycopg

    from receiver.storage import postgres

    with psycopg.connect(dsn) as conn:
        for script in postgres.DIALECT.migrations()[:6]:
            conn.execute(script.encode())
        for statement in ROWS:
            conn.execute(statement.encode())
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (6)")


async def test_a_version_6_database_keeps_its_rows_and_takes_writes_by_task_number(
    backend_database: Path | str, backend_store: StoreOpener,
) -> None:
    if isinstance(backend_database, Path):
        _version_6_sqlite(backend_database)
    else:
        _version_6_postgres(backend_database)
    async with backend_store() as store:
        one = await store.admin.get_task("t-1")
        assert one is not None
        assert one.task.state is State.SUCCEEDED
        assert [c.clip_id for c in one.clips] == ["c-a", "c-b"]
        assert [(t.entity_id, t.to_state) for t in one.transitions] == [
            ("t-1", State.RUNNING), ("c-a", State.SUCCEEDED), ("t-1", State.SUCCEEDED)]
        jobs = await store.admin.find_jobs(JobFilter())
        assert [(j.id, j.key, j.state) for j in jobs] == [
            (5, "t-1/task:succeeded/r/h", JobState.DONE),
            (9, "t-2/task:running/r/h", JobState.QUEUED)]
        assert (await store.admin.counts())["transitions"] == 4

        # t-2 completes: its clip is updated in place (the new key finds it), its transitions
        # follow the old ones, and its job gets an id past the copied ones
        router = Router([Route(name="r", on=frozenset({"task.succeeded"}),
                               handlers=(HandlerRef(name="h"),))])
        done = callback(task_id="t-2", clips=[clip("c-c", state="succeeded")])
        result = await store.ingest.record_delivery(delivery("d-5", done), router=router)
        assert result.outcome is Outcome.RECORDED
        two = await store.admin.get_task("t-2")
        assert two is not None
        assert two.task.state is State.SUCCEEDED
        assert [(c.clip_id, c.state) for c in two.clips] == [("c-c", State.SUCCEEDED)]
        assert [t.to_state for t in two.transitions if t.entity.value == "task"] == [
            State.RUNNING, State.SUCCEEDED]
        new = [j for j in await store.admin.find_jobs(JobFilter(task_id="t-2")) if j.id != 9]
        assert len(new) == 1
        assert new[0].id > 9
        again = await store.ingest.record_delivery(delivery("d-5", done), router=router)
        assert again.outcome is Outcome.DUPLICATE
        assert (await store.admin.counts())["clips"] == 3
