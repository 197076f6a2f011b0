"""Each provider end to end over loopback: the sandbox plays it (its API, its staged callbacks,
signed as it signs or not at all, its failures and link lifetimes), the receiver creates the
task through it (``POST /tasks``), takes its callbacks at ``/webhooks/<provider>/...``, has the
ones nothing authenticates confirmed by a poll, and keeps the files; a forged body the poll
contradicts runs no handler."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.app import create_app
from receiver.clock import Clock
from receiver.server import running
from receiver.sonic.sandbox import SandboxConfig, Speed
from tests.provider_bodies import (
    AIMLAPI_SECRET,
    HMAC_KEY,
    PIAPI_SECRET,
    providers_table,
    suno,
    suno_clip,
)
from tests.sonic.support import KEY, SandboxHandle, serve_sandbox
from tests.support import free_port, http_client, settings_for
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

SONG = {"task_type": "create_music", "mv": "sonic-v4-5", "custom_mode": True,
        "title": "Starry Night", "tags": "pop, dreamy",
        "prompt": "[Verse]\nStars they shine above me"}
CONFIRMING = ("sunoapi", "kie", "apibox")
EVERY = (*CONFIRMING, "piapi", "aimlapi")


@dataclass
class Deployment:
    sandbox: SandboxHandle
    http: httpx.AsyncClient  # to the receiver
    db: Path

    async def create(self, provider: str, **fields: Any) -> str:
        answer = await self.http.post("/tasks", json={**SONG, "provider": provider, **fields})
        assert answer.status_code == 201, answer.text
        assert answer.json()["provider"] == provider
        task_id: str = answer.json()["task_id"]
        return task_id

    async def view(self, task_id: str) -> dict[str, Any]:
        answer = await self.http.get(f"/tasks/{task_id}")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    async def settled(self, task_id: str, *, files: int = 0, within: float = 30) -> dict[str, Any]:
        """The task once it ended and its jobs did (and ``files`` files were kept)."""

        async def done() -> bool:
            view = await self.view(task_id)
            return (view["task"]["state"] in ("succeeded", "failed")
                    and all(j["state"] in ("done", "dead") for j in view["jobs"])
                    and len([f for f in view["files"] if f["kind"] == "audio"]) >= files)

        await wait_until(done, within=within, what=f"task {task_id} to settle")
        return await self.view(task_id)

    def deliveries(self, task_id: str) -> list[tuple[str, str, str, str, str | None]]:
        """(source, outcome, provider, scheme, confirmed_by) of each delivery of the task."""
        conn = sqlite3.connect(self.db)
        try:
            return [tuple(r) for r in conn.execute(
                "SELECT source, outcome, provider, scheme, confirmed_by FROM deliveries "
                "WHERE task_id = ? ORDER BY id", (task_id,))]
        finally:
            conn.close()


@contextlib.asynccontextmanager
async def deployment(tmp_path: Path, *, routes: list[dict[str, Any]] | None = None,
                     config: SandboxConfig | None = None,
                     tables: dict[str, dict[str, Any]] | None = None,
                     extra: dict[str, Any] | None = None,
                     clock: Clock | None = None,
                     ) -> AsyncIterator[Deployment]:
    """The sandbox, and a receiver on a real port whose providers are the sandbox's
    (``tables``: changes to their tables; ``extra``: more of the config file)."""
    config = config or SandboxConfig(api_keys={KEY: 10_000}, speed=Speed.INSTANT, seed=5,
                                     kie_hmac_key=HMAC_KEY, aimlapi_secret=AIMLAPI_SECRET)
    async with serve_sandbox(config, clock=clock) as sandbox:
        base = {"api_key": KEY}
        written = {
            "sunoapi": {**base, "base_url": sandbox.url + "/sunoapi",
                        "concat_path": "/api/v1/generate/concat"},
            "kie": {**base, "base_url": sandbox.url + "/kie", "hmac_key": HMAC_KEY},
            "apibox": {**base, "base_url": sandbox.url + "/apibox"},
            "piapi": {**base, "base_url": sandbox.url + "/piapi",
                      "webhook_secret": PIAPI_SECRET},
            "aimlapi": {**base, "base_url": sandbox.url + "/aimlapi",
                        "webhook_secret": AIMLAPI_SECRET},
        }
        for name, changes in (tables or {}).items():
            written[name] = {**written[name], **changes}
        port = free_port()
        settings = settings_for(
            tmp_path, public_url=f"http://127.0.0.1:{port}", worker="inprocess",
            providers=providers_table(**written),
            config={"network": {"allow_networks": ["127.0.0.0/8"]},
                    "routes": routes if routes is not None else [
                        {"on": "task.succeeded", "handlers": ["download_audio"]}],
                    **(extra or {})})
        async with running(create_app(settings), port=port) as url, http_client(
                base_url=url, timeout=10) as http:
            yield Deployment(sandbox=sandbox, http=http, db=tmp_path / "receiver.db")


@pytest.mark.parametrize("provider", EVERY)
async def test_a_task_created_through_each_provider_ends_with_its_files_kept(
        tmp_path: Path, provider: str) -> None:
    """Created through the provider, called back its way, its files downloaded: every
    callback of a provider that authenticates no body took effect only as confirmed by a
    poll (recorded, confirmed_by the poll), and nothing is left unconfirmed."""
    async with deployment(tmp_path) as deploy:
        task_id = await deploy.create(provider)
        clips = 1 if provider == "aimlapi" else 2
        view = await deploy.settled(task_id, files=clips)
        sent = await deploy.sandbox.deliveries(task_id=task_id)
    assert view["task"]["state"] == "succeeded"
    assert [c["state"] for c in view["clips"]] == ["succeeded"] * clips
    assert all(c["audio_url"] for c in view["clips"])
    if provider != "aimlapi":  # a generation's audio_file names no duration
        assert all(c["duration"] for c in view["clips"])
    audio = [f for f in view["files"] if f["kind"] == "audio"]
    assert len(audio) == clips
    assert {d["status"] for d in sent} == {200}
    stored = deploy.deliveries(task_id)
    callbacks = [d for d in stored if d[0] == "webhook"]
    assert callbacks
    assert {d[2] for d in stored} == {provider}
    assert "unconfirmed" not in {d[1] for d in stored}
    if provider in CONFIRMING:
        assert {d[1] for d in callbacks} == {"recorded"}
        assert all(d[4] is not None and d[4].startswith("confirm:") for d in callbacks)
        # every task transition was made by a confirming poll, none by the bodies
        assert {t["source"] for t in view["transitions"]} == {"confirm"}
        scheme = "kie" if provider == "kie" else "token"
        assert {d[3] for d in callbacks} == {scheme}
    else:
        assert {d[1] for d in callbacks} <= {"recorded", "duplicate"}
        assert "webhook" in {t["source"] for t in view["transitions"]}


# sunoapi.org's documented failure codes (kie.ai's and apibox's too) and their categories
DOCUMENTED = [(400, "copyright"), (408, "timeout"), (413, "copyright"), (500, "upstream"),
              (501, "upstream"), (531, "upstream")]


@pytest.mark.parametrize(("provider", "code", "category"), [
    *[(p, code, category) for p in CONFIRMING for code, category in DOCUMENTED],
    ("piapi", 501, "upstream"), ("aimlapi", 501, "upstream"),
])
async def test_a_failed_task_fails_with_the_category_of_its_code(
        tmp_path: Path, provider: str, code: int, category: str) -> None:
    config = SandboxConfig(api_keys={KEY: 10_000}, speed=Speed.INSTANT, failure_code=code,
                           kie_hmac_key=HMAC_KEY, aimlapi_secret=AIMLAPI_SECRET)
    async with deployment(tmp_path, config=config) as deploy:
        await deploy.sandbox.set_faults({"fail_tasks": 1.0})
        task_id = await deploy.create(provider)
        view = await deploy.settled(task_id)
    assert view["task"]["state"] == "failed"
    assert view["task"]["failure_category"] == category
    assert view["jobs"] == [] or {j["handler"] for j in view["jobs"]} == {"receiver.confirm"}


async def test_a_forged_body_the_poll_contradicts_runs_no_handler(tmp_path: Path) -> None:
    """The provider's own callbacks never come (dropped); a body claiming the task complete
    comes with the task's token and a URL of the forger's: recorded unconfirmed, the poll
    says the task failed, the body is contradicted, no download runs and its URL is never
    stored."""
    async with deployment(tmp_path) as deploy:
        await deploy.sandbox.set_faults({"fail_tasks": 1.0, "drop": 1.0})
        task_id = await deploy.create("sunoapi")
        plan = (await deploy.sandbox.http.get(f"/_sandbox/tasks/{task_id}")).json()
        callback_url: str = plan["webhook_url"]
        forged = suno("complete", task_id, [{"id": "evil", "audio_url": "http://127.0.0.1:9/x.mp3",
                                             "duration": 60}])
        answer = await deploy.http.post(callback_url.removeprefix(str(deploy.http.base_url)),
                                        content=forged)
        assert answer.json()["status"] == "unconfirmed"
        view = await deploy.settled(task_id)
    assert view["task"]["state"] == "failed"  # what the provider said, when polled
    assert [d[1] for d in deploy.deliveries(task_id) if d[0] == "webhook"] == ["contradicted"]
    assert [j["handler"] for j in view["jobs"]] == ["receiver.confirm"]
    assert view["files"] == []
    assert "evil" not in {c["clip_id"] for c in view["clips"]}


async def test_a_forged_body_for_a_task_the_provider_does_not_know_is_contradicted(
        tmp_path: Path) -> None:
    """The static path secret leaked: the body names a task nobody created."""
    async with deployment(tmp_path, tables={"sunoapi": {"path_secret": "p" * 32}}) as deploy:
        forged = suno("complete", "made-up", [{"id": "evil", "audio_url": "http://x/y.mp3"}])
        answer = await deploy.http.post("/webhooks/sunoapi/" + "p" * 32, content=forged)
        assert answer.json()["status"] == "unconfirmed"
        await wait_until(lambda: [d[1] for d in deploy.deliveries("made-up")] == [
            "contradicted"], within=30, what="the forged body to be contradicted")
        view = await deploy.view("made-up")
    assert view["task"]["state"] == "pending"
    assert [d[1] for d in deploy.deliveries("made-up")] == ["contradicted"]
    assert view["clips"] == []
    assert [j["handler"] for j in view["jobs"]] == ["receiver.confirm"]


# the stages each provider calls back, in the sandbox: the sunoapi.org shape's text, first,
# complete; PiAPI's processing, completed; AIMLAPI's one callback
STAGES = {"sunoapi": 3, "kie": 3, "apibox": 3, "piapi": 2, "aimlapi": 1}


@pytest.mark.parametrize("provider", EVERY)
async def test_repeated_stages_are_duplicates_and_run_nothing_twice(
        tmp_path: Path, provider: str) -> None:
    async with deployment(tmp_path) as deploy:
        await deploy.sandbox.set_faults({"duplicate": 1.0})
        task_id = await deploy.create(provider)
        view = await deploy.settled(task_id, files=1 if provider == "aimlapi" else 2)
        sent = await deploy.sandbox.deliveries(task_id=task_id)
    assert len(sent) == 2 * STAGES[provider]  # each stage twice
    stored = [d for d in deploy.deliveries(task_id) if d[0] == "webhook"]
    assert len(stored) == STAGES[provider]  # the second copy of each is the same delivery
    downloads = [j for j in view["jobs"] if j["handler"] == "download_audio"]
    assert len(downloads) == 1


async def test_kie_links_expire_and_the_download_asks_for_fresh_ones(tmp_path: Path) -> None:
    """kie.ai's media links carry their expiry (20 minutes); the files are kept."""
    async with deployment(tmp_path) as deploy:
        task_id = await deploy.create("kie")
        view = await deploy.settled(task_id, files=2)
    assert all("expires=" in c["audio_url"] for c in view["clips"])
    assert len([f for f in view["files"] if f["kind"] == "audio"]) == 2


async def test_follow_ups_of_a_provider_task_are_created_through_that_provider(
        tmp_path: Path) -> None:
    """create → extend → concat through sunoapi: each child a sunoapi task, called back at
    its own token, confirmed, and the concat's audio as long as the song."""
    routes = [{"on": "task.succeeded", "handlers": ["follow_up"]}]
    follow = {"max_depth": 2, "budget_credits": 100, "rules": [
        {"name": "extend", "task_type": "create_music", "action": "extend", "continue_at": -5},
        {"name": "concat", "task_type": "extend_music", "action": "concat"}]}
    async with deployment(tmp_path, routes=routes, extra={"follow_up": follow}) as deploy:
        root = await deploy.create("sunoapi")
        chain = [root]
        for _ in range(2):
            await deploy.settled(chain[-1])

            async def child(view_id: str = chain[-1]) -> bool:
                children = (await deploy.view(view_id))["children"]
                return bool(children) and bool(children[0]["child_task_id"])

            await wait_until(child, within=30, what="a follow-up task")
            chain.append((await deploy.view(chain[-1]))["children"][0]["child_task_id"])
        last = await deploy.settled(chain[-1])
        views = [await deploy.view(t) for t in chain]
    assert [v["task"]["task_type"] for v in views] == ["create_music", "extend_music",
                                                       "concat_music"]
    assert {v["task"]["state"] for v in views} == {"succeeded"}
    assert last["task"]["task_id"] == chain[-1]
    assert {d[2] for t in chain for d in deploy.deliveries(t)} == {"sunoapi"}


class HeldClock:
    """The sandbox's time, held still until :meth:`release` (then it runs, ``jump`` seconds
    ahead): the provider's task stays pending for as long as a test needs, without a sleep.
    Its ``sleep`` waits for the release, then in real time for what is left."""

    def __init__(self, jump: float = 60.0) -> None:
        self.start = time.time()
        self.jump = jump
        self.released_at: float | None = None
        self.released = asyncio.Event()

    def now(self) -> float:
        if self.released_at is None:
            return self.start
        return self.start + self.jump + (time.time() - self.released_at)

    def release(self) -> None:
        self.released_at = time.time()
        self.released.set()

    async def sleep(self, seconds: float) -> None:
        until = self.now() + max(0.0, seconds)
        if until > self.now():
            await self.released.wait()  # held time never reaches it
        # not a wait: this is the clock's own sleep, the sandbox's time running after release
        await asyncio.sleep(max(0.0, until - self.now()))


async def test_a_body_ahead_of_the_provider_acts_only_once_a_poll_agrees(tmp_path: Path) -> None:
    """A camelCase ``complete`` with a placeholder URL comes, with the task's token, while
    the provider's task is still pending (the sandbox's time held; its own callbacks
    dropped): it is unconfirmed, and after a poll that fell short of it no transition, clip
    or handler job exists. Once the provider's task has succeeded the next poll agrees: the
    delivery is recorded (confirmed by that poll) and the download runs on the provider's
    URLs, never the body's."""
    clock = HeldClock()
    config = SandboxConfig(api_keys={KEY: 10_000}, speed=Speed.DEMO, seed=5)
    async with deployment(tmp_path, config=config, clock=clock) as deploy:
        await deploy.sandbox.set_faults({"drop": 1.0})
        task_id = await deploy.create("sunoapi")
        plan = (await deploy.sandbox.http.get(f"/_sandbox/tasks/{task_id}")).json()
        early = suno("complete", task_id, [suno_clip(
            "early", camel=True, audio="http://127.0.0.1:9/None.mp3")], camel=True)
        answer = await deploy.http.post(
            plan["webhook_url"].removeprefix(str(deploy.http.base_url)), content=early)
        assert answer.json()["status"] == "unconfirmed"

        async def polled_short() -> bool:
            jobs = (await deploy.view(task_id))["jobs"]
            return bool(jobs) and jobs[0]["attempts"] >= 1 and jobs[0]["state"] != "running"

        await wait_until(polled_short, within=30, what="a first poll short of the claim")
        before = await deploy.view(task_id)
        assert before["task"]["state"] == "pending"
        assert [j["handler"] for j in before["jobs"]] == ["receiver.confirm"]
        assert before["clips"] == []
        assert before["transitions"] == []
        assert [d[1] for d in deploy.deliveries(task_id) if d[0] == "webhook"] == [
            "unconfirmed"]
        clock.release()

        async def confirmed() -> bool:
            return [d[1] for d in deploy.deliveries(task_id) if d[0] == "webhook"] == [
                "recorded"]

        await wait_until(confirmed, within=60, what="the early body to be confirmed")
        view = await deploy.settled(task_id, files=2)
    assert view["task"]["state"] == "succeeded"
    confirm = [j for j in view["jobs"] if j["handler"] == "receiver.confirm"]
    assert len(confirm) == 1
    assert confirm[0]["attempts"] >= 2  # polled short of the claim first, then agreed
    assert {t["source"] for t in view["transitions"]} == {"confirm"}
    assert "early" not in {c["clip_id"] for c in view["clips"]}
    assert all("None.mp3" not in (c["audio_url"] or "") for c in view["clips"])
    assert len([j for j in view["jobs"] if j["handler"] == "download_audio"]) == 1
