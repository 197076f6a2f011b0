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
    backoff_s = [5, 30, 120, 600, 1800]       # waits between attempts (the last repeats)

Delivery: a 2xx is success (recorded, never sent again for this job). A 5xx, 408, 425, 429,
a timeout or a connection failure is retried after ``Retry-After`` when the answer has one
(seconds or an HTTP date, at most an hour), else after the next ``backoff_s`` step, each a
counted attempt: the job has 8 unless the route's handler item says ``max_attempts``, and then
dies with the last answer. Other answers (4xx, a redirect) and a refused address end the job at
once. The URL follows the receiver's network policy (``[network]``: no loopback, private or
link-local address unless allowed there), checked on the address actually connected to.

Order: it ``needs`` the task's ``files``, so its job runs once the jobs of the same task whose
handlers provide them (``download_audio``) are finished, waiting at most the route's
``after_wait_s`` (900 s) from its creation; then it names the stored files.

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

from receiver.plugin import (
    Context,
    Event,
    FetchError,
    FieldError,
    HttpUrl,
    NetPolicy,
    Options,
    PermanentError,
    Retry,
    Seconds,
    StoredFile,
    TaskView,
    Text,
    handler,
    safe_url,
    sign_standard,
)

VERSION = 1
RETRYABLE = frozenset({408, 425, 429})
MAX_RETRY_AFTER_S = 3600.0


class ForwardOptions(Options, kw_only=True, frozen=True):
    """The handler's options; ``secret`` or ``secret_env`` names the ``whsec_`` secret."""

    url: HttpUrl
    secret: Text | None = None
    secret_env: Text | None = None
    timeout_s: Seconds = 10.0
    backoff_s: Annotated[tuple[Seconds, ...], msgspec.Meta(
        min_length=1, description="a non-empty list of seconds")] = (5.0, 30.0, 120.0, 600.0,
                                                                      1800.0)

    def backoff(self, attempt: int) -> float:
        """The wait after attempt ``attempt`` (1: the first); the last step repeats."""
        return self.backoff_s[min(attempt, len(self.backoff_s)) - 1]

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


@handler(options=ForwardOptions, needs=["files"], max_attempts=8)
async def handle(event: Event, ctx: Context) -> None:
    """POST ``event``'s task as a signed event to the configured URL (see the module)."""
    options: ForwardOptions = ctx.options
    secret = options.secret_in(os.environ)
    kind = f"forward:{event.key}"
    if any(r.kind == kind and r.clip_id == "" and r.data.get("delivered")
           for r in await ctx.results()):
        ctx.log.info("forward_already_delivered")
        return
    view = await ctx.task()
    files = await ctx.files()
    body = json.dumps(await event_body(event, ctx, view, files), ensure_ascii=False,
                      sort_keys=True, separators=(",", ":")).encode()
    msg_id = "msg_" + hashlib.sha256(event.key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    headers = sign_standard(secret, msg_id, body, int(ctx.clock.now()))
    try:
        status = await _post(ctx.http, options.url, body, headers, policy=ctx.network,
                             timeout_s=options.timeout_s, now=ctx.clock.now())
    except ForwardFailed as exc:
        delay = exc.retry_after if exc.retry_after is not None else options.backoff(event.attempt)
        ctx.log.warning("forward_failed", attempt=event.attempt, error=exc.message,
                        retry_in_s=delay)
        raise Retry(f"forward: {exc.message}", after=delay) from exc
    # a 2xx is never sent again for this job, even if finishing the job is not recorded
    await ctx.record_result(clip_id="", kind=kind, data={
        "attempt": event.attempt, "delivered": True, "webhook_id": msg_id, "status": status})
    ctx.log.info("forward_delivered", attempt=event.attempt, status=status, webhook_id=msg_id,
                 url=safe_url(options.url))


async def event_body(event: Event, ctx: Context, view: TaskView,
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
