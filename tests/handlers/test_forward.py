"""forward end to end: events signed the Standard Webhooks way and verified by the
``standardwebhooks`` reference library in a real app on loopback (uvicorn), jobs run by the
real worker on a real SQLite file, waits moved on an injected clock."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from structlog.testing import capture_logs

from handlers import download_audio, forward
from receiver.clock import FakeClock
from receiver.conversion import ConfigError
from receiver.jobs import JobState, PermanentError
from receiver.registry import load_registry
from receiver.runtime import Runtime
from receiver.schema import check
from receiver.server import running
from receiver.testing import deliver, handler_runtime
from tests.handlers import LOOPBACK_ONLY, Media, media_server, watched_client, wav_bytes
from tests.support import callback, clip

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass
class App:
    """The user's application: verifies each POST with the reference library, answers the
    next of ``answers`` (then 200), keeps what it accepted."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    attempts: list[dict[str, str]] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    unverified: int = 0
    url: str = ""


@asynccontextmanager
async def user_app() -> AsyncIterator[App]:
    peer = App()
    verifier = Webhook(SECRET)

    async def hook(request: Request) -> JSONResponse:
        body = await request.body()
        headers = dict(request.headers)
        peer.attempts.append(headers)
        try:
            event = verifier.verify(body, headers)
        except WebhookVerificationError:
            peer.unverified += 1
            return JSONResponse({"error": "bad signature"}, 400)
        if peer.answers:
            status, extra = peer.answers.pop(0)
            return JSONResponse({"busy": True}, status, headers=extra)
        peer.accepted.append(event)
        return JSONResponse({"ok": True})

    async with running(Starlette(routes=[Route("/hooks/sonic", hook, methods=["POST"])])) as base:
        peer.url = f"{base}/hooks/sonic"
        yield peer


def forward_route(url: str, max_attempts: int | None = None, **options: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"name": "forward",
                            "options": {"url": url, "secret_env": "FORWARD_SECRET", **options}}
    if max_attempts is not None:
        item["max_attempts"] = max_attempts
    return {"name": "tell", "on": ["task.succeeded", "task.failed"], "handlers": [item]}


@asynccontextmanager
async def setup(tmp_path: Path, routes: Sequence[dict[str, Any]],
                config: dict[str, Any] | None = None,
                ) -> AsyncIterator[tuple[Runtime, FakeClock]]:
    # Now, not the fake clock's 2023: the reference library checks the timestamp against the
    # wall clock, as a real receiving app does.
    clock = FakeClock(start=time.time())
    async with watched_client() as (client, _), handler_runtime(
        tmp_path, handlers={"forward": forward.handle, "download_audio": download_audio.handle},
        routes=routes, config=LOOPBACK_ONLY if config is None else config, http=client,
        clock=clock, public_url="https://receiver.example",
    ) as runtime:
        yield runtime, clock


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARD_SECRET", SECRET)


def song(audio_url: str = "https://cdn.example/a.wav") -> bytes:
    return callback("t-1", [clip("c1", "succeeded", title="Neon Rain", audio_url=audio_url,
                                 duration=12.5)], event="song.completed")


async def run_until_settled(runtime: Runtime, clock: FakeClock, *, steps: int = 10) -> None:
    """Run what is due; move the clock to the next retry; until every job is finished."""
    for _ in range(steps):
        await runtime.worker.run_once()  # type: ignore[union-attr]
        jobs = await runtime.storage.admin.list_jobs()
        waiting = [j for j in jobs if j.state not in (JobState.DONE, JobState.DEAD)]
        if not waiting:
            return
        clock.set(max(clock.now(), min(j.run_after for j in waiting)))


async def test_503_twice_then_200_delivers_the_event_once_in_three_attempts(
    tmp_path: Path,
) -> None:
    async with user_app() as peer, setup(tmp_path, [forward_route_for(peer)]) as (rt, clock):
        peer.answers = [(503, {}), (503, {"Retry-After": "7"})]
        await deliver(rt, song())
        await run_until_settled(rt, clock)
        (job,) = await rt.storage.admin.list_jobs()
        (result,) = await rt.storage.admin.list_results("t-1")
    assert job.state is JobState.DONE, job.last_error
    assert len(peer.attempts) == 3
    assert peer.unverified == 0
    assert len(peer.accepted) == 1
    assert len({a["webhook-id"] for a in peer.attempts}) == 1  # one message, three attempts
    assert (job.attempts, result.data["attempt"]) == (3, 3)  # each a counted attempt
    assert result.data["delivered"] is True
    event = peer.accepted[0]
    assert event["type"] == "task.succeeded"
    assert event["version"] == 1
    assert event["task"]["id"] == "t-1"
    assert event["task"]["state"] == "succeeded"
    assert [c["id"] for c in event["clips"]] == ["c1"]
    assert event["clips"][0]["duration"] == 12.5
    assert event["chain"] == {"root_task_id": "t-1", "depth": 0, "parent_task_id": None,
                              "children": []}


def forward_route_for(peer: App, max_attempts: int | None = None,
                      **options: Any) -> dict[str, Any]:
    return forward_route(peer.url, max_attempts, **options)


async def test_retry_after_sets_when_the_next_attempt_runs(tmp_path: Path) -> None:
    async with user_app() as peer, setup(tmp_path, [forward_route_for(peer)]) as (rt, clock):
        peer.answers = [(429, {"Retry-After": "120"})]
        await deliver(rt, song())
        start = clock.now()
        await rt.worker.run_once()  # type: ignore[union-attr]
        (job,) = await rt.storage.admin.list_jobs()
        assert job.state is JobState.RETRYING
        assert job.run_after == start + 120
        clock.advance(119)
        assert await rt.worker.run_once() == 0  # type: ignore[union-attr]
        clock.advance(1)
        assert await rt.worker.run_once() == 1  # type: ignore[union-attr]
    assert len(peer.accepted) == 1


async def test_it_gives_up_after_max_attempts_with_the_last_answer(tmp_path: Path) -> None:
    async with user_app() as peer, setup(
        tmp_path, [forward_route_for(peer, max_attempts=3, backoff_s=[1])]) as (rt, clock):
        peer.answers = [(500, {})] * 5
        await deliver(rt, song())
        await run_until_settled(rt, clock)
        (job,) = await rt.storage.admin.list_jobs()
    assert job.state is JobState.DEAD
    assert len(peer.attempts) == 3
    assert "gave up after 3 attempts" in (job.last_error or "")
    assert "HTTP 500" in (job.last_error or "")


async def test_a_4xx_ends_the_job_at_once(tmp_path: Path) -> None:
    async with user_app() as peer, setup(tmp_path, [forward_route_for(peer)]) as (rt, clock):
        peer.answers = [(410, {})]
        await deliver(rt, song())
        await run_until_settled(rt, clock)
        (job,) = await rt.storage.admin.list_jobs()
    assert job.state is JobState.DEAD
    assert len(peer.attempts) == 1


async def test_the_download_network_policy_applies(tmp_path: Path) -> None:
    async with user_app() as peer, setup(tmp_path, [forward_route_for(peer)],
                                         config={}) as (rt, clock):
        await deliver(rt, song())
        await run_until_settled(rt, clock)
        (job,) = await rt.storage.admin.list_jobs()
    assert job.state is JobState.DEAD
    assert "loopback" in (job.last_error or "")
    assert peer.attempts == []


async def test_it_waits_for_the_downloads_and_names_the_stored_files(tmp_path: Path) -> None:
    download = {"name": "keep", "on": ["task.succeeded"], "handlers": ["download_audio"]}
    async with media_server() as media, user_app() as peer, setup(
        tmp_path, [download, forward_route_for(peer)]) as (rt, clock):
        # 12.5 s, as song() declares: the body is checked against the clip's duration
        media.files["/a.wav"] = Media(body=wav_bytes(100_000), content_type="audio/wav",
                                      pause_s=0.2, chunk=50_000)
        await deliver(rt, song(media.url("/a.wav")))
        with capture_logs() as logs:
            await run_until_settled(rt, clock)
        jobs = {j.handler: j for j in await rt.storage.admin.list_jobs()}
    assert jobs["download_audio"].state is JobState.DONE
    assert jobs["forward"].state is JobState.DONE, jobs["forward"].last_error
    # it ran after the task's download (the handler that provides the files it needs)
    assert any(e["event"] == "job_waiting" and e["waits_for"] == ["download_audio"]
               for e in logs)
    (event,) = peer.accepted
    files = {f["kind"]: f for f in event["files"]}
    assert set(files) == {"audio", "sidecar"}
    audio = files["audio"]
    assert audio["location"] == (tmp_path / "media" / "t-1" / "c1.wav").as_uri()
    assert audio["size"] == len((tmp_path / "media" / "t-1" / "c1.wav").read_bytes())
    assert audio["source_url"] == media.url("/a.wav")
    assert audio["href"] == "https://receiver.example/files/t-1/c1/audio"


@pytest.mark.parametrize(("options", "message"), [
    ({"url": "ftp://x", "secret": "s"}, "url: expected an http(s) URL, got 'ftp://x'"),
    ({"url": "https://x", "secret": "s", "retries": 3}, "retries: unknown option"),
    ({"url": "https://x"}, "secret_env: set secret_env (or secret) to a whsec_ secret"),
    ({"url": "https://x", "secret": "s", "backoff_s": []},
     "backoff_s: expected a non-empty list of seconds, got []"),
    ({"url": "https://x", "secret": "s", "timeout_s": -1},
     "timeout_s: expected a number of seconds >= 0, got -1"),
    ({"secret": "s"}, "url: is required"),
])
def test_bad_options_are_named(options: dict[str, Any], message: str) -> None:
    """Each refused option is named by its path when the file is checked, at start-up."""
    route = {"on": "task.succeeded", "handlers": [{"name": "forward", "options": options}]}
    with pytest.raises(ConfigError) as caught:
        check({"routes": [route]}, load_registry({}))
    assert caught.value.message == f"routes[0].handlers[0].options.{message}"


def test_the_secret_variable_is_read_when_the_job_runs() -> None:
    """A deploy checks the file without its secrets; the job is what needs the variable."""
    options = forward.ForwardOptions(url="https://x", secret_env="FORWARD_SECRET")
    assert options.secret_in({"FORWARD_SECRET": SECRET}) == SECRET
    with pytest.raises(PermanentError, match="FORWARD_SECRET is not set"):
        options.secret_in({})
    assert forward.ForwardOptions(url="https://x", secret="s").secret_in({}) == "s"


def test_retry_after_reads_seconds_and_dates() -> None:
    assert forward.retry_after("30") == 30
    assert forward.retry_after("999999") == forward.MAX_RETRY_AFTER_S
    assert forward.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert forward.retry_after("soon") is None


def test_the_handler_is_registered_like_any_plugin() -> None:
    assert load_registry({}).get("forward") is forward.handle
