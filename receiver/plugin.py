"""What a handler may use: the one module handler authors import (the built-in handlers too).

A handler is a plain async function, declared with :func:`handler` and registered by name
through the entry-point group ``sonic_receiver.handlers`` (or a ``[handlers.<name>]`` path)::

    from receiver.plugin import Context, Event, Options, handler

    class ArchiveOptions(Options, kw_only=True, frozen=True):
        bucket: str

    @handler(options=ArchiveOptions)
    async def archive(event: Event, ctx: Context) -> None:
        options: ArchiveOptions = ctx.options
        view = await ctx.task()
        ...

Contract:

- A job runs its handler at least once; ``event.key`` is the same on every attempt, so effects
  are made idempotent by it (files complete or absent under their final names, records written
  before the effect they describe).
- Options are checked, with the rest of the config file, before the receiver starts: a handler
  receives them parsed, as its declared :class:`Options` subclass (a mapping as written for a
  handler that declares none). Its own table ``[<name>]`` arrives the same way as ``ctx.table``.
- ``raise Retry("why", after=seconds)`` runs the job again later, counting the attempt
  (``counted=False``: a wait, the attempt given back); :class:`PermanentError` ends it at once;
  any other exception is retried with backoff until the job's attempts run out.
- Order between handlers is declared, never coded: a handler that ``provides`` something (the
  task's files) runs before the jobs of the same task whose handler ``needs`` it, up to a
  bounded wait; a route can add ``after = ["name", ...]`` for one of its handlers.
- Fetching a URL a callback named goes through ``ctx.network`` (no loopback, private or
  link-local address unless ``[network]`` allows it); files are kept in ``ctx.media``.
- A handler that needs the upstream's current view of its task (fresh media links, say) calls
  ``ctx.refresh_task()`` when ``ctx.sonic`` is configured: get-music, recorded as a ``poll``
  delivery through the same path as every event, never written around it.

:mod:`receiver.testing` runs a handler against a real store in a few lines.
"""

from __future__ import annotations

from receiver.context import Event
from receiver.context import HandlerContext as Context
from receiver.conversion import (
    Domain,
    FieldError,
    Fraction,
    HttpUrl,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seconds,
    Text,
    shown,
)
from receiver.conversion import Table as Options
from receiver.errors import ReceiverError
from receiver.fetching import (
    LINK_REFUSED,
    FetchBadBody,
    FetchDenied,
    FetchError,
    FetchFailed,
    FetchGone,
    NetPolicy,
    download,
    locked,
    safe_url,
)
from receiver.jobs import PermanentError, Retry
from receiver.media import MediaError, MediaRefused, MediaStore
from receiver.models import ChildState, ChildTask, Clip, Result, StoredFile, Task, TaskView
from receiver.notifying import NotSent, Target, UnusableTarget, send, services, targets_of
from receiver.providers import TaskApi
from receiver.providers.registry import documented_link_lifetime
from receiver.registry import handler
from receiver.signatures import sign_standard
from receiver.sonic.client import SonicClient
from receiver.sonic.contract import TASKS, CreateRequest, TaskType, normalise_model
from receiver.sonic.errors import (
    CreateOutcomeUnknown,
    SonicError,
    SonicRequestError,
    SonicUnavailable,
    SonicValidationError,
)
from receiver.states import State

__all__ = [
    "LINK_REFUSED",
    "TASKS",
    "ChildState",
    "ChildTask",
    "Clip",
    "Context",
    "CreateOutcomeUnknown",
    "CreateRequest",
    "Domain",
    "Event",
    "FetchBadBody",
    "FetchDenied",
    "FetchError",
    "FetchFailed",
    "FetchGone",
    "FieldError",
    "Fraction",
    "HttpUrl",
    "MediaError",
    "MediaRefused",
    "MediaStore",
    "NetPolicy",
    "NonNegativeInt",
    "NotSent",
    "Options",
    "PermanentError",
    "PositiveFloat",
    "PositiveInt",
    "ReceiverError",
    "Result",
    "Retry",
    "Seconds",
    "SonicClient",
    "SonicError",
    "SonicRequestError",
    "SonicUnavailable",
    "SonicValidationError",
    "State",
    "StoredFile",
    "Target",
    "Task",
    "TaskApi",
    "TaskType",
    "TaskView",
    "Text",
    "UnusableTarget",
    "documented_link_lifetime",
    "download",
    "handler",
    "locked",
    "normalise_model",
    "safe_url",
    "send",
    "services",
    "shown",
    "sign_standard",
    "targets_of",
]
