"""``POST /webhooks/sonic``: the path of a delivery, in order.

read (bounded) → verify (raw bytes) → name it (delivery id) → parse → record (one
transaction) → answer. Nothing is answered 2xx before the store has committed, and nothing
unverified is stored.

A verified delivery is never lost: a body that cannot be used is kept raw and answered 422;
a store that cannot commit is answered 503 (retryable); and an unforeseen error while
recording is rolled back, the body kept aside as quarantined if the store still takes it
(replayable after a fix: ``replay redispatch --quarantined``), and answered 503.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse

from receiver.clock import Clock
from receiver.errors import BodyTooLarge, StoreError, VerificationError
from receiver.models import Delivery, Outcome, RecordResult, Source
from receiver.payloads import try_parse
from receiver.routing import Router
from receiver.signatures import SIGNATURE_HEADERS, Scheme, Verified, Verifier
from receiver.storage.roles import Ingest

log = structlog.get_logger("receiver.webhook")

ID_HEADERS = ("x-webhook-id", "idempotency-key", "webhook-id")
EVENT_HEADER = "x-webhook-event"
# Never kept with a delivery: they prove knowledge of a secret, or are credentials.
PRIVATE_HEADERS = SIGNATURE_HEADERS | {"authorization", "cookie", "proxy-authorization"}
_MAX_ID = 200


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or :class:`BodyTooLarge` as soon as it is known to pass ``limit`` bytes:
    from ``Content-Length`` before reading anything, else while streaming."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def delivery_id(headers: Mapping[str, str], signed_content: bytes) -> str:
    """The sender's id for this delivery, else a digest of what was signed (so a resent
    copy of the same signed bytes is still recognised)."""
    for name in ID_HEADERS:
        value = headers.get(name, "").strip()
        if value and len(value) <= _MAX_ID and value.isprintable():
            return value
    return "sha256:" + hashlib.sha256(signed_content).hexdigest()[:32]


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower() not in PRIVATE_HEADERS}


def make_delivery(
    *,
    body: bytes,
    headers: Mapping[str, str],
    verified: Verified,
    task_id_hint: str | None,
    received_at: float,
    source: Source = Source.WEBHOOK,
) -> Delivery:
    """A verified request as a :class:`Delivery`, parsed when it can be."""
    event_header = headers.get(EVENT_HEADER)
    callback, error = try_parse(body, event_header=event_header, task_id_hint=task_id_hint)
    return Delivery(
        delivery_id=delivery_id(headers, verified.signed_content),
        source=source,
        scheme=verified.scheme.value,
        event=callback.event.value if callback and callback.event else event_header,
        headers=kept_headers(headers),
        body=body,
        received_at=received_at,
        callback=callback,
        error=error,
        task_id_hint=task_id_hint,
    )


class WebhookEndpoint:
    """The ASGI endpoint; ``verifier`` is None only when verification is switched off."""

    def __init__(
        self,
        *,
        store: Ingest,
        verifier: Verifier | None,
        clock: Clock,
        max_body_bytes: int,
        router: Router | None = None,
        on_jobs: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.router = router
        self.on_jobs = on_jobs

    async def __call__(self, request: Request) -> JSONResponse:
        client = request.client.host if request.client else None
        with structlog.contextvars.bound_contextvars(path=request.url.path, client=client):
            try:
                body = await read_body(request, self.max_body_bytes)
            except BodyTooLarge as exc:
                log.warning("delivery_too_large", limit=exc.limit)
                return JSONResponse({"error": "body_too_large", "limit": exc.limit}, 413)
            try:
                verified = self._verify(request, body)
            except VerificationError as exc:
                log.warning(
                    "signature_rejected",
                    reason=exc.reason,
                    headers=sorted(h for h in request.headers if h.lower() in SIGNATURE_HEADERS),
                )
                return JSONResponse({"error": exc.reason}, 401)
            delivery = make_delivery(
                body=body,
                headers=request.headers,
                verified=verified,
                task_id_hint=request.query_params.get("task_id"),
                received_at=self.clock.now(),
            )
            with structlog.contextvars.bound_contextvars(delivery_id=delivery.delivery_id):
                try:
                    result = await self.store.record_delivery(delivery, router=self.router)
                except StoreError as exc:
                    log.error("delivery_not_recorded", error=exc.message)
                    return JSONResponse({"error": "store_unavailable"}, 503)
                except Exception as exc:  # a bug must cost a retry, never the delivery
                    return await self._keep_aside(delivery, exc)
                if result.jobs and self.on_jobs is not None:
                    self.on_jobs()
                return answer(result, event=delivery.event, scheme=delivery.scheme)

    async def _keep_aside(self, delivery: Delivery, exc: Exception) -> JSONResponse:
        """After an unforeseen error (the transaction was rolled back), try once more to keep
        the raw delivery, as quarantined with the error's type as the reason; answer 503."""
        reason = f"internal error while recording: {type(exc).__name__}"
        log.error("delivery_recording_failed", error_type=type(exc).__name__, exc_info=exc)
        aside = dataclasses.replace(delivery, callback=None, error=reason)
        try:
            await self.store.record_delivery(aside)
        except Exception as second:
            log.error("delivery_not_kept", error_type=type(second).__name__, exc_info=second)
            kept = False
        else:
            log.warning("delivery_kept_aside", reason=reason)
            kept = True
        return JSONResponse(
            {"error": "store_unavailable", "reason": reason, "kept": kept,
             "delivery_id": delivery.delivery_id},
            503,
        )

    def _verify(self, request: Request, body: bytes) -> Verified:
        if self.verifier is None:
            return Verified(scheme=Scheme.NONE, timestamp=None, signed_content=body)
        return self.verifier.verify(request.headers, body)


def answer(result: RecordResult, *, event: str | None, scheme: str) -> JSONResponse:
    """The HTTP answer for a recorded delivery, logged with its ids."""
    with structlog.contextvars.bound_contextvars(task_id=result.task_id):
        if result.outcome is Outcome.QUARANTINED:
            log.warning("delivery_quarantined", reason=result.reason, webhook_event=event)
            return JSONResponse(
                {
                    "error": "unusable_payload",
                    "status": result.outcome.value,
                    "reason": result.reason,
                    "delivery_id": result.delivery_id,
                },
                422,
            )
        log.info(
            "delivery_" + result.outcome.value,
            webhook_event=event,
            scheme=scheme,
            state=result.state.value if result.state else None,
            jobs=result.jobs,
            transitions=[f"{t.entity}:{t.entity_id}:{t.to_state}" for t in result.transitions],
        )
        return JSONResponse(
            {
                "status": result.outcome.value,
                "delivery_id": result.delivery_id,
                "task_id": result.task_id,
                "state": result.state.value if result.state else None,
            }
        )
