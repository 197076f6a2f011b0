"""``POST /tasks``: create a task through the receiver, so that it is tracked from the start
with its type (routes and follow-up rules match on it) and comes back to this receiver's
webhook, signed with its secret.

The body is a create request as the Sonic API takes it, without ``webhook_url`` and
``webhook_secret`` (the receiver sets both). With ``"provider": "<name>"`` it goes through
that enabled provider instead (:mod:`receiver.providers`): the same fields, translated by
the provider's client, and the callback URL ``/webhooks/<name>``, with a fresh per-task
token where the provider authenticates no body
(:meth:`receiver.providers.calls.ProviderCalls.create`).

Answers: 201 ``{task_id, task_type, provider}``; 400 with the seed's message for an invalid
Sonic request (checked before anything is sent), or the provider's, or ``unknown_provider``
for one that is not enabled; 403 when credits are short; 502 when the service refused our
key or may have created the task without saying so (``outcome_unknown``: check with ``replay
reconcile``, do not resend blindly); 413 when the body is over the receiver's limit; 503
when the service or this receiver's configuration is not available
(``provider_not_configured``: its table has no ``api_key``).
"""

from __future__ import annotations

import json

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from receiver.errors import BodyTooLarge
from receiver.providers import SONIC
from receiver.runtime import Runtime, runtime_of
from receiver.sonic.contract import CreateRequest
from receiver.sonic.errors import (
    CreateOutcomeUnknown,
    InsufficientCredits,
    SonicAuthError,
    SonicError,
    SonicUnavailable,
    SonicValidationError,
)
from receiver.webhook import read_body

log = structlog.get_logger("receiver.creation")


async def post_task(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    try:
        body = await read_body(request, runtime.settings.max_body_bytes)
    except BodyTooLarge as exc:
        return JSONResponse({"error": "body_too_large", "limit": exc.limit}, 413)
    return await create_task(runtime, body)


def creation_routes() -> list[BaseRoute]:
    """``POST /tasks``, to be mounted behind the admin authentication."""
    return [Route("/tasks", post_task, methods=["POST"])]


async def create_task(runtime: Runtime, body: bytes) -> JSONResponse:
    settings = runtime.settings
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _error(400, "invalid_json", "the body is not JSON")
    if not isinstance(fields, dict):
        return _error(400, "invalid_json", "the body is not a JSON object")
    provider = fields.pop("provider", SONIC)
    if provider != SONIC and (not isinstance(provider, str) or provider not in
                              runtime.adapters):
        enabled = ", ".join([SONIC, *runtime.adapters])
        return _error(400, "unknown_provider",
                      f"provider must be one of those enabled: {enabled}")
    if provider == SONIC and runtime.sonic is None:
        return _error(503, "sonic_not_configured", "set SONIC_API_BASE_URL and SONIC_API_KEY")
    if provider != SONIC and (runtime.calls is None or provider not in runtime.calls.clients):
        return _error(503, "provider_not_configured", f"set [providers.{provider}] api_key")
    if settings.webhook_url is None:
        return _error(503, "public_url_not_set", "set RECEIVER_PUBLIC_URL")
    if provider == SONIC:
        fields.update(webhook_url=settings.webhook_url,
                      webhook_secret=settings.webhook_secrets[0] if settings.webhook_secrets
                      else None)
    else:  # the provider's own callback URL (and token) is set by its client
        fields.pop("webhook_url", None)
        fields.pop("webhook_secret", None)
    try:
        request = CreateRequest.from_json(fields)
        if provider == SONIC:
            assert runtime.sonic is not None
            created = await runtime.sonic.create(request)
        else:
            assert runtime.calls is not None
            created = await runtime.calls.create(provider, request)
    except SonicValidationError as exc:
        return _error(400, "invalid_request", exc.message)
    except InsufficientCredits as exc:
        return _error(403, "insufficient_credits", exc.message)
    except SonicAuthError as exc:
        return _error(502, "upstream_refused_key", exc.message)
    except CreateOutcomeUnknown as exc:
        log.error("create_outcome_unknown", error=exc.message)
        return _error(502, "outcome_unknown", exc.message)
    except SonicUnavailable as exc:
        return _error(503, "upstream_unavailable", exc.message)
    except SonicError as exc:
        return _error(502, "upstream_error", exc.message)
    task_type = str(request.task_type)
    # its webhook may have come first: registering writes the jobs it owes
    await runtime.storage.ingest.register_task(created.task_id, task_type=task_type,
                                               now=runtime.clock.now(), router=runtime.router,
                                               provider=provider)
    log.info("task_created", task_id=created.task_id, task_type=task_type, provider=provider)
    return JSONResponse({"task_id": created.task_id, "task_type": task_type,
                         "provider": provider}, 201)


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status)
