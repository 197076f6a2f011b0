"""``GET /openapi.json``: every route of the receiver as an OpenAPI 3.1 document.

The schemas of what the routes answer are not written here: they come from the shapes the API
answers with (:mod:`receiver.console.shapes`), so a shape and its schema are one definition.
What is written here is the routes: their parameters, bodies and responses, which name the
shapes by their component names. A schemathesis run in the suite holds the document and the
answers together.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.console.shapes import REF_TEMPLATE, components
from receiver.conversion import TIME_FORMS
from receiver.jobs import JobState
from receiver.models import Outcome, Source
from receiver.states import State
from receiver.storage.admin import MAX_LIMIT

S = dict[str, Any]


def _n(schema: S) -> S:
    """``schema`` or null (OpenAPI 3.1 is JSON Schema: null is a type of its own)."""
    return {"anyOf": [schema, {"type": "null"}]}


STR: S = {"type": "string"}
NUM: S = {"type": "number"}
INT: S = {"type": "integer"}
ANY_OBJECT: S = {"type": "object", "additionalProperties": True}
BINARY: S = {"type": "string", "format": "binary"}


def _obj(required: dict[str, S], **extra: Any) -> S:
    return {"type": "object", "required": sorted(required), "properties": required, **extra}


def _ref(name: str) -> S:
    """A shape of :mod:`receiver.console.shapes`, by its name."""
    return {"$ref": REF_TEMPLATE.format(name=name)}


def _enum(values: Any) -> S:
    return {"type": "string", "enum": [v.value for v in values]}


def _json(schema: S, description: str = "OK") -> S:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "An error, named")
UNAUTHORIZED = _json(_ref("Error"), "The admin token (Bearer) or a session is needed")


def _q(name: str, description: str, schema: S | None = None) -> S:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or STR}


def _p(name: str, schema: S | None = None) -> S:
    return {"name": name, "in": "path", "required": True, "schema": schema or STR}


PAGING = [
    _q("limit", f"items per page (1 to {MAX_LIMIT}, default 50)",
       {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
    _q("cursor", "next_cursor of the previous page"),
]
TIME = TIME_FORMS


TOO_MANY = {"description": "Too many wrong tokens from this address: wait Retry-After seconds",
            "headers": {"Retry-After": {"schema": INT}},
            "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(
                name="Error")}}}}


def _read(summary: str, schema: S, params: list[S], *, missing: bool = False) -> S:
    responses: S = {"200": _json(schema), "400": ERROR, "401": UNAUTHORIZED, "429": TOO_MANY}
    if missing:
        responses["404"] = ERROR
    return {"get": {"summary": summary, "parameters": params, "responses": responses,
                    "security": [{"admin": []}]}}


def _action(summary: str, params: list[S], *, body: S | None = None,
            extra: dict[str, S] | None = None) -> S:
    op: S = {"summary": summary, "parameters": params, "security": [{"admin": []}],
             "responses": {"200": _json(ANY_OBJECT, "What the action did (also audited)"),
                           # 400 and 413: a body holding a NUL, or past the limit, is refused
                           # before the action reads it (receiver.console.session)
                           "400": ERROR, "401": UNAUTHORIZED, "403": ERROR, "404": ERROR,
                           "413": ERROR, "429": TOO_MANY, **(extra or {})}}
    if body is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return {"post": op}


PATHS: dict[str, S] = {
    "/webhooks/sonic": {"post": {
        "summary": "Receive a Sonic callback (signed with the webhook secret)",
        "parameters": [_q("task_id", "the task, for senders that leave it out of the body")],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {}}}},
        "responses": {
            "200": _json(_obj({"status": _enum([Outcome.RECORDED, Outcome.DUPLICATE]),
                               "delivery_id": STR, "task_id": _n(STR),
                               "state": _n(_enum(State))}), "Recorded, or a duplicate"),
            "401": _json(_ref("Error"), "The signature cannot be accepted"),
            "413": _json(_ref("Error"), "The body is too large"),
            "422": _json(_ref("Error"), "Verified but unusable: kept as quarantined"),
            "503": _json(_ref("Error"), "The store cannot take it now: send again"),
        },
    }},
    "/tasks": {
        **_read("List tasks, newest first", _ref("TaskPage"), [
            _q("state", "task state", _enum(State)), _q("task_type", "create_music, ..."),
            _q("tag", "a word in a clip's tags"), _q("parent", "the parent task's id"),
            _q("since", f"first seen at or after ({TIME})"),
            _q("until", f"first seen before ({TIME})"), _q("q", "text in a clip's title"),
            *PAGING]),
        "post": {
            "summary": "Create a task at the Sonic API through this receiver",
            "security": [{"admin": []}],
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": ANY_OBJECT}}},
            "responses": {"201": _json(_obj({"task_id": STR, "task_type": STR})),
                          "400": ERROR, "401": UNAUTHORIZED, "403": ERROR, "413": ERROR,
                          "502": ERROR, "503": ERROR},
        },
    },
    "/tasks/{task_id}": _read("A task with clips, transitions, jobs, files, results and chain",
                              _ref("TaskDetail"), [_p("task_id")], missing=True),
    "/tasks/{task_id}/reconcile": _action(
        "Poll the task at the Sonic API now and record what it says", [_p("task_id")],
        extra={"409": ERROR}),
    "/deliveries": _read("List deliveries, newest first", _ref("DeliveryPage"), [
        _q("outcome", "recorded, duplicate (received more than once) or quarantined",
           _enum(Outcome)),
        _q("event", "e.g. song.completed"), _q("source", "what brought it", _enum(Source)),
        _q("since", f"received at or after ({TIME})"), _q("task_id", "the task"), *PAGING]),
    "/deliveries/{delivery_id}": _read(
        "A delivery: kept headers, raw body, outcome, reason, transitions it made",
        _ref("DeliveryDetail"), [_p("delivery_id")], missing=True),
    "/deliveries/{delivery_id}/record-again": _action(
        "Record a quarantined delivery again (idempotent: a recorded one is left alone)",
        [_p("delivery_id")]),
    "/deliveries/{delivery_id}/resend": _action(
        "Sign and POST a stored delivery to the webhook again (RECEIVER_PUBLIC_URL's; 409 "
        "without it)", [_p("delivery_id")],
        extra={"409": ERROR}),
    "/jobs": _read("List jobs, newest first", _ref("JobPage"), [
        _q("state", "job state", _enum(JobState)), _q("handler", "handler name"),
        _q("task_id", "the task"), _q("since", f"created at or after ({TIME})"),
        _q("until", f"created before ({TIME})"), *PAGING]),
    "/jobs/retry": _action(
        "Queue again every finished job matching a filter (all of them, not a page); "
        "dry_run only counts", [],
        body={"type": "object", "properties": {
            "state": {"type": "string", "enum": ["dead", "done"], "default": "dead"},
            "handler": STR, "task_id": STR,
            "since": {"oneOf": [NUM, STR]}, "until": {"oneOf": [NUM, STR]},
            "dry_run": {"type": "boolean", "default": False}}},
        extra={"400": ERROR}),
    "/jobs/{job_id}": _read("A job with every attempt's error", _ref("JobDetail"),
                            [_p("job_id", INT)], missing=True),
    "/jobs/{job_id}/retry": _action("Queue a dead or done job again", [_p("job_id", INT)]),
    "/files/{task_id}/{clip_id}/{kind}": {"get": {
        "summary": "A kept file (audio, image, video, sidecar): from a local folder with HTTP "
                   "Range, from an object store a redirect to a presigned URL",
        "security": [{"admin": []}],
        "parameters": [_p("task_id"), _p("clip_id"), _p("kind"),
                       {"name": "Range", "in": "header", "required": False, "schema": STR}],
        "responses": {
            "200": {"description": "The file", "content": {"*/*": {"schema": BINARY}}},
            "206": {"description": "The requested range", "content": {"*/*": {"schema": BINARY}}},
            "307": {"description": "Where the object store serves it (presigned)"},
            "401": UNAUTHORIZED, "404": ERROR,
            "416": {"description": "The range is outside the file"},
        },
    }},
    "/audit": _read("The operators' actions, newest first", _ref("AuditPage"), PAGING),
    "/alerts": _read("The receiver's alerts, newest first", _ref("AlertPage"), [
        _q("active", "1: only the alerts that hold now", {"type": "string", "enum": ["0", "1"]}),
        *PAGING]),
    "/sessions": _read("The open console sessions, the most recently used first",
                       _ref("SessionPage"), []),
    "/sessions/{session_id}/end": _action("End a console session (in every process)",
                                          [_p("session_id", INT)]),
    "/healthz": {"get": {"summary": "Alive", "responses": {"200": _json(ANY_OBJECT)}}},
    "/readyz": {"get": {"summary": "The database takes a write",
                        "responses": {"200": _json(ANY_OBJECT), "503": _json(ANY_OBJECT)}}},
    "/metrics": {"get": {
        "summary": "Prometheus metrics (text format 0.0.4)", "security": [{"admin": []}],
        "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": STR}}},
                      "401": UNAUTHORIZED}}},
}


def document() -> S:
    """The OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "sonic-receiver", "version": "1",
                 "description": "A verified, durable webhook receiver for the Sonic API, and "
                                "its operator's console."},
        "paths": PATHS,
        "components": {"schemas": components(), "securitySchemes": {
            "admin": {"type": "http", "scheme": "bearer",
                      "description": "RECEIVER_ADMIN_TOKEN"}}},
    }


async def openapi(request: Request) -> Response:
    return JSONResponse(document())


def openapi_routes() -> list[BaseRoute]:
    return [Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)]
