"""The recording algorithm's rules that the mutation run found unchecked, on the real SQLite
file and on PostgreSQL (the ``store`` fixture, tests/fixtures/storage.py)."""

from __future__ import annotations

import pytest

from receiver.models import Delivery, Outcome, Source
from receiver.payloads import try_parse
from receiver.recording import UNKNOWN_TASK
from receiver.routing import Router, routes_from_config
from receiver.states import Entity, State
from receiver.storage.roles import Storage
from tests.support import callback, clip

pytestmark = pytest.mark.anyio


def delivery(delivery_id: str, body: bytes, *, event: str | None = None,
             at: float = 1000.0) -> Delivery:
    cb, error = try_parse(body, event_header=event)
    return Delivery(delivery_id=delivery_id, source=Source.WEBHOOK, scheme="musicapi",
                    event=event, headers={}, body=body, received_at=at, callback=cb, error=error)


async def test_an_unknown_task_is_quarantined_with_the_documented_reason(store: Storage) -> None:
    result = await store.ingest.record_delivery(
        delivery("d1", callback(None, [clip("zz", "running")]))
    )
    assert result.outcome is Outcome.QUARANTINED
    # the literal text, as the README and operators read it, not the imported constant
    assert result.reason == "no task_id in the body or ?task_id=, and none of its clips is known"
    assert result.reason == UNKNOWN_TASK


async def test_a_failed_clip_of_a_succeeded_task_leaves_the_task_without_an_error(
    store: Storage,
) -> None:
    body = callback("t", [clip("a", "failed", error_message="nsfw"), clip("b", "succeeded")])
    result = await store.ingest.record_delivery(delivery("d1", body))
    assert result.state is State.SUCCEEDED
    view = await store.admin.get_task("t")
    assert view is not None
    assert view.task.error is None


async def test_a_running_task_gets_no_error_and_a_failed_one_gets_its_reason(
    store: Storage,
) -> None:
    running = callback("t", [clip("a", "running")], message="still going")
    await store.ingest.record_delivery(delivery("d1", running))
    view = await store.admin.get_task("t")
    assert view is not None
    assert (view.task.state, view.task.error) == (State.RUNNING, None)
    failed = callback("t", [clip("a", "failed", error_message="nsfw")])
    await store.ingest.record_delivery(delivery("d2", failed))
    view = await store.admin.get_task("t")
    assert view is not None
    assert (view.task.state, view.task.error) == (State.FAILED, "nsfw")


async def test_a_late_failed_report_after_success_keeps_the_final_urls_and_state(
    store: Storage,
) -> None:
    done = callback("t", [clip("a", "succeeded", audio_url="http://cdn/final.mp3")],
                    event="song.completed")
    await store.ingest.record_delivery(delivery("d1", done))
    late = callback(
        "t", [clip("a", "failed", audio_url="http://cdn/broken.mp3", error_message="late")]
    )
    result = await store.ingest.record_delivery(
        delivery("d2", late, event="song.failed", at=2000.0)
    )
    assert (result.outcome, result.transitions, result.state) == (
        Outcome.RECORDED, (), State.SUCCEEDED)
    view = await store.admin.get_task("t")
    assert view is not None
    assert [(c.state, c.audio_url) for c in view.clips] == [
        (State.SUCCEEDED, "http://cdn/final.mp3")]
    assert view.task.error is None


def failing_router() -> Router:
    return Router(routes_from_config({"routes": [{"on": "task.failed", "handlers": ["h"]}]}))


async def test_a_task_that_fails_with_no_clip_moving_still_gets_its_jobs(store: Storage) -> None:
    # song.failed before any clip is known: the only transition is the task's own
    body = callback("t", [], message="content policy")
    result = await store.ingest.record_delivery(delivery("d1", body, event="song.failed"),
                                         router=failing_router())
    assert [(t.entity, t.to_state) for t in result.transitions] == [(Entity.TASK, State.FAILED)]
    assert result.jobs == 1
    assert (result.delivery_id, result.task_id, result.state) == ("d1", "t", State.FAILED)


async def test_clip_moves_without_a_task_move_plan_no_job(store: Storage) -> None:
    router = Router(routes_from_config({"routes": [{"on": "task.streaming", "handlers": ["h"]}]}))
    await store.ingest.record_delivery(delivery("d1", callback("t", [clip("a", "running")])),
                                router=router)
    second = await store.ingest.record_delivery(
        delivery("d2", callback("t", [clip("a", "running"), clip("b", "running")])),
        router=router)
    assert [(t.entity, t.entity_id) for t in second.transitions] == [(Entity.CLIP, "b")]
    assert second.jobs == 0


async def test_an_unusable_body_keeps_the_query_task_id_for_a_later_replay(store: Storage) -> None:
    cb, error = try_parse(b'{"data": "x"}', task_id_hint="q-1")
    unusable = Delivery(delivery_id="d1", source=Source.WEBHOOK, scheme="musicapi", event=None,
                        headers={}, body=b'{"data": "x"}', received_at=1000.0, callback=cb,
                        error=error, task_id_hint="q-1")
    result = await store.ingest.record_delivery(unusable)
    assert (result.outcome, result.delivery_id, result.task_id, result.reason) == (
        Outcome.QUARANTINED, "d1", "q-1", "data is a JSON string, not a list of clips")
    (raw,) = await store.admin.raw_deliveries()
    assert (raw.stored.task_id, raw.stored.outcome) == ("q-1", Outcome.QUARANTINED)


async def test_a_repeat_of_a_quarantined_delivery_without_a_task_answers_no_state(
    store: Storage,
) -> None:
    await store.ingest.record_delivery(delivery("d1", b"[]"))
    again = await store.ingest.record_delivery(delivery("d1", b"[]"))
    assert (again.outcome, again.task_id, again.state) == (Outcome.QUARANTINED, None, None)


async def test_transitions_name_where_they_came_from_and_the_task_its_last_delivery(
    store: Storage,
) -> None:
    await store.ingest.record_delivery(delivery("d1", callback("t", [clip("a", "running")],
                                                        platform="sonic")))
    done = await store.ingest.record_delivery(
        delivery("d2", callback("t", [clip("a", "succeeded")]), at=2000.0))
    assert [(t.entity, t.from_state, t.to_state, t.delivery_id) for t in done.transitions] == [
        (Entity.CLIP, State.RUNNING, State.SUCCEEDED, "d2"),
        (Entity.TASK, State.RUNNING, State.SUCCEEDED, "d2")]
    view = await store.admin.get_task("t")
    assert view is not None
    assert (view.task.platform, view.task.last_delivery_id) == ("sonic", "d2")


async def test_a_task_move_no_route_matches_makes_no_job(store: Storage) -> None:
    result = await store.ingest.record_delivery(
        delivery("d1", callback("t", [clip("a", "succeeded")])), router=failing_router())
    assert [t.entity for t in result.transitions] == [Entity.CLIP, Entity.TASK]
    assert result.jobs == 0
