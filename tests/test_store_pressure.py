"""The store under pressure: a database locked by another process, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from receiver.app import create_app
from receiver.storage.connector import Unit
from receiver.storage.roles import Storage
from receiver.storage.sqlite import SQLiteConnector
from tests.support import app_client, callback, clip, post_signed, settings_for

pytestmark = pytest.mark.anyio


class CountingConnector(SQLiteConnector):
    """The real SQLite connector, counting the transactions it was asked to run."""

    batches = 0

    async def write(self, units: Sequence[Unit]) -> None:
        self.batches += 1
        await super().write(units)


async def test_waiters_on_a_locked_database_share_one_timeout_and_get_503(
    tmp_path: Path,
) -> None:
    path = tmp_path / "receiver.db"
    connector = CountingConnector(path, lock_timeout_s=0.5)
    async with Storage.over(connector) as store:
        app = create_app(settings_for(tmp_path), storage=store)
        async with app_client(app) as client:
            assert (await client.get("/readyz")).status_code == 200
            with contextlib.closing(sqlite3.connect(path)) as other:
                other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                before = connector.batches
                answers = await asyncio.gather(*(
                    post_signed(client, callback(f"t{n}", [clip("a", "running")]),
                                delivery_id=f"d{n}")
                    for n in range(6)))
                other.execute("ROLLBACK")
            # Not six transactions each waiting out its own timeout: the first batch's
            # failure answered everyone who was waiting behind it.
            assert connector.batches - before <= 2
            assert [a.status_code for a in answers] == [503] * 6
            assert {a.json()["error"] for a in answers} == {"store_unavailable"}
            again = await post_signed(client, callback("t0", [clip("a", "running")]),
                                      delivery_id="d0")
            assert again.status_code == 200  # the sender's retry goes through


async def test_readyz_says_not_ready_when_a_delivery_could_not_be_committed(
    tmp_path: Path,
) -> None:
    # No disk fills on demand here: demand more free space than any disk has. A probe
    # write alone would still succeed (the WAL reuses its space); a delivery's body may not.
    full = SQLiteConnector(tmp_path / "receiver.db", min_free_bytes=2**62)
    async with Storage.over(full) as store:
        app = create_app(settings_for(tmp_path), storage=store)
        async with app_client(app) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"] == "store_unavailable"
