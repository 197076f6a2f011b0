"""Hypothesis: whatever arrives, signed or not, the receiver never answers 5xx."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.app import create_app
from tests.support import app_client, settings_for, signed_headers

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=20,
)
clip_like = st.fixed_dictionaries(
    {},
    optional={
        "clip_id": st.one_of(st.text(max_size=8), st.integers(), st.none()),
        "state": st.sampled_from(["pending", "running", "succeeded", "failed", "x", ""]),
        "duration": st.one_of(st.floats(), st.text(max_size=6), st.integers()),
        "audio_url": st.one_of(st.none(), st.text(max_size=20)),
    },
)
callback_like = st.fixed_dictionaries(
    {},
    optional={
        "task_id": st.one_of(st.text(max_size=8), st.integers(), st.none()),
        "event": st.sampled_from(["song.streaming", "song.completed", "song.failed", "zzz"]),
        "code": st.one_of(st.integers(), st.text(max_size=3)),
        "data": st.one_of(st.lists(clip_like, max_size=3), json_values),
    },
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    callback_like.map(lambda v: json.dumps(v).encode()),
)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=70)
headers = st.dictionaries(
    st.sampled_from(["X-Webhook-Signature", "X-Webhook-Timestamp", "X-Webhook-Id",
                     "X-Webhook-Event", "Idempotency-Key", "X-Signature", "webhook-id",
                     "webhook-signature", "webhook-timestamp", "Content-Type"]),
    header_values,
    max_size=5,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def _never_5xx(data: st.DataObject, portal: Any, client: httpx.AsyncClient) -> None:
    body = data.draw(bodies, label="body")
    mode = data.draw(st.sampled_from(["signed", "signed+noise", "noise"]), label="mode")
    sent: dict[str, str] = {}
    if mode != "signed":
        sent.update(data.draw(headers, label="headers"))
    if mode != "noise":
        sent.update(signed_headers(body, timestamp=int(time.time())))
    query = data.draw(st.sampled_from(["", "?task_id=q1", "?task_id="]), label="query")
    response = portal.call(lambda: client.post("/webhooks/sonic" + query, content=body,
                                               headers=sent))
    assert response.status_code < 500, (response.status_code, response.text)
    if mode == "signed":
        assert response.status_code in (200, 422), response.text


def test_random_bodies_and_headers_never_produce_a_5xx(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path))
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(app_client(app)) as client,
    ):
        _never_5xx(portal=portal, client=client)
