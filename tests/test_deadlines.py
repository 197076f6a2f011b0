"""Deadlines (issue 19): an open task past its type's deadline is reconciled at once, through
the sandbox over loopback, and marked overdue if it is still not finished; the console's task
API shows it, and the callbacks-stopped alert counts it."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.clock import FakeClock
from receiver.config import DEFAULT_DEADLINES, DeadlinesTable
from receiver.conversion import convert
from receiver.schedules import check_deadlines
from receiver.sonic.sandbox import SandboxConfig, Speed
from receiver.storage.roles import Storage
from tests.backends import StoreOpener
from tests.sonic.support import KEY, SECRET, serve_sandbox

pytestmark = pytest.mark.anyio


def test_each_task_type_has_its_deadline_and_the_table_overrides_it() -> None:
    table: DeadlinesTable = convert({"concat_music": "2m", "default": "1h"}, DeadlinesTable)
    assert table.deadline_s("concat_music") == 120.0
    assert table.deadline_s("create_music") == DEFAULT_DEADLINES["create_music"]
    assert table.deadline_s(None) == table.deadline_s("made_up") == 3600.0
    assert table.shortest_s == 120.0


async def test_a_task_past_its_deadline_is_marked_overdue_once(
    backend_store: StoreOpener,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    table: DeadlinesTable = convert({}, DeadlinesTable)
    async with backend_store(clock=clock) as store:
        await store.ingest.register_task("slow", task_type="concat_music", now=clock.now())
        await store.ingest.register_task("fine", task_type="create_music", now=clock.now())
        clock.advance(DEFAULT_DEADLINES["concat_music"] - 1)
        assert await due(store, table, clock) == []
        clock.advance(2)
        assert await due(store, table, clock) == ["slow"]
        overdue_at = clock.now()
        clock.advance(30)
        assert await due(store, table, clock) == []  # marked once, not again
        view = await store.admin.get_task("slow")
        assert view is not None
        assert view.task.overdue_at == overdue_at
        assert await store.watch.overdue_open() == 1


async def due(store: Storage, table: DeadlinesTable, clock: FakeClock) -> list[str]:
    return await check_deadlines(table, watch=store.watch, ingest=store.ingest, sonic=None,
                                 router=None, now=clock.now(), clock=clock)


async def test_a_task_past_its_deadline_is_reconciled_at_once_and_not_overdue_if_it_ended(
    tmp_path: Path, backend_store: StoreOpener,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    table: DeadlinesTable = convert({"create_music": "60s"}, DeadlinesTable)
    config = SandboxConfig(api_keys={KEY: 1000}, speed=Speed.INSTANT)
    async with serve_sandbox(config) as sandbox, backend_store(clock=clock) as store:
        await sandbox.set_faults({"drop": 1.0})  # no callback ever comes
        sonic = sandbox.client()
        created = await sonic.create_music(mv="sonic-v4-5", custom_mode=True, prompt="[Verse] la",
                                           webhook_url="http://127.0.0.1:9/webhooks/sonic",
                                           webhook_secret=SECRET)
        await store.ingest.register_task(created.task_id, task_type="create_music",
                                         now=clock.now())
        clock.advance(61)
        assert await check_deadlines(table, watch=store.watch, ingest=store.ingest,
                                     sonic=sonic, router=None, now=clock.now(),
                                     clock=clock) == [created.task_id]
        view = await store.admin.get_task(created.task_id)
        assert view is not None
        assert (view.task.state.value, view.task.overdue_at) == ("succeeded", None)
        polled, tasks = await store.watch.polled_since(clock.now() - 3600)
        assert (polled, tasks) >= (1, 1)  # what the callbacks-stopped alert counts
