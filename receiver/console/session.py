"""Who may use the admin surface, and the dashboard's login session.

- The JSON API takes the admin token as a Bearer token (compared in constant time).
- The dashboard logs in once with the same token through a form, which sets a signed cookie
  (HttpOnly, SameSite=Strict, ``Secure`` when served over https). Its key is derived from the
  admin token, so changing the token logs every session out, and several web processes accept
  each other's cookies without sharing anything else.
- A request authenticated by the cookie that changes something (any method but GET/HEAD) must
  also come from this origin (``Origin``, else ``Referer``, equal to the request's own) and
  carry the session's form token (field ``csrf`` or header ``X-CSRF-Token``): SameSite alone
  is not trusted against sibling subdomains or old browsers.

With no admin token configured the admin surface is open (the app decides whether that is
allowed); the origin check still applies to the dashboard's forms.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "receiver_console"
MAX_AGE_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN_KEY = secrets.token_bytes(32)  # no token: sessions last as long as the process


class Sessions:
    """Signing and checking the dashboard's cookie and form tokens."""

    def __init__(self, admin_token: str | None) -> None:
        self.admin_token = admin_token
        material = admin_token.encode() if admin_token else _OPEN_KEY
        self._key = hmac.new(material, b"sonic-receiver console session v1",
                             hashlib.sha256).digest()
        self._serializer = URLSafeTimedSerializer(self._key, salt="console-session")

    def token_matches(self, presented: str) -> bool:
        if self.admin_token is None:
            return False
        return hmac.compare_digest(presented.strip().encode(), self.admin_token.encode())

    def bearer_ok(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(token)

    def new_cookie(self) -> str:
        return self._serializer.dumps({"sid": secrets.token_urlsafe(16)})

    def session_id(self, request: Request) -> str | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data = self._serializer.loads(raw, max_age=MAX_AGE_S)
        except BadSignature:
            return None
        sid = data.get("sid") if isinstance(data, dict) else None
        return sid if isinstance(sid, str) else None

    def csrf_token(self, sid: str | None) -> str:
        """The form token of a session (a MAC of its id): nothing to store."""
        return hmac.new(self._key, f"csrf:{sid or 'open'}".encode(), hashlib.sha256).hexdigest()

    def set_cookie(self, response: Response, request: Request) -> None:
        response.set_cookie(COOKIE, self.new_cookie(), max_age=MAX_AGE_S, path="/",
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")

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


def csrf_ok(request: Request, body: bytes, sessions: Sessions, sid: str | None) -> bool:
    """Origin check plus the session's form token, from a header or the (urlencoded) form."""
    if not same_origin(request):
        return False
    expected = sessions.csrf_token(sid)
    presented = request.headers.get("x-csrf-token")
    if presented is None and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        values = parse_qs(body.decode("latin-1")).get("csrf", [])
        presented = values[0] if values else None
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


class AdminAuth:
    """ASGI middleware for the admin routes: Bearer token or the dashboard's session (with the
    cross-site checks for changes). Pages get a redirect to the login form; JSON gets 401.
    ``scope["console_auth"]`` says how the request was let in (for the audit log)."""

    def __init__(self, app: ASGIApp, *, sessions: Sessions,
                 login_path: str = "/ui/login") -> None:
        self.app = app
        self.sessions = sessions
        self.login_path = login_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        body = b""
        if scope.get("method", "GET") not in SAFE_METHODS:
            body = await request.body()  # read once here, replayed to the endpoint
        denied = await self.check(request, body)
        if denied is not None:
            await denied(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive) if body else receive, send)

    async def check(self, request: Request, body: bytes) -> Response | None:
        sessions = self.sessions
        path = request.url.path
        if path in (self.login_path, "/ui/static") or path.startswith("/ui/static/"):
            return None
        if sessions.admin_token is not None and sessions.bearer_ok(request):
            request.scope["console_auth"] = "token"
            return None
        sid = sessions.session_id(request)
        if sessions.admin_token is not None and sid is None:
            if path.startswith("/ui") and request.method in SAFE_METHODS:
                return RedirectResponse(f"{self.login_path}?next={_safe_next(path)}", 303)
            return JSONResponse({"error": "unauthorized"}, 401,
                                headers={"WWW-Authenticate": 'Bearer realm="receiver"'})
        request.scope["console_auth"] = "session" if sid else "open"
        request.scope["console_sid"] = sid
        changes = request.method not in SAFE_METHODS
        if changes and (sid is not None or path.startswith("/ui")) and not csrf_ok(
            request, body, sessions, sid
        ):
            return JSONResponse({"error": "cross_site_request_refused"}, 403)
        return None


def _safe_next(path: str) -> str:
    return path if path.startswith("/ui") and "//" not in path else "/ui"


Handler = Callable[[Request], Awaitable[Response]]


def sessions_of(request: Request) -> Sessions:
    """The app's sessions (set by :func:`receiver.app.create_app`)."""
    sessions: Sessions = request.app.state.console_sessions
    return sessions
