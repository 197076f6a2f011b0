"""The recording algorithm's rules that the mutation run found unchecked, on the real SQLite
file and on PostgreSQL (the contract fixture of tests/backends.py)."""

from __future__ import annotations

import pytest

from receiver.models import Delivery, Outcome, Source
from receiver.payloads import try_parse
from receiver.recording import UNKNOWN_TASK
from receiver.states import State
from receiver.storage import Store
from tests.backends import store
from tests.support import callback, clip

pytestmark = pytest.mark.anyio


__all__ = ["store"]  # the contract fixture, once per backend


def delivery(delivery_id: str, body: bytes, *, event: str | None = None,
             at: float = 1000.0) -> Delivery:
    cb, error = try_parse(body, event_header=event)
    return Delivery(delivery_id=delivery_id, source=Source.WEBHOOK, scheme="musicapi",
                    event=event, headers={}, body=body, received_at=at, callback=cb, error=error)


async def test_an_unknown_task_is_quarantined_with_the_documented_reason(store: Store) -> None:
    result = await store.record_delivery(delivery("d1", callback(None, [clip("zz", "running")])))
    assert result.outcome is Outcome.QUARANTINED
    # the literal text, as the README and operators read it, not the imported constant
    assert result.reason == "no task_id in the body or ?task_id=, and none of its clips is known"
    assert result.reason == UNKNOWN_TASK


async def test_a_failed_clip_of_a_succeeded_task_leaves_the_task_without_an_error(
    store: Store,
) -> None:
    body = callback("t", [clip("a", "failed", error_message="nsfw"), clip("b", "succeeded")])
    result = await store.record_delivery(delivery("d1", body))
    assert result.state is State.SUCCEEDED
    view = await store.get_task("t")
    assert view is not None
    assert view.task.error is None


async def test_a_running_task_gets_no_error_and_a_failed_one_gets_its_reason(store: Store) -> None:
    running = callback("t", [clip("a", "running")], message="still going")
    await store.record_delivery(delivery("d1", running))
    view = await store.get_task("t")
    assert view is not None
    assert (view.task.state, view.task.error) == (State.RUNNING, None)
    failed = callback("t", [clip("a", "failed", error_message="nsfw")])
    await store.record_delivery(delivery("d2", failed))
    view = await store.get_task("t")
    assert view is not None
    assert (view.task.state, view.task.error) == (State.FAILED, "nsfw")


async def test_a_late_failed_report_after_success_keeps_the_final_urls_and_state(
    store: Store,
) -> None:
    done = callback("t", [clip("a", "succeeded", audio_url="http://cdn/final.mp3")],
                    event="song.completed")
    await store.record_delivery(delivery("d1", done))
    late = callback("t", [clip("a", "failed", audio_url="http://cdn/broken.mp3",
                               error_message="late")])
    result = await store.record_delivery(delivery("d2", late, event="song.failed", at=2000.0))
    assert (result.outcome, result.transitions, result.state) == (
        Outcome.RECORDED, (), State.SUCCEEDED)
    view = await store.get_task("t")
    assert view is not None
    assert [(c.state, c.audio_url) for c in view.clips] == [
        (State.SUCCEEDED, "http://cdn/final.mp3")]
    assert view.task.error is None
