"""Secure by default: the admin surface (every route but the webhook and the probes) needs the
admin token, or an explicit opt-out; the webhook and the probes stay open."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from starlette.requests import HTTPConnection

from receiver.app import create_app
from receiver.auth import authorized, how_to_use, operator_of
from receiver.clock import FakeClock
from receiver.errors import SettingsError
from receiver.settings import Settings, load
from tests.processes import wait_healthy
from tests.support import app_client, callback, clip, free_port, post_signed, settings_for

pytestmark = pytest.mark.anyio

TOKEN = "adm1n-t0ken-for-tests-4f9c2e81b7"
BODY = callback("t-1", [clip("c1", "succeeded")])
ADMIN_CALLS = [("GET", "/tasks/t-1"), ("GET", "/jobs"), ("POST", "/tasks")]


def secure(tmp_path: Path, **changes: object) -> Settings:
    """Settings as an operator gets them: no opt-out unless asked."""
    return settings_for(tmp_path, **{"insecure_open_admin": False, **changes})


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
async def test_without_token_or_opt_out_the_admin_api_is_refused_with_how_to_configure(
    tmp_path: Path, clock: FakeClock, method: str, path: str
) -> None:
    async with app_client(create_app(secure(tmp_path), clock=clock)) as client:
        await post_signed(client, BODY, clock=clock)
        answer = await client.request(method, path, json={"task_type": "create_music"})
    assert answer.status_code == 403
    assert answer.json()["error"] == "admin_not_configured"
    assert "RECEIVER_ADMIN_TOKEN" in answer.json()["message"]
    assert "--insecure-open-admin" in answer.json()["message"]


async def test_the_settings_default_is_closed() -> None:
    assert Settings().insecure_open_admin is False
    assert load({"SONIC_WEBHOOK_SECRET": "s3cret-1"}).admin_open is False


async def test_webhook_and_probes_stay_open_without_any_token(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with app_client(create_app(secure(tmp_path), clock=clock)) as client:
        assert (await post_signed(client, BODY, clock=clock)).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        # Not a Bearer challenge for the webhook's URL: it only takes POST.
        assert (await client.get("/webhooks/sonic")).status_code == 405


async def test_with_the_opt_out_the_admin_api_answers_anyone(
    tmp_path: Path, clock: FakeClock
) -> None:
    settings = secure(tmp_path, insecure_open_admin=True)
    async with app_client(create_app(settings, clock=clock)) as client:
        await post_signed(client, BODY, clock=clock)
        assert (await client.get("/tasks/t-1")).json()["task"]["state"] == "succeeded"
        assert (await client.get("/jobs")).status_code == 200
        created = await client.post("/tasks", json={"task_type": "create_music"})
    assert created.status_code not in (401, 403)  # reaches create_task (no Sonic client: 503)


@pytest.mark.parametrize("header", [
    None, "Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ",
    f"bearer{TOKEN}", "Bearer é-not-ascii",
])
async def test_with_a_token_only_the_right_bearer_gets_in(
    tmp_path: Path, clock: FakeClock, header: str | None
) -> None:
    # The opt-out does not open a surface that has a token.
    settings = secure(tmp_path, admin_token=TOKEN, insecure_open_admin=True)
    headers = {} if header is None else {b"Authorization": header.encode()}  # bytes: UTF-8 too
    async with app_client(create_app(settings, clock=clock)) as client:
        await post_signed(client, BODY, clock=clock)
        for method, path in ADMIN_CALLS:
            answer = await client.request(method, path, headers=headers, json={})
            assert answer.status_code == 401, (method, path, header)
            assert answer.json()["error"] == "unauthorized"
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        # Unknown paths are admin surface too: no route map for strangers.
        assert (await client.get("/nope", headers=headers)).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/tasks/t-1", headers=good)).status_code == 200
        assert (await client.get("/jobs", headers=good)).status_code == 200
        assert (await client.get("/nope", headers=good)).status_code == 404
        assert (await client.get("/healthz")).status_code == 200


def conn(authorization: str | None) -> HTTPConnection:
    headers = [] if authorization is None else [
        (b"authorization", authorization.encode("latin-1"))]
    return HTTPConnection({"type": "http", "headers": headers})


def test_authorized_is_the_one_rule() -> None:
    closed, opened = Settings(), Settings(insecure_open_admin=True)
    tokened = Settings(admin_token=TOKEN)
    assert not authorized(conn(None), closed)
    assert not authorized(conn(f"Bearer {TOKEN}"), closed)  # no token configured: nothing fits
    assert authorized(conn(None), opened)
    assert authorized(conn(f"Bearer {TOKEN}"), tokened)
    assert authorized(conn(f"BEARER   {TOKEN}  "), tokened)
    assert not authorized(conn(f"Bearer {TOKEN.upper()}"), tokened)
    # Header bytes that are not UTF-8 (latin-1 decoded by Starlette) are a refusal, not a crash.
    assert not authorized(conn("Bearer \xff\xfe"), tokened)


def test_the_token_can_come_from_a_file_and_the_startup_line_names_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN + "\n")
    loaded = load({"SONIC_WEBHOOK_SECRET": "s3cret-1", "RECEIVER_ADMIN_TOKEN_FILE": str(path)})
    assert (loaded.admin_token, loaded.admin_token_source) == (TOKEN, str(path))
    line = how_to_use(loaded, "http://127.0.0.1:8000")
    assert str(path) in line
    assert TOKEN not in line
    from_env = load({"SONIC_WEBHOOK_SECRET": "s3cret-1", "RECEIVER_ADMIN_TOKEN": TOKEN})
    assert "$RECEIVER_ADMIN_TOKEN" in how_to_use(from_env, "http://h")
    assert TOKEN not in how_to_use(from_env, "http://h")
    assert "OPEN" in how_to_use(Settings(insecure_open_admin=True), "http://h")
    assert "RECEIVER_ADMIN_TOKEN" in how_to_use(Settings(), "http://h")


@pytest.mark.parametrize(("env", "message"), [
    ({"RECEIVER_ADMIN_TOKEN_FILE": "/nonexistent/admin-token"}, "cannot read"),
    ({"RECEIVER_ADMIN_TOKEN_FILE": "/dev/null"}, "is empty"),
    ({"RECEIVER_ADMIN_TOKEN_FILE": "/dev/null", "RECEIVER_ADMIN_TOKEN": TOKEN}, "both set"),
    ({"RECEIVER_INSECURE_OPEN_ADMIN": "perhaps"}, "must be 1 or 0"),
])
def test_bad_admin_settings_stop_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load({"SONIC_WEBHOOK_SECRET": "s3cret-1", **env})


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("0", False)])
def test_the_opt_out_variable_is_parsed(value: str, expected: bool) -> None:
    loaded = load({"SONIC_WEBHOOK_SECRET": "s3cret-1", "RECEIVER_INSECURE_OPEN_ADMIN": value})
    assert loaded.admin_open is expected


@pytest.mark.slow
@pytest.mark.parametrize("opt_out", [[], ["--insecure-open-admin"]])
def test_a_real_serve_process_is_closed_unless_opted_out(
    tmp_path: Path, opt_out: list[str]
) -> None:
    """``sonic-receiver serve`` as an operator runs it: no admin token in the environment."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "SONIC_"))}
    env |= {"SONIC_WEBHOOK_SECRET": "s3cret-1", "RECEIVER_LOG_FORMAT": "json",
            "RECEIVER_DB": str(tmp_path / "r.db")}
    (tmp_path / "routes.toml").write_text("routes = []\n")
    env["RECEIVER_CONFIG"] = str(tmp_path / "routes.toml")
    log = tmp_path / "log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--port", str(port), *opt_out],
            env=env, stdout=out, stderr=out)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(port, proc, log, timeout_s=30)
        jobs = httpx.get(f"{base}/jobs", timeout=5)
        task = httpx.get(f"{base}/tasks/t-1", timeout=5)
        created = httpx.post(f"{base}/tasks", json={"task_type": "create_music"}, timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if opt_out:
        assert (jobs.status_code, task.status_code) == (200, 404)
        assert created.status_code not in (401, 403)
        assert "is OPEN to anyone" in log.read_text()
    else:
        assert [r.status_code for r in (jobs, task, created)] == [403, 403, 403]
        assert "admin API: off" in log.read_text()


async def test_a_console_extends_the_check_with_its_own_credential() -> None:
    """What a later /ui does: the same middleware, a check that also takes its cookie."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from receiver.auth import AdminAuth

    def console_check(conn: HTTPConnection, settings: Settings) -> bool:
        return conn.cookies.get("session") == "signed-in" or authorized(conn, settings)

    async def page(request: object) -> PlainTextResponse:
        return PlainTextResponse("dashboard")

    app = Starlette(routes=[Mount("/ui", routes=[Route("/", page)], middleware=[
        Middleware(AdminAuth, settings=Settings(admin_token=TOKEN), check=console_check)])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://receiver") as client:
        assert (await client.get("/ui/")).status_code == 401
        assert (await client.get("/ui/", headers={"Cookie": "session=signed-in"})).text == (
            "dashboard")
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/ui/", headers=bearer)).text == "dashboard"


@pytest.mark.parametrize(("token", "why"), [
    ("x", "too short (1 characters"),
    ("a" * 23, "too short (23 characters"),
    ("changeme-changeme-changeme-2024", "placeholder"),
    ("<your admin token goes here please>", "placeholder"),
    ("your-token-0123456789abcdefghij", "placeholder"),
    ("abababababababababababababab", "too few characters"),
])
def test_a_weak_admin_token_stops_start_up_saying_how_to_make_one(token: str, why: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load({"SONIC_WEBHOOK_SECRET": "s3cret-1", "RECEIVER_ADMIN_TOKEN": token})
    message = raised.value.message
    assert message.startswith("RECEIVER_ADMIN_TOKEN: ")
    assert why in message
    assert "secrets.token_urlsafe(32)" in message
    assert token not in message  # a secret is never repeated back


def test_a_weak_token_in_a_file_or_the_config_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text("short\n")
    with pytest.raises(SettingsError, match=r"^RECEIVER_ADMIN_TOKEN_FILE: .* too short"):
        load({"SONIC_WEBHOOK_SECRET": "s3cret-1", "RECEIVER_ADMIN_TOKEN_FILE": str(path)})
    config = tmp_path / "receiver.toml"
    config.write_text('[receiver]\nadmin_token = "changeme"\n')
    with pytest.raises(SettingsError, match=r"^receiver\.admin_token: is too short"):
        load({"SONIC_WEBHOOK_SECRET": "s3cret-1"}, config_file=config)


def test_named_operators_tokens_come_from_the_config_file(tmp_path: Path) -> None:
    bob_file = tmp_path / "bob-token"
    bob_file.write_text("bob-token-5b1f0e9d8c7a6b5c4d3e\n")
    config = tmp_path / "receiver.toml"
    config.write_text(
        '[admin]\nsession_idle = "30m"\nsession_max = "8h"\n'
        '[[admin.tokens]]\nname = "alice"\ntoken = "alice-token-1a2b3c4d5e6f7a8b9c0d"\n'
        f'[[admin.tokens]]\nname = "bob"\ntoken_file = "{bob_file}"\n')
    loaded = load({"SONIC_WEBHOOK_SECRET": "s3cret-1"}, config_file=config)
    assert loaded.operators == (("alice", "alice-token-1a2b3c4d5e6f7a8b9c0d"),
                                ("bob", "bob-token-5b1f0e9d8c7a6b5c4d3e"))
    assert (loaded.session_idle_s, loaded.session_max_s) == (1800.0, 8 * 3600.0)
    assert "alice-token-1a2b3c4d5e6f7a8b9c0d" in loaded.secrets()
    assert not loaded.admin_open
    line = how_to_use(loaded, "http://h")
    assert "alice, bob" in line
    assert "alice-token" not in line
    assert operator_of("bob-token-5b1f0e9d8c7a6b5c4d3e", loaded) == "bob"
    assert operator_of(TOKEN, loaded) is None
    assert operator_of(TOKEN, replace(loaded, admin_token=TOKEN)) == "admin"


@pytest.mark.parametrize(("tokens", "message"), [
    ('[[admin.tokens]]\nname = "a"\ntoken = "short"\n', r"^admin\.tokens\[0\]\.token: is too"),
    ('[[admin.tokens]]\nname = "a"\n', r"^admin\.tokens\[0\]\.token: give token or token_file"),
    ('[[admin.tokens]]\nname = "a b"\ntoken = "alice-token-1a2b3c4d5e6f7a8b9c0d"\n',
     r"^admin\.tokens\[0\]\.name"),
    ('[[admin.tokens]]\nname = "a"\ntoken = "alice-token-1a2b3c4d5e6f7a8b9c0d"\n'
     '[[admin.tokens]]\nname = "a"\ntoken = "other-token-1a2b3c4d5e6f7a8b9c0d"\n',
     r"^admin\.tokens\[1\]\.name: two tokens are named 'a'"),
    ('[[admin.tokens]]\nname = "admin"\ntoken = "alice-token-1a2b3c4d5e6f7a8b9c0d"\n',
     r"^admin\.tokens\[0\]\.name: 'admin' is the admin token's"),
    ('[[admin.tokens]]\nname = "a"\ntoken_file = "/nonexistent/t"\n',
     r"^admin\.tokens\[0\]\.token_file: cannot read"),
])
def test_bad_operator_tokens_stop_start_up_with_their_path(
    tmp_path: Path, tokens: str, message: str
) -> None:
    config = tmp_path / "receiver.toml"
    config.write_text(tokens)
    with pytest.raises(SettingsError, match=message):
        load({"SONIC_WEBHOOK_SECRET": "s3cret-1"}, config_file=config)


@pytest.mark.slow
def test_a_short_admin_token_stops_serve_with_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "SONIC_"))}
    env |= {"SONIC_WEBHOOK_SECRET": "s3cret-1", "RECEIVER_ADMIN_TOKEN": "hunter2",
            "RECEIVER_DB": str(tmp_path / "r.db")}
    done = subprocess.run([sys.executable, "-m", "receiver", "serve", "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "RECEIVER_ADMIN_TOKEN: is too short (7 characters; at least 24)" in done.stderr
    assert "secrets.token_urlsafe(32)" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


@pytest.mark.parametrize("path", ["/tasks", "/ui/actions/retry-job", "/no/such/route",
                                  "/ui/login"])
async def test_a_body_past_the_limit_is_refused_413_before_anyone_is_let_in(
    tmp_path: Path, clock: FakeClock, path: str
) -> None:
    """The admin surface reads a changing request's body before it decides who may send it
    (the console's form token is in the form): that read stops at RECEIVER_MAX_BODY_BYTES,
    as the webhook's does, so that no one can make the server hold an unbounded body."""
    limit = 65536
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):  # 64 MB, if it were all read
            pulled += 1
            yield b"x" * 65536

    settings = secure(tmp_path, admin_token=TOKEN, max_body_bytes=limit)
    async with app_client(create_app(settings, clock=clock)) as client:
        answer = await client.post(path, content=endless(),
                                   headers={"content-type": "application/x-www-form-urlencoded"})
        told = await client.post(path, content=b"x" * (limit + 1))
        small = await client.post("/tasks", json={"task_type": "create_music"},
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert (answer.status_code, answer.json()) == (413, {"error": "body_too_large",
                                                          "limit": limit})
    assert pulled <= 3
    assert told.status_code == 413
    assert small.status_code != 413
