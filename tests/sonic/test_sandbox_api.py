"""The sandbox's API over real HTTP on loopback: rules, credits, schedule, uploads, seeding."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.clock import FakeClock
from receiver.server import running
from receiver.sonic.contract import Message, OwnMessage
from receiver.sonic.sandbox import FaultConfig, SandboxConfig, Speed
from receiver.sonic.sandbox.media import click_track
from tests.sonic.support import KEY, OK_CUSTOM, RULES, read_wav, serve_sandbox

pytestmark = pytest.mark.anyio

CREATE = "/api/v1/sonic/create"


async def test_rule_table_against_the_sandbox() -> None:
    """Every row over HTTP: the seed's message with a 400, or acceptance for valid rows."""
    async with serve_sandbox() as sb:
        wrong: list[str] = []
        for rule in RULES:
            response = await sb.post(CREATE, rule.body)
            if rule.message is None:
                ok = response.status_code == 200 and "task_id" in response.json()
            else:
                ok = response.status_code == 400 and response.json()["message"] == rule.message
            if not ok:
                wrong.append(f"{rule.name}: {response.status_code} {response.text[:80]}")
    assert wrong == []


async def test_malformed_requests() -> None:
    """Without the Bearer key a create is 401; a body that is not JSON or has an ill-typed
    field is 400 with the service's message."""
    async with serve_sandbox() as sb:
        no_auth = await sb.http.post(CREATE, json=OK_CUSTOM)
        assert no_auth.status_code == 401
        assert no_auth.json()["message"] == OwnMessage.UNAUTHORIZED
        basic_auth = {"Authorization": f"Basic {KEY}"}
        basic = await sb.http.post(CREATE, json=OK_CUSTOM, headers=basic_auth)
        assert basic.status_code == 401
        not_json = await sb.http.post(CREATE, content=b"{", headers=sb.headers())
        assert not_json.status_code == 400
        assert not_json.json()["message"] == OwnMessage.BODY_INVALID
        wrong_type = await sb.post(CREATE, {**OK_CUSTOM, "mv": 4})
        assert (wrong_type.status_code, wrong_type.json()["message"]) == (400, Message.MV_INVALID)


async def test_credits_are_15_per_generating_task_and_2_per_concat_then_403() -> None:
    config = SandboxConfig(api_keys={KEY: 34}, speed=Speed.INSTANT)
    async with serve_sandbox(config) as sb:
        task_id = await sb.create(OK_CUSTOM)
        assert await sb.balance() == 19
        clip_id = (await sb.music(task_id))["data"][0]["clip_id"]
        await sb.create({"task_type": "concat_music", "continue_clip_id": clip_id})
        assert await sb.balance() == 17
        await sb.create({**OK_CUSTOM, "task_type": "cover_music", "continue_clip_id": clip_id})
        assert await sb.balance() == 2
        short = await sb.post(CREATE, OK_CUSTOM)
        assert short.status_code == 403
        assert short.json()["message"] == Message.INSUFFICIENT_CREDITS
        assert short.json()["message"].startswith("The remaining credits are not enough")
        await sb.create({"task_type": "concat_music", "continue_clip_id": clip_id})
        assert await sb.balance() == 0
        assert (await sb.post(CREATE, {"task_type": "concat_music", "continue_clip_id": clip_id})
                ).status_code == 403
        assert await sb.balance() == 0  # a refusal charges nothing


async def test_a_failed_task_is_refunded_when_it_fails() -> None:
    """Charged on acceptance; the credits come back when the task settles as failed."""
    clock = FakeClock()
    config = SandboxConfig(
        api_keys={KEY: 100, "lucky": 100},
        speed=Speed.DEMO,
        key_faults={KEY: FaultConfig(fail_tasks=1.0)},
    )
    async with serve_sandbox(config, clock=clock) as sb:
        failing = await sb.create(OK_CUSTOM)
        succeeding = await sb.create(OK_CUSTOM, key="lucky")
        assert (await sb.balance(), await sb.balance("lucky")) == (85, 85)
        assert {c["state"] for c in (await sb.music(failing))["data"]} == {"pending"}
        clock.advance(10)
        failed = (await sb.music(failing))["data"]
        assert {c["state"] for c in failed} == {"failed"}
        assert all(c["audio_url"] == "" and c["duration"] is None for c in failed)
        assert {c["state"] for c in (await sb.music(succeeding, key="lucky"))["data"]} == {
            "succeeded"
        }
        assert (await sb.balance(), await sb.balance("lucky")) == (100, 85)


async def test_tasks_move_pending_running_succeeded_on_the_clock() -> None:
    clock = FakeClock()
    config = SandboxConfig(api_keys={KEY: 100}, speed=Speed.DEMO)
    async with serve_sandbox(config, clock=clock) as sb:
        task_id = await sb.create(OK_CUSTOM)
        plan = (await sb.http.get(f"/_sandbox/tasks/{task_id}")).json()
        assert plan["created_at"] < plan["running_at"] < plan["settled_at"]
        assert plan["settled_at"] - plan["created_at"] <= 4.0  # demo: within a few seconds

        pending = (await sb.music(task_id))["data"]
        assert [c["state"] for c in pending] == ["pending", "pending"]
        assert all(c["audio_url"] == "" for c in pending)
        # A clip's media is not there before its time.
        clip_id = pending[0]["clip_id"]
        assert (await sb.http.get(f"/media/stream/{clip_id}.wav")).status_code == 404

        clock.set(plan["running_at"])
        running_clips = (await sb.music(task_id))["data"]
        assert [c["state"] for c in running_clips] == ["running", "running"]
        stream_url = running_clips[0]["audio_url"]
        assert "/media/stream/" in stream_url
        streamed = await sb.http.get(stream_url)
        assert streamed.status_code == 200
        assert "content-length" not in streamed.headers
        assert (await sb.http.get(f"/media/audio/{clip_id}.wav")).status_code == 404

        clock.set(plan["settled_at"])
        done = (await sb.music(task_id))["data"]
        assert [c["state"] for c in done] == ["succeeded", "succeeded"]
        final = await sb.http.get(done[0]["audio_url"])
        assert final.content == streamed.content  # the stream was the song as it came


async def test_an_extension_is_new_material_and_concat_is_the_whole_song() -> None:
    """extend: only the new part, on the source's beat grid; concat: the source up to
    continue_at, then the extension, as real samples with the summed duration."""
    async with serve_sandbox() as sb:
        source = (await sb.music(await sb.create({**OK_CUSTOM, "mv": "sonic-v4"})))["data"][0]
        extend = {**OK_CUSTOM, "task_type": "extend_music", "continue_clip_id": source["clip_id"],
                  "continue_at": 12.5}
        extensions = (await sb.music(await sb.create(extend)))["data"]
        for clip in extensions:
            assert 20 <= float(clip["duration"]) <= 60  # new parts are 20..60 s
            assert clip["mv"] == "sonic-v4-5"
        bpm = [
            (await sb.post("/api/v1/sonic/bpm", {"clip_id": c})).json()["data"]["avg_bpm"]
            for c in (source["clip_id"], extensions[0]["clip_id"])
        ]
        assert bpm[0] == bpm[1]

        concat = {"task_type": "concat_music", "continue_clip_id": extensions[0]["clip_id"]}
        merged = (await sb.music(await sb.create(concat)))["data"]
        assert len(merged) == 1
        assert float(merged[0]["duration"]) == pytest.approx(
            12.5 + float(extensions[0]["duration"]))
        assert merged[0]["mv"] == "sonic-v4-5"  # concat sent no mv: it is the source's
        _, _, rate, song = read_wav((await sb.http.get(merged[0]["audio_url"])).content)
        assert len(song) / rate == pytest.approx(float(merged[0]["duration"]))
        _, _, _, head = read_wav((await sb.http.get(source["audio_url"])).content)
        _, _, _, tail = read_wav((await sb.http.get(extensions[0]["audio_url"])).content)
        cut = int(12.5 * rate)
        assert song[:cut] == head[:cut]  # the source's own samples up to continue_at
        assert song[cut:] == tail  # then the extension's, whole

        beyond = {**extend, "continue_at": float(source["duration"]) + 1}
        refused = await sb.post(CREATE, beyond)
        assert refused.json()["message"] == OwnMessage.CONTINUE_AT_BEYOND_END


async def test_an_extension_of_an_extension_concats_the_three_parts() -> None:
    async with serve_sandbox() as sb:
        first = (await sb.music(await sb.create({**OK_CUSTOM, "mv": "sonic-v4"})))["data"][0]
        second = (await sb.music(await sb.create({
            **OK_CUSTOM, "task_type": "extend_music", "continue_clip_id": first["clip_id"],
            "continue_at": 10})))["data"][0]
        third = (await sb.music(await sb.create({
            **OK_CUSTOM, "task_type": "extend_music", "continue_clip_id": second["clip_id"],
            "continue_at": 5})))["data"][0]
        merged = (await sb.music(await sb.create(
            {"task_type": "concat_music", "continue_clip_id": third["clip_id"]})))["data"][0]
        assert float(merged["duration"]) == pytest.approx(10 + 5 + float(third["duration"]))


async def test_a_cover_keeps_its_source_length() -> None:
    async with serve_sandbox() as sb:
        source = (await sb.music(await sb.create({**OK_CUSTOM, "mv": "sonic-v4"})))["data"][0]
        covers = (await sb.music(await sb.create({
            **OK_CUSTOM, "task_type": "cover_music",
            "continue_clip_id": source["clip_id"]})))["data"]
        for cover in covers:
            assert float(cover["duration"]) == float(source["duration"])
            _, _, rate, samples = read_wav((await sb.http.get(cover["audio_url"])).content)
            assert len(samples) / rate == pytest.approx(float(source["duration"]))


@asynccontextmanager
async def file_server() -> AsyncIterator[str]:
    """Loopback files with chosen content types, for upload-music to fetch."""
    wav = click_track(300, 120.0, 8000)
    files = {
        "/song.wav": (wav, "audio/wav"),
        "/octet.wav": (wav, "application/octet-stream"),  # audio by its RIFF magic
        "/tagged.mp3": (b"ID3\x04\x00" + bytes(200), "application/octet-stream"),
        "/frame.mp3": (b"\xff\xfb\x90\x64" + bytes(200), "binary/octet-stream"),
        "/page.html": (b"<html>not audio</html>", "text/html"),
    }

    async def serve(request: Request) -> Response:
        found = files.get(request.url.path)
        if found is None:
            return Response(status_code=404)
        return Response(found[0], media_type=found[1])

    app = Starlette(routes=[Route("/{name:path}", serve)])
    async with running(app) as url:
        yield url


async def test_upload_music_takes_loopback_audio_only() -> None:
    async with serve_sandbox() as sb, file_server() as files:
        upload = "/api/v1/sonic/upload"
        for name in ("song.wav", "octet.wav", "tagged.mp3", "frame.mp3"):
            answer = await sb.post(upload, {"url": f"{files}/{name}"})
            assert answer.status_code == 200, (name, answer.text)
            assert answer.json()["clip_id"]
            assert answer.json()["code"] == 200
        for url, message in [
            (f"{files}/page.html", OwnMessage.URL_NOT_AUDIO),
            (f"{files}/missing.wav", OwnMessage.URL_NOT_FETCHED),
            ("http://192.0.2.1/song.wav", OwnMessage.URL_NOT_ALLOWED),
            ("http://example.com/song.wav", OwnMessage.URL_NOT_ALLOWED),
            ("file:///etc/passwd", OwnMessage.URL_NOT_ALLOWED),
            ("", OwnMessage.URL_REQUIRED),
        ]:
            answer = await sb.post(upload, {"url": url})
            assert (answer.status_code, answer.json()["message"]) == (400, message), url

        clip_id = (await sb.post(upload, {"url": f"{files}/song.wav"})).json()["clip_id"]
        served = await sb.http.get(f"/media/audio/{clip_id}.wav")
        assert served.content == click_track(300, 120.0, 8000)
        extend = {**OK_CUSTOM, "continue_clip_id": clip_id, "continue_at": 1.0}
        refused = await sb.post(CREATE, {**extend, "task_type": "extend_music"})
        assert refused.json()["message"] == OwnMessage.UPLOAD_NEEDS_UPLOAD_TYPE
        cover = await sb.post(CREATE, {**extend, "task_type": "cover_music"})
        assert cover.json()["message"] == OwnMessage.UPLOAD_NEEDS_UPLOAD_TYPE
        for task_type in ("extend_upload_music", "cover_upload_music"):
            await sb.create({**extend, "task_type": task_type})
        one_stop = await sb.post(
            "/api/v1/sonic/upload-extend", {**OK_CUSTOM, "url": f"{files}/song.wav",
                                            "continue_at": 2.0}
        )
        clips = (await sb.music(one_stop.json()["task_id"]))["data"]
        assert [float(c["duration"]) > 2 for c in clips] == [True, True]


async def test_persona_bpm_and_vox_answer_in_the_documented_shapes() -> None:
    async with serve_sandbox() as sb:
        clip_id = (await sb.music(await sb.create(OK_CUSTOM)))["data"][0]["clip_id"]
        persona = await sb.post(
            "/api/v1/sonic/persona",
            {"name": "Ann", "description": "x", "continue_clip_id": clip_id},
        )
        assert persona.json()["code"] == 200
        assert persona.json()["persona_id"]
        unknown = await sb.post(CREATE, {**OK_CUSTOM, "task_type": "persona_music",
                                         "persona_id": "nobody"})
        assert unknown.json()["message"] == OwnMessage.PERSONA_ID_INVALID
        await sb.create({**OK_CUSTOM, "task_type": "persona_music",
                         "persona_id": persona.json()["persona_id"]})

        bpm = (await sb.post("/api/v1/sonic/bpm", {"clip_id": clip_id})).json()
        assert bpm["code"] == 200
        assert set(bpm["data"]) == {"avg_bpm", "max_bpm", "min_bpm"}
        missing = await sb.post("/api/v1/sonic/bpm", {"clip_id": "nope"})
        assert (missing.status_code, missing.json()["message"]) == (404, OwnMessage.CLIP_NOT_FOUND)

        vox = (await sb.post("/api/v1/sonic/vox", {"clip_id": clip_id, "vocal_start_s": 2,
                                                   "vocal_end_s": 5.5})).json()
        assert vox["code"] == 200
        for stem in ("vocal_url", "instrumental_url"):
            stem_audio = await sb.http.get(vox["data"][stem])
            channels, width, rate, samples = read_wav(stem_audio.content)
            assert (channels, width, len(samples) / rate) == (1, 2, 3.5)


async def test_tasks_are_private_to_their_key() -> None:
    config = SandboxConfig(api_keys={KEY: 100, "other": 100}, speed=Speed.INSTANT)
    async with serve_sandbox(config) as sb:
        task_id = await sb.create(OK_CUSTOM)
        answer = await sb.http.get(f"/api/v1/sonic/task/{task_id}", headers=sb.headers("other"))
        assert (answer.status_code, answer.json()["message"]) == (404, Message.TASK_NOT_FOUND)


async def test_bulk_seeded_tasks_are_settled_free_and_silent() -> None:
    async with serve_sandbox() as sb:
        started = time.monotonic()
        ids = (await sb.http.post("/_sandbox/seed", json={"count": 2_000})).json()["task_ids"]
        failed = (await sb.http.post("/_sandbox/seed", json={"count": 10, "state": "failed"})
                  ).json()["task_ids"]
        assert len(set(ids)) == 2_000
        for task_id in ids[::100]:
            assert [c["state"] for c in (await sb.music(task_id))["data"]] == ["succeeded"] * 2
        assert {c["state"] for c in (await sb.music(failed[0]))["data"]} == {"failed"}
        assert await sb.balance() == 10_000
        assert await sb.deliveries() == []
        assert time.monotonic() - started < 10


async def test_the_same_seed_makes_the_same_run() -> None:
    async def run(seed: int) -> list[object]:
        config = SandboxConfig(api_keys={KEY: 100}, speed=Speed.INSTANT, seed=seed)
        async with serve_sandbox(config) as sb:
            data = (await sb.music(await sb.create(OK_CUSTOM)))["data"]
            return [(c["clip_id"], c["duration"], c["title"]) for c in data]

    assert await run(7) == await run(7)
    assert await run(7) != await run(8)


async def test_the_sandbox_logs_events() -> None:
    """A create logs its charge and the created task (type and ordinal) as events."""
    async with serve_sandbox() as sb:
        with structlog.testing.capture_logs() as logs:
            await sb.create(OK_CUSTOM)
            await sb.post(CREATE, {"mv": "bad"})
    events = [entry["event"] for entry in logs]
    assert "credits_charged" in events
    assert "task_created" in events
    created = next(e for e in logs if e["event"] == "task_created")
    assert created["task_type"] == "create_music"
    assert created["ordinal"] == 1
