"""follow_up against the sandbox over loopback: chains are created once, within their limits,
and an uncertain create is never sent again."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette

from handlers import follow_up
from receiver.app import create_app
from receiver.conversion import ConfigError
from receiver.models import ChildState, ChildTask
from receiver.registry import Registry, load_registry
from receiver.schema import check
from receiver.server import running
from receiver.sonic.sandbox import SandboxConfig, Speed
from receiver.sonic.sandbox.config import Schedule
from receiver.storage.roles import Storage
from tests.sonic.support import KEY, SandboxHandle, serve_sandbox, wait_for
from tests.support import SECRET, free_port, http_client, settings_for

pytestmark = pytest.mark.anyio

CHAIN = {
    "max_depth": 3,
    "budget_credits": 100,
    "rules": [
        {"name": "extend", "task_type": "create_music", "action": "extend", "continue_at": -5,
         "request": {"prompt": "[Chorus] and on and on"}},
        {"name": "concat", "task_type": "extend_music", "action": "concat"},
        {"name": "tempo", "task_type": "concat_music", "action": "bpm"},
    ],
}
ROUTES = [{"on": ["task.succeeded", "task.failed"], "handlers": ["follow_up"]}]


@dataclass
class Chain:
    sandbox: SandboxHandle
    app: Starlette
    http: httpx.AsyncClient

    @property
    def store(self) -> Storage:
        store: Storage = self.app.state.runtime.storage
        return store

    async def create_root(self, **fields: Any) -> str:
        """Create a song the way the demo does, and tell the receiver what it is."""
        body = {"mv": "sonic-v4-5", "custom_mode": True, "title": "Road", "tags": "pop",
                "prompt": "[Verse] wheels", **fields}
        created = await self.sandbox.client().create_music(
            **body, webhook_url=self.app.state.runtime.settings.webhook_url,
            webhook_secret=SECRET)
        await self.store.ingest.register_task(created.task_id, task_type="create_music",
                                       now=time.time(), router=self.app.state.runtime.router)
        return created.task_id

    async def task(self, task_id: str) -> dict[str, Any]:
        body: dict[str, Any] = (await self.http.get(f"/tasks/{task_id}")).json()
        return body

    async def settled_chain(self, root: str, depth: int) -> list[dict[str, Any]]:
        """Follow the first child at each level down to ``depth``; returns the task views."""
        views: list[dict[str, Any]] = []

        async def walk() -> bool:
            views.clear()
            task_id = root
            for _ in range(depth + 1):
                view = await self.task(task_id)
                if view.get("task", {}).get("state") != "succeeded":
                    return False
                if any(j["state"] not in ("done", "dead") for j in view["jobs"]):
                    return False
                views.append(view)
                if len(views) == depth + 1:
                    return True
                if not view["children"] or not view["children"][0]["child_task_id"]:
                    return False
                task_id = view["children"][0]["child_task_id"]
            return True

        await wait_for(walk, within=30, what=f"a chain of depth {depth} to settle")
        return list(views)


@asynccontextmanager
async def chain(
    tmp_path: Path, follow: dict[str, Any] = CHAIN, faults: dict[str, Any] | None = None,
    credits: int = 1000, schedule: Schedule | None = None,
) -> AsyncIterator[Chain]:
    port = free_port()
    config = SandboxConfig(api_keys={KEY: credits}, speed=Speed.INSTANT, seed=5,
                           schedule=schedule)
    async with serve_sandbox(config) as sandbox:
        if faults:
            await sandbox.set_faults(faults)
        registry = Registry()
        registry.register("follow_up", follow_up.handle, origin="test")
        settings = settings_for(tmp_path, public_url=f"http://127.0.0.1:{port}",
                                config={"routes": ROUTES, "follow_up": follow})
        app = create_app(settings, registry=registry, sonic=sandbox.client())
        async with running(app, port=port) as url, http_client(base_url=url) as http:
            yield Chain(sandbox=sandbox, app=app, http=http)


async def test_create_then_extend_then_concat_then_bpm(tmp_path: Path) -> None:
    async with chain(tmp_path) as c:
        root = await c.create_root()
        views = await c.settled_chain(root, depth=2)
        balance = await c.sandbox.balance()
        [stored_extend] = await c.store.admin.list_children(root)
    root_view, extend_view, concat_view = views
    [extend] = root_view["children"]
    assert (extend["rule"], extend["task_type"], extend["depth"], extend["credits"]) == (
        "extend", "extend_music", 1, 15)
    [concat] = extend_view["children"]
    assert (concat["task_type"], concat["depth"], concat["credits"], concat["root_task_id"]) == (
        "concat_music", 2, 2, root)
    assert extend_view["task"]["parent_task_id"] == root
    assert concat_view["task"]["task_type"] == "concat_music"
    assert [r["kind"] for r in concat_view["results"]] == ["bpm"]
    assert concat_view["results"][0]["data"]["avg_bpm"] > 0
    # extended 5 s before the end of the first clip
    first = root_view["clips"][0]
    assert stored_extend.request["continue_clip_id"] == first["clip_id"]
    assert stored_extend.request["continue_at"] == pytest.approx(first["duration"] - 5, abs=0.01)
    assert "webhook_secret" not in stored_extend.request  # never stored
    assert balance == 1000 - 15 - 15 - 2  # the root, the extension, the concat


async def test_duplicated_and_reordered_webhooks_create_each_child_once(tmp_path: Path) -> None:
    async with chain(tmp_path, faults={"duplicate": 1.0, "reorder": 1.0}) as c:
        root = await c.create_root()
        views = await c.settled_chain(root, depth=2)
        balance = await c.sandbox.balance()
    assert [len(v["children"]) for v in views] == [1, 1, 0]
    assert balance == 1000 - 32


async def test_depth_and_budget_stop_a_chain(tmp_path: Path) -> None:
    shallow = {**CHAIN, "max_depth": 1}
    async with chain(tmp_path / "depth", follow=shallow) as c:
        root = await c.create_root()
        views = await c.settled_chain(root, depth=1)
    assert views[1]["children"] == []  # the concat would be depth 2

    poor = {**CHAIN, "budget_credits": 16}
    async with chain(tmp_path / "budget", follow=poor) as c:
        root = await c.create_root()
        views = await c.settled_chain(root, depth=1)
        balance = await c.sandbox.balance()
    assert [(ch["rule"], ch["state"]) for ch in views[1]["children"]] == [("concat", "failed")]
    assert "over the credit budget" in (views[1]["children"][0]["error"] or "")
    assert balance == 1000 - 30


async def test_an_invalid_rule_request_is_refused_before_sending(tmp_path: Path) -> None:
    bad = {"rules": [{"name": "extend", "action": "extend", "continue_at": -5,
                      "request": {"mv": "sonic-v9"}}]}
    async with chain(tmp_path, follow=bad) as c:
        root = await c.create_root()

        async def dead() -> bool:
            jobs = (await c.task(root)).get("jobs", [])
            return bool(jobs) and jobs[0]["state"] == "dead"

        await wait_for(dead, within=20, what="the follow-up job to die")
        view = await c.task(root)
        balance = await c.sandbox.balance()
    assert "mv field is invalid" in view["jobs"][0]["last_error"]
    assert balance == 1000 - 15  # only the root was charged


async def test_a_child_left_requested_by_a_crash_is_never_sent_again(tmp_path: Path) -> None:
    async with chain(tmp_path) as c:
        # Simulate an attempt killed between recording the child and learning the answer:
        # the child row exists, still 'requested', before the job first runs.
        real_claim = c.store.outputs.claim_child

        async def crashed_before(child: ChildTask) -> tuple[ChildTask, bool]:
            stored, _ = await real_claim(child)
            return stored, False  # as if an earlier attempt had written it

        c.store.outputs.claim_child = crashed_before  # type: ignore[method-assign]
        root = await c.create_root()

        async def dead() -> bool:
            jobs = (await c.task(root)).get("jobs", [])
            return bool(jobs) and jobs[0]["state"] == "dead"

        await wait_for(dead, within=20, what="the follow-up job to die")
        view = await c.task(root)
        balance = await c.sandbox.balance()
    assert "may have created the task" in view["jobs"][0]["last_error"]
    assert [ch["state"] for ch in view["children"]] == [ChildState.UNKNOWN.value]
    assert balance == 1000 - 15  # nothing was sent for the child


@pytest.mark.parametrize(("table", "message"), [
    ({"rules": [{"action": "remix"}]}, "rules[0].action: unknown value 'remix' (choose from "
                                       "bpm, concat, cover, extend, resubmit, vox)"),
    ({"rules": [{"action": "extend", "on": "task.streaming"}]},
     "rules[0].on: unknown value 'task.streaming' (choose from task.failed, task.succeeded)"),
    ({"rules": [{"action": "bpm", "clip": "last"}]},
     "rules[0].clip: unknown value 'last' (choose from all, first, or an integer >= 0)"),
    ({"rules": [{"action": "bpm", "color": 1}]}, "rules[0].color: unknown key"),
    ({"rules": [{"action": "bpm"}, {"action": "vox", "name": "bpm-0"}]},
     "rules[1].name: two rules are named 'bpm-0'"),
    ({"max_depth": 0}, "max_depth: expected a positive integer, got 0"),
    ({"rule": []}, "rule: unknown key"),
])
def test_bad_rules_stop_start_up_with_the_path(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check({"follow_up": table}, load_registry({}))
    assert caught.value.message == f"follow_up.{message}"


def test_rules_are_named_and_triggered_by_default() -> None:
    """A rule without a name is <action>-<index>; resubmit runs on failures, others on
    successes."""
    table = msgspec.convert({"rules": [{"action": "extend"}, {"action": "resubmit"}]},
                            follow_up.FollowUpTable)
    assert [(r.name, r.on) for r in table.plan()] == [
        ("extend-0", "task.succeeded"), ("resubmit-1", "task.failed")]


async def test_a_failed_follow_up_is_resubmitted_up_to_times(tmp_path: Path) -> None:
    rules = {"rules": [
        {"name": "extend", "task_type": "create_music", "action": "extend", "continue_at": -5},
        {"name": "again", "action": "resubmit", "times": 1},
    ]}
    # The song settles 0.5 s after creation, so the faults set just after creating it (a
    # task's fate is drawn when it is created) apply to every follow-up and not to the song.
    slow = Schedule(running_after_s=(0.2, 0.2), settled_after_s=(0.5, 0.5),
                    webhook_backoff_s=0.1)
    async with chain(tmp_path, follow=rules, schedule=slow) as c:
        root = await c.create_root()
        await c.sandbox.set_faults({"fail_tasks": 1.0})  # every task from now on fails
        extend: list[dict[str, Any]] = []

        async def settled() -> bool:
            extend.clear()
            task_id = root
            for _ in range(3):
                view = await c.task(task_id)
                if "task" not in view or view["task"]["state"] not in ("succeeded", "failed"):
                    return False
                if not view["jobs"] or any(
                        j["state"] not in ("done", "dead") for j in view["jobs"]):
                    return False
                extend.append(view)
                kids = [k for k in view["children"] if k["child_task_id"]]
                if not kids:
                    return len(extend) == 3
                task_id = kids[0]["child_task_id"]
            return False

        await wait_for(settled, within=30, what="the resubmission to settle")
        balance = await c.sandbox.balance()
    _, failed, resubmitted = extend
    assert failed["task"]["state"] == "failed"
    assert [k["rule"] for k in failed["children"]] == ["again"]
    assert resubmitted["task"]["state"] == "failed"
    assert resubmitted["task"]["task_type"] == "extend_music"
    assert resubmitted["children"] == []  # times = 1: not sent a second time
    assert balance == 1000 - 15  # failed tasks are refunded
