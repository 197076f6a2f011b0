"""The store contract, run against every backend (SQLite and PostgreSQL), and SQLite's own
rules (the file, WAL, checkpoints)."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from receiver import recording
from receiver.errors import StoreError
from receiver.models import Outcome, Transition
from receiver.recording import UNKNOWN_TASK, record
from receiver.states import Entity, State
from receiver.storage.connector import Tx
from receiver.storage.roles import Storage, sqlite_storage
from receiver.storage.sqlite import DIALECT, SQLiteConnector
from tests.support import COMPLETED, EMPTY_COUNTS, PARTIAL, STREAMING, callback, clip, delivery
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


async def test_first_delivery_is_recorded_with_its_transitions(store: Storage) -> None:
    result = await store.ingest.record_delivery(delivery("d1", COMPLETED, event="song.completed"))
    assert result.outcome is Outcome.RECORDED
    assert (result.task_id, result.state) == ("t-1", State.SUCCEEDED)
    view = await store.admin.get_task("t-1")
    assert view is not None
    assert view.task.state is State.SUCCEEDED
    assert {c.clip_id: c.audio_url for c in view.clips} == {
        "a": "http://cdn/a.mp3", "b": "http://cdn/b.mp3"}
    assert [(t.entity, t.entity_id, t.to_state, t.delivery_id) for t in view.transitions] == [
        (Entity.CLIP, "a", State.SUCCEEDED, "d1"), (Entity.CLIP, "b", State.SUCCEEDED, "d1"),
        (Entity.TASK, "t-1", State.SUCCEEDED, "d1")]


async def test_a_repeated_delivery_id_is_a_duplicate_and_changes_nothing(store: Storage) -> None:
    await store.ingest.record_delivery(delivery("d1", STREAMING, event="song.streaming"))
    before = await store.admin.counts()
    again = await store.ingest.record_delivery(delivery("d1", COMPLETED, event="song.completed"))
    assert again.outcome is Outcome.DUPLICATE
    assert again.state is State.RUNNING
    assert await store.admin.counts() == before


async def test_late_streaming_after_completed_is_kept_but_moves_nothing(store: Storage) -> None:
    await store.ingest.record_delivery(delivery("d2", COMPLETED, event="song.completed"))
    late = await store.ingest.record_delivery(
        delivery("d1", STREAMING, event="song.streaming", at=2e3)
    )
    assert late.outcome is Outcome.RECORDED
    assert late.transitions == ()
    assert late.state is State.SUCCEEDED
    view = await store.admin.get_task("t-1")
    assert view is not None
    # the streaming URL did not overwrite the final one
    assert {c.audio_url for c in view.clips} == {"http://cdn/a.mp3", "http://cdn/b.mp3"}
    assert view.task.last_event_at == 2e3
    assert (await store.admin.counts())["deliveries"] == 2


EVENTS = {
    "streaming": (STREAMING, "song.streaming"),
    "partial": (PARTIAL, None),
    "completed": (COMPLETED, "song.completed"),
}


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations(["streaming", "partial", "completed", "completed-again"])),
    ids="-".join,
)
async def test_every_order_of_a_two_clip_task_ends_succeeded(
    order: Sequence[str], tmp_path: Path
) -> None:
    async with sqlite_storage(tmp_path / "order.db") as store:
        for name in order:
            body, event = EVENTS[name.removesuffix("-again")]
            # the repeat keeps the delivery id, as the upstream's redeliveries do
            await store.ingest.record_delivery(
                delivery(name.removesuffix("-again"), body, event=event)
            )
        view = await store.admin.get_task("t-1")
    assert view is not None
    assert view.task.state is State.SUCCEEDED
    assert {c.clip_id: c.state for c in view.clips} == {"a": State.SUCCEEDED, "b": State.SUCCEEDED}
    assert all(c.audio_url and c.audio_url.startswith("http://cdn/") for c in view.clips)
    assert_forward_only(view.transitions)


def assert_forward_only(transitions: Sequence[Transition]) -> None:
    rank = {None: -1, State.PENDING: 0, State.RUNNING: 1, State.SUCCEEDED: 2, State.FAILED: 2}
    last: dict[tuple[Entity, str], State | None] = {}
    for t in transitions:
        key = (t.entity, t.entity_id)
        assert t.from_state == last.get(key)
        assert rank[t.to_state] > rank[t.from_state]
        last[key] = t.to_state


async def test_song_failed_fails_the_task_with_the_reason(store: Storage) -> None:
    await store.ingest.record_delivery(delivery("d1", STREAMING, event="song.streaming"))
    failed = callback("t-1", [], message="content policy")
    result = await store.ingest.record_delivery(delivery("d2", failed, event="song.failed"))
    assert result.state is State.FAILED
    view = await store.admin.get_task("t-1")
    assert view is not None
    assert view.task.error == "content policy"


async def test_unusable_body_is_quarantined_raw_with_its_reason(store: Storage) -> None:
    result = await store.ingest.record_delivery(delivery("q1", b'{"data": "x"}'))
    assert result.outcome is Outcome.QUARANTINED
    assert result.reason == "data is a JSON string, not a list of clips"
    assert (await store.admin.counts())["deliveries"] == 1
    assert (await store.admin.counts())["tasks"] == 0
    again = await store.ingest.record_delivery(delivery("q1", b'{"data": "x"}'))
    assert again.outcome is Outcome.QUARANTINED
    assert (await store.admin.counts())["deliveries"] == 1


async def test_clips_without_a_task_id_find_their_task_or_are_quarantined(store: Storage) -> None:
    await store.ingest.record_delivery(delivery("d1", STREAMING, event="song.streaming"))
    anonymous = callback(None, [clip("a", "succeeded"), clip("b", "succeeded")])
    found = await store.ingest.record_delivery(delivery("d2", anonymous, event="song.completed"))
    assert (found.outcome, found.task_id, found.state) == (
        Outcome.RECORDED, "t-1", State.SUCCEEDED)
    stranger = callback(None, [clip("zzz", "succeeded")])
    lost = await store.ingest.record_delivery(delivery("d3", stranger))
    assert (lost.outcome, lost.reason) == (Outcome.QUARANTINED, UNKNOWN_TASK)


async def test_task_id_hint_from_the_query_names_the_task(store: Storage) -> None:
    body = callback(None, [clip("x", "running")])
    result = await store.ingest.record_delivery(delivery("d1", body, task_id_hint="from-query"))
    assert (result.task_id, result.state) == ("from-query", State.RUNNING)


# ---- SQLite only: the file, the schema, atomicity -------------------------------------------


async def test_sqlite_schema_is_versioned_in_wal_mode_and_survives_reopening(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    async with sqlite_storage(path) as store:
        await store.ingest.record_delivery(delivery("d1", COMPLETED, event="song.completed"))
    async with sqlite_storage(path) as store:  # migrating again is a no-op
        assert (await store.admin.counts())["deliveries"] == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(DIALECT.migrations())
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        headers, body = conn.execute("SELECT headers, body FROM deliveries").fetchone()
    assert body == COMPLETED
    assert "signature" not in headers


async def test_sqlite_refuses_a_schema_newer_than_the_code(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(DIALECT.migrations()) + 1}")
    with pytest.raises(StoreError, match="newer than this code"):
        async with sqlite_storage(path):
            pass


async def test_a_failure_mid_transaction_leaves_nothing_behind(
    store: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(transition: Transition) -> None:
        raise OSError("disk I/O error (injected)")

    # Fault injection: no real disk fails on demand, so the last write of the
    # transaction is made to raise; everything before it must roll back.
    monkeypatch.setattr(recording, "_transition_params", broken)
    with pytest.raises(OSError, match="injected"):
        await store.ingest.record_delivery(delivery("d1", COMPLETED, event="song.completed"))
    monkeypatch.undo()
    assert await store.admin.counts() == EMPTY_COUNTS
    ok = await store.ingest.record_delivery(delivery("d1", COMPLETED, event="song.completed"))
    assert ok.outcome is Outcome.RECORDED


async def test_sqlite_a_unit_that_awaits_real_io_is_refused_and_rolled_back(
    tmp_path: Path,
) -> None:
    async with sqlite_storage(tmp_path / "r.db") as store:

        async def body(tx: Tx) -> None:
            await record(tx, delivery("d1", COMPLETED))
            await asyncio.sleep(0)  # not a wait: it suspends, which the database thread refuses

        with pytest.raises(RuntimeError, match="awaited something other"):
            await store.db.write(body)
        assert (await store.admin.counts())["deliveries"] == 0


async def test_commits_do_not_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    connector = SQLiteConnector(path, checkpoint_every_s=3600)
    async with Storage.over(connector) as store:
        size = path.stat().st_size
        for n in range(300):  # well past the automatic checkpoint's 1,000 pages
            body = callback(f"t-{n}", [clip(f"c-{n}", "succeeded", lyrics="la " * 2000)])
            await store.ingest.record_delivery(delivery(f"d-{n}", body))
        assert path.stat().st_size == size  # everything is still in the WAL


async def test_checkpoints_run_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with Storage.over(SQLiteConnector(path, checkpoint_every_s=0.02)) as store:
        size = path.stat().st_size
        for n in range(300):
            body = callback(f"t-{n}", [clip(f"c-{n}", "succeeded", lyrics="la " * 2000)])
            await store.ingest.record_delivery(delivery(f"d-{n}", body))
        await wait_until(lambda: path.stat().st_size > size, within=5,
                         what="the background checkpoint to move the WAL into the database")


async def test_side_checkpoints_sync_the_database_file_themselves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite syncs the database file only at the end of a checkpoint that copies the whole
    WAL: under load, the writer's restart pass, which then had to write out every page the
    side checkpoints had copied (28-30 ms on a 400 MB file) while ingest waited. The side
    checkpoint syncs the file itself after each pass that copied frames, and an idle file is
    left alone."""
    path = tmp_path / "r.db"
    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    connector = SQLiteConnector(path, checkpoint_every_s=0.02)
    async with Storage.over(connector) as store:
        # The side checkpoint's passes, counted as they begin (on aiosqlite's thread): the
        # connector says nothing when one runs.
        passes: list[str] = []
        side = connector._checkpoint_conn
        assert side is not None
        await side.set_trace_callback(
            lambda statement: passes.append(statement) if "wal_checkpoint" in statement else None)

        async def passes_after(n: int, what: str) -> int:
            """Until ``n`` more passes have begun; how many there have been."""
            goal = len(passes) + n
            await wait_until(lambda: len(passes) >= goal, within=10, what=what)
            return len(passes)

        for n in range(50):
            body = callback(f"t-{n}", [clip(f"c-{n}", "succeeded", lyrics="la " * 500)])
            await store.ingest.record_delivery(delivery(f"d-{n}", body))
        await wait_until(lambda: path.stat().st_ino in synced, within=5,
                         what="a side checkpoint to sync the database file")
        # A pass begun after the last write copies its last frames and syncs them before the
        # next one begins; two more make sure that it has.
        await passes_after(3, "the side checkpoint to copy and sync the last frames")
        idle = len(synced)
        await passes_after(5, "passes over a WAL with nothing new")
        assert len(synced) == idle  # nothing written meanwhile: nothing to sync
        fd = connector._sync_fd
        assert fd is not None
    with pytest.raises(OSError, match="Bad file descriptor"):  # closed with the store, last
        os.fstat(fd)


def _size(path: str) -> int:
    return os.stat(path).st_size


async def test_the_wal_stays_bounded_under_continuous_writes(tmp_path: Path) -> None:
    """Writes that keep coming never leave the WAL a moment to start over by itself: the writer
    checkpoints between two batches once it passed its limit, and the next batch writes the
    WAL from its start again. (The side checkpoint is kept out of the way: it only makes the
    writer's pass shorter, and when it runs is a matter of timing.)"""
    path = tmp_path / "r.db"
    limit = 256 * 1024
    connector = SQLiteConnector(path, wal_limit_bytes=limit, checkpoint_every_s=3600)
    wal = f"{path}-wal"
    async with Storage.over(connector) as store:
        sizes = []
        for n in range(1500):
            body = callback(f"t-{n}", [clip(f"c-{n}", "succeeded", lyrics="la " * 300)])
            await store.ingest.record_delivery(delivery(f"d-{n}", body))
            sizes.append(_size(wal))
    one = sizes[2] - sizes[1]  # what a delivery writes to the WAL, long before its limit
    assert max(sizes) <= limit + 2 * one  # the limit, and what a delivery adds past it
    assert 1500 * one > 10 * limit  # what was written would have grown it far past


async def test_a_read_cancelled_mid_way_leaves_the_reader_usable(tmp_path: Path) -> None:
    """A request gone while its read is under way (a live page closed) cancels the read, at
    its BEGIN or in its work: the next read must not find the reader still in that
    transaction ("cannot start a transaction within a transaction")."""
    import anyio

    async with sqlite_storage(tmp_path / "r.db") as store:
        await store.ingest.record_delivery(delivery("d-1", COMPLETED))
        begun = anyio.Event()

        async def stuck(tx: Tx) -> None:
            await tx.one("task_state", {"task_id": "t-1"})
            begun.set()
            await anyio.sleep_forever()

        async with anyio.create_task_group() as group:  # cancelled in its work
            group.start_soon(store.admin.db.read, stuck)
            await begun.wait()
            group.cancel_scope.cancel()
        assert (await store.admin.counts())["deliveries"] == 1
        with anyio.CancelScope() as scope:  # cancelled as it begins
            scope.cancel()
            await store.admin.db.read(stuck)
        assert (await store.admin.counts())["deliveries"] == 1
