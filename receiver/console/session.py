"""Who may use the admin surface, and the dashboard's login sessions.

- The JSON API takes an operator's token as a Bearer token (the admin token, or a named
  operator's from ``[[admin.tokens]]``, compared in constant time).
- The dashboard logs in once with such a token through a form. The session is kept in the
  store (:meth:`receiver.storage.admin.Admin.open_session`); the cookie (HttpOnly,
  SameSite=Strict, ``Secure`` over https) holds only a random secret whose hash finds it.
  So a session ends for every process at once: on logout, when an operator ends it from the
  sessions page, after the idle limit or the longest life (``[admin] session_idle``,
  ``session_max``), or when the token it was opened with is changed or removed.
- Wrong tokens, by the form or as a Bearer token, are counted per client address
  (:class:`receiver.auth.Throttle`): past a few, the address waits longer after each, and is
  answered 429 with ``Retry-After`` meanwhile; each refusal is written to the audit log.
- A request authenticated by the cookie that changes something (any method but GET/HEAD) must
  also come from this origin (``Origin``, else ``Referer``, equal to the request's own) and
  carry the session's form token (field ``csrf`` or header ``X-CSRF-Token``, a MAC of the
  session's secret): SameSite alone is not trusted against sibling subdomains or old browsers.
- A page asked for without a session (never had one, or it ended) redirects to the login form,
  which returns to that page (for a form posted after the session ended: to the page it was
  posted from); the live updates' stream answers 401 so that the page can do the same.

With no token configured the admin surface is refused (:mod:`receiver.auth`) unless the
operator opened it explicitly; the origin and form-token checks still apply to the dashboard's
forms then.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.auth import (
    AdminAuth,
    Throttle,
    bearer_token,
    client_address,
    operator_of,
    retry_after,
)
from receiver.console.shapes import Error, ShapeResponse
from receiver.errors import BodyTooLarge
from receiver.runtime import runtime_of
from receiver.settings import Settings
from receiver.storage.admin import Admin, ConsoleSession
from receiver.webhook import read_body

log = structlog.get_logger("receiver.console")

COOKIE = "receiver_console"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOUCH_S = 30.0  # a session's last use is written at most this often
LIVE_PREFIX = "/ui/live"  # the live updates' stream: answered 401, not redirected
_TOKEN_KEY = b"sonic-receiver console: the token a session was opened with"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_hash(token: str) -> str:
    """What a session keeps of the token it was opened with (to end it when that changes)."""
    return hmac.new(_TOKEN_KEY, token.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Visitor:
    """How a request was let in: ``how`` is ``token`` (Bearer), ``session`` (the cookie),
    ``open`` (no token configured, opened explicitly) or ``public`` (the login form, static
    files); ``operator`` names who, when known; ``csrf`` is the form token of its pages."""

    how: str
    operator: str | None
    csrf: str
    session: ConsoleSession | None = None

    def actor(self, address: str) -> str:
        """Who acts, as the audit log says it."""
        return f"{self.operator or 'anyone'} via {self.how} from {address}"


class Sessions:
    """The console's sessions and form tokens over the store, and the login throttle."""

    def __init__(self, settings: Settings, *, throttle: Throttle,
                 open_key: str | None = None) -> None:
        """``open_key``: the form tokens' key material when no token is configured (a secret
        every process shares, e.g. the webhook secret), so that a form rendered by one process
        is accepted by another."""
        self.settings = settings
        self.throttle = throttle
        material = open_key.encode() if open_key else secrets.token_bytes(32)
        self._open_key = hmac.new(material, b"sonic-receiver console open forms",
                                  hashlib.sha256).digest()
        self._tokens = {name: token_hash(token) for name, token in settings.operators}

    @property
    def needs_login(self) -> bool:
        return bool(self._tokens)

    def operator_of(self, presented: str) -> str | None:
        """The operator whose token the login form was given (constant time)."""
        return operator_of(presented.strip(), self.settings)

    async def open(self, admin: Admin, request: Request, response: Response, *,
                   operator: str, now: float) -> None:
        """Keep a new session for ``operator`` and set its cookie on ``response``."""
        secret = secrets.token_urlsafe(32)
        await admin.open_session(
            secret_hash=_digest(secret), operator=operator, token_hash=self._tokens[operator],
            now=now, max_s=self.settings.session_max_s, client=client_address(request),
            user_agent=request.headers.get("user-agent"))
        response.set_cookie(COOKIE, secret, max_age=int(self.settings.session_max_s), path="/",
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")

    async def current(self, admin: Admin, request: Request, *, now: float,
                      touch: bool = True) -> tuple[ConsoleSession, str] | None:
        """The open session of the request's cookie, and its secret; None when there is
        none, it ended, or the token it was opened with is no longer its operator's.
        ``touch``: the request counts as a use (the idle limit starts again)."""
        secret = request.cookies.get(COOKIE)
        if not secret or len(secret) > 128:
            return None
        found = await admin.find_session(_digest(secret), now=now,
                                         idle_s=self.settings.session_idle_s)
        if found is None:
            return None
        expected = self._tokens.get(found.operator)
        if expected is None or not hmac.compare_digest(expected, found.token_hash):
            return None
        if touch and now - found.seen_at >= TOUCH_S:
            await admin.touch_session(found.id, now=now)
        return found, secret

    def csrf_token(self, secret: str | None) -> str:
        """The form token of a session (a MAC of its secret), or of the open console."""
        key = secret.encode() if secret else self._open_key
        return hmac.new(key, b"console form token", hashlib.sha256).hexdigest()

    @staticmethod
    def clear_cookie(response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def same_origin(request: Request) -> bool:
    """The request says it comes from a page of this origin."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    own = urlsplit(str(request.url))
    return (parts.scheme, parts.netloc) == (own.scheme, own.netloc)


def form_fields(request: Request, body: bytes) -> dict[str, str]:
    """The first value of each field of an urlencoded form body (else nothing)."""
    if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"):
        return {}
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def csrf_ok(request: Request, body: bytes, expected: str) -> bool:
    """Origin check plus the form token, from a header or the (urlencoded) form."""
    if not same_origin(request):
        return False
    presented = request.headers.get("x-csrf-token")
    if presented is None:
        presented = form_fields(request, body).get("csrf")
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands ``body`` over once, then waits on the real one (disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def too_many(wait_s: float) -> JSONResponse:
    return JSONResponse(
        {"error": "too_many_attempts",
         "message": f"too many wrong tokens from this address: try again in "
                    f"{retry_after(wait_s)} s"},
        429, headers={"Retry-After": retry_after(wait_s)})


async def refused(request: Request, *, how: str, failures: int) -> None:
    """Write a refused token to the audit log (and the log)."""
    address = client_address(request)
    log.warning("admin_token_refused", how=how, client=address, failures=failures)
    await runtime_of(request).storage.admin.audit(
        actor=f"unknown via {how} from {address}", action=f"{how}_refused",
        target=request.url.path, detail={"failures": failures})


def holds_nul(body: bytes, content_type: str) -> bool:
    """Whether a request body carries a NUL character in a value: raw, or escaped as its
    format escapes one (``%00`` in a form, ``\\u0000`` in JSON)."""
    escaped = b"%00" if "form-urlencoded" in content_type else b"\\u0000"
    return b"\x00" in body or escaped in body


class ConsoleAuth(AdminAuth):
    """:class:`receiver.auth.AdminAuth` extended with the dashboard's session: the one
    middleware on the admin ``Mount``.

    Let in: a valid Bearer token; the session cookie (changes also need the same origin and
    the form token); or anyone when the operator opened the admin surface explicitly (changes
    from a browser still need the same origin and the form token). The login form and the
    static files are public. Otherwise a page redirects to the login form, and anything else
    gets AdminAuth's own answer (401, or 403 when no token is configured); an address that
    sent too many wrong tokens gets 429. ``scope["console_visitor"]`` says who was let in and
    how (:class:`Visitor`)."""

    def __init__(self, app: ASGIApp, *, settings: Settings, sessions: Sessions,
                 login_path: str = "/ui/login") -> None:
        super().__init__(app, settings=settings)
        self.sessions = sessions
        self.login_path = login_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        body = b""
        replay = receive
        if request.method not in SAFE_METHODS:
            # read once here (the form token is in it), replayed to the endpoint; no more
            # than a delivery may be, whoever sends it
            try:
                body = await read_body(request, self.settings.max_body_bytes)
            except BodyTooLarge as exc:
                too_large = JSONResponse({"error": "body_too_large", "limit": exc.limit}, 413,
                                         headers={"connection": "close"})
                await too_large(scope, receive, send)
                return
            if holds_nul(body, request.headers.get("content-type", "")):
                # nothing stored holds one (receiver.clips.is_text), and PostgreSQL refuses
                # one even as a parameter: a bad request, whoever sends it
                await ShapeResponse(Error(error="a value holds a NUL character"), 400)(
                    scope, receive, send)
                return
            replay = _replay(body, receive)
        verdict = await self.verdict(request, body)
        if verdict == "deny":
            await super().__call__(scope, replay, send)  # AdminAuth's own refusal
        elif isinstance(verdict, Response):
            await verdict(scope, receive, send)
        else:
            scope["console_visitor"] = verdict
            await self.app(scope, replay, send)

    async def verdict(self, request: Request, body: bytes) -> Response | Visitor | str:
        """How the request is let in, a response refusing it, or ``"deny"``."""
        sessions = self.sessions
        path = request.url.path
        if path == self.login_path or path.startswith("/ui/static/"):
            return Visitor("public", None, sessions.csrf_token(None))
        changes = request.method not in SAFE_METHODS
        presented = bearer_token(request)
        if presented is not None and sessions.needs_login:
            return await self._bearer(request, presented)
        if sessions.needs_login:
            runtime = runtime_of(request)
            found = await sessions.current(runtime.storage.admin, request,
                                           now=runtime.clock.now(),
                                           touch=not path.startswith(LIVE_PREFIX))
            if found is None:
                return self._to_login(request, body) if path.startswith("/ui") else "deny"
            session, secret = found
            visitor = Visitor("session", session.operator, sessions.csrf_token(secret), session)
            if changes and not csrf_ok(request, body, visitor.csrf):
                return JSONResponse({"error": "cross_site_request_refused"}, 403)
            return visitor
        if not self.settings.insecure_open_admin:
            return "deny"
        visitor = Visitor("open", None, sessions.csrf_token(None))
        browser = path.startswith("/ui") or "origin" in request.headers
        if changes and browser and not csrf_ok(request, body, visitor.csrf):
            return JSONResponse({"error": "cross_site_request_refused"}, 403)
        return visitor

    async def _bearer(self, request: Request, presented: str) -> Response | Visitor | str:
        throttle = self.sessions.throttle
        address = client_address(request)
        wait = throttle.wait_s(address)
        if wait > 0:
            return too_many(wait)
        operator = operator_of(presented, self.settings)
        if operator is None:
            await refused(request, how="token", failures=throttle.failed(address))
            return "deny"
        throttle.succeeded(address)
        return Visitor("token", operator, self.sessions.csrf_token(None))

    def _to_login(self, request: Request, body: bytes) -> Response:
        """No open session: a page goes to the login form (and back to where the operator
        was); the live stream answers 401 for its page to do that."""
        if request.url.path.startswith(LIVE_PREFIX):
            return JSONResponse({"error": "session_ended"}, 401)
        if request.method in SAFE_METHODS:
            back = raw_target(request)
        else:  # a form posted after the session ended: back to the page it was posted from
            back = form_fields(request, body).get("back") or _referer_path(request) or "/ui"
        ended = "&ended=1" if request.cookies.get(COOKIE) else ""
        return RedirectResponse(f"{self.login_path}?next={quote(safe_next(back))}{ended}", 303)


def raw_target(request: Request) -> str:
    """The request's path and query as sent (ids in it still percent-encoded)."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else quote(request.url.path)
    return path + (f"?{request.url.query}" if request.url.query else "")


def _referer_path(request: Request) -> str | None:
    referer = request.headers.get("referer")
    if not referer or not same_origin(request):
        return None
    parts = urlsplit(referer)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def safe_next(target: str | None) -> str:
    """Where to go after the login form: a console page of this site, else the overview."""
    if (not target or not target.startswith("/ui") or "//" in target or "\\" in target
            or any(ord(c) < 0x20 for c in target)):
        return "/ui"
    return target


def sessions_of(request: Request) -> Sessions:
    """The app's sessions (set by :func:`receiver.app.create_app`)."""
    sessions: Sessions = request.app.state.console_sessions
    return sessions


def visitor_of(request: Request) -> Visitor:
    """Who the request is, as :class:`ConsoleAuth` let it in."""
    visitor = request.scope.get("console_visitor")
    if isinstance(visitor, Visitor):
        return visitor
    return Visitor("open", None, sessions_of(request).csrf_token(None))
