"""Helpers shared by the tests: signed requests, callback bodies and the delivery records the
webhook makes of them, and the app over ``httpx.ASGITransport`` with its lifespan running
(ASGITransport alone does not run it)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from receiver.clock import Clock
from receiver.errors import PayloadError
from receiver.models import Delivery, Source
from receiver.payloads import parse_callback
from receiver.settings import Settings
from receiver.signatures import sign_musicapi

SECRET = "test-secret-1"

# A test's client lets an idle kept-alive connection go well before any server of the tests
# closes it. uvicorn closes one after 5 s idle and httpx keeps one 5 s: a request sent on the
# client's last millisecond meets the server's close and fails with httpx.ReadError (neither
# side is wrong; a POST is never retried on its own). Letting go first removes that race.
CLIENT_IDLE_S = 2.0


def http_client(**options: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for a real socket, whose kept-alive connections never outlive
    the server's (:data:`CLIENT_IDLE_S`)."""
    options.setdefault("limits", httpx.Limits(keepalive_expiry=CLIENT_IDLE_S))
    return httpx.AsyncClient(**options)


def settings_for(tmp_path: Path, **changes: Any) -> Settings:
    base: dict[str, Any] = {
        "webhook_secrets": (SECRET,),
        "db_path": tmp_path / "receiver.db",
        "media_dir": tmp_path / "media",
        # ingest tests route nothing; handler tests configure their routes
        "config": {"routes": []},
        # Tests of other things read the admin API without a token; tests/test_auth.py
        # checks that this is an explicit opt-out and that the default refuses.
        "insecure_open_admin": True,
    }
    base.update(changes)
    return Settings(**base).validated()


def clip(clip_id: str, state: str | None = None, **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"clip_id": clip_id, **fields}
    if state is not None:
        item["state"] = state
    return item


def callback(
    task_id: str | None, clips: Sequence[dict[str, Any]], event: str | None = None, **extra: Any
) -> bytes:
    body: dict[str, Any] = {"code": 200, "message": "success", "data": list(clips), **extra}
    if task_id is not None:
        body["task_id"] = task_id
    if event is not None:
        body["event"] = event
    return json.dumps(body).encode()


def delivery(
    delivery_id: str,
    body: bytes,
    *,
    event: str | None = None,
    at: float = 1000.0,
    task_id_hint: str | None = None,
) -> Delivery:
    """The record the webhook makes of ``body`` received at ``at`` (a body that does not parse
    keeps its error, as a quarantined delivery does), for tests that go straight to storage."""
    try:
        cb = parse_callback(body, event_header=event, task_id_hint=task_id_hint)
        error = None
    except PayloadError as exc:
        cb, error = None, exc.message
    return Delivery(
        delivery_id=delivery_id, source=Source.WEBHOOK, scheme="musicapi", event=event,
        headers={"x-webhook-id": delivery_id}, body=body, received_at=at, callback=cb,
        error=error, task_id_hint=task_id_hint,
    )


# task t-1 through its life: both clips streaming, one done, both done
STREAMING = callback("t-1", [clip("a", "running", audio_url="http://stream/a"),
                             clip("b", "running", audio_url="http://stream/b")])
PARTIAL = callback("t-1", [clip("a", "succeeded", audio_url="http://cdn/a.mp3"),
                           clip("b", "running")])
COMPLETED = callback("t-1", [clip("a", "succeeded", audio_url="http://cdn/a.mp3"),
                             clip("b", "succeeded", audio_url="http://cdn/b.mp3")])


def signed_headers(
    body: bytes,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    delivery_id: str | None = None,
    event: str | None = None,
) -> dict[str, str]:
    headers = sign_musicapi(secret, body, int(time.time()) if timestamp is None else timestamp)
    if delivery_id is not None:
        headers["X-Webhook-Id"] = delivery_id
        headers["Idempotency-Key"] = delivery_id
    if event is not None:
        headers["X-Webhook-Event"] = event
    return headers


@asynccontextmanager
async def app_client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client bound to ``app`` in-process, inside the app's lifespan."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            yield client


async def post_signed(
    client: httpx.AsyncClient,
    body: bytes,
    *,
    clock: Clock | None = None,
    path: str = "/webhooks/sonic",
    **header_options: Any,
) -> httpx.Response:
    if clock is not None and "timestamp" not in header_options:
        header_options["timestamp"] = int(clock.now())
    return await client.post(path, content=body, headers=signed_headers(body, **header_options))


EMPTY_COUNTS = {"deliveries": 0, "tasks": 0, "clips": 0, "transitions": 0, "jobs": 0, "files": 0,
                "children": 0}


def free_port() -> int:
    """A port that was free a moment ago, for servers whose URL must be known before they
    start (the receiver's public URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
