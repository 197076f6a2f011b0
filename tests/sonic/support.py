"""Helpers for the Sonic tests: a sandbox and a webhook receiver served on loopback, the
rule table, and small readers of WAV/PNG bytes."""

from __future__ import annotations

import array
import contextlib
import io
import itertools
import wave
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.clock import Clock, SystemClock
from receiver.errors import VerificationError
from receiver.server import running
from receiver.signatures import Scheme, Verifier
from receiver.sonic.client import RetryPolicy, SonicClient
from receiver.sonic.contract import Message, OwnMessage
from receiver.sonic.sandbox import SandboxConfig, Speed, create_sandbox_app
from receiver.sonic.sandbox.app import Sandbox
from tests.support import http_client
from tests.waiting import wait_until

KEY = "test-key"
SECRET = "whsec-test-secret"


@dataclass
class SandboxHandle:
    url: str
    http: httpx.AsyncClient
    sandbox: Sandbox

    def headers(self, key: str = KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def client(self, key: str = KEY, *, retry: RetryPolicy | None = None) -> SonicClient:
        return SonicClient(
            self.url, key, http=self.http, retry=retry or RetryPolicy.without_waits()
        )

    async def post(self, path: str, body: object, key: str = KEY) -> httpx.Response:
        return await self.http.post(path, json=body, headers=self.headers(key))

    async def create(self, body: Mapping[str, Any], key: str = KEY) -> str:
        response = await self.post("/api/v1/sonic/create", dict(body), key)
        assert response.status_code == 200, response.text
        task_id: str = response.json()["task_id"]
        return task_id

    async def music(self, task_id: str, key: str = KEY) -> dict[str, Any]:
        response = await self.http.get(f"/api/v1/sonic/task/{task_id}", headers=self.headers(key))
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def balance(self, key: str = KEY) -> int:
        keys = (await self.http.get("/_sandbox/keys")).json()["keys"]
        credits: int = keys[key]["credits"]
        return credits

    async def deliveries(self, **query: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = (
            await self.http.get("/_sandbox/deliveries", params=query)
        ).json()["deliveries"]
        return rows

    async def set_faults(self, faults: Mapping[str, Any], key: str | None = None) -> None:
        """Set the global fault config, or ``key``'s: the setup GET answers, changed in that
        one place and PUT back whole (the shape both take)."""
        setup = (await self.http.get("/_sandbox/faults")).json()
        if key:
            setup["keys"][key] = dict(faults)
        else:
            setup["global"] = dict(faults)
        response = await self.http.put("/_sandbox/faults", json=setup)
        assert response.status_code == 200, response.text


@contextlib.asynccontextmanager
async def serve_sandbox(
    config: SandboxConfig | None = None, *, clock: Clock | None = None
) -> AsyncIterator[SandboxHandle]:
    """A sandbox on loopback (instant speed, one key with plenty of credits by default)."""
    config = config or SandboxConfig(api_keys={KEY: 10_000}, speed=Speed.INSTANT)
    app = create_sandbox_app(config, clock=clock)
    async with running(app) as url, http_client(base_url=url, timeout=10) as http:
        yield SandboxHandle(url=url, http=http, sandbox=app.state.sandbox)


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    query: str
    verified: bool
    reason: str | None


@dataclass
class WebhookReceiver:
    """A small webhook endpoint that verifies signatures with receiver.signatures.Verifier.

    ``statuses`` are answered first, one per request; after them: 200 when the signature
    verifies, 401 when it does not.
    """

    secret: str = SECRET
    statuses: deque[int] = field(default_factory=deque)
    got: list[Received] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._verifier = Verifier(
            [self.secret], [Scheme.MUSICAPI], tolerance_s=300, clock=SystemClock()
        )

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        try:
            self._verifier.verify(request.headers, body)
            verified, reason = True, None
        except VerificationError as exc:
            verified, reason = False, exc.reason
        self.got.append(
            Received(
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                query=request.url.query,
                verified=verified,
                reason=reason,
            )
        )
        status = self.statuses.popleft() if self.statuses else (200 if verified else 401)
        return Response(status_code=status)

    def events(self) -> list[str]:
        return [r.headers["x-webhook-event"] for r in self.got]


@contextlib.asynccontextmanager
async def serve_receiver(
    secret: str = SECRET, statuses: list[int] | None = None
) -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(secret=secret, statuses=deque(statuses or []))
    app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    async with running(app) as url:
        receiver.url = url
        yield receiver


# The old name of tests.waiting.wait_until, kept for the modules that still import it from here
wait_for = wait_until


# --- media readers ----------------------------------------------------------------------------


def read_wav(data: bytes) -> tuple[int, int, int, array.array[int]]:
    """(channels, sample width, rate, samples) of a WAV, via the standard library."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        samples = array.array("h", wav.readframes(wav.getnframes()))
        return wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), samples


def measured_bpm(samples: array.array[int], rate: int) -> float:
    """The tempo of a click track: the mean distance between click onsets."""
    onsets: list[int] = []
    quiet = rate  # silence before the first sample
    for i, sample in enumerate(samples):
        if abs(sample) > 1_000:
            if quiet > rate // 20:
                onsets.append(i)
            quiet = 0
        else:
            quiet += 1
    gaps = [b - a for a, b in itertools.pairwise(onsets)]
    assert len(gaps) >= 3, "not enough clicks to measure a tempo"
    return 60 * rate / (sum(gaps) / len(gaps))


# --- the rule table ---------------------------------------------------------------------------

OK_CUSTOM = {"custom_mode": True, "mv": "sonic-v4-5"}


@dataclass(frozen=True)
class Rule:
    """A create body and the message it must get (None: it is valid)."""

    name: str
    body: dict[str, Any]
    message: str | None


def _with(**fields: Any) -> dict[str, Any]:
    return {**OK_CUSTOM, **fields}


MV = Message.MV_INVALID
PROMPT = Message.PROMPT_TOO_LONG
GPT = Message.GPT_DESCRIPTION_PROMPT_TOO_LONG
TAGS = Message.TAGS_TOO_LONG
CLIP = Message.CONTINUE_CLIP_ID_REQUIRED
PERSONA = Message.PERSONA_ID_REQUIRED
AUDIO = Message.AUDIO_WEIGHT_RANGE

# Every rule of the seed's error table, at and past its limits, plus the rules whose words are
# ours (marked by OwnMessage). Valid rows are create_music only: they need no existing clip.
RULES: list[Rule] = [
    Rule("mv unknown", _with(mv="sonic-v9"), MV),
    Rule("mv missing", {"custom_mode": True}, MV),
    Rule("mv in the answers' spelling is not a request model", _with(mv="chirp-v5"), MV),
    Rule("mv on concat, when given, must be valid", {
        "task_type": "concat_music", "continue_clip_id": "c", "mv": "v5"}, MV),
    Rule("prompt 3000 on v3-5", _with(mv="sonic-v3-5", prompt="p" * 3000), None),
    Rule("prompt 3001 on v3-5", _with(mv="sonic-v3-5", prompt="p" * 3001), PROMPT),
    Rule("prompt 3001 on v4", _with(mv="sonic-v4", prompt="p" * 3001), PROMPT),
    Rule("prompt 5000 on v4-5", _with(mv="sonic-v4-5", prompt="p" * 5000), None),
    Rule("prompt 5001 on v4-5", _with(mv="sonic-v4-5", prompt="p" * 5001), PROMPT),
    Rule("prompt 5000 on v4-5-all", _with(mv="sonic-v4-5-all", prompt="p" * 5000), None),
    Rule("prompt 5001 on v4-5-all", _with(mv="sonic-v4-5-all", prompt="p" * 5001), PROMPT),
    Rule("prompt 5001 on v4-5-plus", _with(mv="sonic-v4-5-plus", prompt="p" * 5001), PROMPT),
    Rule("prompt 5001 on v5", _with(mv="sonic-v5", prompt="p" * 5001), PROMPT),
    Rule("gpt_description_prompt 400", {
        "custom_mode": False, "mv": "sonic-v5", "gpt_description_prompt": "g" * 400}, None),
    Rule("gpt_description_prompt 401", {
        "custom_mode": False, "mv": "sonic-v5", "gpt_description_prompt": "g" * 401}, GPT),
    Rule("tags 200 on v3-5", _with(mv="sonic-v3-5", tags="t" * 200), None),
    Rule("tags 201 on v3-5", _with(mv="sonic-v3-5", tags="t" * 201), TAGS),
    Rule("tags 201 on v4", _with(mv="sonic-v4", tags="t" * 201), TAGS),
    Rule("tags 1000 on v5", _with(mv="sonic-v5", tags="t" * 1000), None),
    Rule("tags 1001 on v4-5-all", _with(mv="sonic-v4-5-all", tags="t" * 1001), TAGS),
    Rule("tags 1001 on v5", _with(mv="sonic-v5", tags="t" * 1001), TAGS),
    Rule("extend without continue_clip_id", _with(task_type="extend_music", continue_at=5), CLIP),
    Rule("cover without continue_clip_id", _with(task_type="cover_music"), CLIP),
    Rule("concat without continue_clip_id", {"task_type": "concat_music"}, CLIP),
    Rule("extend_upload without continue_clip_id", _with(
        task_type="extend_upload_music", continue_at=5), CLIP),
    Rule("cover_upload without continue_clip_id", _with(task_type="cover_upload_music"), CLIP),
    Rule("empty continue_clip_id", _with(task_type="cover_music", continue_clip_id=""), CLIP),
    Rule("persona_music without persona_id", _with(task_type="persona_music"), PERSONA),
    Rule("audio_weight above 1", _with(
        task_type="cover_music", continue_clip_id="c", audio_weight=1.5), AUDIO),
    Rule("audio_weight below 0", _with(
        task_type="cover_music", continue_clip_id="c", audio_weight=-0.1), AUDIO),
    # The first broken rule wins, in the seed table's order.
    Rule("mv before prompt", _with(mv="bad", prompt="p" * 6000), MV),
    Rule("prompt before tags", _with(mv="sonic-v4", prompt="p" * 3001, tags="t" * 201), PROMPT),
    Rule("tags before continue_clip_id", _with(
        task_type="extend_music", continue_at=1, mv="sonic-v4", tags="t" * 201), TAGS),
    Rule("continue_clip_id before audio_weight", _with(
        task_type="cover_music", audio_weight=3), CLIP),
    # Ours: the seed has no words for these.
    Rule("task_type unknown", _with(task_type="remix_music"), OwnMessage.TASK_TYPE_INVALID),
    Rule("custom_mode missing", {"mv": "sonic-v4-5"}, OwnMessage.CUSTOM_MODE_REQUIRED),
    Rule("continue_at missing", _with(task_type="extend_music", continue_clip_id="c"),
         OwnMessage.CONTINUE_AT_REQUIRED),
    Rule("continue_at negative", _with(
        task_type="extend_music", continue_clip_id="c", continue_at=-1),
         OwnMessage.CONTINUE_AT_INVALID),
    Rule("style_weight above 1", _with(style_weight=1.01), OwnMessage.STYLE_WEIGHT_RANGE),
    Rule("weirdness_constraint below 0", _with(weirdness_constraint=-0.5),
         OwnMessage.WEIRDNESS_CONSTRAINT_RANGE),
    Rule("vocal_gender unknown", _with(vocal_gender="x"), OwnMessage.VOCAL_GENDER_INVALID),
    Rule("weights at their bounds", _with(style_weight=0, weirdness_constraint=1), None),
    Rule("task_type absent means create_music", {"custom_mode": False, "mv": "sonic-v4"}, None),
]

SEED_MESSAGES = {MV, PROMPT, GPT, TAGS, CLIP, PERSONA, AUDIO}
