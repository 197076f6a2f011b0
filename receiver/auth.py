"""Who may use the admin surface: everything but the webhook and the probes.

The rule lives in :func:`authorized`; :class:`AdminAuth` is the one ASGI middleware that applies
it, on the ``Mount`` of the admin routes (see :mod:`receiver.app`), so no endpoint repeats a
check. A console (a dashboard with a cookie login) passes its own ``check`` (one that accepts
its session cookie, then falls back to :func:`authorized`) and mounts its routes behind the
same middleware.

Secure by default: with no ``RECEIVER_ADMIN_TOKEN`` (nor a named operator's token, ``[[admin.
tokens]]``), the admin surface answers 403 with how to configure it, unless the operator opted
out with ``--insecure-open-admin`` (``RECEIVER_INSECURE_OPEN_ADMIN=1``). With tokens, a request
needs ``Authorization: Bearer <token>``, compared in constant time with every operator's token
(:func:`operator_of` names whose it is); anything else gets 401.

Guessing is slowed down by :class:`Throttle`: per client address (an IPv6 one by its /64), a
few wrong tokens are free, then each one more makes the address wait twice as long as the last
before its next try is even looked at.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.clock import Clock
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


def operator_of(given: str | None, settings: Settings) -> str | None:
    """The name of the operator whose token ``given`` is, or None; every token is compared
    (in constant time), whichever matches."""
    found = None
    for name, token in settings.operators:
        if token_matches(given, token) and found is None:
            found = name
    return found


def authorized(conn: HTTPConnection, settings: Settings) -> bool:
    """Whether ``conn`` may use the admin surface under ``settings``."""
    if not settings.operators:
        return settings.insecure_open_admin
    return operator_of(bearer_token(conn), settings) is not None


def client_address(conn: HTTPConnection) -> str:
    """The client's address as the app sees it (a trusted proxy's ``X-Forwarded-For`` already
    applied, :mod:`receiver.proxies`), ``?`` when the server does not say."""
    return conn.client.host if conn.client else "?"


FREE_FAILURES = 5  # wrong tokens an address may send before it waits
FIRST_WAIT_S = 1.0  # the wait after the first failure past the free ones; it doubles after each
LONGEST_WAIT_S = 300.0
FORGET_S = 3600.0  # an address's failures are forgotten this long after its last one
MAX_ADDRESSES = 10_000  # addresses remembered at once (the least recent are forgotten first)


@dataclass
class _Failures:
    count: int
    last_at: float
    allowed_at: float


class Throttle:
    """Wrong tokens per client address, and how long each must wait before its next try.

    Kept in the process (each web process counts on its own): cheap to consult on every
    request, nothing written per guess. An address's count starts again after a success or
    :data:`FORGET_S` without a failure."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    @staticmethod
    def key(address: str) -> str:
        """An address as it is counted: an IPv6 one by its /64 (one host's share)."""
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return address
        if isinstance(parsed, ipaddress.IPv6Address):
            if parsed.ipv4_mapped is not None:
                return str(parsed.ipv4_mapped)
            return str(ipaddress.IPv6Network((parsed, 64), strict=False))
        return str(parsed)

    def _entry(self, address: str) -> _Failures | None:
        key = self.key(address)
        entry = self._failures.get(key)
        if entry is not None and self.clock.now() - entry.last_at > FORGET_S:
            del self._failures[key]
            return None
        return entry

    def wait_s(self, address: str) -> float:
        """How long ``address`` must wait before a token it sends is looked at (0: now)."""
        entry = self._entry(address)
        return 0.0 if entry is None else max(0.0, entry.allowed_at - self.clock.now())

    def failed(self, address: str) -> int:
        """``address`` sent a wrong token: its failures so far."""
        now = self.clock.now()
        key = self.key(address)
        entry = self._entry(address) or _Failures(count=0, last_at=now, allowed_at=now)
        entry.count += 1
        entry.last_at = now
        beyond = entry.count - FREE_FAILURES
        if beyond > 0:
            entry.allowed_at = now + min(LONGEST_WAIT_S, FIRST_WAIT_S * 2 ** (beyond - 1))
        self._failures[key] = entry
        self._failures.move_to_end(key)
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)
        return entry.count

    def succeeded(self, address: str) -> None:
        """``address`` sent a right token: it starts again from nothing."""
        self._failures.pop(self.key(address), None)


def retry_after(wait_s: float) -> str:
    """A ``Retry-After`` value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(wait_s)))


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
        if not self.settings.operators:
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
    if settings.admin_token is None and settings.operator_tokens:
        names = ", ".join(name for name, _ in settings.operator_tokens)
        return (f"admin API: {base_url}/tasks (Authorization: Bearer <an operator's token from "
                f"[[admin.tokens]]: {names}>)")
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
