"""Live pages: the parts of a console page that change, sent as they change.

``GET /ui/live?page=<a page's path and query>`` is a stream of server-sent events: every
:data:`EVERY_S` the page's view (:data:`receiver.console.ui.LIVE_VIEWS`) is built again and its
``live_*`` blocks rendered; when they differ from what was last sent, an ``event: blocks``
carries them (``{"block name": "html", ...}``); what changes only because time passed (how
long ago, :func:`receiver.console.templating.ticking`) is not a change: the page keeps those
current itself. The page's script swaps each block whose HTML
changed, keeping the scroll position, the focus, open details and a playing player. With
``once=1`` the same blocks are answered once as JSON: the fallback the script polls where
EventSource is missing or keeps failing.

A stream ends after :data:`STREAM_S` (the browser reconnects on its own, ``retry``), so that a
server shutting down never waits long for one; it ends at once with ``event: ended`` when the
session does, and the page then goes to the login form. Following a page does not count as
using the session: the idle limit still applies to an open tab left alone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import unquote, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Match, Route

from receiver.console.session import sessions_of, visitor_of
from receiver.console.templating import TICKING
from receiver.console.ui import LIVE_VIEWS, View, ViewOf, live_blocks, render_block
from receiver.runtime import runtime_of

EVERY_S = 2.0
STREAM_S = 25.0
RECONNECT_MS = 2000


async def _nothing(request: Request) -> Response:
    return Response(status_code=204)


_ROUTES = [(Route(path, _nothing), view_of) for path, view_of in LIVE_VIEWS]


def page_request(request: Request, target: str) -> tuple[Request, ViewOf] | None:
    """The request for the page ``target`` (a path and query of a live page), made from
    this one (the same visitor), and the view that builds it; None for any other page."""
    parts = urlsplit(target)
    path = unquote(parts.path)
    if parts.scheme or parts.netloc or not path.startswith("/ui"):
        return None
    for route, view_of in _ROUTES:
        match, child = route.matches({"type": "http", "path": path, "method": "GET"})
        if match is Match.FULL:
            scope = {**request.scope, "path": path, "raw_path": parts.path.encode("latin-1"),
                     "query_string": parts.query.encode("latin-1"),
                     "path_params": child.get("path_params", {})}
            return Request(scope), view_of
    return None


def blocks(request: Request, view: View) -> dict[str, str]:
    """The page's live blocks, rendered."""
    return {name: render_block(request, view, name) for name in live_blocks(view)}


async def live(request: Request) -> Response:
    found = page_request(request, request.query_params.get("page", ""))
    if found is None:
        return JSONResponse({"error": "not_a_live_page"}, 404)
    page, view_of = found
    if request.query_params.get("once") == "1":
        return JSONResponse(blocks(page, await view_of(page)),
                            headers={"Cache-Control": "no-store"})
    return StreamingResponse(_events(request, page, view_of), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _events(request: Request, page: Request, view_of: ViewOf) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    end = loop.time() + STREAM_S
    last: dict[str, str] | None = None
    yield f"retry: {RECONNECT_MS}\n\n"
    while True:
        if not await _still_open(request):
            yield "event: ended\ndata: {}\n\n"
            return
        found = blocks(page, await view_of(page))
        # time passing alone is no change: the page ticks (compared before JSON escapes them)
        shown = {name: TICKING.sub("", html) for name, html in found.items()}
        if shown != last:
            yield f"event: blocks\ndata: {json.dumps(found, separators=(',', ':'))}\n\n"
            last = shown
        else:
            yield ": unchanged\n\n"
        if loop.time() + EVERY_S >= end:
            return
        await asyncio.sleep(EVERY_S)  # the wall clock: how often a person sees a change


async def _still_open(request: Request) -> bool:
    """Whether the session that opened the stream is still open (always, without one)."""
    visitor = visitor_of(request)
    if visitor.session is None:
        return True
    runtime = runtime_of(request)
    found = await sessions_of(request).current(runtime.storage.admin, request,
                                               now=runtime.clock.now(), touch=False)
    return found is not None and found[0].id == visitor.session.id


def live_routes() -> list[BaseRoute]:
    return [Route("/ui/live", live, methods=["GET"])]
