"""The dashboard at ``/ui``: server-rendered pages over the same reads and actions as the API.

Pages: overview, tasks (live: the list refreshes itself every two seconds), a task, deliveries,
a delivery, jobs, the audit log, and the login form. Every action is a form: it asks for
confirmation (a bulk retry first shows how many jobs match), carries the session's form token,
and answers with a redirect whose page says what was done.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

import receiver.console.api as api
import receiver.console.shapes as shapes
from receiver.console.session import SAFE_METHODS, Sessions, same_origin, sessions_of
from receiver.console.shapes import builtins
from receiver.jobs import JobState
from receiver.models import Outcome, Source
from receiver.runtime import runtime_of
from receiver.states import State
from receiver.storage.admin import BadCursor

HERE = Path(__file__).parent
DASH = "\N{EN DASH}"
FLASH = "receiver_flash"
PAGE = 50


def _when(ts: float | None) -> str:
    if ts is None:
        return DASH
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return DASH
    seconds = max(0, int((now if now is not None else time.time()) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _short(value: str | None, n: int = 8) -> str:
    return DASH if value is None else value if len(value) <= n + 2 else value[:n] + "…"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(when=_when, ago=_ago, short=_short, pretty=_pretty)


def render(request: Request, name: str, context: Mapping[str, Any], status: int = 200,
           *, flash: bool = True) -> HTMLResponse:
    sessions = sessions_of(request)
    sid = request.scope.get("console_sid")
    message = _read_flash(request) if flash else None
    response = templates.TemplateResponse(request, name, {
        "csrf": sessions.csrf_token(sid if isinstance(sid, str) else None),
        "logged_in": sid is not None, "needs_login": sessions.admin_token is not None,
        "admin_open": runtime_of(request).settings.admin_open,
        "flash": message, "now": time.time(), **context,
    }, status_code=status)
    if message is not None:
        response.delete_cookie(FLASH, path="/ui", httponly=True, samesite="strict")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data: http: https:; media-src 'self'; "
        "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
    return response


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
    return to if isinstance(to, str) and to.startswith("/ui") and "//" not in to else default


def _query(params: Mapping[str, str], **changes: str | None) -> str:
    merged = {k: v for k, v in params.items() if v}
    for k, v in changes.items():
        if v:
            merged[k] = v
        else:
            merged.pop(k, None)
    return urlencode(merged)


# ---- login ---------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    sessions = sessions_of(request)
    target = request.query_params.get("next", "/ui")
    target = target if target.startswith("/ui") and "//" not in target else "/ui"
    if request.method in SAFE_METHODS:
        return render(request, "login.html", {"next": target, "error": None})
    if not same_origin(request):
        return render(request, "login.html", {"next": target,
                                              "error": "Log in from this site's own form."},
                      status=403)
    form = await form_of(request)
    token = form.get("token")
    if sessions.admin_token is None:
        return RedirectResponse(target, 303)
    if not isinstance(token, str) or not sessions.token_matches(token):
        return render(request, "login.html", {"next": target, "error": "That is not the token."},
                      status=401)
    response = RedirectResponse(target, 303)
    sessions.set_cookie(response, request)
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/ui/login", 303)
    Sessions.clear_cookie(response)
    return response


# ---- pages ---------------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    runtime = runtime_of(request)
    numbers = await api.reads_of(request).overview(now=runtime.clock.now(),
                                                   expiry_warn_s=EXPIRY_WARN_S,
                                                   download_handler=DOWNLOAD_HANDLER)
    peak = max((n for _, n in numbers.deliveries_per_minute), default=0)
    return render(request, "overview.html", {"o": numbers, "peak": max(peak, 1), "peak_real": peak,
                                             "backlog": sum(numbers.jobs_by_state.get(s, 0)
                                                            for s in ("queued", "retrying",
                                                                      "running"))})


EXPIRY_WARN_S = 12 * 3600  # warn on downloads still pending this long after the job was made
DOWNLOAD_HANDLER = "download_audio"  # the overview's panel of downloads whose links may expire


async def tasks(request: Request) -> Response:
    params = request.query_params
    try:
        where = api.task_filter(params)
        page = await api.reads_of(request).list_tasks(where, limit=PAGE,
                                                      cursor=params.get("cursor"))
    except (api.BadQuery, BadCursor) as exc:
        return render(request, "tasks.html", {"page": None, "error": exc.message,
                                              "params": params, "states": list(State)}, 400)
    context = {"page": page, "error": None, "params": params, "states": list(State),
               "next_query": _query(params, cursor=page.next_cursor),
               "live_query": _query(params, cursor=None)}
    if params.get("partial"):
        return render(request, "task_rows.html", context, flash=False)
    return render(request, "tasks.html", context)


async def task_page(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    reads = api.reads_of(request)
    detail = await api.task_detail(reads, task_id)
    if detail is None:
        return render(request, "missing.html", {"what": "task", "id": task_id}, 404)
    files: dict[str, dict[str, Any]] = {}
    for f in detail.files:
        files.setdefault(f.clip_id, {})[f.kind] = builtins(f)
    attempts = {job.id: [builtins(shapes.Attempt.of(a)) for a in await reads.job_attempts(job.id)]
                for job in detail.jobs}
    return render(request, "task.html", {"t": builtins(detail), "files": files,
                                         "attempts": attempts,
                                         "can_reconcile": runtime_of(request).sonic
                                         is not None})


async def deliveries(request: Request) -> Response:
    params = request.query_params
    try:
        page = await api.reads_of(request).list_deliveries(
            api.delivery_filter(params), limit=PAGE, cursor=params.get("cursor"))
    except (api.BadQuery, BadCursor) as exc:
        return render(request, "deliveries.html", {"page": None, "error": exc.message,
                                                   "params": params, "outcomes": list(Outcome),
                                                   "sources": list(Source)}, 400)
    return render(request, "deliveries.html", {
        "page": page, "error": None, "params": params, "outcomes": list(Outcome),
        "sources": list(Source), "next_query": _query(params, cursor=page.next_cursor)})


async def delivery_page(request: Request) -> Response:
    delivery_id = request.path_params["delivery_id"]
    detail = await api.reads_of(request).get_delivery(delivery_id)
    if detail is None:
        return render(request, "missing.html", {"what": "delivery", "id": delivery_id}, 404)
    return render(request, "delivery.html", {"d": builtins(api.delivery_detail(detail))})


async def jobs(request: Request) -> Response:
    params = request.query_params
    reads = api.reads_of(request)
    try:
        where = api.job_filter(params)
        page = await reads.list_jobs_page(where, limit=PAGE, cursor=params.get("cursor"))
    except (api.BadQuery, BadCursor) as exc:
        return render(request, "jobs.html", {"page": None, "error": exc.message,
                                             "params": params, "states": list(JobState)}, 400)
    attempts = {j.id: [builtins(shapes.Attempt.of(a)) for a in await reads.job_attempts(j.id)]
                for j in page.items if j.last_error}
    return render(request, "jobs.html", {
        "page": page, "error": None, "params": params, "states": list(JobState),
        "attempts": attempts, "next_query": _query(params, cursor=page.next_cursor)})


async def audit(request: Request) -> Response:
    params = request.query_params
    try:
        page = await api.reads_of(request).list_audit(limit=PAGE, cursor=params.get("cursor"))
    except BadCursor as exc:
        return render(request, "missing.html", {"what": "page", "id": exc.message}, 400)
    return render(request, "audit.html", {"page": page,
                                          "next_query": _query(params, cursor=page.next_cursor)})


# ---- actions -------------------------------------------------------------------------------


async def act_retry_job(request: Request) -> Response:
    form = await form_of(request)
    raw = str(form.get("job_id", ""))
    result = None
    if raw.isdigit():
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
        where = api.job_filter(fields)
        if where.state not in (JobState.DEAD, JobState.DONE):
            raise api.BadQuery("only dead or done jobs can be retried")
    except api.BadQuery as exc:
        return done("/ui/jobs?" + _query(fields), "Nothing retried", {"error": exc.message},
                    ok=False)
    actions = api.actions_of(request)
    if form.get("confirm") != "yes":
        counted = await actions.retry_matching(where, dry_run=True, actor=api.actor_of(request))
        return render(request, "confirm_retry.html", {"fields": fields, "matched":
                                                      counted["matched"]})
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
    result = await api.actions_of(request).resend(delivery_id, url=api.webhook_url(request),
                                                  actor=api.actor_of(request))
    back = _back(form, "/ui/deliveries")
    if result is None:
        return done(back, "No such delivery", {"delivery_id": delivery_id}, ok=False)
    return done(back, "Delivery sent again", result, ok=not result["failures"])


async def act_reconcile(request: Request) -> Response:
    form = await form_of(request)
    task_id = str(form.get("task_id", ""))
    back = _back(form, f"/ui/tasks/{task_id}")
    try:
        result = await api.actions_of(request).reconcile_task(task_id,
                                                              actor=api.actor_of(request))
    except api.ActionRefused as exc:
        return done(back, "Not reconciled", {"reason": exc.message}, ok=False)
    return done(back, "Task polled and recorded", result, ok=not result["failures"])


def ui_routes() -> list[BaseRoute]:
    """The pages, to be mounted behind :class:`receiver.console.session.AdminAuth`."""
    return [
        Route("/ui", overview, methods=["GET"]),
        Route("/ui/login", login, methods=["GET", "POST"]),
        Route("/ui/logout", logout, methods=["POST"]),
        Route("/ui/tasks", tasks, methods=["GET"]),
        Route("/ui/tasks/{task_id:str}", task_page, methods=["GET"]),
        Route("/ui/deliveries", deliveries, methods=["GET"]),
        Route("/ui/deliveries/{delivery_id:str}", delivery_page, methods=["GET"]),
        Route("/ui/jobs", jobs, methods=["GET"]),
        Route("/ui/audit", audit, methods=["GET"]),
        Route("/ui/actions/retry-job", act_retry_job, methods=["POST"]),
        Route("/ui/actions/retry-jobs", act_retry_jobs, methods=["POST"]),
        Route("/ui/actions/record-again", act_record_again, methods=["POST"]),
        Route("/ui/actions/resend", act_resend, methods=["POST"]),
        Route("/ui/actions/reconcile", act_reconcile, methods=["POST"]),
        Mount("/ui/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
