"""Providers: the hosted APIs whose callbacks this receiver takes, one adapter module each.

A delivery takes one path whatever its provider::

    POST /webhooks/<provider>[/<token>] → the adapter authenticates it → its body becomes the
    receiver's Callback (clips through receiver.clips, the one clip reader) → the one record
    algorithm (receiver.recording) → jobs, handlers, replay, console

An :class:`Adapter` says, for its provider:

- how a callback is authenticated (:meth:`Adapter.authenticate`), and whether what
  authenticates it covers the body (``covers_body``). Where it does not, the receiver puts a
  per-task token in the callback URL of each task it creates (``tokens``: a callback without a
  known token, or the static ``path_secret``, is refused) and records the body
  ``unconfirmed``: it takes effect once a poll of the provider agrees
  (:mod:`receiver.confirmation`);
- how its body becomes a :class:`~receiver.payloads.Callback` (:meth:`Adapter.parse`: task,
  stage as the receiver's event, clips with their state, URLs, duration, the failure's code,
  message and category), and how a poll answer does (:meth:`Adapter.poll_callback`);
- its client (:meth:`Adapter.client`): create a task, poll one (:class:`ProviderClient`).

Sonic is the first adapter (:mod:`receiver.providers.sonic`); its endpoint stays the hot path
of :mod:`receiver.webhook`. The others are enabled by ``[providers.<name>]`` tables
(:class:`receiver.config.ProvidersTable`) and listed in
:data:`receiver.providers.registry.ADAPTERS`. Every value a
callback carries is hostile: adapters only read it through :mod:`receiver.clips`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import httpx
import structlog

from receiver.clips import load, parse_code, parse_text
from receiver.clock import Clock
from receiver.config import ProviderTable
from receiver.errors import PayloadError, VerificationError
from receiver.failures import FailureCategory, classify_documented
from receiver.payloads import Callback
from receiver.signatures import Scheme, Verified, secret_matches
from receiver.sonic.contract import CreateRequest
from receiver.sonic.errors import SonicProtocolError
from receiver.sonic.responses import Bpm, Created, Music, Vox
from receiver.states import State, WebhookEvent

log = structlog.get_logger("receiver.providers")

SONIC = "sonic"


@dataclass(frozen=True, kw_only=True)
class Inbound:
    """A callback as it arrived: its headers (names lower case), raw body, and the secret
    segment of its path (``/webhooks/<name>/<secret>``), if any."""

    headers: Mapping[str, str]
    body: bytes = field(repr=False)
    secret: str | None = field(default=None, repr=False)


class Poller(Protocol):
    """What polls a task at its provider (reconcile, deadlines): Sonic's client, or every
    provider's through :class:`receiver.providers.calls.ProviderCalls`."""

    async def get_music(self, task_id: str) -> Music: ...


class TaskApi(Poller, Protocol):
    """What a handler asks of its task's provider (``ctx.sonic``): Sonic's client, or the
    task's provider's through :class:`receiver.providers.calls.TaskCalls`."""

    async def create(self, request: CreateRequest, *, source_is_upload: bool = False
                     ) -> Created: ...

    async def get_bpm(self, clip_id: str) -> Bpm: ...

    async def get_vox(self, clip_id: str, vocal_start_s: float | None = None,
                      vocal_end_s: float | None = None) -> Vox: ...


class ProviderClient(ABC):
    """A provider's API, as the receiver uses it: create a task that calls back
    ``callback_url`` (with ``secret`` where the provider carries one back), poll a task.
    Refusals are :mod:`receiver.sonic.errors`' (the wire is
    :class:`receiver.providers.wire.ApiWire`)."""

    provider: ClassVar[str]

    @abstractmethod
    async def create(self, request: CreateRequest, *, callback_url: str,
                     secret: str | None = None) -> Created:
        """Start the task ``request`` describes (its ``webhook_url`` and ``webhook_secret``
        are ignored: ``callback_url`` and ``secret`` are used)."""

    @abstractmethod
    async def get_music(self, task_id: str) -> Music:
        """Poll ``task_id``: the answer, and the callback its adapter reads in it."""


class Adapter(ABC):
    """One provider's ways (see the module docstring). Built from its config table."""

    name: ClassVar[str]
    #: Whether what authenticates a callback covers its body (a signature over it).
    covers_body: ClassVar[bool] = True
    #: Whether the receiver puts a per-task token in its callback URLs.
    tokens: ClassVar[bool] = False
    #: The documented API, when the table names none.
    default_base_url: ClassVar[str] = ""
    #: How long its media links last (seconds), as documented; None: not documented.
    link_lifetime_s: ClassVar[float | None] = None

    def __init__(self, table: ProviderTable, *, tolerance_s: int, clock: Clock) -> None:
        self.table = table
        self.tolerance_s = tolerance_s
        self.clock = clock

    @property
    def confirms(self) -> bool:
        """Whether its callbacks are recorded unconfirmed until a poll agrees: its table's
        ``confirm``, else wherever the body is not authenticated."""
        if self.table.confirm is not None:
            return bool(self.table.confirm)
        return not self.covers_body

    @property
    def base_url(self) -> str:
        return (self.table.base_url or self.default_base_url).rstrip("/")

    @abstractmethod
    def authenticate(self, inbound: Inbound) -> Verified | None:
        """What in the request authenticates ``inbound``, before its body is parsed: a
        :class:`VerificationError` when it fails; None where the request carries nothing
        (the per-task token, or the path secret, must then: the endpoint checks them)."""

    def path_secret(self, inbound: Inbound) -> Verified | None:
        """``inbound`` authenticated by the static ``path_secret``, or None."""
        if secret_matches(inbound.secret, self.table.path_secret or ()):
            return Verified(scheme=Scheme.PATH_SECRET, timestamp=None,
                            signed_content=inbound.body)
        return None

    def parse(self, body: bytes, headers: Mapping[str, str] | None = None,
              ) -> tuple[Callback | None, str | None]:
        """``(callback, None)`` or ``(None, why the body cannot be used)``; never raises, so
        that an authenticated body is always kept."""
        try:
            document = load(body)
            if not isinstance(document, dict):
                raise PayloadError("body is not a JSON object")
            return self.callback(document, headers or {}), None
        except PayloadError as exc:
            return None, exc.message
        except Exception as exc:  # a bug here must not lose an authenticated delivery
            log.exception("payload_parser_failed", provider=self.name,
                          error_type=type(exc).__name__)
            return None, f"internal error while parsing: {type(exc).__name__}"

    @abstractmethod
    def callback(self, document: Mapping[str, Any], headers: Mapping[str, str]) -> Callback:
        """A callback body (a cleaned JSON object) as the receiver's callback; a
        :class:`PayloadError` when it cannot be used."""

    @abstractmethod
    def poll_callback(self, document: Mapping[str, Any], task_id: str) -> Callback:
        """A poll answer (a cleaned JSON object) for ``task_id`` as the receiver's callback;
        a :class:`PayloadError` when it cannot be used."""

    @abstractmethod
    def client(self, http: httpx.AsyncClient) -> ProviderClient | None:
        """Its client over ``http``, or None without an API key."""

    def music(self, answer: Mapping[str, Any], task_id: str, what: str) -> Music:
        """A poll's answer for ``task_id`` as its client returns it: read by
        :meth:`poll_callback` (a :class:`SonicProtocolError` naming ``what`` when it cannot
        be)."""
        try:
            callback = self.poll_callback(answer, task_id)
        except PayloadError as exc:
            raise SonicProtocolError(f"{what}: {exc.message}") from exc
        return Music(code=parse_code(answer.get("code")), message=callback.message,
                     clips=callback.clips, raw=answer, provider=self.name, callback=callback)


# The clips' state a provider's stage (as a webhook event) stands for.
EVENT_STATE = {WebhookEvent.STREAMING: State.RUNNING, WebhookEvent.COMPLETED: State.SUCCEEDED,
               WebhookEvent.FAILED: State.FAILED}


def status_event(data: Mapping[str, Any],
                 statuses: Mapping[str, WebhookEvent | None]) -> WebhookEvent | None:
    """The event that a task object's ``status`` names in ``statuses`` (None: a stage that
    says nothing yet); :class:`PayloadError` for no status, or one ``statuses`` lacks."""
    status = parse_text(data.get("status"))
    name = status.strip().lower() if status else ""
    if name not in statuses:
        raise PayloadError(f"unknown status {name[:40]!r}" if status else "no status")
    return statuses[name]


def failure(event: WebhookEvent | None, code: int | None, message: str | None
            ) -> tuple[str | None, FailureCategory | None]:
    """A task object's message and failure category: a failed task's message is never empty,
    and its category comes from the code and message (the shared documented codes)."""
    if event is not WebhookEvent.FAILED:
        return message, None
    message = message or "failed"
    return message, classify_documented(code, message, {})


def refuse(reason: str, scheme: Scheme, message: str | None = None) -> VerificationError:
    """A refusal of ``scheme``'s, for the signatures-failing alert's counts."""
    error = VerificationError(reason, message)
    error.scheme = scheme.value
    return error
