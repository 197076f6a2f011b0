"""Webhooks from the sandbox to a small receiver on loopback that verifies them with
receiver.signatures.Verifier; and the delivery faults."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from receiver.clock import FakeClock
from receiver.signatures import Scheme, Verifier
from receiver.sonic.contract import WebhookEvent
from receiver.sonic.sandbox import FaultConfig, SandboxConfig, Speed
from receiver.sonic.sandbox.faults import EventDrop
from tests.sonic.support import (
    KEY,
    OK_CUSTOM,
    SECRET,
    SandboxHandle,
    WebhookReceiver,
    read_wav,
    serve_receiver,
    serve_sandbox,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

STREAMING, COMPLETED, FAILED = "song.streaming", "song.completed", "song.failed"


def _create(receiver: WebhookReceiver, **extra: Any) -> dict[str, Any]:
    return {
        **OK_CUSTOM,
        "webhook_url": f"{receiver.url}/hook?tenant=a&x=1",
        "webhook_secret": SECRET,
        **extra,
    }


async def _settled(sb: SandboxHandle, task_id: str, count: int) -> None:
    """Wait until ``count`` log lines are final for the task (answered, gave up or dropped)."""

    async def done() -> bool:
        rows = await sb.deliveries(task_id=task_id)
        return sum(r["outcome"] in ("answered", "gave_up", "dropped") for r in rows) >= count

    await wait_until(done, what=f"{count} final deliveries of {task_id}")


def _config(**faults: Any) -> SandboxConfig:
    return SandboxConfig(
        api_keys={KEY: 1_000}, speed=Speed.INSTANT, faults=FaultConfig(**faults),
        webhook_attempts=3,
    )


async def test_a_receiver_gets_streaming_then_completed_signed_and_complete() -> None:
    async with serve_receiver() as receiver, serve_sandbox() as sb:
        task_id = await sb.create(_create(receiver))
        await wait_until(lambda: len(receiver.got) >= 2, what="two webhooks")
        await _settled(sb, task_id, 2)
        assert receiver.events() == [STREAMING, COMPLETED]
        assert all(r.verified for r in receiver.got), [r.reason for r in receiver.got]
        assert all(r.query == "tenant=a&x=1" for r in receiver.got)
        ids = [r.headers["x-webhook-id"] for r in receiver.got]
        assert len(set(ids)) == 2
        assert [r.headers["idempotency-key"] for r in receiver.got] == ids
        stamps = [int(r.headers["x-webhook-timestamp"]) for r in receiver.got]
        assert all(abs(stamp - time.time()) < 60 for stamp in stamps)
        assert all("x-signature" not in r.headers for r in receiver.got)

        streaming, completed = (json.loads(r.body) for r in receiver.got)
        for body, event in ((streaming, STREAMING), (completed, COMPLETED)):
            assert body["task_id"] == task_id
            assert body["event"] == event
            assert body["platform"] == "sonic"
            assert body["code"] == 200
            assert len(body["data"]) == 2
        assert {c["state"] for c in streaming["data"]} == {"running"}
        assert all("/media/stream/" in c["audio_url"] for c in streaming["data"])
        assert {c["state"] for c in completed["data"]} == {"succeeded"}
        # The clips the receiver was told about have real audio at their audio_url.
        for clip in completed["data"]:
            _, _, rate, samples = read_wav((await sb.http.get(clip["audio_url"])).content)
            assert len(samples) / rate == float(clip["duration"])
        # And polling agrees with the last webhook.
        assert (await sb.music(task_id))["data"] == completed["data"]
        log = await sb.deliveries(task_id=task_id)
        assert [(r["event"], r["outcome"], r["status"]) for r in log] == [
            (STREAMING, "answered", 200), (COMPLETED, "answered", 200),
        ]


async def test_a_failed_task_sends_song_failed() -> None:
    async with serve_receiver() as receiver, serve_sandbox(_config(fail_tasks=1.0)) as sb:
        task_id = await sb.create(_create(receiver))
        await _settled(sb, task_id, 2)
    assert receiver.events() == [STREAMING, FAILED]
    failed = json.loads(receiver.got[1].body)
    assert {c["state"] for c in failed["data"]} == {"failed"}


async def test_legacy_signature_when_the_key_asks() -> None:
    async with serve_receiver() as receiver, serve_sandbox() as sb:
        await sb.http.put(f"/_sandbox/keys/{KEY}", json={"legacy_signature": True})
        task_id = await sb.create(_create(receiver))
        await _settled(sb, task_id, 2)
    legacy = Verifier([SECRET], [Scheme.LEGACY], tolerance_s=300, clock=FakeClock())
    for got in receiver.got:
        only_legacy = {"x-signature": got.headers["x-signature"]}
        assert legacy.verify(only_legacy, got.body).scheme is Scheme.LEGACY


async def test_without_a_secret_the_default_secret_signs() -> None:
    """The receiver cannot verify those: always send a webhook_secret."""
    default = "sandbox-default"
    config = SandboxConfig(api_keys={KEY: 100}, speed=Speed.INSTANT, default_webhook_secret=default,
                           webhook_attempts=1)
    async with serve_receiver() as receiver, serve_sandbox(config) as sb:
        body = _create(receiver)
        del body["webhook_secret"]
        task_id = await sb.create(body)
        await _settled(sb, task_id, 2)
    assert [r.reason for r in receiver.got] == ["signature_mismatch"] * 2
    verifier = Verifier([default], [Scheme.MUSICAPI], tolerance_s=300, clock=_WallClock())
    for got in receiver.got:
        verifier.verify(got.headers, got.body)


class _WallClock(FakeClock):
    def __init__(self) -> None:
        super().__init__(time.time())


async def test_redelivery_after_a_500_keeps_the_id() -> None:
    async with serve_receiver(statuses=[500]) as receiver, serve_sandbox(_config()) as sb:
        task_id = await sb.create(_create(receiver))
        await _settled(sb, task_id, 2)
        log = await sb.deliveries(task_id=task_id, event=STREAMING)
    assert [(r["attempt"], r["outcome"], r["status"]) for r in log] == [
        (1, "failed", 500), (2, "answered", 200),
    ]
    streaming = [r for r in receiver.got if r.headers["x-webhook-event"] == STREAMING]
    assert len(streaming) == 2
    assert len({r.headers["x-webhook-id"] for r in streaming}) == 1
    assert streaming[0].body == streaming[1].body
    assert sorted(receiver.events()) == sorted([STREAMING, STREAMING, COMPLETED])


async def test_delivery_gives_up_after_the_attempts() -> None:
    async with serve_receiver(statuses=[503] * 10) as receiver, serve_sandbox(_config()) as sb:
        task_id = await sb.create(_create(receiver))
        await _settled(sb, task_id, 2)
        log = await sb.deliveries(task_id=task_id)
    assert len(receiver.got) == 6  # two events, three attempts each
    assert sorted(r["outcome"] for r in log) == ["failed"] * 4 + ["gave_up"] * 2


async def test_an_unreachable_receiver_is_retried_then_given_up() -> None:
    async with serve_receiver() as gone:
        pass  # its port is closed now
    async with serve_sandbox(_config()) as sb:
        task_id = await sb.create(_create(gone))
        await _settled(sb, task_id, 2)
        log = await sb.deliveries(task_id=task_id)
    assert len(log) == 6
    assert all(r["error"].startswith("ConnectError") for r in log)


async def test_duplicate_deliveries_repeat_the_same_id() -> None:
    async with serve_receiver() as receiver, serve_sandbox(_config(duplicate=1.0)) as sb:
        task_id = await sb.create(_create(receiver))
        await _settled(sb, task_id, 4)
    assert receiver.events() == [STREAMING, STREAMING, COMPLETED, COMPLETED]
    ids = [r.headers["x-webhook-id"] for r in receiver.got]
    assert ids[0] == ids[1] != ids[2] == ids[3]
    assert all(r.verified for r in receiver.got)


async def test_out_of_order_sends_completed_before_streaming() -> None:
    async with serve_receiver() as receiver, serve_sandbox(_config(reorder=1.0)) as sb:
        task_id = await sb.create(_create(receiver))
        await _settled(sb, task_id, 2)
    assert receiver.events() == [COMPLETED, STREAMING]


async def test_dropping_exactly_the_first_tasks_completed_event() -> None:
    drop = EventDrop(task=1, event=WebhookEvent.COMPLETED)
    async with serve_receiver() as receiver, serve_sandbox(_config(drop_events=(drop,))) as sb:
        first = await sb.create(_create(receiver))
        await _settled(sb, first, 2)
        second = await sb.create(_create(receiver))
        await _settled(sb, second, 2)
        dropped = await sb.deliveries(outcome="dropped")
        # The dropped event's task finished all the same: polling finds it.
        assert {c["state"] for c in (await sb.music(first))["data"]} == {"succeeded"}
    by_task = [(json.loads(r.body)["task_id"], r.headers["x-webhook-event"]) for r in receiver.got]
    assert by_task == [(first, STREAMING), (second, STREAMING), (second, COMPLETED)]
    assert [(r["task_id"], r["event"]) for r in dropped] == [(first, COMPLETED)]


async def test_dropping_every_delivery() -> None:
    """With every delivery dropped, the sandbox settles both as dropped; the receiver gets none."""
    async with serve_receiver() as receiver, serve_sandbox(_config(drop=1.0)) as sb:
        task_id = await sb.create(_create(receiver))
        await _settled(sb, task_id, 2)
    assert receiver.got == []


async def test_bad_signatures_fail_verification_on_every_attempt() -> None:
    async with serve_receiver() as receiver, serve_sandbox(_config(bad_signature=1.0)) as sb:
        task_id = await sb.create(_create(receiver))
        await _settled(sb, task_id, 2)
        log = await sb.deliveries(task_id=task_id)
    assert len(receiver.got) == 6
    assert {r.reason for r in receiver.got} == {"signature_mismatch"}
    assert {r["signature"] for r in log} == {"invalid"}
    assert {r["status"] for r in log} == {401}


async def test_faults_set_at_runtime_for_one_key_only() -> None:
    config = SandboxConfig(api_keys={KEY: 100, "other": 100}, speed=Speed.INSTANT)
    async with serve_receiver() as receiver, serve_sandbox(config) as sb:
        await sb.set_faults({"drop": 1.0}, key="other")
        dropped = await sb.create(_create(receiver), key="other")
        kept = await sb.create(_create(receiver))
        await _settled(sb, dropped, 2)
        await _settled(sb, kept, 2)
        faults = (await sb.http.get("/_sandbox/faults")).json()
    assert {json.loads(r.body)["task_id"] for r in receiver.got} == {kept}
    assert faults["keys"]["other"]["drop"] == 1.0
    assert faults["global"]["drop"] == 0.0


async def test_spellings_of_states_reach_webhooks_and_get_music_for_one_key_only() -> None:
    config = SandboxConfig(api_keys={KEY: 100, "other": 100}, speed=Speed.INSTANT)
    async with serve_receiver() as receiver, serve_sandbox(config) as sb:
        spelled = {"running": "streaming", "succeeded": "completed"}
        await sb.set_faults({"spellings": spelled}, key="other")
        odd = await sb.create(_create(receiver), key="other")
        plain = await sb.create(_create(receiver))
        await _settled(sb, odd, 2)
        await _settled(sb, plain, 2)
        polled = {t: await sb.music(t, key) for t, key in ((odd, "other"), (plain, KEY))}
        faults = (await sb.http.get("/_sandbox/faults")).json()
    bodies = [(json.loads(r.body), r.headers["x-webhook-event"]) for r in receiver.got]
    sent = {(body["task_id"], event): {c["state"] for c in body["data"]} for body, event in bodies}
    assert sent == {(odd, STREAMING): {"streaming"}, (odd, COMPLETED): {"completed"},
                    (plain, STREAMING): {"running"}, (plain, COMPLETED): {"succeeded"}}
    assert {c["state"] for c in polled[odd]["data"]} == {"completed"}
    assert {c["state"] for c in polled[plain]["data"]} == {"succeeded"}
    assert faults["keys"]["other"]["spellings"] == spelled


async def test_put_faults_takes_what_get_answers_and_the_command_line_takes() -> None:
    """One shape for the whole fault setup: GET's answer PUT back is accepted unchanged, a
    ``{"global": ...}`` as ``--faults`` takes it is the new setup, and a bare fault config, a
    ``?key=`` or another seed is refused saying what the shape is."""
    async with serve_sandbox(_config(drop=0.5)) as sb:
        before = (await sb.http.get("/_sandbox/faults")).json()
        again = await sb.http.put("/_sandbox/faults", json=before)
        setup = {"global": {"duplicate": 1.0}, "keys": {KEY: {"drop": 1.0}}}
        put = await sb.http.put("/_sandbox/faults", json=setup)
        after = (await sb.http.get("/_sandbox/faults")).json()
        bare = await sb.http.put("/_sandbox/faults", json={"drop": 1.0})
        keyed = await sb.http.put("/_sandbox/faults", params={"key": KEY}, json={"drop": 1.0})
        seeded = await sb.http.put("/_sandbox/faults", json={**setup, "seed": 99})
        unchanged = (await sb.http.get("/_sandbox/faults")).json()
    assert (again.status_code, again.json()) == (200, before)
    assert before["global"]["drop"] == 0.5
    assert put.status_code == 200
    assert put.json() == after
    assert (after["global"]["duplicate"], after["global"]["drop"]) == (1.0, 0.0)
    assert after["keys"][KEY]["drop"] == 1.0
    for refused in (bare, keyed, seeded):
        assert refused.status_code == 400, refused.text
    assert '{"global": {...}, "keys": {"KEY": {...}}}' in bare.json()["message"]
    assert "drop" in bare.json()["message"]
    assert "?key" in keyed.json()["message"]
    assert "--seed" in seeded.json()["message"]
    assert unchanged == after


@pytest.mark.parametrize(
    "spellings", [{"done": "completed"}, {"succeeded": ""}, {"failed": 1}, ["succeeded"]]
)
async def test_a_spelling_of_no_state_or_of_nothing_is_refused(spellings: object) -> None:
    async with serve_sandbox(_config()) as sb:
        response = await sb.http.put("/_sandbox/faults",
                                     json={"keys": {KEY: {"spellings": spellings}}})
    assert response.status_code == 400, response.text
    assert "spellings" in response.json()["message"]


async def test_delays_are_taken_on_the_clock() -> None:
    clock = FakeClock(time.time())
    config = SandboxConfig(
        api_keys={KEY: 100}, speed=Speed.INSTANT, faults=FaultConfig(delay_s=30.0)
    )
    async with serve_receiver() as receiver, serve_sandbox(config, clock=clock) as sb:
        created_at = clock.now()
        task_id = await sb.create(_create(receiver))
        await _settled(sb, task_id, 2)
        log = await sb.deliveries(task_id=task_id)
    assert all(r["at"] >= created_at + 30 for r in log)
    assert len(receiver.got) == 2


async def test_shutdown_cancels_pending_deliveries() -> None:
    """Runners belong to the app's lifespan: closing the app ends them, nothing is sent."""
    config = SandboxConfig(api_keys={KEY: 100}, speed=Speed.REALISTIC)
    async with serve_receiver() as receiver:
        async with serve_sandbox(config) as sb:
            await sb.create(_create(receiver))
            webhooks = sb.sandbox.webhooks
            assert webhooks.busy == 1
            started = time.monotonic()
        assert time.monotonic() - started < 2
        assert webhooks.busy == 0
    assert receiver.got == []
