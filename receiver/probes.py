"""The probes an orchestrator calls: ``GET /healthz`` (the process answers) and ``GET /readyz``
(its store takes a write now: 503 until the app's lifespan has opened it, and while it cannot).

They stay outside the admin surface and need no token, and they say no more than their status:
a probe is open to anyone who can reach the port.
"""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from receiver.errors import StoreError
from receiver.runtime import runtime_of

log = structlog.get_logger("receiver.probes")


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    try:
        await runtime_of(request).storage.ingest.check_writable()
    except (StoreError, RuntimeError) as exc:
        log.warning("not_ready", error=str(exc))
        return JSONResponse({"status": "unavailable", "error": "store_unavailable"}, 503)
    return JSONResponse({"status": "ready"})


def probe_routes() -> list[BaseRoute]:
    """The probes, to be served outside the admin authentication."""
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
