"""The console's JSON API: cursor-paged reads and the operator's actions.

Reads: ``GET /tasks``, ``GET /tasks/{id}``, ``GET /deliveries``, ``GET /deliveries/{id}``,
``GET /jobs``, ``GET /jobs/{id}``, ``GET /audit``, ``GET /alerts``, each answering a shape of
:mod:`receiver.console.shapes`; and ``GET /files/{task_id}/{clip_id}/{kind}``, a kept file. A
list answers ``{"items": [...], "next_cursor": "..." | null}``; pass ``cursor`` back to get the
next page.

Actions (``POST``), each idempotent and written to the audit log (who, when, what):
``/jobs/{id}/retry``, ``/jobs/retry`` (every match of a filter; ``dry_run`` counts first),
``/deliveries/{id}/record-again``, ``/deliveries/{id}/resend``, ``/tasks/{id}/reconcile``,
``/sessions/{id}/end``; and ``GET /sessions``, the open console sessions. The pages of
:mod:`receiver.console.ui` call the same functions (:class:`Actions`).

An id in a path may hold any character the store accepts: a task's or a delivery's id takes
the rest of the path (``/`` included, percent-encoded by the caller; a kept file's clip id and
kind are the last two segments). A resend goes to
``RECEIVER_PUBLIC_URL``'s webhook, never to where a request's ``Host`` points: without it, it
is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

import receiver.console.shapes as shapes
from receiver.auth import client_address
from receiver.console.session import visitor_of
from receiver.console.shapes import ShapeResponse, builtins
from receiver.conversion import TIME_FORMS, parse_time
from receiver.errors import ReceiverError
from receiver.jobs import JobState
from receiver.media import file_response
from receiver.models import ChildTask, JobFilter, Outcome, Source
from receiver.recovery import reconcile, replayed, resend
from receiver.runtime import Runtime, runtime_of
from receiver.signatures import Scheme
from receiver.states import State
from receiver.storage.admin import (
    MAX_LIMIT,
    Admin,
    BadCursor,
    DeliveryDetail,
    DeliveryFilter,
    Page,
    TaskFilter,
    TaskRow,
    decode_cursor,
    encode_cursor,
)

DEFAULT_LIMIT = 50


class BadQuery(ReceiverError):
    """A query parameter is not valid."""


def body_text(body: bytes) -> tuple[str, Any]:
    """The raw body as text (replacement characters where it is not UTF-8) and, when it is
    JSON, parsed (else None)."""
    text = body.decode("utf-8", errors="replace")
    try:
        return text, json.loads(body)
    except ValueError:
        return text, None


def delivery_detail(detail: DeliveryDetail) -> shapes.DeliveryDetail:
    """A stored delivery as ``GET /deliveries/{id}`` shows it."""
    text, parsed = body_text(detail.raw.body)
    return shapes.DeliveryDetail.of(detail.row, detail, headers=dict(detail.raw.headers),
                                    body=text, body_json=parsed)


# ---- query parameters ----------------------------------------------------------------------


def _time(value: str | None, name: str, now: float) -> float | None:
    """A time as the command line takes it too (:func:`receiver.conversion.parse_time`)."""
    if value is None or value == "":
        return None
    try:
        return parse_time(value, now=now)
    except ValueError:
        raise BadQuery(f"{name} must be a time: {TIME_FORMS}") from None


def _choice(value: str | None, enum: Any, name: str) -> Any:
    if value is None or value == "":
        return None
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(m.value for m in enum)
        raise BadQuery(f"{name} must be one of {choices}") from None


def _limit(params: Mapping[str, str]) -> int:
    raw = params.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadQuery(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _text(params: Mapping[str, str], name: str) -> str | None:
    return params.get(name) or None


def task_filter(params: Mapping[str, str], *, now: float) -> TaskFilter:
    """The tasks ``params`` ask for; a relative time (``2h``) counts back from ``now``."""
    return TaskFilter(
        state=_choice(params.get("state"), State, "state"),
        task_type=_text(params, "task_type"), tag=_text(params, "tag"),
        parent=_text(params, "parent"), since=_time(params.get("since"), "since", now),
        until=_time(params.get("until"), "until", now), text=_text(params, "q"),
    )


def delivery_filter(params: Mapping[str, str], *, now: float) -> DeliveryFilter:
    return DeliveryFilter(
        outcome=_choice(params.get("outcome"), Outcome, "outcome"),
        event=_text(params, "event"), source=_choice(params.get("source"), Source, "source"),
        since=_time(params.get("since"), "since", now), task_id=_text(params, "task_id"),
    )


def job_filter(params: Mapping[str, Any], *, now: float,
               default_state: JobState | None = None) -> JobFilter:
    state = params.get("state")
    return JobFilter(
        state=_choice(state, JobState, "state") if state else default_state,
        handler=params.get("handler") or None, task_id=params.get("task_id") or None,
        since=_time(_str(params.get("since")), "since", now),
        until=_time(_str(params.get("until")), "until", now),
    )


def _now(request: Request) -> float:
    """The app's clock: what a relative time in a query (``since=2h``) counts back from."""
    return runtime_of(request).clock.now()


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _error(status: int, error: str, reason: str | None = None) -> Response:
    return ShapeResponse(shapes.Error(error=error, reason=msgspec.UNSET if reason is None
                                      else reason), status)


# ---- the context of a request ---------------------------------------------------------------


def reads_of(request: Request) -> Admin:
    """The storage, in its administration role."""
    return runtime_of(request).storage.admin


def actor_of(request: Request) -> str:
    """Who acts, for the audit log: the operator (by the token's name), how (a Bearer token,
    the dashboard's session, the open console) and from which address."""
    return visitor_of(request).actor(client_address(request))


# ---- the actions ---------------------------------------------------------------------------


@dataclass
class Actions:
    """What an operator can do, shared by the JSON API and the pages. Each is idempotent and
    audited; each returns what it did, as JSON."""

    runtime: Runtime
    reads: Admin

    async def _audit(self, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
        await self.reads.audit(actor=actor, action=action, target=target, detail=detail)

    async def retry_job(self, job_id: int, *, actor: str) -> dict[str, Any] | None:
        job = await self.reads.get_job(job_id)
        if job is None:
            return None
        requeued = 0
        if job.state in (JobState.DEAD, JobState.DONE):
            requeued = await self.reads.requeue_jobs([job_id], now=self.runtime.clock.now())
        result = {"job_id": job_id, "was": job.state.value, "requeued": requeued == 1}
        await self._audit(actor, "retry_job", f"job:{job_id}", result)
        return result

    async def retry_matching(self, where: JobFilter, *, dry_run: bool,
                             actor: str) -> dict[str, Any]:
        matched = await self.reads.count_jobs(where)
        result: dict[str, Any] = {"filter": builtins(shapes.JobFilter.of(where)),
                                  "matched": matched, "dry_run": dry_run}
        if not dry_run:
            result["requeued"] = await self.reads.requeue_matching(
                where, now=self.runtime.clock.now())
            await self._audit(actor, "retry_jobs", "jobs", result)
        return result

    async def record_again(self, delivery_id: str, *, actor: str) -> dict[str, Any] | None:
        detail = await self.reads.get_delivery(delivery_id)
        if detail is None:
            return None
        if detail.row.outcome is not Outcome.QUARANTINED:
            result: dict[str, Any] = {"delivery_id": delivery_id, "changed": False,
                                      "outcome": detail.row.outcome.value}
        else:
            recorded = await self.runtime.storage.ingest.rerecord_quarantined(
                replayed(detail.raw), router=self.runtime.router)
            result = {"delivery_id": delivery_id, "changed": True,
                      "outcome": recorded.outcome.value, "reason": recorded.reason,
                      "task_id": recorded.task_id, "transitions": len(recorded.transitions),
                      "jobs": recorded.jobs}
        await self._audit(actor, "record_again", f"delivery:{delivery_id}", result)
        return result

    async def resend(self, delivery_id: str, *, actor: str) -> dict[str, Any] | None:
        """Sign and POST the stored delivery to this receiver's public webhook again."""
        detail = await self.reads.get_delivery(delivery_id)
        if detail is None:
            return None
        settings = self.runtime.settings
        url = settings.webhook_url
        if url is None:
            raise ActionRefused("RECEIVER_PUBLIC_URL is not set: a resend goes to the public "
                                "webhook URL only")
        scheme = settings.schemes[0] if settings.webhook_secrets else Scheme.NONE
        secret = settings.webhook_secrets[0] if settings.webhook_secrets else ""
        summary = await resend([detail.raw], http=self.runtime.http, url=url, secret=secret,
                               scheme=scheme, clock=self.runtime.clock)
        result = {"delivery_id": delivery_id, "url": url, "counts": summary.counts,
                  "failures": summary.failures}
        await self._audit(actor, "resend", f"delivery:{delivery_id}", result)
        return result

    async def end_session(self, session_id: int, *, actor: str) -> dict[str, Any]:
        ended = await self.reads.end_session(session_id, now=self.runtime.clock.now(),
                                             by=actor)
        result = {"session_id": session_id, "ended": ended}
        await self._audit(actor, "end_session", f"session:{session_id}", result)
        return result

    async def reconcile_task(self, task_id: str, *, actor: str) -> dict[str, Any]:
        runtime = self.runtime
        if runtime.sonic is None:
            raise ActionRefused("no Sonic API client is configured (SONIC_API_BASE_URL)")
        summary = await reconcile([task_id], store=runtime.storage.ingest, sonic=runtime.sonic,
                                  router=runtime.router, clock=runtime.clock)
        result = {"task_id": task_id, "counts": summary.counts, "failures": summary.failures}
        await self._audit(actor, "reconcile", f"task:{task_id}", result)
        return result


class ActionRefused(ReceiverError):
    """The action cannot be done here."""


def actions_of(request: Request) -> Actions:
    return Actions(runtime_of(request), reads_of(request))


# ---- endpoints -----------------------------------------------------------------------------

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


def _guard(endpoint: Endpoint) -> Endpoint:
    """Bad query parameters and cursors answer 400 with what is wrong."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (BadQuery, BadCursor) as exc:
            return _error(400, exc.message)

    guarded.__doc__ = endpoint.__doc__
    guarded.__name__ = endpoint.__name__
    return guarded


async def list_tasks(request: Request) -> Response:
    params = request.query_params
    reads = reads_of(request)
    page = await reads.list_tasks(task_filter(params, now=_now(request)),
                                  limit=_limit(params),
                                  cursor=params.get("cursor"))
    return ShapeResponse(await task_page(reads, page))


async def task_page(reads: Admin, page: Page[TaskRow]) -> shapes.TaskPage:
    """A page of tasks as ``GET /tasks`` shows it: each row with every title of its clips."""
    titles = await reads.titles_of([row.task.task_id for row in page.items])
    return shapes.TaskPage.of(page, items=[
        shapes.TaskRow.of(row.task, row, titles=titles.get(row.task.task_id, []))
        for row in page.items])


async def task_detail(reads: Admin, task_id: str) -> shapes.TaskDetail | None:
    """A task as ``GET /tasks/{id}`` shows it: clips, transitions, jobs, files, results,
    its children, and its chain (the parents up to the root, oldest first)."""
    view = await reads.get_task(task_id)
    if view is None:
        return None
    chain: list[shapes.ChainLink] = []
    parent = view.task.parent_task_id
    seen = {task_id}
    while parent is not None and parent not in seen and len(chain) < 20:
        seen.add(parent)
        made = await reads.child_of(parent)
        up = await reads.get_task(parent)
        chain.insert(0, shapes.ChainLink(
            task_id=parent, task_type=up.task.task_type if up else None,
            state=up.task.state if up else None, rule=made.rule if made else None,
            credits=made.credits if made else None))
        parent = up.task.parent_task_id if up else None
    root = chain[0].task_id if chain else task_id
    descendants = await _descendants(reads, task_id)
    states = await reads.states_of([d.child.child_task_id for d in descendants
                                    if d.child.child_task_id])
    return shapes.TaskDetail.of(
        view,
        jobs=await reads.list_jobs(task_id=task_id),
        files=await reads.list_files(task_id),
        children=await reads.list_children(task_id),
        results=await reads.list_results(task_id),
        parents=chain,
        descendants=[shapes.Descendant.of(
            d.child, level=d.level, task_state=states.get(d.child.child_task_id or ""))
            for d in descendants],
        created_by=await reads.child_of(task_id),
        root_task_id=root,
        credits_under_root=await reads.credits_under(root),
    )


@dataclass(frozen=True)
class _Under:
    """A follow-up under a task and its level (1: a child), before its task's state is read."""

    child: ChildTask
    level: int


async def _descendants(reads: Admin, task_id: str, limit: int = 50) -> list[_Under]:
    """The follow-ups under a task, depth first, each with its ``level`` (1: a child)."""
    found: list[_Under] = []
    stack: list[tuple[int, str]] = [(0, task_id)]
    seen = {task_id}
    while stack and len(found) < limit:
        level, parent = stack.pop()
        children = await reads.list_children(parent)
        for child in reversed(children):
            if child.child_task_id is not None and child.child_task_id not in seen:
                seen.add(child.child_task_id)
                stack.append((level + 1, child.child_task_id))
        found_here = [_Under(c, level + 1) for c in children]
        # keep depth-first order: insert this parent's children right after it
        at = next((i + 1 for i, f in enumerate(found) if f.child.child_task_id == parent),
                  len(found))
        found[at:at] = found_here
    return found[:limit]


async def get_task(request: Request) -> Response:
    detail = await task_detail(reads_of(request), request.path_params["task_id"])
    if detail is None:
        return _error(404, "task_not_found")
    return ShapeResponse(detail)


async def list_jobs(request: Request) -> Response:
    params = request.query_params
    page = await reads_of(request).list_jobs_page(
        job_filter(params, now=_now(request)), limit=_limit(params),
        cursor=params.get("cursor"))
    return ShapeResponse(shapes.JobPage.of(page))


def _int_param(request: Request, name: str) -> int | None:
    raw = request.path_params[name]
    text = str(raw)  # ASCII digits only: "³".isdigit() is true, int("³") fails
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


async def get_job(request: Request) -> Response:
    reads = reads_of(request)
    job_id = _int_param(request, "job_id")
    job = await reads.get_job(job_id) if job_id is not None else None
    if job is None or job_id is None:
        return _error(404, "job_not_found")
    attempts = await reads.job_attempts(job_id)
    return ShapeResponse(shapes.JobDetail.of(job, attempt_log=attempts))


async def list_deliveries(request: Request) -> Response:
    params = request.query_params
    page = await reads_of(request).list_deliveries(
        delivery_filter(params, now=_now(request)), limit=_limit(params),
        cursor=params.get("cursor"))
    return ShapeResponse(shapes.DeliveryPage.of(page))


async def get_delivery(request: Request) -> Response:
    detail = await reads_of(request).get_delivery(request.path_params["delivery_id"])
    if detail is None:
        return _error(404, "delivery_not_found")
    return ShapeResponse(delivery_detail(detail))


async def list_audit(request: Request) -> Response:
    params = request.query_params
    page = await reads_of(request).list_audit(limit=_limit(params), cursor=params.get("cursor"))
    return ShapeResponse(shapes.AuditPage.of(page))


async def list_alerts(request: Request) -> Response:
    """The receiver's alerts, newest first; ``active=1``: only those that hold now."""
    params = request.query_params
    active = _choice(params.get("active"), _Active, "active") is _Active.YES
    key = decode_cursor(params.get("cursor"), 1)
    if key is not None and not isinstance(key[0], int):
        raise BadCursor("cursor is not one this receiver made")
    limit = _limit(params)
    found = await runtime_of(request).storage.watch.alerts(
        active=active, before=key[0] if key else None, limit=limit + 1)
    items = found[:limit]
    more = len(found) > limit
    return ShapeResponse(shapes.AlertPage(
        items=[shapes.Alert.of(a) for a in items],
        next_cursor=encode_cursor([items[-1].id]) if more and items else None))


class _Active(StrEnum):
    YES = "1"
    NO = "0"


async def get_file(request: Request) -> Response:
    """A kept file: with HTTP Range from a local folder, a redirect to a presigned URL from
    an object store."""
    p = request.path_params
    found = next((f for f in await reads_of(request).list_files(p["task_id"])
                  if f.clip_id == p["clip_id"] and f.kind == p["kind"]), None)
    if found is None:
        return _error(404, "file_not_found")
    return await file_response(runtime_of(request).media, found, request)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadQuery("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadQuery("the body must be a JSON object")
    return body


async def retry_job(request: Request) -> Response:
    job_id = _int_param(request, "job_id")
    result = None
    if job_id is not None:
        result = await actions_of(request).retry_job(job_id, actor=actor_of(request))
    if result is None:
        return _error(404, "job_not_found")
    return JSONResponse(result)


async def retry_jobs(request: Request) -> Response:
    body = await _json_body(request)
    for name in ("state", "handler", "task_id"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise BadQuery(f"{name} must be a string")
    for name in ("since", "until"):
        if body.get(name) is not None and (
            isinstance(body[name], bool) or not isinstance(body[name], str | int | float)
        ):
            raise BadQuery(f"{name} must be a time: {TIME_FORMS}")
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadQuery("dry_run must be true or false")
    where = job_filter(body, now=_now(request), default_state=JobState.DEAD)
    if where.state not in (JobState.DEAD, JobState.DONE):
        raise BadQuery("state must be dead or done: only finished jobs are retried")
    return JSONResponse(await actions_of(request).retry_matching(
        where, dry_run=dry_run, actor=actor_of(request)))


async def record_again(request: Request) -> Response:
    result = await actions_of(request).record_again(request.path_params["delivery_id"],
                                                    actor=actor_of(request))
    if result is None:
        return _error(404, "delivery_not_found")
    return JSONResponse(result)


async def resend_delivery(request: Request) -> Response:
    try:
        result = await actions_of(request).resend(request.path_params["delivery_id"],
                                                  actor=actor_of(request))
    except httpx.InvalidURL as exc:
        return _error(409, "cannot_resend", reason=str(exc))
    except ActionRefused as exc:
        return _error(409, "cannot_resend", reason=exc.message)
    if result is None:
        return _error(404, "delivery_not_found")
    return JSONResponse(result)


async def reconcile_task(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    if await reads_of(request).get_task(task_id) is None:
        return _error(404, "task_not_found")
    try:
        result = await actions_of(request).reconcile_task(task_id, actor=actor_of(request))
    except ActionRefused as exc:
        return _error(409, "cannot_reconcile", reason=exc.message)
    return JSONResponse(result)


async def list_sessions(request: Request) -> Response:
    runtime = runtime_of(request)
    found = await reads_of(request).list_sessions(now=runtime.clock.now(),
                                                  idle_s=runtime.settings.session_idle_s)
    return ShapeResponse(shapes.SessionPage(items=[shapes.Session.of(s) for s in found],
                                            next_cursor=None))


async def end_session(request: Request) -> Response:
    session_id = _int_param(request, "session_id")
    if session_id is None:
        return _error(404, "session_not_found")
    return JSONResponse(await actions_of(request).end_session(session_id,
                                                              actor=actor_of(request)))


def api_routes() -> list[BaseRoute]:
    """The JSON routes, to be mounted behind the admin authentication. A task's or a
    delivery's id takes the rest of the path (``/`` included), its actions matched first."""
    return [
        Route("/tasks", _guard(list_tasks), methods=["GET"]),
        Route("/tasks/{task_id:path}/reconcile", _guard(reconcile_task), methods=["POST"]),
        Route("/tasks/{task_id:path}", _guard(get_task), methods=["GET"]),
        Route("/deliveries", _guard(list_deliveries), methods=["GET"]),
        Route("/deliveries/{delivery_id:path}/record-again", _guard(record_again),
              methods=["POST"]),
        Route("/deliveries/{delivery_id:path}/resend", _guard(resend_delivery),
              methods=["POST"]),
        Route("/deliveries/{delivery_id:path}", _guard(get_delivery), methods=["GET"]),
        Route("/sessions", _guard(list_sessions), methods=["GET"]),
        Route("/sessions/{session_id:str}/end", _guard(end_session), methods=["POST"]),
        Route("/jobs", _guard(list_jobs), methods=["GET"]),
        Route("/jobs/retry", _guard(retry_jobs), methods=["POST"]),
        Route("/jobs/{job_id:str}", _guard(get_job), methods=["GET"]),
        Route("/jobs/{job_id:str}/retry", _guard(retry_job), methods=["POST"]),
        Route("/audit", _guard(list_audit), methods=["GET"]),
        Route("/alerts", _guard(list_alerts), methods=["GET"]),
        Route("/files/{task_id:path}/{clip_id:str}/{kind:str}", get_file, methods=["GET"]),
    ]
