"""The headers every response of the receiver carries, whatever answered it.

:class:`SecurityHeaders` wraps the whole app (deliveries included): ``nosniff`` (a body is
only ever what its type says), ``Referrer-Policy: same-origin`` (no console URL leaves with a
link; same-origin form posts keep their ``Origin``, which the console's cross-site check
needs, unlike ``no-referrer``), ``Cross-Origin-Resource-Policy: same-origin`` (another origin,
another port of the same host included, cannot embed a kept file or an answer with the
operator's cookie). A response that sets no ``Content-Security-Policy`` gets one that allows
nothing and no framing: pages and kept files set their own. An error that escapes the app
before it answered is answered here, 500 with these headers and a JSON error, and raised on
to the server's log (Starlette's and uvicorn's own 500s carry none of them).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
ALWAYS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
IF_ABSENT: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", DEFAULT_CSP.encode()),
    (b"x-frame-options", b"DENY"),
)


class SecurityHeaders:
    """ASGI middleware adding :data:`ALWAYS` to every HTTP response (replacing any value the
    app set) and :data:`IF_ABSENT` where the app set none, and answering :data:`FAILED` (500)
    when the app raises before it answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                always = {name for name, _ in ALWAYS}
                headers = [(n, v) for n, v in headers if n.lower() not in always]
                headers += ALWAYS
                headers += [(n, v) for n, v in IF_ABSENT if n not in present]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if not started:
                await send_with_headers({
                    "type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(FAILED)).encode())]})
                await send({"type": "http.response.body", "body": FAILED})
            raise


FAILED = b'{"error":"internal_error","message":"the receiver failed to answer; its log says why"}'
