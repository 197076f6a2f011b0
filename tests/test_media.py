"""Media stores against real peers: a local folder, and moto's S3-compatible server started by
the tests (``s3_server``); download_audio keeping files there; the admin file route."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest
from obstore.store import S3Store
from structlog.testing import capture_logs

from handlers.download_audio import handle
from receiver.app import create_app
from receiver.clock import FakeClock
from receiver.context import Event, HandlerContext
from receiver.jobs import JobState
from receiver.media import (
    PART,
    LocalMedia,
    MediaMismatch,
    MediaRefused,
    ObjectMedia,
    open_media,
)
from receiver.models import StoredFile
from receiver.runtime import Runtime
from receiver.settings import load
from receiver.storage.roles import sqlite_storage
from receiver.testing import deliver, handler_runtime
from tests.handlers import (
    LOOPBACK_ONLY,
    PNG_BYTES,
    Media,
    MediaServer,
    media_server,
    mp3_bytes,
    watched_client,
    wav_bytes,
)
from tests.services import S3Server
from tests.support import SECRET, app_client, callback, clip, http_client, post_signed, settings_for
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

MP3 = mp3_bytes()
ROOT = Path(__file__).resolve().parent.parent
WAV = wav_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def aws_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The standard AWS_* variables pointing at moto, as an operator would set them."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


def bucket_store(server: S3Server, bucket: str) -> S3Store:
    """A plain obstore client on the bucket, to look at what the receiver left there."""
    return S3Store(bucket, endpoint=server.endpoint_url, access_key_id="testing",
                   secret_access_key="testing", region="us-east-1",
                   client_options={"allow_http": True})


# obstore's blocking calls, in a thread, as receiver.media uses them (its *_async calls can
# abort the process at exit on Python < 3.13: see receiver.media).


async def objects(server: S3Server, bucket: str) -> dict[str, int]:
    """Every object in ``bucket`` with its size."""
    def listed() -> dict[str, int]:
        return {meta["path"]: meta["size"]
                for batch in obstore.list(bucket_store(server, bucket)) for meta in batch}

    return await asyncio.to_thread(listed)


async def object_bytes(server: S3Server, bucket: str, key: str) -> bytes:
    def read() -> bytes:
        return bytes(obstore.get(bucket_store(server, bucket), key).bytes())

    return await asyncio.to_thread(read)


def pending_uploads(server: S3Server, bucket: str) -> list[str]:
    """Keys of multipart uploads begun and neither completed nor aborted (moto answers the
    unsigned ``GET /bucket?uploads``)."""
    listing = httpx.get(f"{server.endpoint_url}/{bucket}?uploads", timeout=10).text
    return re.findall(r"<Key>([^<]*)</Key>", listing)


def big(size: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (size // 32) + b"x" * (size % 32)


# ---- the seam ------------------------------------------------------------------------------


async def test_a_local_put_is_verified_and_a_mismatch_keeps_the_old_file(tmp_path: Path) -> None:
    store = LocalMedia(tmp_path / "media")
    kept = await store.put_bytes("t/c.json", b"first", content_type="application/json")
    assert (kept.size, kept.sha256) == (5, sha(b"first"))
    assert kept.recorded == str(tmp_path / "media" / "t" / "c.json")
    assert store.key_of(kept.recorded) == "t/c.json"
    source = tmp_path / "other.bin"
    source.write_bytes(b"second")
    with pytest.raises(MediaMismatch):
        await store.put_file("t/c.json", source, content_type=None, sha256=sha(b"not this"))
    assert (tmp_path / "media" / "t" / "c.json").read_bytes() == b"first"
    assert sorted(p.name for p in (tmp_path / "media" / "t").iterdir()) == ["c.json"]
    held = await store.head("t/c.json")
    assert held is not None
    assert held.sha256 == sha(b"first")
    assert await store.head("t/none.json") is None


@pytest.mark.s3
async def test_an_object_is_uploaded_in_parts_and_read_signed_and_deleted(
    aws_env: S3Server, s3_bucket: str, tmp_path: Path,
) -> None:
    data = big(2 * PART + 12345)  # three parts
    source = tmp_path / "song.wav"
    source.write_bytes(data)
    store = ObjectMedia(f"s3://{s3_bucket}/songs", staging=tmp_path / "staging")
    kept = await store.put_file("t/c.wav", source, content_type="audio/wav", sha256=sha(data))
    assert kept.location == kept.recorded == f"s3://{s3_bucket}/songs/t/c.wav"
    assert await objects(aws_env, s3_bucket) == {"songs/t/c.wav": len(data)}
    held = await store.head("t/c.wav")
    assert held is not None
    assert (held.size, held.sha256, held.content_type) == (len(data), sha(data), "audio/wav")
    assert b"".join([c async for c in store.read("t/c.wav", 10, 5000)]) == data[10:5000]
    url = await store.presigned_url("t/c.wav", expires_s=60)
    assert url is not None
    assert "X-Amz-Signature=" in url
    async with http_client() as http:
        assert (await http.get(url)).content == data
    await store.delete("t/c.wav")
    assert await store.head("t/c.wav") is None


@pytest.mark.s3
async def test_a_mismatched_upload_leaves_no_object_and_no_pending_upload(
    aws_env: S3Server, s3_bucket: str, tmp_path: Path,
) -> None:
    data = big(PART + 999)
    source = tmp_path / "song.wav"
    source.write_bytes(data)
    store = ObjectMedia(f"s3://{s3_bucket}/songs", staging=tmp_path / "staging")
    with pytest.raises(MediaMismatch):
        await store.put_file("t/c.wav", source, content_type="audio/wav", sha256=sha(b"other"))
    assert await objects(aws_env, s3_bucket) == {}
    assert pending_uploads(aws_env, s3_bucket) == []


@pytest.mark.s3
async def test_a_bucket_that_does_not_exist_refuses_the_write(
    aws_env: S3Server, tmp_path: Path,
) -> None:
    store = ObjectMedia("s3://no-such-bucket/songs", staging=tmp_path / "staging")
    with pytest.raises(MediaRefused, match="no-such-bucket"):
        await store.put_bytes("t/c.json", b"{}", content_type="application/json")


def test_receiver_media_takes_paths_file_urls_and_object_stores(tmp_path: Path) -> None:
    base = {"SONIC_WEBHOOK_SECRET": SECRET}
    assert load({**base, "RECEIVER_MEDIA": str(tmp_path)}).media_dir == tmp_path
    by_url = load({**base, "RECEIVER_MEDIA": f"file://{tmp_path}"})
    assert (by_url.media_dir, by_url.media_url) == (tmp_path, None)
    s3 = load({**base, "RECEIVER_MEDIA": "s3://songs/demo/", "RECEIVER_MEDIA_DIR": "x"})
    assert s3.media_url == "s3://songs/demo"
    assert s3.media_location == "s3://songs/demo"
    assert load({**base, "RECEIVER_MEDIA_DIR": "elsewhere"}).media_dir == Path("elsewhere")
    with pytest.raises(Exception, match="not a media store"):
        load({**base, "RECEIVER_MEDIA": "ftp://host/x"})


# ---- download_audio into an object store ---------------------------------------------------


def route(options: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": "dl", "on": ["task.succeeded"],
            "handlers": [{"name": "download_audio", "options": options or {"image": True}}]}


@asynccontextmanager
async def s3_setup(tmp_path: Path, media_url: str,
                   ) -> AsyncIterator[tuple[Runtime, MediaServer]]:
    async with media_server() as server, watched_client() as (client, _), handler_runtime(
        tmp_path, handlers={"download_audio": handle}, routes=[route()],
        config=LOOPBACK_ONLY, http=client, clock=FakeClock(), media_url=media_url,
    ) as runtime:
        yield runtime, server


def song(server: MediaServer, task_id: str = "t-1") -> bytes:
    server.files["/c1.mp3"] = Media(body=MP3)
    server.files["/c2.wav"] = Media(body=WAV, content_type="audio/wav")
    server.files["/c1.png"] = Media(body=PNG_BYTES, content_type="image/png")
    return callback(task_id, [
        clip("c1", "succeeded", title="Neon Rain", lyrics="la", audio_url=server.url("/c1.mp3"),
             image_url=server.url("/c1.png")),
        clip("c2", "succeeded", title="Second", audio_url=server.url("/c2.wav")),
    ], event="song.completed")


@pytest.mark.s3
async def test_download_audio_keeps_every_file_in_the_bucket_with_its_recorded_sha256(
    aws_env: S3Server, s3_bucket: str, tmp_path: Path,
) -> None:
    async with s3_setup(tmp_path, f"s3://{s3_bucket}/demo") as (runtime, server):
        await deliver(runtime, song(server))
        assert await runtime.worker.run_once() == 1  # type: ignore[union-attr]
        (job,) = await runtime.storage.admin.list_jobs()
        files = await runtime.storage.admin.list_files("t-1")
    assert job.state is JobState.DONE, job.last_error
    listed = await objects(aws_env, s3_bucket)
    assert sorted(listed) == ["demo/t-1/c1.json", "demo/t-1/c1.mp3", "demo/t-1/c1.png",
                              "demo/t-1/c2.json", "demo/t-1/c2.wav"]
    assert len(files) == 5
    for f in files:
        key = f.path.removeprefix(f"s3://{s3_bucket}/")
        assert f.path.startswith(f"s3://{s3_bucket}/demo/t-1/")
        assert listed[key] == f.size
        assert sha(await object_bytes(aws_env, s3_bucket, key)) == f.sha256
    # the audio was tagged before it was hashed and uploaded
    assert "Neon Rain".encode("utf-16-le") in await object_bytes(aws_env, s3_bucket,
                                                                "demo/t-1/c1.mp3")
    # nothing stays staged but the (empty) task folder
    staged = [p for p in (tmp_path / "media-staging").rglob("*") if p.is_file()]
    assert staged == []


@pytest.mark.s3
async def test_a_rerun_skips_objects_that_match_and_refetches_one_that_does_not(
    aws_env: S3Server, s3_bucket: str, tmp_path: Path,
) -> None:
    async with s3_setup(tmp_path, f"s3://{s3_bucket}/demo") as (runtime, server):
        body = song(server)
        await deliver(runtime, body, delivery_id="d-1")
        await runtime.worker.run_once()  # type: ignore[union-attr]
        hits = server.hits("/c1.mp3"), server.hits("/c2.wav")
        # someone replaces the WAV object behind the receiver's back
        await asyncio.to_thread(obstore.put, bucket_store(aws_env, s3_bucket),
                                "demo/t-1/c2.wav", b"junk")
        with capture_logs() as logs:
            await handle_again(runtime)
        files = {f.clip_id + f.kind: f for f in await runtime.storage.admin.list_files("t-1")}
    assert server.hits("/c1.mp3") == hits[0]  # intact: not fetched again
    assert server.hits("/c2.wav") == hits[1] + 1
    assert any(e["event"] == "file_changed" for e in logs)
    wav = await object_bytes(aws_env, s3_bucket, "demo/t-1/c2.wav")
    assert sha(wav) == files["c2audio"].sha256


async def handle_again(runtime: Runtime) -> None:
    """Run the download handler once more for the task's job, as a replay would."""
    (job,) = await runtime.storage.admin.list_jobs()
    event = Event(trigger=job.trigger, task_id=job.task_id, route=job.route, key=job.key,
                  job_id=job.id, attempt=job.attempts + 1, delivery_id=job.delivery_id)
    await handle(event, runtime.context_for(job))


@pytest.mark.s3
async def test_a_bucket_that_does_not_exist_kills_the_job_saying_so(
    aws_env: S3Server, tmp_path: Path,
) -> None:
    async with s3_setup(tmp_path, "s3://no-such-bucket/demo") as (runtime, server):
        await deliver(runtime, song(server))
        await runtime.worker.run_once()  # type: ignore[union-attr]
        (job,) = await runtime.storage.admin.list_jobs()
    assert job.state is JobState.DEAD
    assert job.last_error is not None
    assert job.last_error.startswith("PermanentError:")
    assert "no-such-bucket" in job.last_error


@contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """``folder`` refuses new entries: mode 0500, or for root (who writes through modes) the
    immutable attribute, which root's writes also respect."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(folder)], capture_output=True, check=False).returncode:
        pytest.skip("root, and no immutable attribute on this filesystem")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


async def test_a_media_folder_without_write_permission_kills_the_job(tmp_path: Path) -> None:
    with unwritable(tmp_path / "media"):
        async with media_server() as server, watched_client() as (client, _), handler_runtime(
            tmp_path, handlers={"download_audio": handle}, routes=[route()],
            config=LOOPBACK_ONLY, http=client, clock=FakeClock(),
        ) as runtime:
            await deliver(runtime, song(server))
            await runtime.worker.run_once()  # type: ignore[union-attr]
            (job,) = await runtime.storage.admin.list_jobs()
    assert job.state is JobState.DEAD
    assert job.last_error is not None
    assert job.last_error.startswith("PermanentError:")
    assert f"cannot write in {tmp_path / 'media' / 't-1'}" in job.last_error
    assert server.hits("/c1.mp3") == 0  # refused before anything was fetched


# ---- the admin route -----------------------------------------------------------------------


async def test_a_local_file_is_served_with_ranges(tmp_path: Path) -> None:
    async with media_server() as server, watched_client() as (client, _), handler_runtime(
        tmp_path, handlers={"download_audio": handle}, routes=[route()],
        config=LOOPBACK_ONLY, http=client, clock=FakeClock(),
    ) as runtime:
        await deliver(runtime, song(server))
        await runtime.worker.run_once()  # type: ignore[union-attr]
    wav = (tmp_path / "media" / "t-1" / "c2.wav").read_bytes()
    settings = settings_for(tmp_path, admin_token="adm1n", config={"routes": []})
    auth = {"Authorization": "Bearer adm1n"}
    async with app_client(create_app(settings, clock=FakeClock())) as c:
        whole = await c.get("/files/t-1/c2/audio", headers=auth)
        part = await c.get("/files/t-1/c2/audio", headers={**auth, "Range": "bytes=4-11"})
        tail = await c.get("/files/t-1/c2/audio", headers={**auth, "Range": "bytes=-6"})
        beyond = await c.get("/files/t-1/c2/audio",
                             headers={**auth, "Range": f"bytes={len(wav)}-"})
        missing = await c.get("/files/t-1/c9/audio", headers=auth)
        anonymous = await c.get("/files/t-1/c2/audio")
    assert whole.status_code == 200
    assert whole.content == wav
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"].startswith("audio/wav")
    assert part.status_code == 206
    assert part.content == wav[4:12]
    assert part.headers["content-range"] == f"bytes 4-11/{len(wav)}"
    assert tail.status_code == 206
    assert tail.content == wav[-6:]
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(wav)}"
    assert missing.status_code == 404
    assert anonymous.status_code == 401


async def kept_as(tmp_path: Path, store: LocalMedia, task_id: str, clip_id: str, key: str,
                  content_type: str) -> None:
    """Three bytes kept at ``key`` and recorded as the clip's audio file, of ``content_type``
    (as a handler may record any)."""
    kept = await store.put_bytes(key, b"ID3", content_type=content_type)
    async with sqlite_storage(tmp_path / "receiver.db") as storage:
        await storage.outputs.record_file(StoredFile(
            task_id=task_id, clip_id=clip_id, kind="audio", path=kept.recorded, size=kept.size,
            sha256=hashlib.sha256(b"ID3").hexdigest(), url=None, content_type=content_type,
            job_key=None, created_at=FakeClock().now()))


async def test_a_recorded_type_that_is_not_a_media_type_is_served_as_bytes(
    tmp_path: Path,
) -> None:
    # A handler may record any content type; a response header holds Latin-1 at most.
    settings = settings_for(tmp_path, admin_token="adm1n", config={"routes": []})
    store = LocalMedia(settings.media_dir)
    auth = {"Authorization": "Bearer adm1n"}
    async with app_client(create_app(settings, clock=FakeClock())) as c:
        await post_signed(c, callback("t-s", [clip("c", "succeeded")]), clock=FakeClock())
        for n, odd in enumerate(("audio/中", "text/html\r\nSet-Cookie: a=b", "audio")):
            await kept_as(tmp_path, store, "t-s", f"c{n}", f"t-s/c{n}.bin", odd)
            answer = await c.get(f"/files/t-s/c{n}/audio", headers=auth)
            assert answer.status_code == 200, odd
            assert answer.content == b"ID3"
            assert answer.headers["content-type"] == "application/octet-stream"
            assert answer.headers["content-disposition"] == (
                f"attachment; filename=\"c{n}.bin\"; filename*=UTF-8''c{n}.bin")


async def test_a_kept_file_of_any_name_is_served_with_a_plain_ascii_file_name(
    tmp_path: Path,
) -> None:
    # A handler may keep a file under any name (a title, say); a header holds Latin-1 at most.
    settings = settings_for(tmp_path, admin_token="adm1n", config={"routes": []})
    store = LocalMedia(settings.media_dir)
    auth = {"Authorization": "Bearer adm1n"}
    async with app_client(create_app(settings, clock=FakeClock())) as c:
        await post_signed(c, callback("t-n", [clip("c", "succeeded")]), clock=FakeClock())
        await kept_as(tmp_path, store, "t-n", "c", "t-n/夜の歌 é\"x.mp3", "audio/mpeg")
        answer = await c.get("/files/t-n/c/audio", headers=auth)
    assert answer.status_code == 200
    assert answer.content == b"ID3"
    assert answer.headers["content-disposition"] == (
        "inline; filename=\"______x.mp3\"; "
        "filename*=UTF-8''%E5%A4%9C%E3%81%AE%E6%AD%8C%20%C3%A9%22x.mp3")


@pytest.mark.s3
async def test_an_object_is_handed_out_as_a_short_lived_presigned_redirect(
    aws_env: S3Server, s3_bucket: str, tmp_path: Path,
) -> None:
    media = f"s3://{s3_bucket}/demo"
    async with s3_setup(tmp_path, media) as (runtime, server):
        await deliver(runtime, song(server))
        await runtime.worker.run_once()  # type: ignore[union-attr]
    settings = settings_for(tmp_path, media_url=media, config={"routes": []})
    async with app_client(create_app(settings, clock=FakeClock())) as c:
        answer = await c.get("/files/t-1/c2/audio")
    assert answer.status_code == 307
    assert answer.headers["cache-control"] == "no-store"
    location = answer.headers["location"]
    assert "X-Amz-Expires=300" in location
    async with http_client() as http:
        fetched = await http.get(location, headers={"Range": "bytes=0-3"})
    assert fetched.status_code == 206
    assert fetched.content == b"RIFF"


@pytest.mark.s3
async def test_an_object_a_browser_could_run_is_streamed_through_with_our_headers_not_redirected(
    aws_env: S3Server, s3_bucket: str, tmp_path: Path,
) -> None:
    # The bucket answers a presigned GET with the object's own type and none of the kept
    # files' headers: an SVG there would be a page on the bucket's origin.
    media = f"s3://{s3_bucket}/demo"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'
    settings = settings_for(tmp_path, media_url=media, config={"routes": []})
    store = ObjectMedia(media, staging=tmp_path / "staging")
    kept = await store.put_bytes("t-s/c/cover.svg", svg, content_type="image/svg+xml")
    async with app_client(create_app(settings, clock=FakeClock())) as c:
        await post_signed(c, callback("t-s", [clip("c", "succeeded")]), clock=FakeClock())
        async with sqlite_storage(tmp_path / "receiver.db") as storage:
            await storage.outputs.record_file(StoredFile(
                task_id="t-s", clip_id="c", kind="image", path=store.recorded("t-s/c/cover.svg"),
                size=kept.size, sha256=hashlib.sha256(svg).hexdigest(), url=None,
                content_type="image/svg+xml", job_key=None, created_at=FakeClock().now()))
        answer = await c.get("/files/t-s/c/image")
    assert answer.status_code == 200
    assert answer.content == svg
    assert answer.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in answer.headers["content-security-policy"]


@pytest.mark.s3
async def test_the_runtime_opens_one_media_store_that_every_job_shares(
    aws_env: S3Server, tmp_path: Path
) -> None:
    async def noop(event: Event, ctx: HandlerContext) -> None:
        return None

    async with handler_runtime(tmp_path, handlers={"noop": noop}, routes=[
            {"on": "task.succeeded", "handlers": ["noop"]}], media_url="s3://songs/x") as rt:
        for n in (1, 2):
            await deliver(rt, callback(f"t-{n}", [clip("c", "succeeded")]))
        first, second = await rt.storage.admin.list_jobs()
        assert isinstance(rt.media, ObjectMedia)
        assert rt.context_for(first).media is rt.context_for(second).media is rt.media
    assert isinstance(open_media(settings_for(tmp_path)), LocalMedia)


# ---- SIGKILL in the middle of an upload ----------------------------------------------------

# The child gets its route and its delivery's body from the parent, as JSON and text.
CHILD = """
import asyncio, json, sys
from pathlib import Path

import receiver.media as media
from handlers.download_audio import handle
from receiver.clock import FakeClock
from receiver.testing import deliver, handler_runtime
from tests.handlers import LOOPBACK_ONLY

slow_chunks = media.file_chunks

async def throttled(*args, **kwargs):
    # Not a wait: slowed down so that the parent can kill us while parts are in flight.
    async for chunk in slow_chunks(*args, **kwargs):
        await asyncio.sleep(0.1)
        yield chunk

media.file_chunks = throttled

async def main(tmp: str, media_url: str, route: str, body: str) -> None:
    async with handler_runtime(Path(tmp), handlers={"download_audio": handle},
                               routes=[json.loads(route)], config=LOOPBACK_ONLY,
                               clock=FakeClock(), media_url=media_url) as runtime:
        await deliver(runtime, body.encode())
        print("delivered", flush=True)
        await runtime.worker.run_once()
        print("finished", flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


def big_song(audio_url: str) -> bytes:
    return callback("t-big", [clip("c1", "succeeded", title="Long", audio_url=audio_url)],
                    event="song.completed")


@pytest.mark.s3
@pytest.mark.slow
async def test_a_download_killed_mid_upload_leaves_no_object_and_a_restart_keeps_the_right_one(
    aws_env: S3Server, s3_bucket: str, tmp_path: Path,
) -> None:
    media_url = f"s3://{s3_bucket}/demo"
    body = mp3_bytes(frames=40 * 1024 * 1024 // 417)  # 40 MiB of valid MP3: the body is checked
    async with media_server() as server:
        server.files["/long.mp3"] = Media(body=body, chunk=1024 * 1024)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(tmp_path), media_url, json.dumps(route()),
            big_song(server.url("/long.mp3")).decode(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
        )

        async def uploading() -> bool:
            if await asyncio.to_thread(pending_uploads, aws_env, s3_bucket):
                return True
            assert child.returncode is None, await child.stdout.read()  # type: ignore[union-attr]
            return False

        try:
            await wait_until(uploading, within=30, every=0.05,
                             what="the child's multipart upload to be under way")
            child.send_signal(signal.SIGKILL)
        finally:
            await child.wait()
        assert child.returncode == -signal.SIGKILL
        assert "finished" not in (await child.stdout.read()).decode()  # type: ignore[union-attr]
        # the part-way upload is invisible: no object under the final key, nothing recorded
        assert await objects(aws_env, s3_bucket) == {}
        assert pending_uploads(aws_env, s3_bucket) == ["demo/t-big/c1.mp3"]

        clock = FakeClock()
        async with watched_client() as (client, _), handler_runtime(
            tmp_path, handlers={"download_audio": handle}, routes=[route()],
            config=LOOPBACK_ONLY, http=client, clock=clock, media_url=media_url,
        ) as runtime:
            assert await runtime.storage.admin.list_files("t-big") == []
            clock.advance(3600)  # the dead child's lease runs out
            assert await runtime.worker.run_once() == 1  # type: ignore[union-attr]
            (job,) = await runtime.storage.admin.list_jobs()
            (kept,) = [
                f for f in await runtime.storage.admin.list_files("t-big") if f.kind == "audio"
            ]
    assert job.state is JobState.DONE, job.last_error
    stored = await object_bytes(aws_env, s3_bucket, "demo/t-big/c1.mp3")
    assert (len(stored), sha(stored)) == (kept.size, kept.sha256)
    assert stored.endswith(body)  # the whole download, with its ID3 tag in front


# ---- the demo, with its songs in a bucket --------------------------------------------------


def full_song(out: str) -> tuple[float, float]:
    """``(the concat's measured seconds, source up to continue_at + extension)`` from the
    demo's summary line."""
    found = re.search(r"full song: ([\d.]+) s = .* \(([\d.]+) s\)", out)
    assert found is not None, out[-3000:]
    return float(found.group(1)), float(found.group(2))


@pytest.mark.s3
@pytest.mark.slow
async def test_the_demo_keeps_its_songs_in_s3_and_lists_the_objects(
    aws_env: S3Server, s3_bucket: str, tmp_path: Path,
) -> None:
    env = {**os.environ, "RECEIVER_MEDIA": f"s3://{s3_bucket}/demo"}
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "receiver", "demo", "--dir", str(tmp_path / "demo"),
        "--timeout", "90", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(demo.communicate(), 180)
    out = output.decode()
    assert demo.returncode == 0, out[-3000:]
    listed = await objects(aws_env, s3_bucket)
    wavs = {key: size for key, size in listed.items() if key.endswith(".wav")}
    assert len(wavs) == 5  # two clips of the song, two of the extension, one full song
    assert len([k for k in listed if k.endswith(".json")]) == 5
    for key, size in listed.items():  # each object is listed with its size
        assert re.search(rf"^\s+{size}\s+s3://{s3_bucket}/{re.escape(key)}$", out, re.M), key
    assert not list((tmp_path / "demo" / "media").rglob("*.wav"))  # nothing kept locally
    heard, parts = full_song(out)
    assert abs(heard - parts) <= 1.0
