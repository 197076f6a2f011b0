"""The ``notify`` handler against real peers on loopback: a JSON sink served by uvicorn and an
SMTP server (aiosmtpd), reached through apprise itself; jobs run by the real worker on a real
SQLite file, with the injected clock moved instead of sleeping."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from handlers import notify
from handlers.notify import duration_text
from receiver.clock import FakeClock
from receiver.conversion import ConfigError
from receiver.jobs import Job, JobState
from receiver.models import StoredFile
from receiver.notifying import scheme_of
from receiver.registry import load_registry
from receiver.runtime import Runtime
from receiver.testing import deliver, handler_runtime
from receiver.worker import Worker
from tests.peers import json_sink, smtp_server
from tests.support import callback, clip

pytestmark = pytest.mark.anyio

TASK = "task-7f3a"


def route(
    *targets: str, on: Sequence[str] = ("task.succeeded", "task.failed"), **options: Any
) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": "notify", "options": dict(options)}
    if targets:
        ref["options"]["targets"] = list(targets)
    if "max_attempts" in options:
        ref["max_attempts"] = ref["options"].pop("max_attempts")
    return {"name": "ping", "on": list(on), "handlers": [ref]}


@asynccontextmanager
async def runtime_with(
    tmp_path: Path, routes: Sequence[Mapping[str, Any]], config: Mapping[str, Any] | None = None
) -> AsyncIterator[tuple[Runtime, Worker, FakeClock]]:
    clock = FakeClock()
    async with handler_runtime(tmp_path, handlers={"notify": notify.handle}, routes=routes,
                               config=config, clock=clock) as runtime:
        assert runtime.worker is not None
        yield runtime, runtime.worker, clock


def succeeded_body(task_id: str = TASK, **extra: Any) -> bytes:
    return callback(task_id, [
        clip("c1", "succeeded", title="Night Drive", tags="synthwave, dreamy",
             duration="104.88", audio_url="https://cdn.example/c1.mp3"),
        clip("c2", "succeeded", title="Night Drive", tags="synthwave, dreamy",
             duration=61.2, audio_url="https://cdn.example/c2.mp3"),
    ], event="song.completed", **extra)


def failed_body(task_id: str = TASK) -> bytes:
    return callback(task_id, [
        clip("c1", "failed", title="Night Drive", error_message="lyrics rejected by moderation"),
    ], event="song.failed")


async def only_job(runtime: Runtime) -> Job:
    jobs = await runtime.storage.admin.list_jobs(task_id=TASK)
    assert len(jobs) == 1
    return jobs[0]


async def test_json_target_gets_exactly_one_message(tmp_path: Path) -> None:
    """One succeeded task → one JSON message with the expected title and body; running the
    worker again sends nothing more."""
    async with json_sink() as sink:
        routes = [route(sink.url("hook"))]
        async with runtime_with(tmp_path, routes) as (runtime, worker, clock):
            await deliver(runtime, succeeded_body())
            await runtime.storage.outputs.record_file(StoredFile(
                task_id=TASK, clip_id="c1", kind="audio", path="media/task-7f3a/c1.mp3",
                size=10, sha256="0" * 64, url=None, content_type="audio/mpeg", job_key=None,
                created_at=clock.now()))
            assert await worker.run_once() == 1
            assert await worker.run_once() == 0
            job = await only_job(runtime)
    assert job.state is JobState.DONE
    [message] = sink.delivered("hook")
    assert message["title"] == '🎵 "Night Drive" succeeded'
    assert message["type"] == "success"
    body = message["message"]
    assert f"Sonic task {TASK} succeeded with 2 clip(s)." in body
    assert "• Night Drive [synthwave, dreamy] 1:45\n  file: media/task-7f3a/c1.mp3" in body
    assert "• Night Drive [synthwave, dreamy] 1:01\n  url: https://cdn.example/c2.mp3" in body


async def test_failed_task_message_says_why(tmp_path: Path) -> None:
    """A failed task's message carries the failure reason."""
    async with (
        json_sink() as sink,
        runtime_with(tmp_path, [route(sink.url("hook"))]) as (runtime, worker, _),
    ):
        await deliver(runtime, failed_body())
        await worker.run_once()
        assert (await only_job(runtime)).state is JobState.DONE
    [message] = sink.delivered()
    assert message["title"] == f"Sonic task {TASK} failed"
    assert message["type"] == "failure"
    assert "Reason: lyrics rejected by moderation" in message["message"]


async def test_mailto_target_reaches_a_real_smtp_server(tmp_path: Path) -> None:
    """A plain-SMTP mailto:// target (no TLS, no auth) delivers an e-mail with the title as its
    subject and the clips in its body."""
    async with smtp_server() as (mailbox, port):
        target = (f"mailto://127.0.0.1:{port}?mode=insecure"
                  "&from=sonic@receiver.test&to=ops@receiver.test")
        async with runtime_with(tmp_path, [route(target)]) as (runtime, worker, _):
            await deliver(runtime, succeeded_body())
            await worker.run_once()
            assert (await only_job(runtime)).state is JobState.DONE
    [envelope] = mailbox.envelopes
    assert envelope.rcpt_tos == ["ops@receiver.test"]
    [mail] = mailbox.messages()
    assert mail["subject"] == '🎵 "Night Drive" succeeded'
    text = mail.get_body(preferencelist=("plain",))
    assert text is not None
    assert "Night Drive [synthwave, dreamy] 1:45" in text.get_content()


async def test_duplicate_deliveries_notify_once(tmp_path: Path) -> None:
    """The same completion delivered again, with the same or another delivery id, makes no
    second job and no second message."""
    async with (
        json_sink() as sink,
        runtime_with(tmp_path, [route(sink.url("hook"))]) as (runtime, worker, _),
    ):
        body = succeeded_body()
        await deliver(runtime, body, delivery_id="d-1")
        await deliver(runtime, body, delivery_id="d-1")
        await deliver(runtime, body, delivery_id="d-2")
        assert len(await runtime.storage.admin.list_jobs(task_id=TASK)) == 1
        await worker.run_once()
        await deliver(runtime, body, delivery_id="d-3")  # after the job ran, too
        assert await worker.run_once() == 0
    assert len(sink.delivered()) == 1


async def test_failing_target_is_retried_without_resending_to_the_others(
    tmp_path: Path,
) -> None:
    """With two targets where one answers 500, the job retries with backoff; when that peer
    recovers, only it gets the message again."""
    async with json_sink() as sink:
        sink.status["down"] = 500
        routes = [route(sink.url("up"), sink.url("down"))]
        async with runtime_with(tmp_path, routes) as (runtime, worker, clock):
            await deliver(runtime, succeeded_body())
            await worker.run_once()
            job = await only_job(runtime)
            assert job.state is JobState.RETRYING
            assert job.last_error is not None
            assert "1 of 2 notification targets failed: #1 json" in job.last_error
            assert (sink.attempts("up"), sink.attempts("down")) == (1, 1)

            assert await worker.run_once() == 0  # backoff: not due yet
            sink.status["down"] = 200
            clock.advance(120)
            assert await worker.run_once() == 1
            job = await only_job(runtime)
            results = [r.kind for r in await runtime.storage.admin.list_results(TASK)]
    assert job.state is JobState.DONE
    assert (sink.attempts("up"), sink.attempts("down")) == (1, 2)
    assert len(sink.delivered("up")) == len(sink.delivered("down")) == 1
    assert sorted(results) == [f"notify:{job.key}:0", f"notify:{job.key}:1"]


async def test_target_that_never_recovers_kills_the_job(tmp_path: Path) -> None:
    """A peer that keeps failing uses up the attempts: the job is dead, the error says which
    target."""
    async with json_sink() as sink:
        sink.status["hook"] = 503
        routes = [route(sink.url("hook"), max_attempts=2)]
        async with runtime_with(tmp_path, routes) as (runtime, worker, clock):
            await deliver(runtime, succeeded_body())
            await worker.run_once()
            clock.advance(120)
            await worker.run_once()
            job = await only_job(runtime)
    assert job.state is JobState.DEAD
    assert job.last_error is not None
    assert job.last_error.startswith("NotificationFailed: 1 of 1 notification targets failed")
    assert sink.attempts("hook") == 2


async def test_secrets_in_target_urls_are_not_logged(tmp_path: Path) -> None:
    """A password in a target URL reaches the peer, but not the logs, the job's error or the
    recorded results."""
    async with json_sink() as sink:
        sink.status["hook"] = 500
        routes = [route(sink.url("hook", userinfo="bot:s3cr3t-pw@"))]
        async with runtime_with(tmp_path, routes) as (runtime, worker, clock):
            await deliver(runtime, succeeded_body())
            with capture_logs() as logs:
                await worker.run_once()
                sink.status["hook"] = 200
                clock.advance(120)
                await worker.run_once()
            job = await only_job(runtime)
            results = await runtime.storage.admin.list_results(TASK)
    assert job.state is JobState.DONE
    assert sink.requests[-1][3]["authorization"].startswith("Basic ")  # it was used
    assert "s3cr3t" not in repr(logs)
    assert "s3cr3t" not in repr(results)
    assert "s3cr3t" not in (job.last_error or "")
    sent = [e for e in logs if e["event"] == "notify_sent"]
    assert [e["target"] for e in sent] == ["#0 json"]


async def test_templates_come_from_config_and_route_options_win(tmp_path: Path) -> None:
    """``[notify]`` templates replace the defaults; a route's option replaces ``[notify]``."""
    async with json_sink() as sink:
        config = {"notify": {
            "targets": [sink.url("hook")],
            "title_template": "config title",
            "body_template": "$clip_count clips for $task_id ($platform):\n$clips",
            "clip_template": "$number. $title ($duration) $$0",
        }}
        routes = [route(title_template="Done: ${title}!")]
        async with runtime_with(tmp_path, routes, config) as (runtime, worker, _):
            await deliver(runtime, succeeded_body(platform="sonic"))
            await worker.run_once()
    [message] = sink.delivered()
    assert message["title"] == "Done: Night Drive!"
    assert message["message"] == (
        f"2 clips for {TASK} (sonic):\n1. Night Drive (1:45) $0\n2. Night Drive (1:01) $0"
    )


async def test_every_documented_field_renders(tmp_path: Path) -> None:
    """Templates may use every documented field: none is missing when rendering."""
    async with json_sink() as sink:
        config = {"notify": {
            "targets": [sink.url("hook")],
            "title_template": "${title}",
            "body_template": " ".join(f"{f}=${{{f}}}" for f in sorted(notify.TASK_FIELDS)),
            "clip_template": " ".join(f"{f}=${{{f}}}" for f in sorted(notify.CLIP_FIELDS)),
        }}
        async with runtime_with(tmp_path, [route()], config) as (runtime, worker, _):
            await deliver(runtime, succeeded_body())
            await worker.run_once()
            job = await only_job(runtime)
    assert job.state is JobState.DONE, job.last_error
    [message] = sink.delivered()
    assert "clip_id=c2 clip_state=succeeded" in message["message"]
    assert "number=2" in message["message"]
    assert "durations=1:45, 1:01" in message["message"]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Done: $song_name", "notify.body_template: uses unknown field(s) $song_name; fields: "
                             "audio_urls, clip_count, clips"),
        ("Done: ${title.__class__}", "notify.body_template: has a malformed placeholder"),
        ("cost: $5", "notify.body_template: has a malformed placeholder"),
    ],
)
async def test_bad_template_stops_start_up_with_a_clear_error(
    tmp_path: Path, template: str, expected: str
) -> None:
    """A template naming a field that does not exist, or reaching for an attribute, is refused
    before anything runs, saying which setting and which fields exist."""
    config = {"notify": {"targets": ["json://127.0.0.1:9/hook"], "body_template": template}}
    with pytest.raises(ConfigError) as caught:
        async with runtime_with(tmp_path, [route()], config):
            pass
    assert caught.value.message.startswith(expected)


async def test_a_bad_clip_template_in_route_options_is_refused_with_its_path(
    tmp_path: Path,
) -> None:
    """The clip template sees the clip's fields, and route options are checked like the
    table."""
    with pytest.raises(ConfigError) as caught:
        async with runtime_with(tmp_path, [route("json://h/x", clip_template="$clip_id $nope")]):
            pass
    assert caught.value.message.startswith(
        "routes[0].handlers[0].options.clip_template: uses unknown field(s) $nope")


async def test_no_targets_kills_the_job(tmp_path: Path) -> None:
    """Neither the route nor [notify] names a target: the job dies saying so."""
    async with runtime_with(tmp_path, [route()]) as (runtime, worker, _):
        await deliver(runtime, succeeded_body())
        await worker.run_once()
        job = await only_job(runtime)
    assert job.state is JobState.DEAD
    assert job.last_error is not None
    assert "no targets configured" in job.last_error


async def test_unusable_target_url_kills_the_job_before_sending(tmp_path: Path) -> None:
    """A URL apprise cannot use is a configuration error: permanent, and the good targets
    are not sent to either (the next fixed run sends to all)."""
    async with json_sink() as sink:
        routes = [route(sink.url("hook"), "nosuchservice://token@somewhere")]
        async with runtime_with(tmp_path, routes) as (runtime, worker, _):
            await deliver(runtime, succeeded_body())
            await worker.run_once()
            job = await only_job(runtime)
    assert job.state is JobState.DEAD
    assert "target #1 nosuchservice is not a usable apprise URL" in (job.last_error or "")
    assert "token" not in (job.last_error or "")
    assert sink.requests == []


async def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    """A misspelt option, or a misspelt key of [notify], is refused, not ignored."""
    with pytest.raises(ConfigError, match=r"^routes\[0\]\.handlers\[0\]\.options\.target: "
                                          "unknown option$"):
        async with runtime_with(tmp_path, [route("json://h/x", target="x")]):
            pass
    with pytest.raises(ConfigError, match=r"^notify\.title: unknown key$"):
        async with runtime_with(tmp_path, [route("json://h/x")], {"notify": {"title": "x"}}):
            pass


async def test_streaming_is_ignored(tmp_path: Path) -> None:
    """A route that sends streaming events to notify runs it, and nothing is sent."""
    async with json_sink() as sink:
        routes = [route(sink.url("hook"), on=["task.streaming"])]
        async with runtime_with(tmp_path, routes) as (runtime, worker, _):
            await deliver(runtime, callback(TASK, [clip("c1", "running")],
                                            event="song.streaming"))
            assert await worker.run_once() == 1
            assert (await only_job(runtime)).state is JobState.DONE
    assert sink.requests == []


async def test_waits_for_audio_files_when_asked(tmp_path: Path) -> None:
    """With wait_for_files_s, the message waits (without using attempts) until each clip's
    audio file is recorded, then names the files."""
    async with json_sink() as sink:
        routes = [route(sink.url("hook"), wait_for_files_s=60)]
        async with runtime_with(tmp_path, routes) as (runtime, worker, clock):
            await deliver(runtime, succeeded_body())
            await worker.run_once()
            job = await only_job(runtime)
            assert job.state is JobState.RETRYING
            assert job.attempts == 0
            assert sink.requests == []
            for clip_id in ("c1", "c2"):
                await runtime.storage.outputs.record_file(StoredFile(
                    task_id=TASK, clip_id=clip_id, kind="audio", path=f"media/{clip_id}.mp3",
                    size=10, sha256="0" * 64, url=None, content_type="audio/mpeg",
                    job_key=None, created_at=clock.now()))
            clock.advance(5)
            await worker.run_once()
            assert (await only_job(runtime)).state is JobState.DONE
    [message] = sink.delivered()
    assert "file: media/c1.mp3" in message["message"]
    assert "file: media/c2.mp3" in message["message"]


async def test_wait_for_files_gives_up_and_sends_urls(tmp_path: Path) -> None:
    """When the wait is over and files are still missing, the message goes with the URLs."""
    async with json_sink() as sink:
        routes = [route(sink.url("hook"), wait_for_files_s=10)]
        async with runtime_with(tmp_path, routes) as (runtime, worker, clock):
            await deliver(runtime, succeeded_body())
            for _ in range(4):
                await worker.run_once()
                clock.advance(5)
            assert (await only_job(runtime)).state is JobState.DONE
    [message] = sink.delivered()
    assert "url: https://cdn.example/c1.mp3" in message["message"]


def test_notify_is_registered_through_the_entry_point_group() -> None:
    """Built-in handlers load exactly as plugins do."""
    assert load_registry({}).get("notify") is notify.handle


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(104.88, "1:45"), (61.2, "1:01"), (59.6, "1:00"), (0, "0:00"), (3725, "1:02:05"),
     (None, "?:??")],
)
def test_duration_text(seconds: float | None, text: str) -> None:
    """Durations read as m:ss (h:mm:ss past an hour)."""
    assert duration_text(seconds) == text


def test_scheme_of_never_returns_more_than_the_scheme() -> None:
    """Only the scheme of a URL is ever logged."""
    assert scheme_of("tgram://123456:SECRET/chat") == "tgram"
    assert scheme_of("mailtos://user:pw@host") == "mailtos"
    assert scheme_of("user:pw@host") == "?"


@pytest.mark.parametrize(("body_format", "hostile", "shown"), [
    ("html", '<img src=x onerror="alert(1)">', "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"),
    ("markdown", "[win a prize](https://evil.example) @everyone",
     "\\[win a prize\\]\\(https\\:\\/\\/evil\\.example\\) \\@everyone"),
])
async def test_callback_fields_are_escaped_for_an_html_or_markdown_template(
    tmp_path: Path, body_format: str, hostile: str, shown: str,
) -> None:
    """With ``format = "html"`` (or markdown) the operator's templates are HTML (markdown), but
    a clip's title, tags, URL and a failure's reason come from the callback: each field is
    escaped for that format, so that it shows as text and never becomes markup, a link or a
    mention; the template's own markup stays."""
    async with json_sink() as sink:
        config = {"notify": {
            "targets": [sink.url("hook") + f"?format={body_format}"],
            "format": body_format,
            "title_template": "${title}",
            "body_template": "<b>${tags}</b>\n${clips}",
            "clip_template": "${title} ${location}",
        }}
        body = callback(TASK, [clip("c1", "succeeded", title=hostile, tags=hostile,
                                    audio_url="https://cdn.example/a.mp3?x=<b>")],
                        event="song.completed")
        async with runtime_with(tmp_path, [route()], config) as (runtime, worker, _):
            await deliver(runtime, body)
            await worker.run_once()
            job = await only_job(runtime)
    assert job.state is JobState.DONE, job.last_error
    [message] = sink.delivered()
    assert hostile not in message["message"]
    assert message["message"].startswith(f"<b>{shown}</b>")
    assert message["message"].count(shown) == 2
    assert "?x=<b>" not in message["message"]
