"""schemathesis against /openapi.json on a real server on loopback: every JSON route, the
webhook included (its generated bodies signed before they are sent), answers without a 5xx and
never contradicts the document."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis import checks

from receiver.app import create_app
from receiver.console.openapi import document
from tests.support import SECRET, settings_for, signed_headers
from tests.waiting import wait_until_blocking

TOKEN = "schema-token"
# POST /tasks creates a task at the Sonic API: without one configured it answers 503 by design
# (tests/test_creation.py covers it against the sandbox).
schema = schemathesis.openapi.from_dict(document()).exclude(path="/tasks", method="POST")
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The receiver on loopback, in a thread of its own (hypothesis drives sync tests)."""
    tmp: Path = tmp_path_factory.mktemp("schema")
    app = create_app(settings_for(tmp, admin_token=TOKEN, worker="off"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "the receiver's thread ended at start"
        return server.started

    wait_until_blocking(started, within=20, every=0.01, what="the receiver to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    # something to find: a task, a delivery and a quarantined one
    for delivery_id, body in (("d-1", {"task_id": "t-1", "code": 200, "data": [
            {"clip_id": "c-1", "state": "succeeded", "title": "Song"}]}),
            ("q-1", {"data": 1})):
        raw = json.dumps(body).encode()
        requests.post(f"{url}/webhooks/sonic", data=raw, timeout=10,
                      headers={**signed_headers(raw, delivery_id=delivery_id),
                               "Content-Type": "application/json"})
    yield url
    server.should_exit = True
    thread.join(10)


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_every_route_keeps_to_the_document(case: schemathesis.Case[Any], base_url: str) -> None:
    kwargs: dict[str, Any] = case.as_transport_kwargs(
        base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"})
    if case.path == "/webhooks/sonic":
        body = json.dumps(kwargs.pop("json", None)).encode()
        kwargs["data"] = body
        kwargs["headers"].update(signed_headers(body, secret=SECRET))
        kwargs["headers"]["Content-Type"] = "application/json"
    kwargs.pop("timeout", None)
    response = requests.request(**kwargs, timeout=30)
    case.validate_response(response, checks=CHECKS)
