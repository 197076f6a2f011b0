"""Helpers shared by the tests: signed requests, callback bodies, and the app over
``httpx.ASGITransport`` with its lifespan running (ASGITransport alone does not run it)."""

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
from receiver.settings import Settings
from receiver.signatures import sign_musicapi

SECRET = "test-secret-1"


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
