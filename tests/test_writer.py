"""Several processes sharing one SQLite writer (receiver.storage.writer), as ``serve --workers
N`` runs them: a real writer process on a real Unix socket and file, and two web-side
storages in this process, each with its own connection to the writer."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from receiver.errors import StoreError
from receiver.models import Outcome, StoredFile
from receiver.routing import HandlerRef, Route, Router
from receiver.server import _writer_child
from receiver.settings import Settings
from receiver.storage.roles import Storage
from receiver.storage.sqlite import SQLiteConnector
from receiver.storage.writer import SharedWriterConnector
from tests.operations import Broken, Huge, Probe
from tests.support import callback, clip, delivery, settings_for
from tests.waiting import wait_until, wait_until_blocking

pytestmark = pytest.mark.anyio

ROUTER = Router([Route(name="r", on=frozenset({"task.succeeded"}),
                       handlers=(HandlerRef(name="h"),))])


@contextmanager
def listening() -> Iterator[socket.socket]:
    """A listening Unix socket in a folder of its own (a short path: tmp_path may pass the
    108 bytes a socket's path may have)."""
    folder = tempfile.mkdtemp(prefix="writer-")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(folder, "w.sock"))
    sock.listen(64)
    try:
        yield sock
    finally:
        sock.close()
        os.unlink(os.path.join(folder, "w.sock"))
        os.rmdir(folder)


@contextmanager
def writer(settings: Settings, sock: socket.socket) -> Iterator[BaseProcess]:
    """The writer process serve starts, on ``sock``, until the block ends."""
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    proc = context.Process(target=_writer_child, args=(settings, None, sock, os.getpid(), ready))
    proc.start()
    try:
        wait_until_blocking(lambda: ready.is_set() or not proc.is_alive(), within=60,
                            what="the writer to open the file")
        assert proc.is_alive(), f"the writer exited with {proc.exitcode}"
        yield proc
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join(30)


@asynccontextmanager
async def web_side(settings: Settings, sock: socket.socket,
                   **options: Any) -> AsyncIterator[Storage]:
    """A web process's storage: operations to the writer at ``sock``."""
    local = SQLiteConnector(settings.db_path, checkpoints=False, lock_timeout_s=1.0)
    async with Storage.over(SharedWriterConnector(local, sock.getsockname(), **options)) as s:
        yield s


def rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


async def test_two_processes_record_through_one_writer_as_one_process_would(
    tmp_path: Path,
) -> None:
    """Deliveries from two web sides, some of one task, one id sent by both at once: each is
    recorded once, the task moves forward only, its job is written once, and the side whose
    delivery wrote the job is told (its worker wakes)."""
    settings = settings_for(tmp_path)
    with listening() as sock, writer(settings, sock):
        async with web_side(settings, sock) as a, web_side(settings, sock) as b:
            woken = {"a": 0, "b": 0}
            a.db.on_jobs(lambda: woken.__setitem__("a", woken["a"] + 1))
            b.db.on_jobs(lambda: woken.__setitem__("b", woken["b"] + 1))
            running = delivery("d-run", callback("t-1", [clip("c-1", "running")]))
            done = delivery("d-done", callback("t-1", [clip("c-1", "succeeded")]), at=1001.0)
            others = [delivery(f"d-{n}", callback(f"t-{n}", [clip(f"c-{n}", "running")]))
                      for n in range(2, 40)]
            results = await asyncio.gather(
                a.ingest.record_delivery(running, router=ROUTER),
                b.ingest.record_delivery(running, router=ROUTER),
                *(side.ingest.record_delivery(d, router=ROUTER)
                  for n, d in enumerate(others) for side in [(a, b)[n % 2]]))
            final = await b.ingest.record_delivery(done, router=ROUTER)
            again = await a.ingest.record_delivery(done, router=ROUTER)
    assert sorted(r.outcome for r in results[:2]) == [Outcome.DUPLICATE, Outcome.RECORDED]
    assert {r.outcome for r in results[2:]} == {Outcome.RECORDED}
    assert final.outcome is Outcome.RECORDED
    assert final.jobs == 1
    assert [t.to_state.value for t in final.transitions] == ["succeeded", "succeeded"]
    assert again.outcome is Outcome.DUPLICATE
    assert again.state is not None
    assert woken == {"a": 0, "b": 1}
    db = settings.db_path
    assert rows(db, "SELECT COUNT(*) FROM deliveries") == [(len(others) + 2,)]
    assert rows(db, "SELECT state FROM tasks WHERE task_id = 't-1'") == [("succeeded",)]
    assert rows(db, "SELECT task_id, handler FROM jobs") == [("t-1", "h")]


async def test_what_is_not_an_operation_is_written_by_the_web_side_itself(
    tmp_path: Path,
) -> None:
    """A handler's file record (a closure, not an operation) is written on the web side's own
    connection, beside the writer's, and read back."""
    settings = settings_for(tmp_path)
    with listening() as sock, writer(settings, sock):
        async with web_side(settings, sock) as side:
            await side.ingest.record_delivery(delivery("d-1", callback("t-1", [clip("c-1")])))
            kept = StoredFile(task_id="t-1", clip_id="c-1", kind="audio", path="a.mp3", size=3,
                              sha256="ab", url=None, content_type="audio/mpeg", job_key=None,
                              created_at=1.0)
            await side.outputs.record_file(kept)
            assert await side.outputs.list_files("t-1") == [kept]


async def test_an_operation_that_raises_fails_its_caller_alone(tmp_path: Path) -> None:
    """A bug in one unit reaches its caller as raised (the writer logs its traceback); the
    units beside it commit."""
    settings = settings_for(tmp_path)
    with listening() as sock, writer(settings, sock):
        async with web_side(settings, sock) as side:
            outcomes = await asyncio.gather(
                side.db.write(Probe("before", 1.0)), side.db.write(Broken()),
                side.db.write(Probe("after", 2.0)), return_exceptions=True)
            assert outcomes[0] == 1
            assert outcomes[2] == 1
            assert isinstance(outcomes[1], KeyError)
            assert await side.db.write(Probe("later", 3.0)) == 1
    assert rows(settings.db_path, "SELECT name FROM probes ORDER BY at") == [
        ("before",), ("after",), ("later",)]


async def test_what_msgpack_cannot_carry_goes_pickled(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with listening() as sock, writer(settings, sock):
        async with web_side(settings, sock) as side:
            assert await side.db.write(Huge(2**70)) == 2**70 + 1


async def test_a_writer_killed_mid_transaction_fails_what_it_held_and_is_replaced(
    tmp_path: Path,
) -> None:
    """kill -9 of the writer while it holds a transaction: its caller is told (a 503 for a
    delivery), nothing of it is committed, and the next write reaches the writer started in
    its place on the same socket."""
    settings = settings_for(tmp_path)
    db = settings.db_path
    with listening() as sock, writer(settings, sock) as first:
        async with web_side(settings, sock) as side:
            held = asyncio.ensure_future(side.db.write(Probe("held", 1.0, hold_s=30)))

            def locked() -> bool:
                conn = sqlite3.connect(db, timeout=0)
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError:
                    return True
                finally:
                    conn.close()
                return False

            await wait_until(locked, within=30, what="the writer to hold the transaction")
            assert first.pid is not None
            os.kill(first.pid, signal.SIGKILL)
            with pytest.raises(StoreError, match="the writer went away"):
                await held
            with writer(settings, sock):
                assert await side.db.write(Probe("next", 2.0)) == 1
    assert rows(db, "SELECT name FROM probes") == [("next",)]


async def test_a_writer_that_does_not_answer_fails_the_write_in_time(tmp_path: Path) -> None:
    """Nobody accepts on the socket (a writer starting, or hung): the write fails once the
    answer is overdue, instead of waiting for ever."""
    settings = settings_for(tmp_path)
    with listening() as sock:
        async with web_side(settings, sock, answer_timeout_s=0.5) as side:
            with capture_logs(), pytest.raises(StoreError, match="no answer from the writer"):
                await side.ingest.record_delivery(delivery("d-1", callback("t-1", [clip("c")])))
