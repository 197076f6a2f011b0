"""The SQLite file's layout: the page size of a new file (and an old file keeping its own), and
an upgraded file ending with the same tables and indexes as a new one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from receiver.storage.roles import sqlite_storage
from receiver.storage.sqlite import DIALECT, PAGE_SIZE
from tests.support import COMPLETED, delivery

pytestmark = pytest.mark.anyio


def _schema(path: Path) -> set[tuple[str, str, str]]:
    """Tables by name, indexes by name and definition."""
    conn = sqlite3.connect(path)
    try:
        return {(r[0], r[1], " ".join(r[2].split()) if r[0] == "index" else "")
                for r in conn.execute(
                    "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL")}
    finally:
        conn.close()


def _pragma(path: Path, name: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        conn.close()


async def test_a_new_file_takes_the_small_pages(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    async with sqlite_storage(path) as store:
        await store.ingest.record_delivery(delivery("d1", COMPLETED))
    assert _pragma(path, "page_size") == PAGE_SIZE == 1024


async def test_a_file_of_an_older_release_keeps_its_pages_and_gets_the_new_indexes(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:  # as release 5 left it, with SQLite's default pages
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("PRAGMA journal_mode = WAL")
        for number, script in enumerate(DIALECT.migrations()[:5], start=1):
            conn.executescript(script)
            conn.execute(f"PRAGMA user_version = {number}")
    async with sqlite_storage(old) as store:
        recorded = await store.ingest.record_delivery(delivery("d1", COMPLETED))
        detail = await store.admin.get_delivery("d1")
    assert detail is not None
    assert {t.to_state for t in detail.transitions} == {t.to_state for t in recorded.transitions}
    assert detail.transitions
    assert _pragma(old, "page_size") == 4096
    assert _pragma(old, "user_version") == len(DIALECT.migrations())

    new = tmp_path / "new.db"
    async with sqlite_storage(new):
        pass
    assert _schema(old) == _schema(new)
    indexes = {name for kind, name, _ in _schema(new) if kind == "index"}
    assert not indexes & {"transitions_task", "transitions_delivery", "jobs_handler",
                          "deliveries_event", "deliveries_task", "jobs_task", "jobs_created"}
