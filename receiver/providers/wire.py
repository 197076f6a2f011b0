"""The wire every hosted API's client shares: one JSON call, retried, its refusals named.

:class:`ApiWire` is the base of :class:`receiver.sonic.client.SonicClient` and of each
provider's client (:mod:`receiver.providers`). A call sends JSON over an injected
:class:`httpx.AsyncClient` and reads the answer by the clip reader's JSON rules
(:func:`receiver.clips.load`); what the service answers becomes a named error of
:mod:`receiver.sonic.errors` (the handlers and the recovery scripts catch those, whichever
provider answered):

=========================================  ===============================================
the service answers                        the client raises
=========================================  ===============================================
400                                        ``SonicValidationError`` (the service's message)
401, or 403 not about credits              ``SonicAuthError``
a credits refusal (``credits_codes``, or  ``InsufficientCredits``
the ``credits_prefix`` words)
404, or "task not found."                  ``TaskNotFound``
``later_codes`` (429), 5xx, a timeout,     retried with backoff, then ``SonicUnavailable``
no connection
=========================================  ===============================================

A call that creates something is never resent once it may have reached the service: a read
timeout, a dropped connection or a 5xx after the request went out raises
:class:`CreateOutcomeUnknown` carrying the request. Only failures where nothing was sent
(connecting, waiting for a pooled connection) and refusals that accept nothing (a rate limit)
are retried for it. Retries use stamina (exponential backoff with jitter), tuned by
:class:`RetryPolicy`, whose ``timeout_s`` bounds the whole call, an answer that drips in
included (a create cut off so is an unknown outcome). An answer is read up to
:data:`MAX_ANSWER_BYTES`; a longer one is a :class:`SonicProtocolError`.

A provider says where its API differs with a few class attributes: the names its messages
come under, the codes that mean "too few credits", "slow down" or "not now".
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import httpx
import stamina
import structlog

from receiver.clips import json_kind, load
from receiver.errors import PayloadError
from receiver.sonic.errors import (
    CreateOutcomeUnknown,
    InsufficientCredits,
    SonicAuthError,
    SonicError,
    SonicProtocolError,
    SonicRequestError,
    SonicUnavailable,
    SonicValidationError,
    TaskNotFound,
)

log = structlog.get_logger("receiver.providers.wire")

Json = Mapping[str, Any]
# Failures where the request cannot have left this process: safe to resend even a create.
_NOTHING_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
TASK_NOT_FOUND = "task not found"
# An answer is a few kilobytes of JSON; one past this is not read further (nor kept in memory).
MAX_ANSWER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How retryable failures are retried: stamina's knobs (seconds).

    ``attempts`` counts the first try. Waits grow as ``wait_initial_s * wait_exp_base**n`` plus
    up to ``wait_jitter_s``, capped at ``wait_max_s``; ``timeout_s`` bounds the whole call.
    """

    attempts: int = 4
    timeout_s: float | None = 30.0
    wait_initial_s: float = 0.25
    wait_max_s: float = 5.0
    wait_jitter_s: float = 0.5
    wait_exp_base: float = 2.0

    @classmethod
    def without_waits(cls, attempts: int = 3) -> RetryPolicy:
        """Retries that do not wait: for tests and for callers that retry on their own."""
        return cls(attempts=attempts, wait_initial_s=0.0, wait_max_s=0.0, wait_jitter_s=0.0)


class _Retry(SonicUnavailable):
    """One failed attempt that may be retried (becomes SonicUnavailable when retries end)."""


class ApiWire:
    """JSON calls to ``base_url`` with ``headers``, over the caller's ``http`` client."""

    #: What the service is called in messages ("Sonic", "sunoapi"...), and in log events
    #: (``sonic_unavailable``).
    service: ClassVar[str] = "the service"
    log_name: ClassVar[str] = "api"
    #: Where a refusal's words are, in order.
    message_names: ClassVar[tuple[str, ...]] = ("message", "error", "detail")
    #: Statuses (HTTP, or a body's ``code``) that say the account has too few credits.
    credits_codes: ClassVar[frozenset[int]] = frozenset()
    #: What a credits refusal's message starts with, whatever its status.
    credits_prefix: ClassVar[str | None] = None
    #: Statuses that refuse for now only (rate limits, maintenance): retried, and a create
    #: refused so was not accepted.
    later_codes: ClassVar[frozenset[int]] = frozenset({429})

    def __init__(self, base_url: str, headers: Mapping[str, str], *,
                 http: httpx.AsyncClient, retry: RetryPolicy | None = None) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {**headers, "Accept": "application/json"}
        self._http = http
        self._retry = retry or RetryPolicy()

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self._base_url!r})"

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        creates: object | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Json:
        policy = self._retry
        # timeout_s bounds the whole call, an answer that drips in included: httpx's timeouts
        # are per read, and stamina's ends the retries, not an attempt under way.
        deadline = (None if policy.timeout_s is None
                    else asyncio.get_running_loop().time() + policy.timeout_s)
        try:
            async for attempt in stamina.retry_context(
                on=_Retry,
                attempts=policy.attempts,
                timeout=policy.timeout_s,
                wait_initial=policy.wait_initial_s,
                wait_max=policy.wait_max_s,
                wait_jitter=policy.wait_jitter_s,
                wait_exp_base=policy.wait_exp_base,
            ):
                with attempt:
                    return await self._once(method, path, body, creates, params, deadline)
        except _Retry as exc:
            log.warning(f"{self.log_name}_unavailable", path=path, reason=exc.message)
            raise SonicUnavailable(exc.message) from exc.__cause__
        raise AssertionError("stamina ended without an outcome")  # pragma: no cover

    async def _once(self, method: str, path: str, body: dict[str, Any] | None,
                    creates: object | None, params: Mapping[str, str] | None,
                    deadline: float | None) -> Json:
        if deadline is not None and asyncio.get_running_loop().time() >= deadline:
            raise _Retry(f"out of time before {method} {path}")  # nothing sent
        try:
            async with asyncio.timeout_at(deadline), self._http.stream(
                method, self._base_url + path, json=body, headers=self._headers, params=params
            ) as response:
                content = await _read(response, path)
        except TimeoutError as exc:
            reason = (f"no whole answer to {method} {path} within {self._retry.timeout_s:g}s")
            if creates is not None:
                self._outcome_unknown(creates, path, reason, exc)
            raise _Retry(reason) from exc
        except httpx.UnsupportedProtocol as exc:
            raise SonicError(f"cannot call {self._base_url}: {exc}") from exc
        except httpx.TransportError as exc:  # timeouts, connection and protocol errors
            reason = f"{type(exc).__name__} on {method} {path}"
            if creates is not None and not isinstance(exc, _NOTHING_SENT):
                self._outcome_unknown(creates, path, reason, exc)
            raise _Retry(reason) from exc
        return self._answer(response, content, path, creates)

    def _answer(self, response: httpx.Response, content: bytes, path: str,
                creates: object | None) -> Json:
        status = response.status_code
        try:
            # Read by the clip reader's rules, so an answer reads as the same body would in a
            # webhook (an integer past Python's digit limit is null, not unreadable).
            data: object = load(content)
            unusable = f"a JSON {json_kind(data)}"
        except PayloadError as exc:
            data, unusable = None, exc.message
        body: Json = data if isinstance(data, Mapping) else {}
        code = body.get("code")
        # Some answers say HTTP 200 but carry a refusal in the body's code ("task not found.").
        # Only 4xx codes, and this service's codes for "later", count: a 200 whose body says
        # 500 still carries data (a failed task's clips, say) and must not be retried as if
        # the service were down.
        if 200 <= status < 300 and isinstance(code, int) and not isinstance(code, bool) and (
                400 <= code < 500 or code in self.later_codes):
            status = code
        if 200 <= status < 300:
            if data is None or not isinstance(data, Mapping):
                raise SonicProtocolError(
                    f"{path} answered {status} without a JSON object ({unusable})"
                )
            return body
        message = (self._message(body) or content[:200].decode("utf-8", "replace")
                   or response.reason_phrase)
        if status in self.credits_codes:
            raise InsufficientCredits(message, status=status, code=code, body=body)
        if status in self.later_codes or status >= 500:
            reason = f"{path} answered {status}: {message}"
            if creates is not None and status not in self.later_codes:  # "later" took nothing
                self._outcome_unknown(creates, path, reason, None)
            raise _Retry(reason)
        self._raise_refusal(status, message, code, body)

    def _outcome_unknown(
        self, creates: object, path: str, reason: str, exc: Exception | None
    ) -> NoReturn:
        log.warning(f"{self.log_name}_create_outcome_unknown", path=path, reason=reason)
        raise CreateOutcomeUnknown(
            creates, endpoint=path,
            message=f"the create may have reached {self.service}: {reason}",
        ) from exc

    def _raise_refusal(self, status: int, message: str, code: object, body: Json) -> NoReturn:
        kind: type[SonicRequestError]
        if message.strip().lower().startswith(TASK_NOT_FOUND):
            kind = TaskNotFound
        elif self.credits_prefix is not None and message.startswith(self.credits_prefix):
            kind = InsufficientCredits
        elif status == 404:
            kind = TaskNotFound
        elif status == 400:
            kind = SonicValidationError
        elif status in (401, 403):
            kind = SonicAuthError
        else:
            kind = SonicRequestError
        raise kind(message, status=status, code=code, body=body)

    def _message(self, body: Json) -> str | None:
        for name in self.message_names:
            value = body.get(name)
            if isinstance(value, str) and value:
                return value
        return None


async def _read(response: httpx.Response, path: str) -> bytes:
    """The answer's bytes (decoded as its Content-Encoding says), at most
    :data:`MAX_ANSWER_BYTES` of them."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise SonicProtocolError(f"{path} answered more than {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
