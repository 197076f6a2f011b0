"""Who may use the admin surface: everything but the webhook and the probes.

The rule lives in :func:`authorized`; :class:`AdminAuth` is the one ASGI middleware that applies
it, on the ``Mount`` of the admin routes (see :mod:`receiver.app`), so no endpoint repeats a
check. A console (a dashboard with a cookie login) passes its own ``check`` (one that accepts
its session cookie, then falls back to :func:`authorized`) and mounts its routes behind the
same middleware.

Secure by default: with no ``RECEIVER_ADMIN_TOKEN``, the admin surface answers 403 with how to
configure it, unless the operator opted out with ``--insecure-open-admin``
(``RECEIVER_INSECURE_OPEN_ADMIN=1``). With a token, a request needs
``Authorization: Bearer <token>``, compared in constant time; anything else gets 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.settings import Settings

NOT_CONFIGURED = (
    "the admin API is off: set RECEIVER_ADMIN_TOKEN (or RECEIVER_ADMIN_TOKEN_FILE) and send "
    "'Authorization: Bearer <token>', or start serve with --insecure-open-admin "
    "(RECEIVER_INSECURE_OPEN_ADMIN=1) to open it to anyone who reaches the port"
)
UNAUTHORIZED = "this route needs 'Authorization: Bearer <admin token>'"

Check = Callable[[HTTPConnection, Settings], bool]


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_matches(given: str | None, expected: str) -> bool:
    """``given == expected`` in time that does not depend on where they differ."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8", "surrogateescape"))


def authorized(conn: HTTPConnection, settings: Settings) -> bool:
    """Whether ``conn`` may use the admin surface under ``settings``."""
    if settings.admin_token is None:
        return settings.insecure_open_admin
    return token_matches(bearer_token(conn), settings.admin_token)


class AdminAuth:
    """ASGI middleware: pass the requests ``check`` accepts on, answer the rest with a JSON
    error (403 when no token is configured at all, 401 otherwise)."""

    def __init__(self, app: ASGIApp, *, settings: Settings, check: Check = authorized) -> None:
        self.app = app
        self.settings = settings
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if self.check(conn, self.settings):
            await self.app(scope, receive, send)
            return
        if self.settings.admin_token is None:
            response = JSONResponse({"error": "admin_not_configured", "message": NOT_CONFIGURED},
                                    403)
        else:
            response = JSONResponse(
                {"error": "unauthorized", "message": UNAUTHORIZED}, 401,
                headers={"WWW-Authenticate": 'Bearer realm="receiver"'},
            )
        await response(scope, receive, send)


def how_to_use(settings: Settings, base_url: str) -> str:
    """The start-up line that says where the admin API is and how to call it, without the
    token itself (like Jupyter's token URL, but naming the place the token is kept)."""
    if settings.admin_token is not None:
        source = settings.admin_token_source or "RECEIVER_ADMIN_TOKEN"
        if source.isidentifier():  # an environment variable
            where = f"${source}"
        elif "[receiver]" in source:  # the config file
            where = "<token>"
        else:  # a file of its own
            where = f"$(cat {source})"
        return (f"admin API: {base_url}/tasks (Authorization: Bearer <token from {source}>), "
                f"e.g. curl -H \"Authorization: Bearer {where}\" {base_url}/jobs")
    if settings.insecure_open_admin:
        return (f"admin API: {base_url}/tasks is OPEN to anyone who reaches the port "
                "(--insecure-open-admin)")
    return f"admin API: off ({NOT_CONFIGURED})"
