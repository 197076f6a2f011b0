"""An error that escapes the receiver before it answered is still answered with every security
header and a JSON error (Starlette's and uvicorn's own 500s carry none), and still reaches the
server's log."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import pytest

from receiver.app import create_app
from receiver.clock import FakeClock
from receiver.headers import ALWAYS, DEFAULT_CSP
from receiver.server import running
from receiver.storage.admin import Admin
from receiver.webhook import WebhookEndpoint
from tests.console.support import TOKEN
from tests.support import callback, clip, http_client, post_signed, settings_for

pytestmark = pytest.mark.anyio


async def test_a_bug_behind_an_admin_route_is_a_500_with_the_headers_over_real_uvicorn(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A read that raises stands in for a bug: no real peer makes the store's read fail with
    # an error the console does not expect, and that is what escapes an endpoint.
    async def broken(self: Admin, *args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError("a bug in a read")

    monkeypatch.setattr(Admin, "list_tasks", broken)
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                            insecure_open_admin=False)
    async with running(create_app(settings, clock=clock)) as base, http_client(
            base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        answer = await client.get("/tasks")
        after = await client.get("/healthz")  # the server is still up
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal_error",
                             "message": "the receiver failed to answer; its log says why"}
    for name, value in ALWAYS:
        assert answer.headers[name.decode()] == value.decode()
    assert answer.headers["content-security-policy"] == DEFAULT_CSP
    assert answer.headers["x-frame-options"] == "DENY"
    assert after.status_code == 200
    assert any("a bug in a read" in (r.exc_text or "") or (
        r.exc_info is not None and "a bug in a read" in str(r.exc_info[1]))
        for r in caplog.records), "the error reaches the server's log"


async def test_a_bug_on_the_delivery_path_is_a_500_with_the_headers_and_nothing_recorded(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The verifier raising what it never raises stands in for a bug on the webhook's own
    # fast path (served outside Starlette's error middleware): nothing else makes it raise.
    def broken(self: WebhookEndpoint, *args: Any) -> NoReturn:
        raise RuntimeError("a bug in verification")

    monkeypatch.setattr(WebhookEndpoint, "_verify", broken)
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                            insecure_open_admin=False)
    async with running(create_app(settings, clock=clock)) as base, http_client(
            base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        answer = await post_signed(client, callback("t-bug", [clip("c", "succeeded")]),
                                   clock=clock, delivery_id="d-bug")
        monkeypatch.undo()
        deliveries = (await client.get("/deliveries")).json()
    assert answer.status_code == 500
    assert answer.json()["error"] == "internal_error"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["content-security-policy"] == DEFAULT_CSP
    assert deliveries["items"] == []
