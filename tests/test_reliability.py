"""Reliability under load: senders that retry, a server killed with SIGKILL in the middle and
restarted. No acknowledged delivery is lost and no handler effect happens twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.support import callback, clip, free_port, signed_headers
from tests.test_process import serve

pytestmark = pytest.mark.slow

SENDERS, TASKS_EACH = 8, 15


def test_kill_9_under_retrying_load_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    # A short lease: jobs the killed process had claimed are taken over after 2 s.
    (tmp_path / "receiver.toml").write_text(
        "[worker]\nlease_s = 2\n\n"
        '[handlers.effect]\npath = "tests.plugins:effect_once"\n\n'
        '[[routes]]\non = ["task.succeeded"]\n'
        f'handlers = [{{ name = "effect", options = {{ dir = "{effects}" }} }}]\n'
    )
    db, port, log = tmp_path / "r.db", free_port(), tmp_path / "log"
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "RECEIVER_INSECURE_OPEN_ADMIN": "1"}  # the test reads /jobs without a token
    acked: set[str] = set()
    half_way = asyncio.Event()
    url = f"http://127.0.0.1:{port}/webhooks/sonic"

    async def sender(client: httpx.AsyncClient, worker: int, deadline: float) -> None:
        for n in range(TASKS_EACH):
            task = f"task-{worker}-{n}"
            streaming = callback(task, [clip(f"{task}-a", "running"),
                                        clip(f"{task}-b", "running")])
            done = callback(task, [clip(f"{task}-a", "succeeded"),
                                   clip(f"{task}-b", "succeeded")])
            for suffix, body in (("s", streaming), ("c", done)):
                delivery_id = f"{task}-{suffix}"
                while time.monotonic() < deadline:  # a sender that retries until answered
                    try:
                        answer = await client.post(url, content=body, headers=signed_headers(
                            body, delivery_id=delivery_id))
                        if answer.status_code == 200:
                            acked.add(delivery_id)
                            if len(acked) >= SENDERS * TASKS_EACH // 2:
                                half_way.set()
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)

    async def load(kill: asyncio.Event) -> None:
        deadline = time.monotonic() + 90
        async with httpx.AsyncClient(timeout=5) as client:
            senders = [asyncio.create_task(sender(client, w, deadline)) for w in range(SENDERS)]
            await half_way.wait()
            kill.set()
            await asyncio.gather(*senders)

    async def run() -> None:
        kill = asyncio.Event()
        with serve(db, port, log, extra_env=env) as proc:
            traffic = asyncio.create_task(load(kill))
            await kill.wait()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with serve(db, port, log, extra_env=env):
            await traffic
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for _ in range(1200):  # until every job has run
                    jobs = (await client.get("/jobs?limit=500")).json()["items"]
                    if len(jobs) == SENDERS * TASKS_EACH and all(
                            j["state"] == "done" for j in jobs):
                        break
                    await asyncio.sleep(0.05)

    asyncio.run(run())
    assert len(acked) == SENDERS * TASKS_EACH * 2, "every delivery was finally acknowledged"
    with sqlite3.connect(db) as conn:
        stored = {r[0] for r in conn.execute("SELECT delivery_id FROM deliveries")}
        states = dict(conn.execute("SELECT task_id, state FROM tasks"))
        jobs = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    assert acked <= stored
    assert set(states.values()) == {"succeeded"}
    assert len(states) == SENDERS * TASKS_EACH
    assert jobs == [("done", SENDERS * TASKS_EACH)]  # one job per task, despite the retries
    assert not (effects / "DOUBLED").exists()
    # (a process killed mid-write may leave its staged .tmp file: not an effect)
    assert len([p for p in effects.iterdir() if not p.name.startswith(".")]) == SENDERS * TASKS_EACH
