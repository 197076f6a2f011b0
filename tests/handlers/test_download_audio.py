"""download_audio end to end: deliveries recorded as the webhook records them, jobs run by the
real worker on a real SQLite file, media fetched over real HTTP from a server on loopback."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import mutagen.mp3
import mutagen.wave
import pytest
from structlog.testing import capture_logs

from handlers.download_audio import (
    SIDECAR,
    LinkLifetimes,
    contained,
    handle,
    safe_component,
)
from receiver.app import create_app
from receiver.clock import FakeClock
from receiver.context import Event, HandlerContext
from receiver.conversion import ConfigError, convert
from receiver.jobs import FINISHED, Job, JobState, PermanentError
from receiver.models import Source
from receiver.registry import load_registry
from receiver.routing import Router, routes_from_config
from receiver.runtime import Runtime
from receiver.server import running
from receiver.sonic.sandbox import FaultConfig, SandboxConfig, Speed
from receiver.testing import deliver, deliver_to, handler_runtime
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
from tests.sonic.support import KEY, OK_CUSTOM, SandboxHandle, serve_sandbox, wait_for
from tests.support import SECRET, callback, clip, http_client, settings_for

pytestmark = pytest.mark.anyio

MP3 = mp3_bytes()
WAV = wav_bytes()
LYRICS = "[Verse]\nNeon rain on an empty street\n[Chorus]\nWe glow"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mp3_file(path: Path) -> Any:
    """mutagen's view of an MP3 (mutagen's calls are unannotated: Any, here only)."""
    opener: Any = mutagen.mp3.MP3
    return opener(path)


def wav_file(path: Path) -> Any:
    opener: Any = mutagen.wave.WAVE
    return opener(path)


def read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def where(path: str) -> Path:
    return Path(path).resolve()


def route(options: Mapping[str, Any] | None = None, name: str = "dl") -> dict[str, Any]:
    return {"name": name, "on": ["task.succeeded"],
            "handlers": [{"name": "download_audio", "options": dict(options or {})}]}


@asynccontextmanager
async def setup(
    tmp_path: Path, routes: Sequence[Mapping[str, Any]] | None = None,
    config: Mapping[str, Any] = LOOPBACK_ONLY,
) -> AsyncIterator[tuple[Runtime, MediaServer, list[httpx.URL], FakeClock]]:
    clock = FakeClock()
    async with media_server() as server, watched_client() as (client, sent), handler_runtime(
        tmp_path, handlers={"download_audio": handle}, routes=routes or [route()],
        config=config, http=client, clock=clock,
    ) as runtime:
        yield runtime, server, sent, clock


def two_clips(server: MediaServer, task_id: str = "t-1") -> bytes:
    server.files["/c1.mp3"] = Media(body=MP3)
    server.files["/c2.wav"] = Media(body=WAV, content_type="audio/wav")
    server.files["/c1.png"] = Media(body=PNG_BYTES, content_type="image/png")
    return callback(task_id, [
        clip("c1", "succeeded", title="Neon Rain", tags="synthwave, dreamy", lyrics=LYRICS,
             duration="0.63", mv="sonic-v5", audio_url=server.url("/c1.mp3"),
             image_url=server.url("/c1.png"), video_url=None),
        clip("c2", "succeeded", title="Second", tags="lofi", lyrics="la la", duration=1,
             mv="sonic-v5", audio_url=server.url("/c2.wav")),
    ], event="song.completed")


async def only_job(runtime: Runtime) -> Job:
    jobs = await runtime.storage.admin.list_jobs()
    assert len(jobs) == 1
    return jobs[0]


async def test_succeeded_clips_are_kept_tagged_and_recorded(tmp_path: Path) -> None:
    async with setup(tmp_path, [route({"image": True})]) as (runtime, server, sent, _):
        await deliver(runtime, two_clips(server))
        with capture_logs() as logs:
            assert await runtime.worker.run_once() == 1  # type: ignore[union-attr]
        job = await only_job(runtime)
        files = {(f.clip_id, f.kind): f for f in await runtime.storage.admin.list_files("t-1")}
    assert job.state is JobState.DONE, job.last_error
    folder = tmp_path / "media" / "t-1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "c1.json", "c1.mp3", "c1.png", "c2.json", "c2.wav"]
    assert set(files) == {("c1", "audio"), ("c1", "image"), ("c1", "sidecar"),
                          ("c2", "audio"), ("c2", "sidecar")}
    for record in files.values():  # what is recorded is what is on disk, tags included
        data = read(record.path)
        assert (record.size, record.sha256) == (len(data), sha(data))
    assert files["c1", "audio"].content_type == "audio/mpeg"
    assert files["c1", "audio"].url == server.url("/c1.mp3")
    assert read(files["c1", "image"].path) == PNG_BYTES

    mp3 = mp3_file(folder / "c1.mp3")
    assert mp3.info.length > 0  # still a playable MP3 after tagging
    assert mp3.tags is not None
    assert str(mp3.tags["TIT2"]) == "Neon Rain"
    assert mp3.tags.getall("USLT")[0].text == LYRICS
    assert str(mp3.tags["TCON"]) == "synthwave, dreamy"
    assert mp3.tags.version[:2] == (2, 3)
    wav = wav_file(folder / "c2.wav")
    assert wav.tags is not None
    assert str(wav.tags["TIT2"]) == "Second"
    assert wav.info.length == pytest.approx(1.0)

    side = json.loads((folder / "c1.json").read_text("utf-8"))
    assert side["title"] == "Neon Rain"
    assert side["lyrics"] == LYRICS
    assert side["duration"] == pytest.approx(0.63)
    assert side["model"] == "sonic-v5"
    assert side["sources"]["audio"] == server.url("/c1.mp3")
    assert side["files"]["audio"]["sha256"] == files["c1", "audio"].sha256
    assert side["files"]["image"]["sha256"] == files["c1", "image"].sha256
    assert files["c1", "sidecar"].sha256 == sha((folder / "c1.json").read_bytes())
    assert {u.host for u in sent} == {"127.0.0.1"}
    events = [e["event"] for e in logs]
    assert events.count("file_downloaded") == 3
    assert events.count("sidecar_written") == 2


async def test_a_server_error_is_retried_until_the_server_recovers(tmp_path: Path) -> None:
    async with setup(tmp_path) as (runtime, server, _, clock):
        body = two_clips(server)
        server.files["/c1.mp3"].fail_first = 1
        await deliver(runtime, body)
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
        assert job.state is JobState.RETRYING
        assert "HTTP 500" in (job.last_error or "")
        assert not (tmp_path / "media" / "t-1" / "c1.mp3").exists()
        assert (tmp_path / "media" / "t-1" / "c2.wav").exists()  # the other clip went on
        clock.advance(60)
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
        assert job.state is JobState.DONE, job.last_error
        assert server.hits("/c1.mp3") == 2
        assert server.hits("/c2.wav") == 1  # kept from the first attempt
    assert (tmp_path / "media" / "t-1" / "c1.mp3").exists()


async def test_a_body_cut_short_is_retried_and_resumed(tmp_path: Path) -> None:
    async with setup(tmp_path) as (runtime, server, _, clock):
        body = two_clips(server)
        server.files["/c1.mp3"].cut_first = 1
        await deliver(runtime, body)
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
        folder = tmp_path / "media" / "t-1"
        assert job.state is JobState.RETRYING
        assert not (folder / "c1.mp3").exists()
        kept = (folder / "c1.audio.part").stat().st_size
        assert 0 < kept < len(MP3)
        clock.advance(60)
        await runtime.worker.run_once()  # type: ignore[union-attr]
        assert (await only_job(runtime)).state is JobState.DONE
        assert server.ranges("/c1.mp3") == [None, f"bytes={kept}-"]
        record = next(f for f in await runtime.storage.admin.list_files("t-1")
                      if (f.clip_id, f.kind) == ("c1", "audio"))
    final = (folder / "c1.mp3").read_bytes()
    assert record.sha256 == sha(final)
    assert final.endswith(MP3[-1000:])  # the tag is in front; the audio is whole
    assert mp3_file(folder / "c1.mp3").info.length > 0
    assert not list(folder.glob("*.part*"))


async def test_a_slow_body_still_completes(tmp_path: Path) -> None:
    async with setup(tmp_path) as (runtime, server, _, _clock):
        body = two_clips(server)
        server.files["/c1.mp3"].chunk = 1024
        server.files["/c1.mp3"].pause_s = 0.02
        await deliver(runtime, body)
        await runtime.worker.run_once()  # type: ignore[union-attr]
        assert (await only_job(runtime)).state is JobState.DONE
    assert (tmp_path / "media" / "t-1" / "c1.mp3").exists()


@pytest.mark.parametrize(("target", "reason"), [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is link-local"),
    ("http://10.0.0.1/x", "10.0.0.1 is private"),
])
async def test_a_redirect_inside_kills_the_job_without_going_there(
    tmp_path: Path, target: str, reason: str
) -> None:
    async with setup(tmp_path) as (runtime, server, sent, _):
        body = two_clips(server)
        server.files["/c1.mp3"] = Media(body=b"", redirect=target)
        await deliver(runtime, body)
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
        names = {(f.clip_id, f.kind) for f in await runtime.storage.admin.list_files("t-1")}
    assert job.state is JobState.DEAD
    assert (job.last_error or "").startswith("PermanentError: c1/audio: ")
    assert reason in (job.last_error or "")
    assert {u.host for u in sent} == {"127.0.0.1"}
    assert ("c1", "audio") not in names
    assert ("c1", "sidecar") not in names
    assert ("c2", "audio") in names
    assert ("c2", "sidecar") in names


async def test_a_refused_cover_leaves_the_audio_and_its_sidecar(tmp_path: Path) -> None:
    async with setup(tmp_path, [route({"image": True})]) as (runtime, server, _, _clock):
        body = two_clips(server)
        server.files["/c1.png"] = Media(body=b"<svg/>", content_type="image/svg+xml")
        await deliver(runtime, body)
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
        names = {(f.clip_id, f.kind) for f in await runtime.storage.admin.list_files("t-1")}
    assert job.state is JobState.DEAD
    assert "c1/image: " in (job.last_error or "")
    assert "image/svg+xml" in (job.last_error or "")
    assert names == {("c1", "audio"), ("c1", "sidecar"), ("c2", "audio"), ("c2", "sidecar")}
    side = json.loads(read(tmp_path / "media" / "t-1" / "c1.json"))
    assert sorted(side["files"]) == ["audio"]


@pytest.mark.parametrize(("media", "audio_url", "options", "reason"), [
    (None, "file:///etc/passwd", {}, "scheme 'file' is not allowed"),
    (None, "http://[::1/x", {}, "not a valid URL"),
    (Media(body=b"<html/>", content_type="text/html"), None, {}, "is text/html, not one of"),
    (Media(body=MP3), None, {"max_bytes": 1000}, "over the limit of 1000"),
    (Media(body=MP3), None, {"allowed_types": {"audio": ["audio/wav"]}}, "is audio/mpeg"),
    # "audio/中" on the wire (a str header goes out as Latin-1, so these are its UTF-8 bytes):
    # "audio/*" lets in types, never what is not one (no header or object store could hold it).
    (Media(body=MP3, content_type="audio/\xe4\xb8\xad"), None,
     {"allowed_types": {"audio": ["audio/*"]}}, "is untyped, not one of"),
])
async def test_refused_downloads_kill_the_job_with_the_reason(
    tmp_path: Path, media: Media | None, audio_url: str | None, options: dict[str, Any],
    reason: str,
) -> None:
    async with setup(tmp_path, [route(options)]) as (runtime, server, _, _clock):
        if media is not None:
            server.files["/a"] = media
        await deliver(runtime, callback("t-1", [
            clip("c1", "succeeded", audio_url=audio_url or server.url("/a"))]))
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
    assert job.state is JobState.DEAD
    assert reason in (job.last_error or "")
    assert list((tmp_path / "media" / "t-1").iterdir()) == []  # no part, no lock left


async def test_bad_options_stop_start_up_and_say_which(tmp_path: Path) -> None:
    """A misspelt or ill-typed option is refused before any job exists, by its path."""
    for options, message in (
        ({"images": True}, "routes[0].handlers[0].options.images: unknown option"),
        ({"max_bytes": "big"}, "routes[0].handlers[0].options.max_bytes: expected a positive "
                               "integer, got 'big'"),
        ({"allowed_types": {"sound": ["audio/mpeg"]}},
         "routes[0].handlers[0].options.allowed_types.sound: unknown option"),
    ):
        with pytest.raises(ConfigError) as caught:
            async with setup(tmp_path, [route(options)]):
                pass
        assert caught.value.message == message


async def test_options_stored_under_another_config_kill_the_job_and_say_which(
    tmp_path: Path,
) -> None:
    """A job written before the options changed shape dies at once, naming the option."""
    async with setup(tmp_path) as (runtime, server, sent, _):
        older = Router(routes_from_config({"routes": [route({"images": True})]}))
        await deliver_to(runtime.storage, older, two_clips(server), at=runtime.clock.now())
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
    assert job.state is JobState.DEAD
    assert job.last_error == "PermanentError: options.images: unknown option"
    assert sent == []


async def test_without_a_network_exception_loopback_is_refused(tmp_path: Path) -> None:
    """The default policy: the test server itself is out of bounds."""
    async with setup(tmp_path, config={}) as (runtime, server, sent, _):
        await deliver(runtime, two_clips(server))
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
    assert job.state is JobState.DEAD
    assert "127.0.0.1 is loopback" in (job.last_error or "")
    assert sent == []


async def test_two_jobs_for_one_task_download_each_file_once(tmp_path: Path) -> None:
    """Two routes give two jobs, run together: one downloads, the other finds the files."""
    async with setup(tmp_path, [route(name="a"), route(name="b")]) as (runtime, server, _, _c):
        await deliver(runtime, two_clips(server))
        with capture_logs() as logs:
            assert await runtime.worker.run_once() == 2  # type: ignore[union-attr]
        jobs = await runtime.storage.admin.list_jobs()
        assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE]
        assert server.hits("/c1.mp3") == 1
        assert server.hits("/c2.wav") == 1
    # Which job writes and which skips depends on timing; that each is done once does not.
    def done(event: str) -> list[tuple[str, str]]:
        return sorted((e["clip_id"], e.get("kind", SIDECAR)) for e in logs if e["event"] == event)

    assert done("file_downloaded") == [("c1", "audio"), ("c2", "audio")]
    assert done("sidecar_written") == [("c1", SIDECAR), ("c2", SIDECAR)]
    assert done("file_skipped") == [("c1", "audio"), ("c1", SIDECAR),
                                    ("c2", "audio"), ("c2", SIDECAR)]


async def test_a_rerun_skips_what_is_intact_and_replaces_what_is_not(tmp_path: Path) -> None:
    async with setup(tmp_path) as (runtime, server, _, _clock):
        await deliver(runtime, two_clips(server))
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
        before = {(f.clip_id, f.kind): f for f in await runtime.storage.admin.list_files("t-1")}
        folder = tmp_path / "media" / "t-1"
        (folder / "c2.wav").write_bytes(b"damaged")
        ctx = runtime.context_for(job)
        await handle_again(ctx, job)
        after = {(f.clip_id, f.kind): f for f in await runtime.storage.admin.list_files("t-1")}
        assert server.hits("/c1.mp3") == 1
        assert server.hits("/c2.wav") == 2
    assert after == before  # the same bytes again: the same records
    assert (folder / "c2.wav").read_bytes() != b"damaged"


async def handle_again(ctx: HandlerContext, job: Job) -> None:
    """Run the handler once more for ``job``, as a retry after a crash would."""
    await handle(Event(trigger=job.trigger, task_id=job.task_id, route=job.route, key=job.key,
                       job_id=job.id, attempt=job.attempts + 1, delivery_id=job.delivery_id),
                 ctx)


async def test_unsafe_ids_stay_inside_the_media_folder(tmp_path: Path) -> None:
    async with setup(tmp_path) as (runtime, server, _, _clock):
        server.files["/a.mp3"] = Media(body=MP3)
        await deliver(runtime, callback("../../t", [
            clip("../../../etc/x", "succeeded", title="../../evil.sh",
                 audio_url=server.url("/a.mp3"))]))
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
        files = await runtime.storage.admin.list_files("../../t")
    assert job.state is JobState.DONE, job.last_error
    media = (tmp_path / "media").resolve()
    for record in files:
        path = where(record.path)
        assert path.is_relative_to(media)
        assert path.parent.parent == media
        assert path.suffix in (".mp3", ".json")
        assert "evil" not in path.name


def test_safe_components_are_distinct_and_plain() -> None:
    assert safe_component("2f1c-aa_B") == "2f1c-aa_B"
    assert safe_component("a/b") != safe_component("a_b")
    for hostile in ("..", ".", "", "a/../b", "x\x00y", "é"):
        name = safe_component(hostile)
        assert name
        assert "/" not in name
        assert not name.startswith(".")
    with pytest.raises(PermanentError):
        contained(Path("/srv/media"), "..", "etc")


async def test_a_clip_without_audio_url_is_retried(tmp_path: Path) -> None:
    async with setup(tmp_path) as (runtime, _server, _, _clock):
        await deliver(runtime, callback("t-1", [clip("c1", "succeeded")]))
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
    assert job.state is JobState.RETRYING
    assert "has no audio_url" in (job.last_error or "")


def test_the_handler_is_registered_like_any_plugin() -> None:
    """Through the entry-point group, which the default route relies on."""
    assert load_registry({}).get("download_audio") is handle


async def test_a_sandbox_task_is_downloaded_by_the_default_route(tmp_path: Path) -> None:
    """The whole way: the sandbox creates a task and signs its webhooks, the receiver records
    them and its in-process worker downloads the sandbox's real WAVs, tagged, through the
    default route (no [[routes]]: download_audio on task.succeeded)."""
    app = create_app(settings_for(tmp_path, config=dict(LOOPBACK_ONLY)))
    sandbox_config = SandboxConfig(api_keys={KEY: 100}, speed=Speed.INSTANT, seed=5)
    async with serve_sandbox(sandbox_config) as sandbox, running(app) as receiver_url:
        created = await sandbox.client().create_music(
            mv="sonic-v4-5", custom_mode=True, title="Starry Night", tags="pop, dreamy",
            prompt="[Verse]\nStars they shine above me",
            webhook_url=f"{receiver_url}/webhooks/sonic", webhook_secret=SECRET,
        )
        async with http_client(base_url=receiver_url, timeout=10) as http:

            async def kept() -> bool:
                view = (await http.get(f"/tasks/{created.task_id}")).json()
                return bool(view.get("jobs")) and all(
                    j["state"] in ("done", "dead") for j in view["jobs"])

            await wait_for(kept, within=20, what="the download job to finish")
            view = (await http.get(f"/tasks/{created.task_id}")).json()
    assert [j["state"] for j in view["jobs"]] == ["done"], view["jobs"]
    audio = [f for f in view["files"] if f["kind"] == "audio"]
    assert len(audio) == 2
    for record in audio:
        assert record["content_type"] == "audio/wav"
        data = read(record["path"])
        assert (record["size"], record["sha256"]) == (len(data), sha(data))
        wav = wav_file(Path(record["path"]))
        assert str(wav.tags["TIT2"]).startswith("Starry Night")
        assert wav.info.length > 0
    assert sorted(f["kind"] for f in view["files"]) == ["audio", "audio", "sidecar", "sidecar"]


async def test_temporaries_left_by_a_killed_process_are_swept(tmp_path: Path) -> None:
    """A kill -9 between mkstemp and rename leaves 0-byte temporaries: the next run
    of each clip removes its own, under its lock."""
    folder = tmp_path / "media" / "t-1"
    folder.mkdir(parents=True)
    leftovers = [folder / ".c1.audio.part.meta.abc123.tmp", folder / ".c1.json.def456.tmp",
                 folder / ".c2.audio.part.meta.zz.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"")
    async with setup(tmp_path) as (runtime, server, _, _):
        await deliver(runtime, two_clips(server))
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
    assert job.state is JobState.DONE, job.last_error
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---- links that expire, placeholders and wrong bodies, played by the sandbox -----------------


@asynccontextmanager
async def with_sandbox(
    tmp_path: Path, faults: Mapping[str, Any], options: Mapping[str, Any] | None = None, *,
    sonic: bool = True,
) -> AsyncIterator[tuple[Runtime, SandboxHandle, FakeClock]]:
    """The receiver's runtime (its Sonic client on the sandbox unless ``sonic`` is false) and
    a sandbox with ``faults``, on one fake clock: a link's age and a job's retries move
    together, with no waiting."""
    clock = FakeClock()
    config = SandboxConfig(api_keys={KEY: 1_000}, speed=Speed.INSTANT,
                           faults=FaultConfig.from_json(dict(faults)))
    async with serve_sandbox(config, clock=clock) as sb, watched_client() as (client, _), \
            handler_runtime(tmp_path, handlers={"download_audio": handle},
                            routes=[route({"image": True, **(options or {})})],
                            config=LOOPBACK_ONLY, http=client, clock=clock,
                            sonic=sb.client() if sonic else None) as runtime:
        yield runtime, sb, clock


async def song_completed(runtime: Runtime, sb: SandboxHandle) -> tuple[str, list[dict[str, Any]]]:
    """Create a song in the sandbox and record its song.completed as the webhook brings it
    (the body is get-music's answer, as the service's webhooks are)."""
    task_id = await sb.create(OK_CUSTOM)
    clips: list[dict[str, Any]] = (await sb.music(task_id))["data"]
    await deliver(runtime, callback(task_id, clips, event="song.completed", platform="sonic"))
    return task_id, clips


async def settle(runtime: Runtime, clock: FakeClock, *, steps: int = 40) -> Job:
    """Run the job, moving the clock to each of its retries, until it is finished."""
    for _ in range(steps):
        await runtime.worker.run_once()  # type: ignore[union-attr]
        job = await only_job(runtime)
        if job.state in FINISHED:
            return job
        clock.set(max(clock.now(), job.run_after))
    raise AssertionError(f"the job did not finish: {job}")


def media_requests(sb: SandboxHandle) -> int:
    return sum(sb.sandbox.state.media_requests.values())


async def test_a_link_that_answers_403_from_then_on_is_completed_from_get_musics_fresh_one(
    tmp_path: Path,
) -> None:
    """The webhook's links expire (60 s) before the job runs: the first 403 is retried as it
    is (it may pass), the second asks get-music again and downloads from the fresh links,
    recorded as a poll, in the clip's row and in a links result."""
    async with with_sandbox(tmp_path, {"links": {"expire_s": 60}}) as (runtime, sb, clock):
        task_id, clips = await song_completed(runtime, sb)
        clock.advance(120)  # the receiver was busy: the links are dead when the job runs
        with capture_logs() as logs:
            job = await settle(runtime, clock)
        files = {(f.clip_id, f.kind): f for f in await runtime.storage.admin.list_files(task_id)}
        view = await runtime.storage.admin.get_task(task_id)
        results = {r.clip_id: r.data for r in await runtime.storage.admin.list_results(task_id)
                   if r.kind == "links"}
        polls = [d for d in await runtime.storage.admin.raw_deliveries(task_id=task_id)
                 if d.stored.source is Source.POLL]
    assert job.state is JobState.DONE, job.last_error
    assert job.attempts == 2  # one 403 retried as it is, then the fresh links in the second
    assert view is not None
    old = {c["clip_id"]: c for c in clips}
    for clip_row in view.clips:
        audio, image = files[clip_row.clip_id, "audio"], files[clip_row.clip_id, "image"]
        assert audio.url != old[clip_row.clip_id]["audio_url"]
        assert (audio.url, image.url) == (clip_row.audio_url, clip_row.image_url)  # the store's
        assert read(audio.path)[:4] == b"RIFF"
        assert wav_file(Path(audio.path)).info.length == pytest.approx(
            float(old[clip_row.clip_id]["duration"]), abs=0.01)
        assert results[clip_row.clip_id]["refreshes"] == 1
        assert results[clip_row.clip_id]["reason"] == "refused"
        assert results[clip_row.clip_id]["audio"]["refused"] == 2
    assert len(polls) == 1
    refreshed = [e for e in logs if e["event"] == "links_refreshed"]
    assert sorted(e["clip_id"] for e in refreshed) == sorted(old)
    assert all(e["changed"] == ["audio", "image"] for e in refreshed)


async def test_links_older_than_their_lifetime_are_refreshed_before_any_fetch(
    tmp_path: Path,
) -> None:
    async with with_sandbox(tmp_path, {"links": {"expire_s": 60}},
                            {"link_lifetime_s": {"sonic": 30}}) as (runtime, sb, clock):
        task_id, clips = await song_completed(runtime, sb)
        clock.advance(45)  # still valid for the CDN, but past what we know of their life
        job = await settle(runtime, clock)
        files = await runtime.storage.admin.list_files(task_id)
        results = [r.data for r in await runtime.storage.admin.list_results(task_id)]
    assert job.state is JobState.DONE, job.last_error
    assert job.attempts == 1
    assert {f.url for f in files if f.kind == "audio"}.isdisjoint(c["audio_url"] for c in clips)
    assert [r["reason"] for r in results] == ["expired", "expired"]
    assert not any("refused" in r.get("audio", {}) for r in results)  # no 403 was met


@pytest.mark.parametrize(("options", "provider", "lifetime"), [
    ({}, "sonic", 1200.0),
    ({}, "kie", 20 * 60.0),  # documented: kie.ai's download links last 20 minutes
    ({}, "sunoapi", 15 * 86400.0),  # said to be kept 15 days
    ({}, "apibox", 1200.0),  # not documented: Sonic's value
    ({"sonic": 600}, "piapi", 600.0),
    ({"kie": 60}, "kie", 60.0),  # the operator's word first
    ({"kie": 60}, "of", 1200.0),  # a name that is no provider's (not a method of the table)
])
def test_a_tasks_link_lifetime_is_its_providers(
    options: dict[str, float], provider: str, lifetime: float,
) -> None:
    table = convert(options, LinkLifetimes, path="link_lifetime_s")
    assert table.of(provider) == lifetime


def test_a_link_lifetime_for_no_provider_is_refused_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        convert({"suno": 60}, LinkLifetimes, path="link_lifetime_s")
    assert caught.value.message == "link_lifetime_s.suno: unknown key"


async def test_without_a_sonic_client_an_expired_link_is_retried_as_it_is(
    tmp_path: Path,
) -> None:
    async with with_sandbox(tmp_path, {"links": {"expire_s": 60}}, sonic=False) as (
            runtime, sb, clock):
        task_id, _ = await song_completed(runtime, sb)
        clock.advance(120)
        job = await settle(runtime, clock)
        files = await runtime.storage.admin.list_files(task_id)
    assert job.state is JobState.DEAD
    assert "answered HTTP 403" in (job.last_error or "")
    assert files == []


@pytest.mark.parametrize(("kind", "reason"), [
    ("html", "the body is not audio/wav (it is an HTML page"),
    ("empty", "the body is empty (0 bytes of audio/wav)"),
    ("short", "the clip says"),
])
async def test_a_wrong_body_is_never_kept_and_ends_the_job_with_the_reason(
    tmp_path: Path, kind: str, reason: str,
) -> None:
    """A 200 with an HTML page, no bytes, or audio far shorter than declared, under the
    audio's own type: each body is checked before it is recorded, refused, retried from a
    fresh link, and after the third the job ends saying what came."""
    async with with_sandbox(tmp_path, {"media": {"kind": kind}}) as (runtime, sb, clock):
        task_id, _ = await song_completed(runtime, sb)
        job = await settle(runtime, clock)
        files = await runtime.storage.admin.list_files(task_id)
        results = [r.data for r in await runtime.storage.admin.list_results(task_id)]
    assert job.state is JobState.DEAD
    assert (job.last_error or "").startswith("PermanentError: ")
    assert "3 wrong bodies, the last: " in (job.last_error or "")
    assert reason in (job.last_error or "")
    assert [f for f in files if f.kind in ("audio", "sidecar")] == []
    assert [r["audio"]["wrong_bodies"] for r in results] == [3, 3]
    if kind != "short":  # the cover got the same body: refused by its magic bytes
        assert not [f for f in files if f.kind == "image"]
        assert "image: 3 wrong bodies" in (job.last_error or "")
    kept = [p.name for p in (tmp_path / "media" / task_id).iterdir()]
    assert not [name for name in kept if not name.endswith(".png")], kept  # no part, no .wav


async def test_a_wrong_body_once_is_fetched_again_from_a_fresh_link(tmp_path: Path) -> None:
    async with with_sandbox(tmp_path, {"media": {"kind": "html", "times": 1}}) as (
            runtime, sb, clock):
        task_id, _ = await song_completed(runtime, sb)
        job = await settle(runtime, clock)
        files = await runtime.storage.admin.list_files(task_id)
    assert job.state is JobState.DONE, job.last_error
    assert job.attempts == 1  # refused, refreshed and fetched again in the same attempt
    for audio in (f for f in files if f.kind == "audio"):
        assert read(audio.path)[:4] == b"RIFF"


async def test_a_placeholder_url_waits_then_downloads_once_a_real_one_comes(
    tmp_path: Path,
) -> None:
    """The clips come with ``.../None.mp3`` for two minutes: the job waits (its attempts given
    back), asks get-music again each time, and downloads the real audio when it comes."""
    async with with_sandbox(tmp_path, {"links": {"placeholder_s": 120}}) as (
            runtime, sb, clock):
        task_id, clips = await song_completed(runtime, sb)
        assert all(c["audio_url"].endswith("/None.mp3") for c in clips)
        start = clock.now()
        await runtime.worker.run_once()  # type: ignore[union-attr]
        first = await only_job(runtime)
        assert first.state is JobState.RETRYING
        assert "waiting for a real audio URL" in (first.last_error or "")
        assert media_requests(sb) == 0  # a placeholder is never fetched
        job = await settle(runtime, clock)
        files = await runtime.storage.admin.list_files(task_id)
    assert job.state is JobState.DONE, job.last_error
    assert job.attempts == 1  # every wait was given back
    assert clock.now() - start >= 120
    audio = [f for f in files if f.kind == "audio"]
    assert len(audio) == 2
    assert all(f.url and f.url.endswith(".wav") for f in audio)


async def test_a_placeholder_is_waited_for_up_to_its_bound(tmp_path: Path) -> None:
    async with with_sandbox(tmp_path, {"links": {"placeholder_s": 10_000}},
                            {"wait_for_url_s": 300}) as (runtime, sb, clock):
        await song_completed(runtime, sb)
        job = await settle(runtime, clock)
    assert job.state is JobState.DEAD
    assert "no audio URL after waiting 300s" in (job.last_error or "")
    assert job.attempts == 1


async def test_once_a_clips_links_were_refreshed_a_refused_link_is_refreshed_at_once(
    tmp_path: Path,
) -> None:
    """Links that live 5 s, and a first body that is an HTML page: the refreshed link serves
    the page, has expired by the next attempt, and is refreshed at its first 403 (the clip
    has shown that its links expire), not left for one more retry."""
    faults = {"links": {"expire_s": 5}, "media": {"kind": "html", "times": 1}}
    async with with_sandbox(tmp_path, faults, {"image": False}) as (runtime, sb, clock):
        task_id, _ = await song_completed(runtime, sb)
        clock.advance(10)
        job = await settle(runtime, clock)
        results = [r.data for r in await runtime.storage.admin.list_results(task_id)]
    assert job.state is JobState.DONE, job.last_error
    assert job.attempts == 3  # 403; 403, refresh, HTML page; 403, refresh, the audio
    assert [(r["refreshes"], r["audio"]["wrong_bodies"]) for r in results] == [(2, 1), (2, 1)]
