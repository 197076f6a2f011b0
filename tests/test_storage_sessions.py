"""The console's sessions and what its rows read of other tasks (receiver.storage.admin), once
per backend: a session is found by its secret's hash while it is open, and not once it ended,
idled or expired; sessions are listed newest use first and forgotten a week after they are
over; a page's tasks get every title of their clips and a chain its tasks' states."""

from __future__ import annotations

import pytest

from receiver.states import State
from receiver.storage.admin import SESSION_MEMORY_S
from receiver.storage.roles import Storage
from tests.support import callback, clip, delivery

pytestmark = pytest.mark.anyio
NOW = 1_800_000_000.0


async def open_one(store: Storage, secret_hash: str, operator: str = "admin",
                   at: float = NOW) -> None:
    await store.admin.open_session(secret_hash=secret_hash, operator=operator,
                                   token_hash="t" * 64, now=at, max_s=3600.0,
                                   client="203.0.113.9", user_agent="Firefox " + "x" * 400)


async def test_a_session_is_found_while_it_is_open_only(store: Storage) -> None:
    admin = store.admin
    await open_one(store, "h1")
    found = await admin.find_session("h1", now=NOW + 10, idle_s=600)
    assert found is not None
    assert (found.operator, found.client, found.seen_at) == ("admin", "203.0.113.9", NOW)
    assert found.user_agent is not None
    assert len(found.user_agent) == 300
    assert await admin.find_session("nope", now=NOW + 10, idle_s=600) is None
    # idle: not seen for longer than the limit
    assert await admin.find_session("h1", now=NOW + 601, idle_s=600) is None
    await admin.touch_session(found.id, now=NOW + 500)
    assert await admin.find_session("h1", now=NOW + 1000, idle_s=600) is not None
    # its longest life
    assert await admin.find_session("h1", now=NOW + 3600, idle_s=10_000) is None
    # ended: once, and for good
    assert await admin.end_session(found.id, now=NOW + 1001, by="admin via session") is True
    assert await admin.end_session(found.id, now=NOW + 1002, by="again") is False
    assert await admin.find_session("h1", now=NOW + 1003, idle_s=600) is None


async def test_open_sessions_are_listed_by_last_use_and_old_ones_forgotten(
    store: Storage,
) -> None:
    admin = store.admin
    await open_one(store, "a", "alice")
    await open_one(store, "b", "bob")
    bob = await admin.find_session("b", now=NOW, idle_s=600)
    assert bob is not None
    await admin.touch_session(bob.id, now=NOW + 60)
    listed = await admin.list_sessions(now=NOW + 120, idle_s=600)
    assert [s.operator for s in listed] == ["bob", "alice"]
    await admin.end_session(bob.id, now=NOW + 130, by="x")
    assert [s.operator for s in await admin.list_sessions(now=NOW + 140, idle_s=600)] == [
        "alice"]
    # a login a week after they were over forgets their rows
    later = NOW + SESSION_MEMORY_S + 7200
    await open_one(store, "c", "carol", at=later)
    # (read as if it were still the first hour: alice's and bob's rows are gone)
    rows = await admin.db.read(lambda tx: tx.rows("list_sessions", {
        "now": NOW + 140, "idle_before": 0.0, "limit": 10}))
    assert [r["operator"] for r in rows] == ["carol"]
    assert [s.operator for s in await admin.list_sessions(now=later, idle_s=600)] == ["carol"]


async def test_a_secret_hash_opens_one_session_only(store: Storage) -> None:
    await open_one(store, "same")
    with pytest.raises(Exception):  # noqa: B017, PT011 (the engines' own integrity errors)
        await open_one(store, "same")


async def test_a_pages_tasks_get_every_title_and_a_chain_its_states(store: Storage) -> None:
    await store.ingest.record_delivery(delivery("d1", callback("t1", [
        clip("a", "succeeded", title="First"), clip("b", "succeeded", title="Second"),
        clip("c", "succeeded", title="First")]), at=1000.0))
    await store.ingest.record_delivery(delivery("d2", callback("t2", [
        clip("z", "running")]), at=1001.0))
    titles = await store.admin.titles_of(["t1", "t2", "nope"])
    assert titles == {"t1": ["First", "Second"]}
    assert await store.admin.titles_of([]) == {}
    states = await store.admin.states_of(["t1", "t2", "nope"])
    assert states == {"t1": State.SUCCEEDED, "t2": State.RUNNING}
    assert await store.admin.states_of([]) == {}
