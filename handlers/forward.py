"""``forward``: tell the user's own application that a task is settled, and what was kept.

It POSTs one JSON event (schema below) to ``url``, signed with Standard Webhooks
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64>`` over
``{id}.{timestamp}.{body}``, keyed by a ``whsec_`` secret), so that any Standard Webhooks
library verifies it. The ``webhook-id`` is the same on every attempt for one job: a receiver
deduplicates on it.

Options (:class:`ForwardOptions`, checked at start-up)::

    [[routes.handlers]]
    name = "forward"
    [routes.handlers.options]
    url = "https://app.example/hooks/sonic"   # required
    secret_env = "FORWARD_SECRET"             # the variable holding the whsec_ secret
    # secret = "whsec_..."                    # or the secret itself (keep the file private)
    timeout_s = 10                            # per attempt
    max_attempts = 8                          # then the job dies with the last answer
    backoff_s = [5, 30, 120, 600, 1800]       # waits between attempts (the last repeats)
    wait_for_downloads_s = 900                # see below

Delivery: a 2xx is success (recorded, never sent again for this job). A 5xx, 408, 425, 429,
a timeout or a connection failure is retried after ``Retry-After`` when the answer has one
(seconds or an HTTP date, at most an hour), else after the next ``backoff_s`` step; other
answers (4xx, a redirect) and a refused address end the job at once. Attempts are counted in
the handler's own result (``forward:<job key>``), so waits honour ``Retry-After`` exactly and
still stop after ``max_attempts``. The URL follows the download network policy
(``[network]``: no loopback, private or link-local address unless allowed there), checked on
the address actually connected to.

Order: when ``download_audio`` jobs exist for the same task, the event waits (re-runs later)
until they are finished, up to ``wait_for_downloads_s`` after this job was created, so that it
can name the stored files; after that it is sent with what is stored.

The event (``version`` 1; fields are only ever added)::

    {
      "type": "task.succeeded" | "task.failed" | "task.streaming",
      "version": 1,
      "task": {"id", "state", "type", "platform", "error", "parent_task_id"},
      "clips": [{"id", "state", "title", "tags", "lyrics", "duration", "model",
                 "audio_url", "image_url", "video_url"}],
      "files": [{"clip_id", "kind", "location", "size", "sha256", "content_type",
                 "source_url", "href"}],
      "chain": {"root_task_id", "depth", "parent_task_id",
                "children": [{"rule", "task_type", "task_id", "state"}]}
    }

``files[].location`` is where the file is kept (``file:///...`` or ``s3://bucket/key``);
``href`` is the receiver's admin route for it (``{RECEIVER_PUBLIC_URL}/files/...``; needs the
admin token), or null without a public URL; ``source_url`` is where it was downloaded from.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import httpx
import msgspec

from receiver.context import Event, HandlerContext
from receiver.conversion import FieldError, HttpUrl, PositiveInt, Seconds, Table, Text
from receiver.errors import SettingsError
from receiver.fetching import FetchError, NetPolicy, safe_url
from receiver.jobs import FINISHED, PermanentError, Retry
from receiver.models import StoredFile, TaskView
from receiver.registry import handler
from receiver.signatures import sign_standard

VERSION = 1
RETRYABLE = frozenset({408, 425, 429})
MAX_RETRY_AFTER_S = 3600.0
WAIT_STEP_S = 2.0
DOWNLOAD_HANDLER = "download_audio"


class ForwardOptions(Table, kw_only=True, frozen=True):
    """The handler's options; ``secret`` or ``secret_env`` names the ``whsec_`` secret."""

    url: HttpUrl
    secret: Text | None = None
    secret_env: Text | None = None
    timeout_s: Seconds = 10.0
    max_attempts: PositiveInt = 8
    backoff_s: Annotated[tuple[Seconds, ...], msgspec.Meta(
        min_length=1, description="a non-empty list of seconds")] = (5.0, 30.0, 120.0, 600.0,
                                                                      1800.0)
    wait_for_downloads_s: Seconds = 900.0

    def __post_init__(self) -> None:
        if self.secret is None and self.secret_env is None:
            raise FieldError("secret_env", "set secret_env (or secret) to a whsec_ secret")

    def secret_in(self, env: Mapping[str, str]) -> str:
        """The secret: given as it is, or read from the variable ``secret_env`` of ``env``
        (when the job runs: a deploy checks the file without the secrets)."""
        if self.secret is not None:
            return self.secret
        value = env.get(self.secret_env or "")
        if not value:
            raise PermanentError(f"forward: the variable {self.secret_env} is not set")
        return value


class ForwardFailed(Exception):
    """One attempt failed in a way a later one may not."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@handler(options=ForwardOptions)
async def handle(event: Event, ctx: HandlerContext) -> None:
    """POST ``event``'s task as a signed event to the configured URL (see the module)."""
    options: ForwardOptions = ctx.options
    secret = options.secret_in(os.environ)
    try:
        policy = NetPolicy.from_config(ctx.config)
    except SettingsError as exc:
        raise PermanentError(exc.message) from exc
    kind = f"forward:{event.key}"
    state = next((r.data for r in await ctx.results() if r.kind == kind and r.clip_id == ""),
                 {})
    if state.get("delivered"):
        ctx.log.info("forward_already_delivered", attempts=state.get("attempts"))
        return
    await _wait_for_downloads(ctx, options)
    view = await ctx.task()
    files = await ctx.files()
    body = json.dumps(await event_body(event, ctx, view, files), ensure_ascii=False,
                      sort_keys=True, separators=(",", ":")).encode()
    msg_id = "msg_" + hashlib.sha256(event.key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    attempts = int(state.get("attempts", 0)) + 1
    headers = sign_standard(secret, msg_id, body, int(ctx.clock.now()))
    try:
        status = await _post(ctx.http, options.url, body, headers, policy=policy,
                             timeout_s=options.timeout_s, now=ctx.clock.now())
    except ForwardFailed as exc:
        await ctx.record_result(clip_id="", kind=kind, data={
            "attempts": attempts, "delivered": False, "webhook_id": msg_id,
            "last_error": exc.message})
        if attempts >= options.max_attempts:
            raise PermanentError(f"forward: gave up after {attempts} attempts: "
                                 f"{exc.message}") from exc
        delay = (exc.retry_after if exc.retry_after is not None
                 else options.backoff_s[min(attempts, len(options.backoff_s)) - 1])
        ctx.log.warning("forward_failed", attempt=attempts, error=exc.message,
                        retry_in_s=delay)
        raise Retry(f"forward attempt {attempts} failed: {exc.message}", after=delay,
                    counted=False) from exc
    await ctx.record_result(clip_id="", kind=kind, data={
        "attempts": attempts, "delivered": True, "webhook_id": msg_id, "status": status})
    ctx.log.info("forward_delivered", attempt=attempts, status=status, webhook_id=msg_id,
                 url=safe_url(options.url))


async def _wait_for_downloads(ctx: HandlerContext, options: ForwardOptions) -> None:
    """Run again later while a download job of this task is unfinished (up to the wait)."""
    jobs = await ctx.store.list_jobs(task_id=ctx.job.task_id)
    busy = [j for j in jobs if j.handler == DOWNLOAD_HANDLER and j.state not in FINISHED]
    waited = ctx.clock.now() - ctx.job.created_at
    if busy and waited < options.wait_for_downloads_s:
        ctx.log.info("forward_waiting_for_downloads", jobs=len(busy), waited_s=round(waited, 1))
        raise Retry("waiting for the task's downloads", counted=False,
                    after=min(WAIT_STEP_S, options.wait_for_downloads_s - waited))


async def event_body(event: Event, ctx: HandlerContext, view: TaskView,
                     files: Sequence[StoredFile]) -> dict[str, Any]:
    """The event's document (schema in the module docstring)."""
    task = view.task
    root, depth = await ctx.lineage()
    children = await ctx.children()
    public = ctx.settings.public_url
    return {
        "type": event.trigger,
        "version": VERSION,
        "task": {"id": task.task_id, "state": str(task.state), "type": task.task_type,
                 "platform": task.platform, "error": task.error,
                 "parent_task_id": task.parent_task_id},
        "clips": [
            {"id": c.clip_id, "state": str(c.state), "title": c.title, "tags": c.tags,
             "lyrics": c.lyrics, "duration": c.duration, "model": c.mv,
             "audio_url": c.audio_url, "image_url": c.image_url, "video_url": c.video_url}
            for c in view.clips
        ],
        "files": [
            {"clip_id": f.clip_id, "kind": f.kind, "location": _location(f.path),
             "size": f.size, "sha256": f.sha256, "content_type": f.content_type,
             "source_url": f.url,
             "href": (f"{public}/files/{f.task_id}/{f.clip_id}/{f.kind}" if public else None)}
            for f in sorted(files, key=lambda f: (f.clip_id, f.kind))
        ],
        "chain": {
            "root_task_id": root, "depth": depth, "parent_task_id": task.parent_task_id,
            "children": [{"rule": c.rule, "task_type": c.task_type,
                          "task_id": c.child_task_id, "state": str(c.state)}
                         for c in children],
        },
    }


def _location(recorded: str) -> str:
    """A recorded path as a URL: object-store URLs as they are, local paths as file://."""
    if "://" in recorded:
        return recorded
    return Path(recorded).absolute().as_uri()


async def _post(http: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str], *,
                policy: NetPolicy, timeout_s: float, now: float) -> int:
    """POST to an address the policy checked (the same pinning as downloads: the URL carries
    the checked IP; Host and TLS SNI keep the name). Returns the 2xx status; raises
    :class:`ForwardFailed` (retry) or :class:`PermanentError`."""
    target = httpx.URL(url)
    try:
        host = policy.check_url(target)
        port = target.port or (443 if target.scheme == "https" else 80)
        addresses = await policy.addresses(host, port)
    except FetchError as exc:
        if exc.permanent:
            raise PermanentError(f"forward: {exc.message}") from exc
        raise ForwardFailed(exc.message) from exc
    extensions: dict[str, Any] = {"sni_hostname": host} if target.scheme == "https" else {}
    failure: Exception | None = None
    for address in addresses:
        request = httpx.Request(
            "POST", target.copy_with(host=str(address), fragment=None), content=body,
            headers={**headers, "Content-Type": "application/json",
                     "User-Agent": "sonic-receiver", "Host": target.netloc.decode("ascii")},
            extensions={**extensions, "timeout": httpx.Timeout(timeout_s).as_dict()},
        )
        try:
            response = await http.send(request, follow_redirects=False, auth=None)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failure = exc
            continue
        except httpx.HTTPError as exc:
            raise ForwardFailed(f"{safe_url(url)}: {type(exc).__name__}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return status
        if status >= 500 or status in RETRYABLE:
            wait = retry_after(response.headers.get("retry-after"), now=now)
            raise ForwardFailed(f"{safe_url(url)} answered HTTP {status}", retry_after=wait)
        raise PermanentError(f"forward: {safe_url(url)} answered HTTP {status}")
    raise ForwardFailed(f"cannot connect to {host}: {failure}")


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), at most an hour."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)
