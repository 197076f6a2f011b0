"""The client: refusals before sending, error mapping, retries, and every call against the
sandbox over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import httpx
import pytest
import stamina
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from receiver.errors import PayloadError, SettingsError
from receiver.providers.wire import MAX_ANSWER_BYTES
from receiver.server import running
from receiver.sonic.client import RetryPolicy, SonicClient
from receiver.sonic.contract import (
    ClipState,
    CreateRequest,
    Message,
    Model,
    OwnMessage,
    TaskType,
)
from receiver.sonic.errors import (
    CreateOutcomeUnknown,
    InsufficientCredits,
    SonicAuthError,
    SonicProtocolError,
    SonicRequestError,
    SonicUnavailable,
    SonicValidationError,
    TaskNotFound,
)
from receiver.sonic.sandbox import SandboxConfig, Speed
from tests.sonic.support import KEY, RULES, Rule, serve_sandbox
from tests.support import http_client

pytestmark = pytest.mark.anyio

CREATE = CreateRequest(mv=Model.SONIC_V4_5, custom_mode=True, prompt="[Verse] la")


# --- refused before sending -------------------------------------------------------------------


@asynccontextmanager
async def recording_client() -> AsyncIterator[tuple[SonicClient, list[httpx.Request]]]:
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"message": "success", "task_id": "t-1"})

    # This MockTransport only records what reaches it: it is here to prove that a request the
    # contract refuses is never sent (no peer could show the absence of a request).
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        yield SonicClient("http://sonic.invalid", "k", http=http), calls


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
async def test_rule_table_against_the_client(rule: Rule) -> None:
    """An invalid create raises the seed's message and sends nothing; a valid one is sent."""
    request = CreateRequest.from_json(rule.body)
    async with recording_client() as (client, calls):
        if rule.message is None:
            created = await client.create(request)
            assert created.task_id == "t-1"
            assert [json.loads(c.content) for c in calls] == [request.to_json()]
            return
        with pytest.raises(SonicValidationError) as caught:
            await client.create(request)
    assert caught.value.message == rule.message
    assert caught.value.sent is False
    assert calls == []


async def test_typed_calls_refuse_before_sending() -> None:
    async with recording_client() as (client, calls):
        cases = [
            (client.extend_music("", continue_at=1, mv="sonic-v4", custom_mode=True),
             Message.CONTINUE_CLIP_ID_REQUIRED),
            (client.cover_music("c", mv="sonic-v4", custom_mode=True, audio_weight=2),
             Message.AUDIO_WEIGHT_RANGE),
            (client.concat_music(""), Message.CONTINUE_CLIP_ID_REQUIRED),
            (client.persona_music("", mv="sonic-v5", custom_mode=True),
             Message.PERSONA_ID_REQUIRED),
            (client.create_music(mv="sonic-v4", custom_mode=True, tags="t" * 201),
             Message.TAGS_TOO_LONG),
            (client.upload_extend_music("", continue_at=1, mv="sonic-v4", custom_mode=True),
             OwnMessage.URL_REQUIRED),
            (client.upload_cover_music("http://127.0.0.1/a.wav", mv="nope", custom_mode=True),
             Message.MV_INVALID),
            (client.create_persona("", name="A"), Message.CONTINUE_CLIP_ID_REQUIRED),
            (client.upload_music(""), OwnMessage.URL_REQUIRED),
            (client.get_bpm(""), OwnMessage.CLIP_ID_REQUIRED),
            (client.get_vox("c", 5, 1), OwnMessage.VOX_RANGE_INVALID),
        ]
        for call, message in cases:
            with pytest.raises(SonicValidationError) as caught:
                await call
            assert caught.value.message == message
        request = CreateRequest(
            task_type=TaskType.EXTEND_MUSIC, continue_clip_id="up", continue_at=1,
            mv="sonic-v4", custom_mode=True,
        )
        with pytest.raises(SonicValidationError) as caught:
            await client.create(request, source_is_upload=True)
        assert caught.value.message == OwnMessage.UPLOAD_NEEDS_UPLOAD_TYPE
    assert calls == []


# --- answers from a peer that misbehaves on cue -----------------------------------------------


# A scripted answer: (status, JSON body), or "ok", "text" (not JSON), "hang", "drip" (a 200
# whose body comes a byte at a time and never ends) or "huge" (a 200 past the answer bound).
Step = str | tuple[int, dict[str, Any]]


@dataclass
class Peer:
    """A loopback server answering each request with the next scripted answer; ``"hang"``
    holds the request until the test ends (a read timeout for the client)."""

    script: deque[Step] = field(default_factory=deque)
    hits: int = 0
    url: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def answer(self, request: Request) -> Response:
        self.hits += 1
        step: Step = self.script.popleft() if self.script else "ok"
        if step == "hang":
            await self.release.wait()
            return Response(status_code=599)
        if step == "ok":
            if request.method == "GET":
                return JSONResponse({"code": 200, "message": "success", "data": []})
            return JSONResponse({"message": "success", "task_id": "t-9"})
        if step == "text":
            return Response("<html>ok</html>", media_type="text/html")
        if step == "drip":
            return StreamingResponse(self._drip(), media_type="application/json")
        if step == "huge":
            return StreamingResponse(_huge(), media_type="application/json")
        assert isinstance(step, tuple)
        status, body = step
        return JSONResponse(body, status_code=status)


    async def _drip(self) -> AsyncIterator[bytes]:
        yield b'{"data": ['
        while not self.release.is_set():  # each byte well within httpx's read timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 0.05)
            yield b" "


async def _huge() -> AsyncIterator[bytes]:
    yield b'{"data": ['
    for _ in range(MAX_ANSWER_BYTES // (1024 * 1024) + 4):
        yield b" " * (1024 * 1024)


@asynccontextmanager
async def peer_client(
    *script: Step, http_timeout: float = 5.0, attempts: int = 3, timeout_s: float = 30.0,
) -> AsyncIterator[tuple[SonicClient, Peer]]:
    peer = Peer(script=deque(script))
    app = Starlette(routes=[Route("/{path:path}", peer.answer, methods=["GET", "POST"])])
    async with running(app) as url:
        peer.url = url
        try:
            async with http_client(timeout=http_timeout) as http:
                retry = replace(RetryPolicy.without_waits(attempts), timeout_s=timeout_s)
                yield SonicClient(url, "k", http=http, retry=retry), peer
        finally:
            peer.release.set()


async def test_reads_are_retried_through_5xx_and_504() -> None:
    async with peer_client((500, {"message": "boom"}), (504, {"message": "timeout"})) as (
        client, peer,
    ):
        music = await client.get_music("t-1")
    assert music.clips == ()
    assert peer.hits == 3


async def test_reads_give_up_with_sonic_unavailable_after_the_attempts() -> None:
    script = [(503, {"message": "busy"})] * 5
    async with peer_client(*script, attempts=3) as (client, peer):
        with pytest.raises(SonicUnavailable) as caught:
            await client.get_music("t-1")
    assert peer.hits == 3
    assert "503" in caught.value.message


async def test_a_read_timeout_on_a_read_is_retried() -> None:
    async with peer_client("hang", http_timeout=0.2) as (client, peer):
        await client.get_music("t-1")
    assert peer.hits == 2


@pytest.mark.parametrize(
    "failure", [(500, {"message": "internal"}), (504, {"message": "gateway timeout"}), "hang"]
)
async def test_a_create_that_may_have_landed_is_not_resent(failure: Step) -> None:
    """After the request went out (5xx, 504, read timeout), the client raises
    CreateOutcomeUnknown with the request instead of creating a second task."""
    async with peer_client(failure, http_timeout=0.2) as (client, peer):
        with pytest.raises(CreateOutcomeUnknown) as caught:
            await client.create(CREATE)
    assert peer.hits == 1
    assert caught.value.request == CREATE
    assert caught.value.endpoint == "/api/v1/sonic/create"
    assert not isinstance(caught.value, SonicUnavailable)


async def test_a_429_is_retried_even_for_a_create() -> None:
    """A 429 accepted nothing, so a create may be sent again."""
    async with peer_client((429, {"message": "slow down"})) as (client, peer):
        created = await client.create(CREATE)
    assert created.task_id == "t-9"
    assert peer.hits == 2


async def test_one_stop_and_persona_creates_are_not_resent_either() -> None:
    async with peer_client((502, {"message": "bad gateway"}), (500, {"message": "x"})) as (
        client, peer,
    ):
        with pytest.raises(CreateOutcomeUnknown):
            await client.upload_cover_music(
                "http://127.0.0.1/a.wav", mv="sonic-v4", custom_mode=True
            )
        with pytest.raises(CreateOutcomeUnknown):
            await client.create_persona("c", name="A")
    assert peer.hits == 2


class FailFirstConnect(httpx.AsyncBaseTransport):
    """Fails the first connection attempt (nothing sent), then uses a real transport."""

    def __init__(self) -> None:
        self.failed = 0
        self._real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.failed:
            self.failed += 1
            raise httpx.ConnectError("connection refused", request=request)
        return await self._real.handle_async_request(request)

    async def aclose(self) -> None:
        await self._real.aclose()


async def test_a_create_that_could_not_connect_is_retried() -> None:
    async with serve_sandbox() as sb:
        transport = FailFirstConnect()
        async with httpx.AsyncClient(transport=transport) as http:
            client = SonicClient(sb.url, KEY, http=http, retry=RetryPolicy.without_waits())
            created = await client.create(CREATE)
        assert transport.failed == 1
        assert (await sb.music(created.task_id))["data"]
        assert await sb.balance() == 10_000 - 15  # one task, charged once


async def test_nothing_listening_is_sonic_unavailable() -> None:
    async with http_client() as http:
        client = SonicClient(_closed_port_url(), "k", http=http, retry=RetryPolicy.without_waits(2))
        with pytest.raises(SonicUnavailable):
            await client.get_music("t-1")
        with pytest.raises(SonicUnavailable):
            await client.create(CREATE)  # nothing was sent: not an unknown outcome


def _closed_port_url() -> str:
    """A loopback URL whose port was free a moment ago: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_stamina_testing_mode_removes_the_default_waits() -> None:
    """With the default policy (real backoff), stamina's testing mode keeps tests fast."""
    script = [(500, {"message": "x"})] * 3
    with stamina.set_testing(True, attempts=3):
        async with peer_client(*script) as (_client, peer), http_client() as http:
            default = SonicClient(peer.url, "k", http=http)  # default RetryPolicy
            with pytest.raises(SonicUnavailable):
                await default.get_music("t-1")
    assert peer.hits == 3


@pytest.mark.parametrize(
    ("answer", "kind", "message"),
    [
        ((200, {"code": 404, "message": "task not found."}), TaskNotFound, "task not found."),
        ((400, {"message": "task not found."}), TaskNotFound, "task not found."),
        ((400, {"error": "something is off"}), SonicValidationError, "something is off"),
        ((403, {"message": "forbidden"}), SonicAuthError, "forbidden"),
        ((402, {"code": 402, "message": "The remaining credits are not enough, top up."}),
         InsufficientCredits, "The remaining credits are not enough, top up."),
        ((409, {"message": "conflict"}), SonicRequestError, "conflict"),
    ],
)
async def test_refusals_are_mapped_by_status_and_text(
    answer: Step, kind: type[Exception], message: str
) -> None:
    async with peer_client(answer) as (client, peer):
        with pytest.raises(SonicRequestError) as caught:
            await client.get_music("t-1")
    assert type(caught.value) is kind
    assert caught.value.message == message
    assert peer.hits == 1  # refusals are final


async def test_a_200_whose_body_says_500_is_data_not_an_outage() -> None:
    answer = (200, {"code": 500, "message": "generation failed", "data": []})
    async with peer_client(answer) as (client, peer):
        music = await client.get_music("t-1")
    assert (music.code, music.message, peer.hits) == (500, "generation failed", 1)


async def test_an_answer_that_drips_in_for_ever_ends_at_the_calls_timeout() -> None:
    """httpx's timeouts are per read: a byte now and then never trips them."""
    async with peer_client("drip", "drip", "drip", timeout_s=0.5) as (client, _):
        with anyio.fail_after(10), pytest.raises(SonicUnavailable) as caught:
            await client.get_music("t-1")
    assert "within 0.5s" in caught.value.message


async def test_a_create_whose_answer_drips_in_is_not_resent() -> None:
    async with peer_client("drip", timeout_s=0.5) as (client, peer):
        with anyio.fail_after(10), pytest.raises(CreateOutcomeUnknown):
            await client.create(CREATE)
    assert peer.hits == 1


async def test_an_answer_past_the_bound_is_not_read_to_its_end() -> None:
    async with peer_client("huge") as (client, _):
        with pytest.raises(SonicProtocolError) as caught:
            await client.get_music("t-1")
    assert f"more than {MAX_ANSWER_BYTES} bytes" in caught.value.message


async def test_an_answer_that_is_not_json_is_a_protocol_error() -> None:
    async with peer_client("text") as (client, _):
        with pytest.raises(SonicProtocolError):
            await client.get_music("t-1")


async def test_get_music_reads_its_clips_by_the_rules_a_webhook_is_read_by() -> None:
    """Spellings, camelCase twins, numbers as strings and placeholder URLs, as in a webhook."""
    data = [
        {"clipId": "c1", "status": " Completed", "audioUrl": "https://cdn.example/a.mp3",
         "duration": "104.88", "modelName": "chirp-v5", "brand_new": {"k": [1]}},
        {"clip_id": "c2", "state": "error", "audio_url": "https://cdn.example/None.mp3",
         "image_url": "None", "errorMessage": "nsfw"},
    ]
    async with peer_client((200, {"code": "200", "data": data})) as (client, _):
        music = await client.get_music("t-1")
    first, second = music.clips
    assert (first.clip_id, first.state, first.duration) == ("c1", ClipState.SUCCEEDED, 104.88)
    assert (first.audio_url, first.mv, first.model) == (
        "https://cdn.example/a.mp3", "chirp-v5", Model.SONIC_V5)
    assert first.raw["brand_new"] == {"k": [1]}
    assert (second.state, second.audio_url, second.image_url) == (ClipState.FAILED, None, None)
    assert second.error_message == "nsfw"
    assert (music.code, music.state) == (200, ClipState.FAILED)


@pytest.mark.parametrize(
    ("data", "reason"),
    [([{"state": "succeeded"}], "data[0] has no clip_id"),
     ([{"clip_id": "a"}, {"clipId": "a"}], "data lists the same clip_id twice"),
     ("x", "data is a JSON string, not a list of clips"),
     ([7], "data[0] is a JSON number, not a clip object")],
)
async def test_a_clip_the_reader_cannot_use_is_a_protocol_error(data: object, reason: str) -> None:
    async with peer_client((200, {"code": 200, "data": data})) as (client, _):
        with pytest.raises(SonicProtocolError) as caught:
            await client.get_music("t-1")
    assert caught.value.message == f"get-music answer: {reason}"
    assert isinstance(caught.value.__cause__, PayloadError)


async def test_the_sandboxs_spellings_of_states_read_as_the_documented_states() -> None:
    async with serve_sandbox(SandboxConfig(api_keys={KEY: 100}, speed=Speed.INSTANT)) as sb:
        await sb.set_faults({"spellings": {"succeeded": "success"}})
        client = sb.client()
        created = await client.create_music(mv=Model.SONIC_V5, custom_mode=True, prompt="x")
        music = await client.get_music(created.task_id)
    assert [c.raw["state"] for c in music.clips] == ["success", "success"]
    assert [c.state for c in music.clips] == [ClipState.SUCCEEDED, ClipState.SUCCEEDED]
    assert music.state is ClipState.SUCCEEDED


def test_from_env_reads_the_two_variables() -> None:
    http = http_client()
    client = SonicClient.from_env(
        http, environ={"SONIC_API_BASE_URL": "http://127.0.0.1:1/", "SONIC_API_KEY": "k"}
    )
    assert "127.0.0.1:1" in repr(client)
    assert "k" not in repr(client).replace("127", "")
    with pytest.raises(SettingsError, match="SONIC_API_KEY"):
        SonicClient.from_env(http, environ={"SONIC_API_BASE_URL": "http://x"})


# --- against the sandbox ----------------------------------------------------------------------


async def test_sandbox_refusals_map_to_named_errors() -> None:
    """401, 403 (credits), 404 and a service-side 400, as the sandbox answers them."""
    config = SandboxConfig(api_keys={KEY: 1_000, "poor": 14}, speed=Speed.INSTANT)
    async with serve_sandbox(config) as sb:
        with pytest.raises(SonicAuthError) as auth:
            await sb.client("wrong-key").create(CREATE)
        assert auth.value.status == 401
        with pytest.raises(InsufficientCredits) as credits:
            await sb.client("poor").create(CREATE)
        assert credits.value.status == 403
        assert credits.value.message == Message.INSUFFICIENT_CREDITS
        with pytest.raises(TaskNotFound):
            await sb.client().get_music("no-such-task")
        with pytest.raises(SonicValidationError) as invalid:
            await sb.client().cover_music("no-such-clip", mv="sonic-v4", custom_mode=True)
        assert invalid.value.sent
        assert invalid.value.message == OwnMessage.CONTINUE_CLIP_ID_INVALID


async def test_every_call_against_the_sandbox() -> None:
    """create, poll, upload, one-stop, persona, bpm, vox, extend and concat, typed end to end."""
    async with serve_sandbox() as sb:
        client = sb.client()
        created = await client.create_music(
            mv=Model.SONIC_V5, custom_mode=True, prompt="[Verse] hi", title="Hi"
        )
        music = await client.get_music(created.task_id)
        assert music.state is ClipState.SUCCEEDED
        assert len(music.clips) == 2
        first = music.clips[0]
        assert first.mv == "chirp-v5"
        assert first.model is Model.SONIC_V5
        assert first.title == "Hi"
        assert first.audio_url
        assert first.duration

        upload = await client.upload_music(first.audio_url)
        with pytest.raises(SonicValidationError) as refused:
            await client.extend_music(
                upload.clip_id, continue_at=1, mv="sonic-v4", custom_mode=True
            )
        assert refused.value.sent
        assert refused.value.message == OwnMessage.UPLOAD_NEEDS_UPLOAD_TYPE
        extended = await client.extend_upload_music(
            upload.clip_id, continue_at=2.5, mv="sonic-v4", custom_mode=False
        )
        ext = await client.get_music(extended.task_id)
        assert all(c.duration and c.duration > 2.5 for c in ext.clips)

        one_stop = await client.upload_extend_music(
            first.audio_url, continue_at=1, mv="sonic-v4-5", custom_mode=True
        )
        covered = await client.upload_cover_music(
            first.audio_url, mv="sonic-v4-5", custom_mode=True
        )
        for task_id in (one_stop.task_id, covered.task_id):
            assert (await client.get_music(task_id)).state is ClipState.SUCCEEDED

        persona = await client.create_persona(first.clip_id, name="Ann", description="warm")
        sung = await client.persona_music(persona.persona_id, mv="sonic-v4-5", custom_mode=True)
        assert len((await client.get_music(sung.task_id)).clips) == 2

        bpm = await client.get_bpm(first.clip_id)
        assert 70 <= bpm.avg_bpm <= 160
        assert bpm.min_bpm == bpm.max_bpm == bpm.avg_bpm
        vox = await client.get_vox(first.clip_id, 1.0, 3.0)
        assert vox.vocal_url
        assert vox.instrumental_url

        concat = await client.concat_music(ext.clips[0].clip_id)
        merged = await client.get_music(concat.task_id)
        # the upload up to continue_at, then the extension
        assert ext.clips[0].duration is not None
        assert [c.duration for c in merged.clips] == [pytest.approx(2.5 + ext.clips[0].duration)]
        # create, extend_upload, two one-stops and persona_music at 15; concat at 2; uploads free
        assert await sb.balance() == 10_000 - 15 * 5 - 2


async def test_duration_strings_and_numbers_parse_the_same() -> None:
    """The sandbox answers some durations as decimal strings; the client reads both."""
    async with serve_sandbox() as sb:
        client = sb.client()
        seen_types: set[type] = set()
        for _ in range(6):
            created = await client.create_music(mv="sonic-v4", custom_mode=True)
            for clip in (await client.get_music(created.task_id)).clips:
                raw = clip.raw["duration"]
                seen_types.add(type(raw))
                assert clip.duration == float(raw)
    assert seen_types == {str, float}
