"""``notify``: tell people that a Sonic task finished, on any service apprise can reach.

On ``task.succeeded`` and ``task.failed`` (other triggers are ignored) a message goes to every
target: an apprise URL such as ``json://host:port/path``, ``mailto://...``, ``ntfy://...``,
``slack://...``, ``discord://...`` or ``tgram://...``. Each setting is taken from the route's
options, else from the config file's ``[notify]`` table, else from the default::

    [notify]
    targets = ["ntfy://ntfy.example/songs", "mailtos://user:pass@mail.example?to=me@example.com"]
    title_template = '🎵 "${title}" is ready'

    [[routes]]
    on = ["task.succeeded", "task.failed"]
    handlers = [{ name = "notify", options = { targets = ["json://127.0.0.1:9000/hook"] } }]

Settings (options and ``[notify]`` keys alike, :class:`NotifyOptions` and :class:`NotifyTable`;
anything else is refused as a typo at start-up):

==========================  ============================================================
``targets``                 apprise URLs (a list, or one string); required somewhere
``title_template``          title of a succeeded task's message
``body_template``           body of a succeeded task's message
``failed_title_template``   title of a failed task's message
``failed_body_template``    body of a failed task's message
``clip_template``           one clip's block in ``${clips}``
``format``                  ``text`` (default), ``markdown`` or ``html``: how apprise reads
                            the templates (each field is escaped for it: a callback's
                            title never becomes markup, a link or a mention)
``wait_for_files_s``        wait up to this long (default 0) for every clip's audio file
                            to be recorded (by ``download_audio``) before sending
==========================  ============================================================

Templates are :class:`string.Template` strings: ``$name`` or ``${name}``, ``$$`` for a dollar.
They see a flat mapping of strings, never objects, so a template cannot reach attributes. A
field that does not exist or a malformed placeholder stops start-up, naming the setting and the
fields it may use. The fields:

- ``task_id``, ``state`` (succeeded | failed), ``trigger``, ``route``, ``task_type``,
  ``platform`` (empty when unknown), ``error`` (why it failed; empty when it succeeded)
- ``title``, ``tags``: the clips' distinct titles / tags joined with `` / ``
  (``untitled``, ``no tags`` when there are none)
- ``clip_count``, ``durations`` (each clip's ``m:ss``, comma-separated)
- ``clips``: every clip rendered with ``clip_template``, one block after another
- ``files``: the paths of the stored audio files, one a line; ``audio_urls`` likewise
- ``clip_template`` also sees, for its clip: ``clip_id``, ``number`` (1, 2...), ``title``,
  ``tags``, ``duration`` (``m:ss``), ``clip_state``, ``audio_url``, ``files`` (this clip's
  audio files) and ``location`` (``file: <paths>``, else ``url: <audio_url>``, else
  ``no audio``); the task's fields apart from ``clips``.

Idempotence: the job's key is the same on every attempt, and each target that accepted the
message is recorded as a result (``kind = "notify:<job key>:<target index>"``) right after it
did; a later attempt skips those targets (when the URL at that index is still the same: a
digest of it is kept, never the URL). A failure of any other target raises
:class:`NotificationFailed`, which the worker retries with backoff. What remains is the window
between a target accepting the message and the record being written (a crash, a lost lease, a
database error there): that target gets the message again on the next attempt. Delivery to
each target is therefore at least once, and exactly once when nothing dies in that window.

Target URLs often carry tokens or passwords: logs and errors name a target only by its index
and scheme (``#1 json``), never by its URL.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from string import Template
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import apprise

from receiver.plugin import (
    Clip,
    Context,
    Domain,
    Event,
    NotSent,
    Options,
    PermanentError,
    ReceiverError,
    Retry,
    Seconds,
    StoredFile,
    Target,
    TaskView,
    Text,
    UnusableTarget,
    handler,
    send,
    services,
    shown,
    targets_of,
)

if TYPE_CHECKING:
    from typing import Self

TRIGGERS = frozenset({"task.succeeded", "task.failed"})
FORMATS: Mapping[str, apprise.NotifyFormat] = {
    "text": apprise.NotifyFormat.TEXT,
    "markdown": apprise.NotifyFormat.MARKDOWN,
    "html": apprise.NotifyFormat.HTML,
}
TEMPLATE_KEYS = ("title_template", "body_template", "failed_title_template",
                 "failed_body_template", "clip_template")

DEFAULT_TEMPLATES: Mapping[str, str] = {
    "title_template": '🎵 "${title}" succeeded',
    "body_template": "Sonic task ${task_id} succeeded with ${clip_count} clip(s).\n\n${clips}",
    "failed_title_template": "Sonic task ${task_id} failed",
    "failed_body_template": "Sonic task ${task_id} failed.\nReason: ${error}",
    "clip_template": "• ${title} [${tags}] ${duration}\n  ${location}",
}
TASK_FIELDS = frozenset({
    "task_id", "state", "trigger", "route", "task_type", "platform", "error", "title", "tags",
    "clip_count", "durations", "clips", "files", "audio_urls",
})
CLIP_FIELDS = (TASK_FIELDS - {"clips"}) | {
    "clip_id", "number", "duration", "clip_state", "audio_url", "location",
}
_WAIT_STEP_S = 5.0


class NotificationFailed(ReceiverError):
    """A notification target did not accept the message (the job is retried)."""


class TaskTemplate(str, Domain):
    """A message template over the task's fields."""

    description = "a template ($name or ${name}; $$ for a dollar sign)"
    json_schema: ClassVar[dict[str, Any]] = {"description": description, "type": "string"}
    fields: ClassVar[frozenset[str]] = TASK_FIELDS

    @classmethod
    def parse(cls, value: object) -> Self:
        if not isinstance(value, str):
            raise ValueError(f"expected {cls.description}, got {shown(value)}")
        template = Template(value)
        if not template.is_valid():
            raise ValueError("has a malformed placeholder: write $name or ${name}, and $$ for a "
                             "dollar sign")
        unknown = sorted(set(template.get_identifiers()) - cls.fields)
        if unknown:
            raise ValueError(f"uses unknown field(s) {', '.join('$' + u for u in unknown)}; "
                             f"fields: {', '.join(sorted(cls.fields))}")
        return cls(value)


class ClipTemplate(TaskTemplate):
    """The template of one clip's block in ``${clips}``: the clip's fields too."""

    fields = CLIP_FIELDS


class NotifyTable(Options, kw_only=True, frozen=True):
    """``[notify]``: what every notify route uses unless its options say otherwise."""

    targets: Text | list[Text] | None = None  # apprise URLs
    title_template: TaskTemplate | None = None
    body_template: TaskTemplate | None = None
    failed_title_template: TaskTemplate | None = None
    failed_body_template: TaskTemplate | None = None
    clip_template: ClipTemplate | None = None
    format: Literal["text", "markdown", "html"] | None = None
    wait_for_files_s: Seconds | None = None


class NotifyOptions(NotifyTable, kw_only=True, frozen=True):
    """A route's options: the keys of ``[notify]``, each replacing the table's value."""


@dataclass(frozen=True, kw_only=True)
class NotifySettings:
    """What one notify job sends, where, and how, once options and config are merged."""

    targets: tuple[str, ...]
    templates: Mapping[str, Template]
    body_format: apprise.NotifyFormat
    wait_for_files_s: float


@dataclass(frozen=True, kw_only=True)
class Message:
    title: str
    body: str
    notify_type: apprise.NotifyType


@handler(options=NotifyOptions, table=NotifyTable)
async def handle(event: Event, ctx: Context) -> None:
    """Send the message for ``event`` to each target that has not accepted it yet."""
    if event.trigger not in TRIGGERS:
        ctx.log.debug("notify_ignored", trigger=event.trigger)
        return
    settings = settings_from(ctx.options, ctx.table)
    view = await ctx.task()
    files = [f for f in await ctx.files() if f.kind == "audio"]
    if event.trigger == "task.succeeded" and settings.wait_for_files_s > 0:
        _wait_for_files(view, files, settings.wait_for_files_s, ctx)
    message = compose(event, view, files, settings)

    sent = {
        r.kind: r.data for r in await ctx.results()
        if r.job_key == event.key and r.kind.startswith(f"notify:{event.key}:")
    }
    targets = targets_of(settings.targets)
    pending: list[Target] = []
    for target in targets:
        record = sent.get(_result_kind(event, target))
        if record is not None and record.get("fingerprint") == target.fingerprint:
            ctx.log.debug("notify_already_sent", target=target.label)
        else:
            pending.append(target)
    if not pending:
        ctx.log.info("notify_nothing_left", targets=len(targets))
        return
    # Parsing URLs is quick, but the first call loads apprise's ~180 plugin modules (a few
    # tenths of a second): off the event loop.
    services = await asyncio.to_thread(_services, pending)

    outcomes = await asyncio.gather(
        *(_deliver(target, services[target.index], message, settings, event, ctx)
          for target in pending),
        return_exceptions=True,
    )
    failed: list[str] = []
    for target, outcome in zip(pending, outcomes, strict=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome  # cancelled: let the worker hand the job back
        if isinstance(outcome, Exception):
            failed.append(f"{target.label}: {outcome}")
    if failed:
        raise NotificationFailed(
            f"{len(failed)} of {len(targets)} notification targets failed: " + "; ".join(failed)
        )


def settings_from(options: NotifyOptions, table: NotifyTable) -> NotifySettings:
    """Route options over ``[notify]`` over defaults, key by key (each value was checked by its
    type at start-up); no target anywhere is a :class:`PermanentError`."""

    def pick(key: str) -> Any:
        return next((value for value in (getattr(options, key), getattr(table, key))
                     if value not in (None, [])), None)

    targets = pick("targets")
    if targets is None:
        raise PermanentError(
            "notify: no targets configured: give the route options.targets or [notify] targets "
            "(apprise URLs such as json://host/path, mailtos://..., ntfy://...)"
        )
    return NotifySettings(
        targets=tuple(t.strip() for t in ([targets] if isinstance(targets, str) else targets)),
        templates={key: Template(pick(key) or DEFAULT_TEMPLATES[key]) for key in TEMPLATE_KEYS},
        body_format=FORMATS[pick("format") or "text"],
        wait_for_files_s=float(pick("wait_for_files_s") or 0),
    )


def compose(
    event: Event, view: TaskView, files: Sequence[StoredFile], settings: NotifySettings
) -> Message:
    """The title and body for ``event``, from the templates and a flat mapping of strings,
    each escaped for the templates' format (:func:`escaped`)."""
    escape = ESCAPES.get(settings.body_format)
    fields = escaped(task_fields(event, view, files), escape)
    clip_template = settings.templates["clip_template"]
    blocks = [
        clip_template.substitute({**fields, **escaped(clip_fields(clip, number, files), escape)})
        for number, clip in enumerate(view.clips, start=1)
    ]
    fields["clips"] = "\n".join(blocks)
    failed = event.trigger == "task.failed"
    prefix = "failed_" if failed else ""
    return Message(
        title=settings.templates[f"{prefix}title_template"].substitute(fields),
        body=settings.templates[f"{prefix}body_template"].substitute(fields),
        notify_type=apprise.NotifyType.FAILURE if failed else apprise.NotifyType.SUCCESS,
    )


# Any ASCII punctuation may be backslash-escaped in CommonMark, and then reads as itself:
# brackets and parentheses (links), "<" (inline HTML), "@" (a chat's mentions), "*", "_"...
_MARKDOWN_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")
ESCAPES: Mapping[apprise.NotifyFormat, Callable[[str], str]] = {
    apprise.NotifyFormat.HTML: html.escape,
    apprise.NotifyFormat.MARKDOWN: lambda text: _MARKDOWN_SPECIAL.sub(r"\\\1", text),
}


def escaped(fields: Mapping[str, str], escape: Callable[[str], str] | None) -> dict[str, str]:
    """``fields`` as text inside a template of another format: the templates are the
    operator's markup, but a title, tags, a URL or a reason came from a callback, and must
    show as what they say instead of becoming markup, a link or a mention. apprise escapes a
    ``text`` message for each service itself."""
    return dict(fields) if escape is None else {k: escape(v) for k, v in fields.items()}


def task_fields(event: Event, view: TaskView, files: Sequence[StoredFile]) -> dict[str, str]:
    task = view.task
    failed = event.trigger == "task.failed"
    return {
        "task_id": task.task_id,
        "state": "failed" if failed else "succeeded",
        "trigger": event.trigger,
        "route": event.route,
        "task_type": task.task_type or "",
        "platform": task.platform or "",
        "error": (task.error or "no reason given") if failed else "",
        "title": _distinct((c.title for c in view.clips), "untitled"),
        "tags": _distinct((c.tags for c in view.clips), "no tags"),
        "clip_count": str(len(view.clips)),
        "durations": ", ".join(duration_text(c.duration) for c in view.clips),
        "clips": "",
        "files": "\n".join(f.path for f in files),
        "audio_urls": "\n".join(c.audio_url for c in view.clips if c.audio_url),
    }


def clip_fields(clip: Clip, number: int, files: Sequence[StoredFile]) -> dict[str, str]:
    paths = [f.path for f in files if f.clip_id == clip.clip_id]
    if paths:
        location = "file: " + ", ".join(paths)
    elif clip.audio_url:
        location = f"url: {clip.audio_url}"
    else:
        location = "no audio"
    return {
        "clip_id": clip.clip_id,
        "number": str(number),
        "title": (clip.title or "").strip() or "untitled",
        "tags": (clip.tags or "").strip() or "no tags",
        "duration": duration_text(clip.duration),
        "clip_state": clip.state.value,
        "audio_url": clip.audio_url or "",
        "files": "\n".join(paths),
        "location": location,
    }


def duration_text(seconds: float | None) -> str:
    """``104.88`` → ``1:45``; ``3725`` → ``1:02:05``; unknown → ``?:??``."""
    if seconds is None or seconds < 0:
        return "?:??"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _distinct(values: Iterable[str | None], empty: str) -> str:
    seen = dict.fromkeys(v.strip() for v in values if v and v.strip())
    return " / ".join(seen) or empty


def _wait_for_files(
    view: TaskView, files: Sequence[StoredFile], wait_s: float, ctx: Context
) -> None:
    """Ask to run again while a clip has no audio file yet and the wait is not over."""
    have = {f.clip_id for f in files}
    missing = [c.clip_id for c in view.clips if c.clip_id not in have]
    waited = ctx.clock.now() - ctx.job.created_at
    if missing and waited < wait_s:
        ctx.log.info("notify_waiting_for_files", missing=len(missing), waited_s=round(waited, 1))
        raise Retry("waiting for audio files", after=min(_WAIT_STEP_S, wait_s - waited),
                    counted=False)


def _result_kind(event: Event, target: Target) -> str:
    return f"notify:{event.key}:{target.index}"


def _services(targets: Sequence[Target]) -> dict[int, apprise.Apprise]:
    """Every URL checked before anything is sent: one unusable URL stops the job before any
    message."""
    try:
        return services(targets)
    except UnusableTarget as exc:
        raise PermanentError(f"notify: {exc}") from None


async def _deliver(
    target: Target,
    service: apprise.Apprise,
    message: Message,
    settings: NotifySettings,
    event: Event,
    ctx: Context,
) -> None:
    try:
        await send(service, title=message.title, body=message.body,
                   notify_type=message.notify_type, body_format=settings.body_format)
    except NotSent as exc:
        ctx.log.warning("notify_failed", target=target.label, reason=exc.message)
        raise NotificationFailed(exc.message) from exc
    await ctx.record_result(
        clip_id="", kind=_result_kind(event, target),
        data={"target": target.label, "fingerprint": target.fingerprint,
              "attempt": event.attempt, "sent_at": ctx.clock.now()},
    )
    ctx.log.info("notify_sent", target=target.label, attempt=event.attempt)
