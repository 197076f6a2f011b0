"""``POST /webhooks/sonic`` (and ``/webhooks/<provider>``): the path of a delivery, in order.

read (bounded) → verify (raw bytes) → name it (delivery id) → parse → record (one
transaction) → answer. Nothing is answered 2xx before the store has committed, and nothing
unverified is stored.

A verified delivery is never lost: a body that cannot be used is kept raw and answered 422;
a store that cannot commit is answered 503 (retryable); and an unforeseen error while
recording is rolled back, the body kept aside as quarantined if the store still takes it
(replayable after a fix: ``replay redispatch --quarantined``), and answered 503.

The endpoint is a plain ASGI callable, not a Starlette request/response function: it is the
one route that takes load, and per delivery it reads the raw header list once into a dict,
answers with orjson and pre-encoded header lists, and writes one log line carrying every id
(``delivery_<outcome>``, with ``path``, ``client``, ``delivery_id`` and ``task_id``) instead of
binding them as context variables.

The other providers' deliveries (:mod:`receiver.providers`) take the same path at
``/webhooks/<provider>[/<token>]`` (:class:`ProviderEndpoint`): the provider's adapter
authenticates them (a per-task token in the URL, looked up in the store, where the provider
authenticates no body), its parser reads the body, and a body that nothing authenticated is
recorded ``unconfirmed``. Sonic's endpoint does none of that extra work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope, Send

from receiver import metrics
from receiver.clips import parse_identifier
from receiver.clock import Clock
from receiver.errors import BodyTooLarge, StoreError, ValueRefused, VerificationError
from receiver.models import Delivery, Outcome, RecordResult, Source
from receiver.payloads import try_parse
from receiver.providers import Adapter, Inbound, refuse
from receiver.providers.calls import token_hash
from receiver.routing import Router
from receiver.signatures import SIGNATURE_HEADERS, Scheme, Verified, Verifier
from receiver.storage.ingest import Ingest
from receiver.tallies import Tally

log = structlog.get_logger("receiver.webhook")

ID_HEADERS = ("x-webhook-id", "idempotency-key", "webhook-id")
EVENT_HEADER = "x-webhook-event"
# Never kept with a delivery: they prove knowledge of a secret, or are credentials.
PRIVATE_HEADERS = SIGNATURE_HEADERS | {"authorization", "cookie", "proxy-authorization"}
_MAX_ID = 200
# An event header naming no known event is kept with the delivery cut to this many characters:
# the column is indexed, and PostgreSQL refuses an index entry past 2,704 bytes.
_MAX_EVENT = 200
_JSON = (b"content-type", b"application/json")


async def receive_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body from ASGI ``receive``, or :class:`BodyTooLarge` as soon as it is known to pass
    ``limit`` bytes: from ``declared`` (``Content-Length``) before reading anything, else
    while streaming. A client that goes away raises Starlette's ``ClientDisconnect``."""
    length = (declared or "").strip()
    if length.isascii() and length.isdigit() and int(length) > limit:  # "³".isdigit() too
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_body(request: Request, limit: int) -> bytes:
    """:func:`receive_body` for a Starlette request (``POST /tasks``)."""
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


def header_map(scope: Scope) -> dict[str, str]:
    """The request's headers, names lower case (as ASGI servers give them), decoded as latin-1;
    of a repeated header, the first (as Starlette's ``Headers.get``)."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1")
        if key not in headers:
            headers[key] = value.decode("latin-1")
    return headers


def delivery_id(headers: Mapping[str, str], signed_content: bytes) -> str:
    """The sender's id for this delivery, else a digest of what was signed (so a resent
    copy of the same signed bytes is still recognised)."""
    for name in ID_HEADERS:
        value = headers.get(name, "").strip()
        if value and len(value) <= _MAX_ID and value.isprintable():
            return value
    return "sha256:" + hashlib.sha256(signed_content).hexdigest()[:32]


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers kept with a delivery: not the private ones, and a NUL read as a space (as
    RFC 9110, 5.5, lets a recipient; uvicorn's parsers refuse one, but another ASGI server
    may pass it on, and PostgreSQL cannot store it). Verification saw them as they came."""
    return {_no_nul(k.lower()): _no_nul(v) for k, v in headers.items()
            if k.lower() not in PRIVATE_HEADERS}


def _no_nul(text: str) -> str:
    return text.replace("\x00", " ") if "\x00" in text else text


def make_delivery(
    *,
    body: bytes,
    headers: Mapping[str, str],
    verified: Verified,
    task_id_hint: str | None,
    received_at: float,
    source: Source = Source.WEBHOOK,
) -> Delivery:
    """A verified request as a :class:`Delivery`, parsed when it can be. ``task_id_hint``
    (the URL's ``?task_id=``) is kept only when it reads as a task id
    (:func:`receiver.clips.parse_identifier`): a quarantined delivery stores it as it is."""
    task_id_hint = parse_identifier(task_id_hint)
    event_header = headers.get(EVENT_HEADER)
    callback, error = try_parse(body, event_header=event_header, task_id_hint=task_id_hint)
    return Delivery(
        delivery_id=delivery_id(headers, verified.signed_content),
        source=source,
        scheme=verified.scheme.value,
        event=callback.event.value if callback and callback.event
        else None if event_header is None else _no_nul(event_header)[:_MAX_EVENT],
        headers=kept_headers(headers),
        body=body,
        received_at=received_at,
        callback=callback,
        error=error,
        task_id_hint=task_id_hint,
    )


async def send_json(send: Send, status: int, content: Any,
                    headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """Answer ``content`` as JSON (what Starlette's ``JSONResponse`` sends, by orjson)."""
    body = orjson.dumps(content)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"%d" % len(body)), _JSON, *headers]})
    await send({"type": "http.response.body", "body": body})


class WebhookEndpoint:
    """The ASGI app of ``POST /webhooks/sonic``; ``verifier`` is None only when verification
    is switched off. It answers 503 until :meth:`open` gives it the store (the app's lifespan
    does), and after :meth:`close`. Each refusal is counted in ``refusals`` (by scheme and
    reason) for the signatures-failing alert."""

    def __init__(
        self,
        *,
        verifier: Verifier | None,
        clock: Clock,
        max_body_bytes: int,
        router: Router | None = None,
        store: Ingest | None = None,
        refusals: Tally | None = None,
    ) -> None:
        self.store = store
        self.refusals = refusals
        self.verifier = verifier
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.router = router

    def open(self, store: Ingest) -> None:
        self.store = store

    def close(self) -> None:
        self.store = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await send_json(send, 405, {"error": "method_not_allowed"},
                            headers=((b"allow", b"POST"),))
            return
        store = self.store
        if store is None:
            await send_json(send, 503, {"error": "store_unavailable"})
            return
        started = time.perf_counter()
        try:
            status, content = await self.ingest(store, scope, receive)
        except ClientDisconnect:  # gone (or cut off by BodyTimeout, which answers 408)
            return
        await send_json(send, status, content)
        metrics.observe_ingest(time.perf_counter() - started, status, self.provider_of(scope))

    def provider_of(self, scope: Scope) -> str:
        """Whose deliveries this endpoint takes, as the ingest histogram labels them."""
        return "sonic"

    def _refused(self, exc: VerificationError, headers: Mapping[str, str],
                 where: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A delivery whose authentication failed: logged, counted for the alerts, 401."""
        log.warning("signature_rejected", reason=exc.reason, scheme=exc.scheme,
                    headers=sorted(h for h in headers if h in SIGNATURE_HEADERS), **where)
        if self.refusals is not None:
            self.refusals.add("refused", f"{exc.scheme or 'none'}:{exc.reason}",
                              at=self.clock.now())
        return 401, {"error": exc.reason}

    async def ingest(self, store: Ingest, scope: Scope, receive: Receive
                     ) -> tuple[int, dict[str, Any]]:
        """The path of one delivery: its HTTP status and the JSON answer."""
        headers = header_map(scope)
        where = {"path": scope["path"], "client": (scope.get("client") or (None,))[0]}
        try:
            body = await receive_body(receive, headers.get("content-length"),
                                      self.max_body_bytes)
        except BodyTooLarge as exc:
            log.warning("delivery_too_large", limit=exc.limit, **where)
            return 413, {"error": "body_too_large", "limit": exc.limit}
        try:
            verified = self._verify(headers, body)
        except VerificationError as exc:
            return self._refused(exc, headers, where)
        query = scope.get("query_string", b"")
        delivery = make_delivery(
            body=body,
            headers=headers,
            verified=verified,
            task_id_hint=QueryParams(query.decode("latin-1")).get("task_id") if query else None,
            received_at=self.clock.now(),
        )
        return await self._record(store, delivery, where)

    async def _record(self, store: Ingest, delivery: Delivery,
                      where: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Record ``delivery`` and say what to answer: 503 when it could not be committed."""
        where["delivery_id"] = delivery.delivery_id
        try:
            result = await store.record_delivery(delivery, router=self.router)
        except ValueRefused as exc:  # the store is there, and will refuse this again
            return 503, await self._keep_aside(store, delivery, exc, where)
        except StoreError as exc:
            log.error("delivery_not_recorded", error=exc.message, **where)
            return 503, {"error": "store_unavailable"}
        except Exception as exc:  # a bug must cost a retry, never the delivery
            return 503, await self._keep_aside(store, delivery, exc, where)
        return answer(result, event=delivery.event, scheme=delivery.scheme, where=where)

    async def _keep_aside(self, store: Ingest, delivery: Delivery, exc: Exception,
                          where: dict[str, Any]) -> dict[str, Any]:
        """After an unforeseen error (the transaction was rolled back), try once more to keep
        the raw delivery, as quarantined with the error's type as the reason (for a 503)."""
        reason = f"internal error while recording: {type(exc).__name__}"
        log.error("delivery_recording_failed", error_type=type(exc).__name__, exc_info=exc,
                  **where)
        aside = dataclasses.replace(delivery, callback=None, error=reason)
        try:
            await store.record_delivery(aside)
        except Exception as second:
            log.error("delivery_not_kept", error_type=type(second).__name__, exc_info=second,
                      **where)
            kept = False
        else:
            log.warning("delivery_kept_aside", reason=reason, **where)
            kept = True
        return {"error": "store_unavailable", "reason": reason, "kept": kept,
                "delivery_id": delivery.delivery_id}

    def _verify(self, headers: Mapping[str, str], body: bytes) -> Verified:
        if self.verifier is None:
            return Verified(scheme=Scheme.NONE, timestamp=None, signed_content=body)
        return self.verifier.verify(headers, body)


class ProviderEndpoint(WebhookEndpoint):
    """The ASGI app of ``POST /webhooks/<provider>[/<secret>]`` for the providers
    ``adapters`` enable (any other name under ``/webhooks/`` is 404). The secret segment is a
    per-task token (or the provider's static path secret); it is never logged."""

    def __init__(self, *, adapters: Mapping[str, Adapter], clock: Clock, max_body_bytes: int,
                 router: Router | None = None, store: Ingest | None = None,
                 refusals: Tally | None = None) -> None:
        super().__init__(verifier=None, clock=clock, max_body_bytes=max_body_bytes,
                         router=router, store=store, refusals=refusals)
        self.adapters = adapters

    def provider_of(self, scope: Scope) -> str:
        name = self.name_of(scope)
        return name if name in self.adapters else "unknown"

    @staticmethod
    def name_of(scope: Scope) -> str:
        """The provider a request's path names."""
        params = scope.get("path_params") or {}
        if "provider" in params:  # routed by Starlette (an app mounted under a root_path)
            return str(params["provider"])
        return str(scope["path"]).removeprefix("/webhooks/").partition("/")[0]

    async def ingest(self, store: Ingest, scope: Scope, receive: Receive
                     ) -> tuple[int, dict[str, Any]]:
        params = scope.get("path_params") or {}
        name = self.name_of(scope)
        if "provider" in params:
            secret = str(params.get("secret", ""))
        else:
            secret = str(scope["path"]).removeprefix("/webhooks/").partition("/")[2]
        adapter = self.adapters.get(name)
        if adapter is None or "/" in secret:
            return 404, {"error": "not_found"}
        headers = header_map(scope)
        where: dict[str, Any] = {"path": f"/webhooks/{name}", "provider": name,
                                 "client": (scope.get("client") or (None,))[0]}
        try:
            body = await receive_body(receive, headers.get("content-length"),
                                      self.max_body_bytes)
        except BodyTooLarge as exc:
            log.warning("delivery_too_large", limit=exc.limit, **where)
            return 413, {"error": "body_too_large", "limit": exc.limit}
        inbound = Inbound(headers=headers, body=body, secret=secret or None)
        try:
            verified, bound = await self._authenticate(store, adapter, inbound)
            callback, error = adapter.parse(body, headers)
            if bound is not None and callback is not None and callback.task_id not in (
                    None, bound):
                raise refuse("token_task_mismatch", Scheme.TOKEN,
                             "the token was made for another task")
        except VerificationError as exc:
            return self._refused(exc, headers, where)
        event = callback.event.value if callback is not None and callback.event else None
        # A body nothing authenticates names itself by its digest, under its provider: an id
        # header it carries is not authenticated either, and could otherwise claim the id of
        # another provider's (or Sonic's) later delivery, which would then be a "duplicate".
        named = (f"{name}:{delivery_id({}, body)}" if adapter.confirms
                 else delivery_id(headers, verified.signed_content))
        delivery = Delivery(
            delivery_id=named, source=Source.WEBHOOK,
            scheme=verified.scheme.value, event=event, headers=kept_headers(headers),
            body=body, received_at=self.clock.now(), callback=callback, error=error,
            provider=name, unconfirmed=adapter.confirms and callback is not None,
        )
        return await self._record(store, delivery, where)

    @staticmethod
    async def _authenticate(store: Ingest, adapter: Adapter, inbound: Inbound,
                            ) -> tuple[Verified, str | None]:
        """What authenticates ``inbound``, and the task its token was made for (None: any);
        a :class:`VerificationError` when nothing does. A provider with tokens needs its
        token (or path secret) whatever else the request carries."""
        verified = adapter.authenticate(inbound)
        if not adapter.tokens:
            if verified is None:
                raise refuse("missing_signature", Scheme.NONE)
            return verified, None
        by_path = adapter.path_secret(inbound)
        if by_path is not None:
            return verified or by_path, None
        if not inbound.secret:
            raise refuse("missing_token", Scheme.TOKEN, "no token in the callback URL")
        found = await store.find_token(token_hash(inbound.secret))
        if found is None or found[0] != adapter.name:
            raise refuse("unknown_token", Scheme.TOKEN)
        return verified or Verified(scheme=Scheme.TOKEN, timestamp=None,
                                    signed_content=inbound.body), found[1]


def answer(result: RecordResult, *, event: str | None, scheme: str,
           where: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON answer for a recorded delivery, logged with its ids."""
    if result.outcome is Outcome.QUARANTINED:
        log.warning("delivery_quarantined", reason=result.reason, webhook_event=event,
                    task_id=result.task_id, **where)
        return 422, {
            "error": "unusable_payload",
            "status": result.outcome.value,
            "reason": result.reason,
            "delivery_id": result.delivery_id,
        }
    state = result.state.value if result.state else None
    log.info(
        "delivery_" + result.outcome.value,
        webhook_event=event,
        scheme=scheme,
        state=state,
        jobs=result.jobs,
        transitions=[f"{t.entity}:{t.entity_id}:{t.to_state}" for t in result.transitions],
        task_id=result.task_id,
        **where,
    )
    return 200, {
        "status": result.outcome.value,
        "delivery_id": result.delivery_id,
        "task_id": result.task_id,
        "state": state,
    }
