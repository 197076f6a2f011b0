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

With no admin token configured the admin surface is refused (:mod:`receiver.auth`) unless the
operator opened it explicitly; the origin and form-token checks still apply to the dashboard's
forms then.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qs, urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.auth import AdminAuth, bearer_token, token_matches
from receiver.settings import Settings

COOKIE = "receiver_console"
MAX_AGE_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN_KEY = secrets.token_bytes(32)  # no token: sessions last as long as the process


class Sessions:
    """Signing and checking the dashboard's cookie and form tokens."""

    def __init__(self, admin_token: str | None, *, open_key: str | None = None) -> None:
        """``open_key``: the key's material when no admin token is configured (a secret that
        every process shares, e.g. the webhook secret), so that a form rendered by one
        process is accepted by another."""
        self.admin_token = admin_token
        material = (admin_token or open_key or "").encode() or _OPEN_KEY
        self._key = hmac.new(material, b"sonic-receiver console session v1",
                             hashlib.sha256).digest()
        self._serializer = URLSafeTimedSerializer(self._key, salt="console-session")

    def token_matches(self, presented: str) -> bool:
        """The login form's token is the admin token (constant time)."""
        if self.admin_token is None:
            return False
        return token_matches(presented.strip(), self.admin_token)

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


class ConsoleAuth(AdminAuth):
    """:class:`receiver.auth.AdminAuth` extended with the dashboard's session: the one
    middleware on the admin ``Mount``.

    Let in: a valid Bearer token; the session cookie (changes also need the same origin and
    the form token); or anyone when the operator opened the admin surface explicitly (changes
    from a browser still need the same origin and the form token). The login form and the
    static files are public. Otherwise a page redirects to the login form, and anything else
    gets AdminAuth's own answer (401, or 403 when no token is configured).
    ``scope["console_auth"]`` says how the request was let in (for the audit log)."""

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
            body = await request.body()  # read once here, replayed to the endpoint
            replay = _replay(body, receive)
        verdict = self.verdict(request, body)
        if verdict == "deny":
            await super().__call__(scope, replay, send)  # AdminAuth's own refusal
        elif isinstance(verdict, Response):
            await verdict(scope, receive, send)
        else:
            scope["console_auth"] = verdict
            await self.app(scope, replay, send)

    def verdict(self, request: Request, body: bytes) -> Response | str:
        """How the request is let in (a label), a response refusing it, or ``"deny"``."""
        sessions = self.sessions
        path = request.url.path
        if path == self.login_path or path.startswith("/ui/static/"):
            return "public"
        changes = request.method not in SAFE_METHODS
        token = self.settings.admin_token
        if token is not None and token_matches(bearer_token(request), token):
            return "token"
        sid = sessions.session_id(request) if token is not None else None
        open_admin = token is None and self.settings.insecure_open_admin
        if sid is None and not open_admin:
            if token is not None and path.startswith("/ui") and not changes:
                return RedirectResponse(f"{self.login_path}?next={_safe_next(path)}", 303)
            return "deny"
        request.scope["console_sid"] = sid
        browser = sid is not None or path.startswith("/ui") or "origin" in request.headers
        if changes and browser and not csrf_ok(request, body, sessions, sid):
            return JSONResponse({"error": "cross_site_request_refused"}, 403)
        return "session" if sid is not None else "open"


def _safe_next(path: str) -> str:
    return path if path.startswith("/ui") and "//" not in path else "/ui"


def sessions_of(request: Request) -> Sessions:
    """The app's sessions (set by :func:`receiver.app.create_app`)."""
    sessions: Sessions = request.app.state.console_sessions
    return sessions
