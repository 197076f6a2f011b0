"""A real ``sonic-receiver serve`` process on loopback: what the deployed endpoint does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import serve, start_worker
from tests.support import callback, clip, free_port, http_client, signed_headers
from tests.waiting import wait_until_blocking

pytestmark = pytest.mark.slow


def read_status_line(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def test_oversized_bodies_get_413_before_the_body_is_sent(tmp_path: Path) -> None:
    port = free_port()
    with serve(tmp_path / "r.db", port, tmp_path / "log"):
        # Declared too large: answered from the headers alone, not one body byte sent.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /webhooks/sonic HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 2097152\r\n\r\n")
            assert read_status_line(sock).startswith(b"HTTP/1.1 413 ")
        # Chunked: answered once 1 MiB has passed, while the sender still has more to send.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /webhooks/sonic HTTP/1.1\r\nHost: x\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 65536
            for _ in range(17):  # 1.06 MiB, and no terminating chunk
                sock.sendall(b"10000\r\n" + chunk + b"\r\n")
            assert read_status_line(sock).startswith(b"HTTP/1.1 413 ")
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 0


def test_kill_9_mid_stream_loses_no_acknowledged_delivery(tmp_path: Path) -> None:
    db, log, port = tmp_path / "r.db", tmp_path / "log", free_port()
    acked: set[str] = set()
    enough = asyncio.Event()

    async def sender(client: httpx.AsyncClient, worker: int, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            delivery_id = f"w{worker}-{n}"
            body = callback(f"task-{worker}-{n}", [clip(f"c-{worker}-{n}-a", "succeeded"),
                                                   clip(f"c-{worker}-{n}-b", "running")])
            try:
                response = await client.post(
                    f"http://127.0.0.1:{port}/webhooks/sonic", content=body,
                    headers=signed_headers(body, delivery_id=delivery_id),
                )
            except httpx.TransportError:
                return  # the server is gone: this one was never acknowledged
            if response.status_code == 200:
                acked.add(delivery_id)
                if len(acked) >= 200:
                    enough.set()

    async def load_then_kill(proc: subprocess.Popen[bytes]) -> None:
        stop = asyncio.Event()
        async with http_client(timeout=10) as client:
            tasks = [asyncio.create_task(sender(client, w, stop)) for w in range(8)]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), timeout=20)
            os.kill(proc.pid, signal.SIGKILL)  # mid-stream: requests are in flight
            proc.wait(timeout=10)
            stop.set()
            await asyncio.gather(*tasks)

    with serve(db, port, log) as proc:
        asyncio.run(load_then_kill(proc))
    assert len(acked) >= 200, log.read_text()[-2000:]

    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT delivery_id FROM deliveries")}
    assert acked <= stored, sorted(acked - stored)[:10]

    # Restarted on the same file, it knows every acknowledged delivery as a duplicate.
    with serve(db, port, log):
        sample = sorted(acked)[:20]
        for delivery_id in sample:
            worker, n = delivery_id[1:].split("-")
            body = callback(f"task-{worker}-{n}", [clip(f"c-{worker}-{n}-a", "succeeded"),
                                                   clip(f"c-{worker}-{n}-b", "running")])
            answer = httpx.post(f"http://127.0.0.1:{port}/webhooks/sonic", content=body,
                                headers=signed_headers(body, delivery_id=delivery_id))
            assert answer.json()["status"] == "duplicate"


def test_a_separate_worker_process_runs_the_jobs_the_web_process_records(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs.txt"
    config = tmp_path / "receiver.toml"
    config.write_text(
        '[handlers.touch]\npath = "tests.plugins:touch"\n\n'
        '[[routes]]\non = ["task.succeeded"]\n'
        f'handlers = [{{ name = "touch", options = {{ path = "{runs}" }} }}]\n'
    )
    db, port = tmp_path / "r.db", free_port()
    with serve(db, port, tmp_path / "log", config=config, extra_env={
            "RECEIVER_WORKER": "off", "RECEIVER_INSECURE_OPEN_ADMIN": "1"}):
        body = callback("t-w", [clip("c1", "succeeded")])
        for delivery_id in ("d1", "d1", "d2"):  # a duplicate and a resend: one job
            answer = httpx.post(f"http://127.0.0.1:{port}/webhooks/sonic", content=body,
                                headers=signed_headers(body, delivery_id=delivery_id))
            assert answer.status_code == 200
        assert not runs.exists()  # RECEIVER_WORKER=off: the web process runs nothing
        worker = start_worker(db, tmp_path / "worker.log", config)
        jobs: list[dict[str, Any]] = []

        def done() -> bool:
            jobs[:] = httpx.get(f"http://127.0.0.1:{port}/jobs").json()["items"]
            return runs.exists() and jobs[0]["state"] == "done"

        try:
            wait_until_blocking(done, within=30, what="the worker process to run the job",
                                detail=(tmp_path / "worker.log").read_text)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0
    assert [j["state"] for j in jobs] == ["done"]
    lines = runs.read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("t-w/task.succeeded/route-0/touch")
    assert f"pid={worker.pid}" in lines[0]
    assert "worker_stopped" in (tmp_path / "worker.log").read_text()
