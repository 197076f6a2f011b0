"""kill -9 of a worker process in the middle of a download: after a restart the job finishes,
resuming the download, and no partial file ever stands under a final name."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from receiver.jobs import JobState
from receiver.registry import load_registry
from receiver.routing import Router, routes_from_config
from receiver.server import running
from receiver.settings import load
from receiver.storage.roles import sqlite_storage
from receiver.testing import deliver_to
from tests.support import callback, clip
from tests.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CHUNK = 16 * 1024


def wav_bytes(seconds: float = 40.0, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes((i * 7) % 256 for i in range(int(seconds * rate) * 2)))
    return out.getvalue()


def slow_media(body: bytes, ranges: list[str | None]) -> Starlette:
    """Serves ``body`` slowly (about 320 KB/s), honouring ``Range: bytes=N-``."""

    async def audio(request: Request) -> Response:
        header = request.headers.get("range")
        ranges.append(header)
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0

        async def chunks() -> AsyncIterator[bytes]:
            for offset in range(start, len(body), CHUNK):
                yield body[offset : offset + CHUNK]
                await asyncio.sleep(0.05)  # not a wait: the slowness a kill lands in

        headers = {"content-length": str(len(body) - start), "accept-ranges": "bytes"}
        if header:
            headers["content-range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        return StreamingResponse(chunks(), status_code=206 if header else 200,
                                 media_type="audio/wav", headers=headers)

    return Starlette(routes=[Route("/a.wav", audio)])


async def test_a_download_killed_mid_stream_finishes_after_restart(tmp_path: Path) -> None:
    body = wav_bytes()
    ranges: list[str | None] = []
    media = tmp_path / "media"
    config = tmp_path / "receiver.toml"
    config.write_text('[network]\nallow_networks = ["127.0.0.0/8"]\n\n'
                      "[worker]\nlease_s = 1.5\n")
    env = {**os.environ, "RECEIVER_DB": str(tmp_path / "r.db"), "RECEIVER_MEDIA_DIR": str(media),
           "RECEIVER_CONFIG": str(config), "RECEIVER_LOG_FORMAT": "json"}
    settings = load(env, overrides={"insecure_no_verify": True})  # a worker verifies nothing

    async def start_worker(log: str) -> asyncio.subprocess.Process:
        out = await asyncio.to_thread((tmp_path / log).open, "ab")
        try:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "receiver", "worker", env=env, stdout=out, stderr=out)
        finally:
            out.close()

    async with running(slow_media(body, ranges)) as url:
        router = Router(routes_from_config(settings.config), policy=settings.retry)
        load_registry(settings.config).check(router.handler_names)
        async with sqlite_storage(settings.db_path) as store:
            done = callback("t-crash", [clip("c1", "succeeded", audio_url=f"{url}/a.wav")])
            result = await deliver_to(store, router, done)
            assert result.jobs == 1  # the default route: download_audio

            worker = await start_worker("worker-1.log")
            final = media / "t-crash" / "c1.wav"

            def part_way() -> bool:
                return any(p.stat().st_size > 200_000
                           for p in (media / "t-crash").glob("*.part"))

            await wait_until(part_way, within=12, what="a good part of the body on disk",
                             detail=lambda: (tmp_path / "worker-1.log").read_text()[-2000:])
            os.kill(worker.pid, signal.SIGKILL)
            await worker.wait()
            assert not final.exists()  # only the .part, never a final name
            assert [j.state for j in await store.admin.list_jobs()] == [JobState.RUNNING]

            worker = await start_worker("worker-2.log")

            async def settled() -> bool:
                [job] = await store.admin.list_jobs()
                return job.state not in (JobState.RUNNING, JobState.QUEUED)

            try:
                await wait_until(settled, within=30, what="the restarted worker to settle the job",
                                 detail=lambda: (tmp_path / "worker-2.log").read_text()[-2000:])
            finally:
                worker.send_signal(signal.SIGTERM)
                await worker.wait()
            [job] = await store.admin.list_jobs()
            files = await store.admin.list_files("t-crash")

    assert (job.state, job.attempts) == (JobState.DONE, 2), job.last_error
    assert final.exists()
    assert not list(media.rglob("*.part"))
    [audio] = [f for f in files if f.kind == "audio"]
    assert audio.size == final.stat().st_size
    with wave.open(str(final)) as got, wave.open(io.BytesIO(body)) as sent:
        assert got.readframes(got.getnframes()) == sent.readframes(sent.getnframes())
    # the restart resumed where the killed worker stopped, instead of starting over
    assert ranges[0] is None
    assert ranges[-1] is not None
    assert int(ranges[-1].removeprefix("bytes=").rstrip("-")) > 200_000
