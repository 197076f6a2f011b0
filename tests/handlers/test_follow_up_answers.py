"""follow_up against a Sonic API that answers a create with a task id it cannot have made:
the parent's own, or the chain's root (a buggy or hostile upstream). Such an answer must not
tie the chain into a loop, nor be sent again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from handlers import follow_up
from receiver.jobs import JobState
from receiver.models import ChildState, ChildTask
from receiver.runtime import Runtime
from receiver.server import running
from receiver.sonic.client import RetryPolicy, SonicClient
from receiver.testing import deliver, handler_runtime
from tests.support import callback, clip, http_client

pytestmark = pytest.mark.anyio

RULES = [{"name": "extend", "action": "extend", "continue_at": -5}]
SUCCEEDED = [clip("c1", "succeeded", duration=30, mv="sonic-v4-5")]


@asynccontextmanager
async def answering(
    tmp_path: Path, rules: list[dict[str, Any]] | None = None,
) -> AsyncIterator[tuple[Runtime, list[str], list[Any]]]:
    """A runtime whose follow_up talks to an API that answers each create with the next of
    the task ids the test puts in the list it yields."""
    answers: list[str] = []
    creates: list[Any] = []

    async def create(request: Request) -> JSONResponse:
        creates.append(await request.json())
        return JSONResponse({"code": 200, "message": "success", "task_id": answers.pop(0)})

    api = Starlette(routes=[Route("/api/v1/sonic/create", create, methods=["POST"])])
    async with running(api) as base, http_client() as http, handler_runtime(
        tmp_path, handlers={"follow_up": follow_up.handle},
        routes=[{"on": ["task.succeeded", "task.failed"], "handlers": ["follow_up"]}],
        config={"follow_up": {"rules": rules or RULES}}, public_url="http://127.0.0.1:9/hook",
        sonic=SonicClient(base, "k", http=http, retry=RetryPolicy.without_waits()),
    ) as runtime:
        yield runtime, answers, creates


async def settle(runtime: Runtime) -> None:
    while await runtime.worker.run_once():  # type: ignore[union-attr]
        pass


@pytest.mark.parametrize("depth", [0, 1])
async def test_a_create_answered_with_an_ancestors_id_is_refused_and_never_resent(
    tmp_path: Path, depth: int,
) -> None:
    async with answering(tmp_path) as (runtime, answers, creates):
        await runtime.storage.ingest.register_task("t-root", task_type="create_music", now=0.0,
                                                   router=runtime.router)
        parent = "t-root"
        if depth:  # a first follow-up that goes well: t-root -> t-mid
            answers.append("t-mid")
            await deliver(runtime, callback("t-root", SUCCEEDED))
            await settle(runtime)
            parent = "t-mid"
        answers.append("t-root")  # the parent's own id, or the root's: never a new task
        await deliver(runtime, callback(parent, SUCCEEDED))
        await settle(runtime)
        await settle(runtime)  # a retry, if the failure asked for one
        job = next(j for j in await runtime.storage.admin.list_jobs() if j.task_id == parent)
        children = await runtime.storage.admin.list_children(parent)
        root = await runtime.storage.admin.get_task("t-root")
    assert len(creates) == depth + 1  # never sent again
    assert job.state is JobState.DEAD
    assert "cannot be the new task" in (job.last_error or "")
    assert [(c.state, c.child_task_id) for c in children] == [(ChildState.UNKNOWN, None)]
    assert root is not None
    assert root.task.task_type == "create_music"
    assert root.task.parent_task_id is None


async def test_a_chain_recorded_with_a_loop_does_not_hang_a_resubmit(tmp_path: Path) -> None:
    # What an earlier version recorded when the service answered a resubmit with the failed
    # task's own id: t-loop is its own follow-up. The walk up the chain must still end.
    async with answering(tmp_path, rules=[{"name": "again", "action": "resubmit",
                                           "times": 1}]) as (runtime, _answers, creates):
        outputs = runtime.storage.outputs
        child, _ = await outputs.claim_child(ChildTask(
            trigger_key="t-loop/task.failed/route-0/follow_up/again", parent_task_id="t-loop",
            root_task_id="t-loop", rule="again", depth=1, task_type="create_music", credits=10,
            request={"task_type": "create_music", "mv": "sonic-v4-5", "custom_mode": False,
                     "gpt_description_prompt": "a song"},
            child_task_id=None, state=ChildState.REQUESTED, error=None, created_at=0.0,
            updated_at=0.0))
        await outputs.update_child(child.trigger_key, state=ChildState.CREATED,
                                   child_task_id="t-loop", now=0.0, router=runtime.router)
        await deliver(runtime, callback("t-loop", [clip("c1", "failed")]))
        with anyio.fail_after(20):
            await settle(runtime)
        jobs = await runtime.storage.admin.list_jobs()
    assert [j.state for j in jobs] == [JobState.DONE]
    assert creates == []  # times = 1, and it was resubmitted once
