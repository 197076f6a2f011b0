"""The dashboard at ``/ui``: server-rendered pages over the same reads and actions as the API.

Pages: overview, tasks, a task, deliveries, a delivery, jobs, the audit log, the open sessions,
and the login form; an unknown page answers the console's own "not found" page. Each page is a
:class:`View`: its template and what it shows, built by one function that the page and its
live updates (:mod:`receiver.console.live`) share; the parts of a page that change are blocks
named ``live_*``, re-rendered alone for those updates. Every action is a form: it asks for
confirmation (a bulk retry first shows how many jobs match), carries the session's form token,
and answers with a redirect whose page says what was done. Values from payloads are shown as
data (:mod:`receiver.console.templating`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

import receiver.console.api as api
import receiver.console.shapes as shapes
from receiver.auth import client_address
from receiver.console.covers import cover
from receiver.console.session import (
    SAFE_METHODS,
    Sessions,
    raw_target,
    refused,
    safe_next,
    same_origin,
    sessions_of,
    visitor_of,
)
from receiver.console.shapes import builtins
from receiver.console.templating import HERE, environment, task_href
from receiver.jobs import JobState
from receiver.media import file_response
from receiver.models import JobFilter, Outcome, Source
from receiver.runtime import runtime_of
from receiver.states import State
from receiver.storage.admin import BadCursor

FLASH = "receiver_flash"
PAGE = 50
CSP = ("default-src 'self'; img-src 'self'; media-src 'self'; style-src 'self'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
       "base-uri 'none'; object-src 'none'")
EXPIRY_WARN_S = 12 * 3600  # warn on downloads still pending this long after the job was made
DOWNLOAD_HANDLER = "download_audio"  # the overview's panel of downloads whose links may expire

templates = Jinja2Templates(env=environment())


@dataclass
class View:
    """A page: its template, what it shows, its status, and whether it updates live."""

    template: str
    context: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    live: bool = False


def render(request: Request, view: View, *, flash: bool = True) -> HTMLResponse:
    message = _read_flash(request) if flash else None
    response = templates.TemplateResponse(
        request, view.template, {**common(request), "flash": message,
                                 "live_page": raw_target(request) if view.live else None,
                                 **view.context}, status_code=view.status)
    if message is not None:
        response.delete_cookie(FLASH, path="/ui", httponly=True, samesite="strict")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = CSP
    return response


def common(request: Request) -> dict[str, Any]:
    """What every page shows besides its own: who is logged in, the form token, the time."""
    sessions = sessions_of(request)
    visitor = visitor_of(request)
    runtime = runtime_of(request)
    return {"csrf": visitor.csrf, "logged_in": visitor.session is not None,
            "operator": visitor.operator, "needs_login": sessions.needs_login,
            "admin_open": runtime.settings.admin_open, "now": runtime.clock.now()}


def render_block(request: Request, view: View, block: str) -> str:
    """One ``live_*`` block of a view's page, rendered alone."""
    template = templates.get_template(view.template)
    context = template.new_context({"request": request, **common(request), **view.context})
    return "".join(template.blocks[block](context))


def live_blocks(view: View) -> list[str]:
    template = templates.get_template(view.template)
    return [name for name in template.blocks if name.startswith("live_")]


def _read_flash(request: Request) -> dict[str, Any] | None:
    raw = request.cookies.get(FLASH)
    if not raw:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def done(to: str, title: str, result: Mapping[str, Any], *, ok: bool = True) -> Response:
    """Redirect to ``to``, whose page will say what was done."""
    response = RedirectResponse(to, 303)
    payload = json.dumps({"title": title, "ok": ok, "result": dict(result)}, default=str)
    response.set_cookie(FLASH, base64.urlsafe_b64encode(payload.encode()).decode(), path="/ui",
                        httponly=True, samesite="strict", max_age=60)
    return response


async def form_of(request: Request) -> dict[str, str]:
    """The fields of an urlencoded form (the only kind these pages send), first value each."""
    fields = parse_qs((await request.body()).decode("utf-8", errors="replace"),
                      keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def _back(form: Mapping[str, Any], default: str) -> str:
    to = form.get("back")
    return safe_next(to) if isinstance(to, str) and to else default


def _query(params: Mapping[str, str], **changes: str | None) -> str:
    merged = {k: v for k, v in params.items() if v and k != "partial"}
    for k, v in changes.items():
        if v:
            merged[k] = v
        else:
            merged.pop(k, None)
    return urlencode(merged)


def not_found_page(request: Request) -> Response:
    """An unknown page of the console (once the operator is let in)."""
    return render(request, View("missing.html", {"what": "page", "id": request.url.path}, 404))


# ---- login ---------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    sessions = sessions_of(request)
    runtime = runtime_of(request)
    target = safe_next(request.query_params.get("next"))
    ended = request.query_params.get("ended") == "1"
    view = View("login.html", {"next": target, "error": None, "ended": ended})
    if request.method in SAFE_METHODS:
        return render(request, view)
    if not same_origin(request):
        view.context["error"] = "Log in from this site's own form."
        view.status = 403
        return render(request, view)
    if not sessions.needs_login:
        return RedirectResponse(target, 303)
    address = client_address(request)
    wait = sessions.throttle.wait_s(address)
    if wait > 0:
        view.context["error"] = (f"Too many wrong tokens from this address: try again in "
                                 f"{max(1, round(wait))} s.")
        view.status = 429
        response = render(request, view)
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    token = (await form_of(request)).get("token", "")
    operator = sessions.operator_of(token)
    if operator is None:
        await refused(request, how="login", failures=sessions.throttle.failed(address))
        view.context["error"] = "That is not a token of this receiver."
        view.status = 401
        return render(request, view)
    sessions.throttle.succeeded(address)
    welcome = RedirectResponse(target, 303)
    await sessions.open(runtime.storage.admin, request, welcome, operator=operator,
                        now=runtime.clock.now())
    await runtime.storage.admin.audit(actor=f"{operator} via login from {address}",
                                      action="login", target=None, detail={})
    return welcome


async def logout(request: Request) -> Response:
    visitor = visitor_of(request)
    runtime = runtime_of(request)
    if visitor.session is not None:
        actor = api.actor_of(request)
        await runtime.storage.admin.end_session(visitor.session.id, now=runtime.clock.now(),
                                                by=actor)
        await runtime.storage.admin.audit(actor=actor, action="logout",
                                          target=f"session:{visitor.session.id}", detail={})
    response = RedirectResponse("/ui/login", 303)
    Sessions.clear_cookie(response)
    return response


# ---- the views -------------------------------------------------------------------------------

ViewOf = Callable[[Request], Awaitable[View]]


async def overview_view(request: Request) -> View:
    runtime = runtime_of(request)
    numbers = await api.reads_of(request).overview(now=runtime.clock.now(),
                                                   expiry_warn_s=EXPIRY_WARN_S,
                                                   download_handler=DOWNLOAD_HANDLER)
    per_minute = numbers.deliveries_per_minute
    peak = max((n for _, n in per_minute), default=0)
    busiest = max(per_minute, key=lambda m: m[1]) if peak else None
    ticks = [per_minute[i][0] for i in (0, 15, 30, 45)] + [numbers.now] if per_minute else []
    alerts = await runtime.storage.watch.alerts(active=True, limit=20)
    return View("overview.html", {
        "alerts": alerts,
        "o": numbers, "peak": max(peak, 1), "peak_real": peak, "busiest": busiest,
        "ticks": ticks, "received": sum(numbers.outcomes.values()),
        "public_url": runtime.settings.public_url,
        "backlog": sum(numbers.jobs_by_state.get(s, 0) for s in ("queued", "retrying",
                                                                   "running"))}, live=True)


async def tasks_view(request: Request) -> View:
    params = request.query_params
    reads = api.reads_of(request)
    context: dict[str, Any] = {"params": params, "states": list(State), "page": None,
                               "error": None}
    try:
        where = api.task_filter(params, now=runtime_of(request).clock.now())
        page = await reads.list_tasks(where, limit=PAGE, cursor=params.get("cursor"))
    except (api.BadQuery, BadCursor) as exc:
        return View("tasks.html", {**context, "error": exc.message}, 400)
    shaped = builtins(await api.task_page(reads, page))
    return View("tasks.html", {**context, "page": shaped, "filtered": any(
        params.get(k) for k in ("state", "task_type", "tag", "q", "parent", "since", "until")),
        "next_query": _query(params, cursor=page.next_cursor)},
        live=not params.get("cursor"))


def _id_param(request: Request, name: str) -> str:
    """A page's id: from the path, or from ``?id=`` for an id a path cannot hold."""
    value = request.path_params.get(name)
    return value if isinstance(value, str) else request.query_params.get("id", "")


async def task_view(request: Request) -> View:
    task_id = _id_param(request, "task_id")
    reads = api.reads_of(request)
    detail = await api.task_detail(reads, task_id)
    if detail is None:
        return View("missing.html", {"what": "task", "id": task_id}, 404)
    files: dict[str, dict[str, Any]] = {}
    for f in detail.files:
        files.setdefault(f.clip_id, {})[f.kind] = builtins(f)
    attempts = {job.id: [builtins(shapes.Attempt.of(a)) for a in await reads.job_attempts(job.id)]
                for job in detail.jobs}
    shaped = builtins(detail)
    depth = len(shaped["parents"])
    return View("task.html", {
        "t": shaped, "files": files, "attempts": attempts, "depth": depth,
        "about_clips": [r for r in shaped["results"] if r["clip_id"]],
        "records": [r for r in shaped["results"] if not r["clip_id"]],
        "can_reconcile": runtime_of(request).sonic is not None}, live=True)


async def deliveries_view(request: Request) -> View:
    params = request.query_params
    context: dict[str, Any] = {"params": params, "outcomes": list(Outcome),
                               "sources": list(Source), "page": None, "error": None}
    try:
        page = await api.reads_of(request).list_deliveries(
            api.delivery_filter(params, now=runtime_of(request).clock.now()), limit=PAGE,
            cursor=params.get("cursor"))
    except (api.BadQuery, BadCursor) as exc:
        return View("deliveries.html", {**context, "error": exc.message}, 400)
    return View("deliveries.html", {
        **context, "page": page, "next_query": _query(params, cursor=page.next_cursor),
        "filtered": any(params.get(k) for k in ("outcome", "source", "event", "task_id",
                                                "since"))},
        live=not params.get("cursor"))


async def delivery_view(request: Request) -> View:
    delivery_id = _id_param(request, "delivery_id")
    detail = await api.reads_of(request).get_delivery(delivery_id)
    if detail is None:
        return View("missing.html", {"what": "delivery", "id": delivery_id}, 404)
    raw = detail.raw.body
    _, parsed = api.body_text(raw)
    return View("delivery.html", {
        "d": builtins(api.delivery_detail(detail)),
        # the bytes as received: UTF-8 where they are, \xNN escapes where they are not
        "raw": raw.decode("utf-8", errors="backslashreplace"), "raw_size": len(raw),
        "parsed": parsed, "is_json": parsed is not None,
        "can_resend": runtime_of(request).settings.webhook_url is not None}, live=True)


async def jobs_view(request: Request) -> View:
    params = request.query_params
    reads = api.reads_of(request)
    context: dict[str, Any] = {"params": params, "states": list(JobState), "page": None,
                               "error": None}
    try:
        where = api.job_filter(params, now=runtime_of(request).clock.now())
        page = await reads.list_jobs_page(where, limit=PAGE, cursor=params.get("cursor"))
    except (api.BadQuery, BadCursor) as exc:
        return View("jobs.html", {**context, "error": exc.message}, 400)
    attempts = {j.id: [builtins(shapes.Attempt.of(a)) for a in await reads.job_attempts(j.id)]
                for j in page.items if j.last_error or j.state in (JobState.DEAD,
                                                                   JobState.RETRYING)}
    bulk_state = where.state if where.state in (JobState.DEAD, JobState.DONE) else JobState.DEAD
    retryable = await reads.count_jobs(JobFilter(
        state=bulk_state, handler=where.handler, task_id=where.task_id, since=where.since,
        until=where.until))
    return View("jobs.html", {
        **context, "page": page, "attempts": attempts, "bulk_state": bulk_state.value,
        "retryable": retryable, "next_query": _query(params, cursor=page.next_cursor),
        "back": raw_target(request),
        "filtered": any(params.get(k) for k in ("state", "handler", "task_id", "since",
                                                "until"))},
        live=not params.get("cursor"))


async def audit_view(request: Request) -> View:
    params = request.query_params
    try:
        page = await api.reads_of(request).list_audit(limit=PAGE, cursor=params.get("cursor"))
    except BadCursor as exc:
        return View("missing.html", {"what": "page", "id": exc.message}, 400)
    return View("audit.html", {"page": page,
                               "next_query": _query(params, cursor=page.next_cursor)})


async def sessions_view(request: Request) -> View:
    runtime = runtime_of(request)
    found = await api.reads_of(request).list_sessions(
        now=runtime.clock.now(), idle_s=runtime.settings.session_idle_s)
    visitor = visitor_of(request)
    return View("sessions.html", {
        "sessions": found, "mine": visitor.session.id if visitor.session else None,
        "idle_s": runtime.settings.session_idle_s, "max_s": runtime.settings.session_max_s})


def page(view_of: ViewOf) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint that renders a view as a whole page."""

    async def endpoint(request: Request) -> Response:
        return render(request, await view_of(request))

    endpoint.__name__ = view_of.__name__.removesuffix("_view")
    return endpoint


# The pages that update live, as the live stream finds them by path.
LIVE_VIEWS: list[tuple[str, ViewOf]] = [
    ("/ui", overview_view),
    ("/ui/tasks", tasks_view),
    ("/ui/task", task_view),
    ("/ui/tasks/{task_id:path}", task_view),
    ("/ui/deliveries", deliveries_view),
    ("/ui/delivery", delivery_view),
    ("/ui/deliveries/{delivery_id:path}", delivery_view),
    ("/ui/jobs", jobs_view),
]


# ---- kept files ------------------------------------------------------------------------------


async def kept_file(request: Request) -> Response:
    """A kept file by query (any id works): what ``/files/...`` serves."""
    p = request.query_params
    found = next((f for f in await api.reads_of(request).list_files(p.get("task_id", ""))
                  if f.clip_id == p.get("clip_id") and f.kind == p.get("kind")), None)
    if found is None:
        return Response("no such file\n", status_code=404, media_type="text/plain")
    return await file_response(runtime_of(request).media, found, request)


# ---- actions -------------------------------------------------------------------------------


async def act_retry_job(request: Request) -> Response:
    form = await form_of(request)
    raw = str(form.get("job_id", ""))
    result = None
    if raw.isdigit() and len(raw) < 19:
        result = await api.actions_of(request).retry_job(int(raw), actor=api.actor_of(request))
    back = _back(form, "/ui/jobs")
    if result is None:
        return done(back, f"No job {raw}", {}, ok=False)
    title = (f"Job {raw} queued again" if result["requeued"]
             else f"Job {raw} was {result['was']}: nothing to retry")
    return done(back, title, result)


async def act_retry_jobs(request: Request) -> Response:
    """Step one (``confirm`` absent): count the matches and ask. Step two: retry them all."""
    form = await form_of(request)
    fields = {k: str(form.get(k, "")) for k in ("state", "handler", "task_id", "since", "until")}
    fields["state"] = fields["state"] or "dead"
    try:
        where = api.job_filter(fields, now=runtime_of(request).clock.now())
        if where.state not in (JobState.DEAD, JobState.DONE):
            raise api.BadQuery("only dead or done jobs can be retried")
    except api.BadQuery as exc:
        return done("/ui/jobs?" + _query(fields), "Nothing retried", {"error": exc.message},
                    ok=False)
    actions = api.actions_of(request)
    if form.get("confirm") != "yes":
        counted = await actions.retry_matching(where, dry_run=True, actor=api.actor_of(request))
        return render(request, View("confirm_retry.html", {"fields": fields,
                                                           "matched": counted["matched"]}))
    result = await actions.retry_matching(where, dry_run=False, actor=api.actor_of(request))
    return done("/ui/jobs?" + _query(fields, state="queued" if result["requeued"] else
                                     fields["state"]),
                f"{result['requeued']} of {result['matched']} matching jobs queued again",
                result)


async def act_record_again(request: Request) -> Response:
    form = await form_of(request)
    delivery_id = str(form.get("delivery_id", ""))
    result = await api.actions_of(request).record_again(delivery_id,
                                                        actor=api.actor_of(request))
    back = _back(form, "/ui/deliveries")
    if result is None:
        return done(back, "No such delivery", {"delivery_id": delivery_id}, ok=False)
    title = (f"Recorded again: {result['outcome']}" if result["changed"]
             else f"Not quarantined any more ({result['outcome']}): nothing to do")
    return done(back, title, result, ok=result["outcome"] != "quarantined")


async def act_resend(request: Request) -> Response:
    form = await form_of(request)
    delivery_id = str(form.get("delivery_id", ""))
    back = _back(form, "/ui/deliveries")
    try:
        result = await api.actions_of(request).resend(delivery_id, actor=api.actor_of(request))
    except api.ActionRefused as exc:
        return done(back, "Not sent again", {"reason": exc.message}, ok=False)
    if result is None:
        return done(back, "No such delivery", {"delivery_id": delivery_id}, ok=False)
    return done(back, "Delivery sent again", result, ok=not result["failures"])


async def act_reconcile(request: Request) -> Response:
    form = await form_of(request)
    task_id = str(form.get("task_id", ""))
    back = _back(form, task_href(task_id))
    try:
        result = await api.actions_of(request).reconcile_task(task_id,
                                                              actor=api.actor_of(request))
    except api.ActionRefused as exc:
        return done(back, "Not reconciled", {"reason": exc.message}, ok=False)
    return done(back, "Task polled and recorded", result, ok=not result["failures"])


async def act_end_session(request: Request) -> Response:
    form = await form_of(request)
    raw = str(form.get("session_id", ""))
    if not raw.isdigit() or len(raw) >= 19:
        return done("/ui/sessions", f"No session {raw}", {}, ok=False)
    result = await api.actions_of(request).end_session(int(raw), actor=api.actor_of(request))
    title = f"Session {raw} ended" if result["ended"] else f"Session {raw} was already over"
    return done("/ui/sessions", title, result)


def ui_routes() -> list[BaseRoute]:
    """The pages, to be mounted behind :class:`receiver.console.session.ConsoleAuth` (their
    live updates: :func:`receiver.console.live.live_routes`)."""
    return [
        Route("/ui", page(overview_view), methods=["GET"]),
        Route("/ui/login", login, methods=["GET", "POST"]),
        Route("/ui/logout", logout, methods=["POST"]),
        Route("/ui/tasks", page(tasks_view), methods=["GET"]),
        Route("/ui/task", page(task_view), methods=["GET"]),
        Route("/ui/tasks/{task_id:path}", page(task_view), methods=["GET"]),
        Route("/ui/deliveries", page(deliveries_view), methods=["GET"]),
        Route("/ui/delivery", page(delivery_view), methods=["GET"]),
        Route("/ui/deliveries/{delivery_id:path}", page(delivery_view), methods=["GET"]),
        Route("/ui/jobs", page(jobs_view), methods=["GET"]),
        Route("/ui/audit", page(audit_view), methods=["GET"]),
        Route("/ui/sessions", page(sessions_view), methods=["GET"]),
        Route("/ui/file", kept_file, methods=["GET"]),
        Route("/ui/cover", cover, methods=["GET"]),
        Route("/ui/actions/retry-job", act_retry_job, methods=["POST"]),
        Route("/ui/actions/retry-jobs", act_retry_jobs, methods=["POST"]),
        Route("/ui/actions/record-again", act_record_again, methods=["POST"]),
        Route("/ui/actions/resend", act_resend, methods=["POST"]),
        Route("/ui/actions/reconcile", act_reconcile, methods=["POST"]),
        Route("/ui/actions/end-session", act_end_session, methods=["POST"]),
        Mount("/ui/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
