"""Nothing secret in logs or error texts: the one URL scrubber, the registered secrets, and a
real ``serve`` run with planted secrets whose whole log and ``jobs.last_error`` are grepped."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver import redact
from receiver.demo import SONG
from receiver.logs import FloodFilter, _dumps, redact_processor, redact_value, render_redacted
from receiver.server import running
from receiver.settings import Settings
from tests.support import callback, clip, free_port, http_client, signed_headers
from tests.waiting import wait_until


@pytest.fixture
def no_secrets() -> Iterator[None]:
    redact.forget_secrets()
    yield
    redact.forget_secrets()


@pytest.mark.parametrize(("url", "shown"), [
    ("https://cdn.example/a/b.mp3", "https://cdn.example/a/b.mp3"),
    ("https://user:pass@cdn.example/b.mp3", "https://***@cdn.example/b.mp3"),
    ("https://cdn.example/b.mp3?X-Amz-Signature=abc&X-Amz-Credential=k",
     "https://cdn.example/b.mp3?***"),
    ("https://cdn.example:8443/b.mp3#token=x", "https://cdn.example:8443/b.mp3#***"),
    ("json://bot:pw@127.0.0.1:9000/hook?token=t", "json://***@127.0.0.1:9000/hook?***"),
    ("ntfy://tk_abcdef@ntfy.sh/alerts", "ntfy://***@ntfy.sh/alerts"),
    ("https://[::1]:80/x?y=1", "https://[::1]:80/x?***"),
    ("cdn.example/b.mp3?sig=1", "***"),
])
def test_scrub_url_drops_userinfo_query_and_fragment(url: str, shown: str) -> None:
    assert redact.scrub_url(url) == shown


def test_the_fetcher_uses_the_shared_scrubber() -> None:
    from receiver.fetching import safe_url

    assert safe_url("http://u:p@h/x?q=1") == "http://***@h/x?***"


def test_scrub_text_finds_urls_in_sentences_and_blanks_registered_secrets(
    no_secrets: None,
) -> None:
    redact.register_secret("s3cr3t-value-1", None, "", "short")
    text = ("GET https://u:pw@cdn/a.mp3?sig=1. failed (see http://h/p#frag), "
            "token s3cr3t-value-1 and s3cr3t-value-1 again; short stays")
    assert redact.scrub_text(text) == (
        "GET https://***@cdn/a.mp3?***. failed (see http://h/p#***), "
        "token [secret] and [secret] again; short stays")


def test_configured_urls_give_up_their_tokens_as_secrets() -> None:
    assert redact.url_secrets("tgram://123456789:AAHdqTcvCH1vGWJ/12345678") == [
        "tgram://123456789:AAHdqTcvCH1vGWJ/12345678", "123456789:AAHdqTcvCH1vGWJ",
        "AAHdqTcvCH1vGWJ"]
    assert redact.url_secrets("json://bot:pw-123456@h:9/notify?token=t0k3n-abcdef") == [
        "json://bot:pw-123456@h:9/notify?token=t0k3n-abcdef", "bot", "pw-123456",
        "t0k3n-abcdef"]
    # Ordinary words in a path are not tokens.
    assert redact.url_secrets("https://hooks.example/services/notify") == [
        "https://hooks.example/services/notify"]
    settings = Settings(config={"routes": [{"handlers": [{"name": "notify", "options": {
        "targets": ["discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js"]}}]}]})
    assert "JHMHI8qBe7bk2ZwO5U711o3dV_js" in settings.secrets()


def test_redact_value_walks_nested_values_and_objects(no_secrets: None) -> None:
    redact.register_secret("api-key-123456")
    value = {"a": ["https://x/y?z=1", ("api-key-123456",)], "n": 3, "url": httpx.URL(
        "https://u:p@h/q?s=1")}
    assert redact_value(value) == {"a": ["https://x/y?***", ["[secret]"]], "n": 3,
                                   "url": "URL('https://***@h/q?***')"}


# ---- our JSON lines: rendered once, scrubbed only when they hold a URL or a secret -------------

_SECRETS = ("plain-secret-42", 'quo"te\\back-slash', "tab\tand\u00e9-accent", "ctl\x01-secret")
_pieces = st.sampled_from([*_SECRETS, "://", "https://u:p@h/x?q=1", '"', "\\", "\n", "\u00e9",
                           "[secret]", "plain", " ", "%2F"])
_strings = st.lists(_pieces | st.text(max_size=6), max_size=5).map("".join)
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | _strings,
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _values, max_size=5))
def test_a_line_rendered_once_is_what_scrubbing_each_value_gives(event: dict[str, object]) -> None:
    redact.forget_secrets()
    redact.register_secret(*_SECRETS)
    try:
        careful = _dumps(redact_processor(None, "info", dict(event)))
        assert render_redacted(None, "info", dict(event)) == careful
    finally:
        redact.forget_secrets()


def test_a_line_with_a_secret_or_a_url_is_scrubbed_and_a_clean_one_kept(
    no_secrets: None,
) -> None:
    redact.register_secret('se"cret-\\value')
    dirty = {"event": "x", "note": 'got se"cret-\\value from https://h/p?token=1'}
    assert json.loads(render_redacted(None, "info", dirty)) == {
        "event": "x", "note": "got [secret] from https://h/p?***"}
    clean = {"event": "x", "ids": ["a", 1, None], "when": 1.5}
    assert render_redacted(None, "info", clean) == orjson.dumps(clean)
    # objects redact_value renders as repr() take the careful path: repr, scrubbed
    assert json.loads(render_redacted(None, "info", {"u": httpx.URL("https://u:p@h/")})) == {
        "u": "URL('https://***@h/')"}


def test_a_flood_of_identical_lines_is_written_once_per_window() -> None:
    """asyncio's accept error, raised the way the event loop raises it, 1,000 times."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(FloodFilter(window_s=3600))
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    loop = asyncio.new_event_loop()
    try:
        for _ in range(1000):
            loop.call_exception_handler({
                "message": "socket.accept() out of system resource",
                "exception": OSError(24, "Too many open files"),
            })
        logging.getLogger("asyncio").error("something else")
    finally:
        loop.close()
        logger.removeHandler(handler)
    lines = [r.getMessage().split("\n")[0] for r in records]
    assert lines == ["socket.accept() out of system resource", "something else"]


PLANTED = {
    "webhook secret": "whsec-PLANTED-webhook-5ec7e7",
    "admin token": "PLANTED-admin-t0ken-a9d1",
    "api key": "PLANTED-api-k3y-77c2",
    "notify password": "PLANTED-notify-pw-31f",
    "notify token": "PLANTED-ntfy-tok-8e2",
    "notify path token": "PLANTEDpathTok3n9f2a",
    "cdn signature": "PLANTED-amz-sig-0b9c",
    "media password": "PLANTED-media-pw-c4d",
}


def peer() -> Starlette:
    """The media CDN, the notification endpoint and the Sonic API in one careless server: it
    fails everything and echoes the caller's Authorization header and body in its error."""

    async def media(request: Request) -> Response:
        return Response(b"no", 500)

    async def anything(request: Request) -> JSONResponse:
        echo = request.headers.get("authorization", "")
        sent = (await request.body()).decode()
        return JSONResponse({"code": 500, "message": f"internal error for {echo}: {sent}"}, 500)

    return Starlette(routes=[
        Route("/media/{name}", media, methods=["GET"]),
        Route("/{path:path}", anything, methods=["GET", "POST"]),
    ])


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("level", ["info", "debug"])
async def test_a_real_run_leaks_no_planted_secret(tmp_path: Path, level: str) -> None:
    async with running(peer()) as peer_url:
        peer_host = peer_url.removeprefix("http://")
        notify_url = (f"json://bot:{PLANTED['notify password']}@{peer_host}/notify"
                      f"?token={PLANTED['notify token']}")
        # A token in the path, as Discord, Slack and Telegram URLs carry theirs.
        path_url = f"json://{peer_host}/hook/{PLANTED['notify path token']}"
        (tmp_path / "receiver.toml").write_text(
            '[network]\nallow_networks = ["127.0.0.0/8"]\n\n'
            "[worker]\nmax_attempts = 2\nbackoff = [0.2]\njitter = 0\n\n"
            '[[routes]]\non = ["task.succeeded"]\n'
            'handlers = ["download_audio", '
            f'{{ name = "notify", options = {{ targets = ["{notify_url}", "{path_url}"] }} }}]\n'
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "SONIC_"))}
        env |= {
            "SONIC_WEBHOOK_SECRET": PLANTED["webhook secret"],
            "RECEIVER_ADMIN_TOKEN": PLANTED["admin token"],
            "SONIC_API_KEY": PLANTED["api key"],
            "SONIC_API_BASE_URL": peer_url,
            "RECEIVER_PUBLIC_URL": base,
            "RECEIVER_CONFIG": str(tmp_path / "receiver.toml"),
            "RECEIVER_DB": str(tmp_path / "r.db"),
            "RECEIVER_MEDIA_DIR": str(tmp_path / "media"),
            "RECEIVER_LOG_FORMAT": "json",
            "RECEIVER_LOG_LEVEL": level,
            "RECEIVER_LOG_LEVEL_THIRD_PARTY": level,
        }
        log = tmp_path / "receiver.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "receiver", "serve", "--port", str(port),
                env=env, stdout=out, stderr=out)
        try:
            async with http_client(timeout=10) as http:
                await _wait_up(http, f"{base}/healthz", proc, log)
                await _exercise(http, base, peer_url)
                await _wait_jobs_finished(tmp_path / "r.db")
        finally:
            proc.terminate()
            await proc.wait()

    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    with sqlite3.connect(tmp_path / "r.db") as conn:
        errors = [row[0] for row in conn.execute("SELECT last_error FROM jobs")]
    # The run did go through the paths that used to leak:
    assert {"file_failed", "job_dead", "sonic_create_outcome_unknown"} <= {
        line["event"] for line in lines}, text[-3000:]
    assert len(errors) == 2, errors
    assert all(errors), errors
    if level == "debug":
        assert "HTTP Request: GET http://127.0.0.1:" in text  # httpx's own line, scrubbed
    leaks = {name: value for name, value in PLANTED.items()
             if value in text or any(value in e for e in errors)}
    assert leaks == {}, [line for line in text.splitlines()
                         if any(v in line for v in leaks.values())][:5]


async def _wait_up(http: httpx.AsyncClient, url: str, proc: asyncio.subprocess.Process,
                   log: Path) -> None:
    async def up() -> bool:
        assert proc.returncode is None, _read(log)
        try:
            return (await http.get(url, timeout=1)).status_code == 200
        except httpx.TransportError:
            return False

    await wait_until(up, within=30, what="the receiver to start", every=0.05,
                     detail=lambda: _read(log))


def _read(path: Path) -> str:
    return path.read_text()


async def _exercise(http: httpx.AsyncClient, base: str, peer_url: str) -> None:
    """Everything that once put a secret in a log line or an error text."""
    signed_media = (f"{peer_url}/media/c2.wav?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                    f"&X-Amz-Signature={PLANTED['cdn signature']}")
    with_password = peer_url.replace("http://", f"http://cdn:{PLANTED['media password']}@")
    body = callback("t-leak", [
        clip("c1", "succeeded", audio_url=f"{with_password}/media/c1.wav"),
        clip("c2", "succeeded", audio_url=signed_media),
    ], event="song.completed")
    headers = signed_headers(body, secret=PLANTED["webhook secret"], delivery_id="d-1")
    assert (await http.post(f"{base}/webhooks/sonic", content=body,
                            headers=headers)).status_code == 200
    # A forged delivery, a wrong admin token and a right one.
    forged = signed_headers(body, secret="not-the-secret")
    assert (await http.post(f"{base}/webhooks/sonic", content=body,
                            headers=forged)).status_code == 401
    wrong = {"Authorization": f"Bearer {PLANTED['admin token']}-wrong"}
    assert (await http.get(f"{base}/jobs", headers=wrong)).status_code == 401
    admin = {"Authorization": f"Bearer {PLANTED['admin token']}"}
    # The Sonic API (the peer) fails the create and echoes the API key in its error.
    created = await http.post(f"{base}/tasks", headers=admin, json=SONG)
    assert created.json()["error"] == "outcome_unknown", created.text


async def _wait_jobs_finished(db: Path) -> None:
    states: list[str] = []

    def finished() -> bool:
        with sqlite3.connect(db) as conn:
            states[:] = [row[0] for row in conn.execute("SELECT state FROM jobs")]
        return len(states) == 2 and all(s in ("dead", "done") for s in states)

    await wait_until(finished, within=60, what="both jobs to finish", every=0.1,
                     detail=lambda: f"job states: {states}")
