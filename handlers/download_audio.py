"""``download_audio``: keep a succeeded task's media before its CDN links expire.

For every succeeded clip of the task it keeps, in the media store (``RECEIVER_MEDIA``: the
local folder, or an object store; :mod:`receiver.media`)::

    {media_dir}/{task_id}/{clip_id}.{mp3|wav|m4a|ogg|flac}   the audio (always)
    {media_dir}/{task_id}/{clip_id}.{png|jpg|webp}           the cover (``image = true``)
    {media_dir}/{task_id}/{clip_id}.mp4                      the video (``video = true``)
    {media_dir}/{task_id}/{clip_id}.json                     a sidecar: title, tags, lyrics,
                                                             duration, model, source URLs and
                                                             the files' sha256

and records each with its size and sha256 (``ctx.record_file``). The extension comes from the
response's content type only, never from a title or a server-provided name; ids are reduced
to safe path components. MP3 and WAV files are tagged (ID3: title, lyrics as USLT, tags as
genre) before they are hashed and renamed, so the recorded sha256 is that of the final bytes.

Nothing that is not what it claims is kept: before a file is tagged, hashed or recorded its
bytes are checked (:func:`check_body`). Audio must be non-empty, read by mutagen as the format
its content type names, and play within ``duration_tolerance_s`` (or ``duration_tolerance``
of it, whichever is larger) of the clip's declared duration when it declares one; a cover or a
video must be non-empty and start with the magic bytes of its type. A body that fails is
discarded and counts as a wrong body: retried (from a fresh link when it can be had), and
after ``max_wrong_bodies`` of them for one file the job ends, saying what the bytes were.

Links expire. With a Sonic client configured (``ctx.sonic``) the handler asks get-music for
the task again (``ctx.refresh_task``: recorded as a ``poll`` delivery, so the clips' URLs in
the store are the fresh ones) and downloads from the fresh URLs when

* a link answers 403, 404 or 410 for the second time (the first may pass by itself: a CDN
  object can be refused for a moment right after the task succeeds), or for the first time
  once the clip's links were refreshed before (they are known to expire), or
* the clip's links are older than their provider's known lifetime (``link_lifetime_s``,
  counted from when the receiver recorded them) before a file is fetched, or
* a body was wrong, or the clip's audio URL is a placeholder (``None``, ``null``,
  ``.../None.mp3``: read as no URL).

At most one refresh is made per attempt. Each refresh is logged (``links_refreshed``) and kept
in a result row of kind ``links`` per clip, with the refused and wrong answers counted per
file (``ctx.results``). Without a Sonic client links are retried as they are (403/404 with
backoff, 410 ends the job), as a webhook or a reconciliation may still bring fresh ones.

A succeeded clip without a real audio URL waits for one: the attempt is given back
(``Retry(counted=False)``, polled again after a few seconds, then at growing intervals up to a
minute) until ``wait_for_url_s`` after the job was created; then the job ends, saying so.

It is idempotent: a file already recorded whose kept bytes still match its size and sha256 is
skipped (an object store's sha256 is its metadata, written by the upload that verified it), a
download cut short resumes from its ``.part`` on the next attempt (of the same URL), and a file
stands under its final name only once complete. Files are put together in the store's staging
folder (the media folder itself when it is local, so the ``.part`` and the rename are today's),
then kept: in place locally; by a multipart upload, checked against the sha256, to an object
store. ``files.path`` records the local path or the object's URL. Leftover temporaries of a
process killed while writing (``.<clip>.<kind>.part.meta.*.tmp``, ``.<clip>.json.*.tmp``) are
removed under the clip's lock, which every writer of them holds. A media folder or bucket that
refuses writes ends the job at once. Downloads follow the receiver's network policy
(``ctx.network``: the config's ``[network]`` table). It ``provides`` the task's ``files``: the
jobs of handlers that need them (``forward``) run once its job of the same task is finished.

Options (all optional; :class:`DownloadOptions`, checked at start-up)::

    [[routes.handlers]]
    name = "download_audio"
    [routes.handlers.options]
    image = true                        # the cover too
    video = false
    max_bytes = 209715200               # per file
    timeout_s = 600                     # per file, the whole download
    allowed_types = { audio = ["audio/mpeg", "audio/wav"] }   # per kind, or "audio/*"
    link_lifetime_s = { sonic = 1200 }  # per provider (the task's; others: as documented)
    wait_for_url_s = 900                # how long a placeholder audio URL is waited for
    duration_tolerance_s = 2.0          # how far the audio may play from the declared
    duration_tolerance = 0.05           #   duration: seconds, or a share of it (the larger)
    max_wrong_bodies = 3                # per file, before the job ends

A refused URL or address, a file too large and a wrong content type end the job (``dead``,
with the reason); a 5xx, a connection error, a timeout or a body cut short are retried with
backoff. One clip's failure does not stop the others from being downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import mutagen
import mutagen.flac
import mutagen.id3
import mutagen.mp3
import mutagen.mp4
import mutagen.ogg
import mutagen.oggflac
import mutagen.oggopus
import mutagen.oggspeex
import mutagen.oggvorbis
import mutagen.wave
from mutagen import MutagenError
from mutagen.id3 import ID3NoHeaderError

from receiver.plugin import (
    LINK_REFUSED,
    Clip,
    Context,
    Event,
    FetchBadBody,
    FetchError,
    FetchFailed,
    Fraction,
    MediaError,
    MediaRefused,
    MediaStore,
    NetPolicy,
    Options,
    PermanentError,
    PositiveFloat,
    PositiveInt,
    ReceiverError,
    Retry,
    Seconds,
    SonicError,
    State,
    StoredFile,
    TaskView,
    documented_link_lifetime,
    download,
    handler,
    locked,
    safe_url,
)

MIB = 1024 * 1024
KINDS = ("audio", "image", "video")
SIDECAR = "sidecar"
# Content type → extension, per kind. The only source of a file's extension.
EXTENSIONS: Mapping[str, Mapping[str, str]] = {
    "audio": {
        "audio/mpeg": ".mp3", "audio/mp3": ".mp3", "audio/mpeg3": ".mp3", "audio/x-mpeg": ".mp3",
        "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav",
        "audio/vnd.wave": ".wav",
        "audio/mp4": ".m4a", "audio/x-m4a": ".m4a", "audio/m4a": ".m4a",
        "audio/ogg": ".ogg",
        "audio/flac": ".flac", "audio/x-flac": ".flac",
    },
    "image": {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"},
    "video": {"video/mp4": ".mp4"},
}
UNKNOWN_EXTENSION = ".bin"  # a type let in by an "audio/*" override that the table lacks
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_COMPONENT = 96
# mutagen ships py.typed but leaves its calls unannotated: use it through Any, here only.
_id3: Any = mutagen.id3
_wave: Any = mutagen.wave
_mutagen: Any = mutagen
# The mutagen reader of each audio format, by the extension its content type gives.
_AUDIO_READERS: Mapping[str, tuple[Any, ...]] = {
    ".mp3": (mutagen.mp3.MP3,),
    ".wav": (mutagen.wave.WAVE,),
    ".m4a": (mutagen.mp4.MP4,),
    ".flac": (mutagen.flac.FLAC,),
    ".ogg": (mutagen.oggvorbis.OggVorbis, mutagen.oggopus.OggOpus, mutagen.oggflac.OggFLAC,
             mutagen.oggspeex.OggSpeex),
}
# The first bytes of a cover's or a video's type.
_MAGIC: Mapping[str, tuple[tuple[int, bytes], ...]] = {
    "image/png": ((0, b"\x89PNG\r\n\x1a\n"),),
    "image/jpeg": ((0, b"\xff\xd8\xff"),),
    "image/webp": ((0, b"RIFF"), (8, b"WEBP")),
    "video/mp4": ((4, b"ftyp"),),
}
LINKS = "links"  # the kind of the result row that keeps a clip's link history
# A link refused this many times is not waited for any longer: a fresh one is asked for.
DENIALS_BEFORE_REFRESH = 2
# A placeholder is polled again after this long at first, at most this long later on.
_WAIT_STEP_S = (5.0, 60.0)


class DownloadIncomplete(ReceiverError):
    """Some files of the task could not be downloaded yet."""


class AllowedTypes(Options, kw_only=True, frozen=True):
    """The content types kept, per kind (exact types, or ``"audio/*"``); a kind left out keeps
    every type :data:`EXTENSIONS` knows."""

    audio: tuple[str, ...] = tuple(EXTENSIONS["audio"])
    image: tuple[str, ...] = tuple(EXTENSIONS["image"])
    video: tuple[str, ...] = tuple(EXTENSIONS["video"])

    def of(self, kind: str) -> frozenset[str]:
        types: tuple[str, ...] = getattr(self, kind)
        return frozenset(t.strip().lower() for t in types)


class LinkLifetimes(Options, kw_only=True, frozen=True):
    """How long each provider's media links stay valid, in seconds, by the task's provider
    (``Task.provider``). A provider left out takes what its documentation says
    (:func:`receiver.plugin.documented_link_lifetime`: kie.ai 20 minutes, sunoapi.org 15 days),
    else Sonic's value. Sonic does not document it; signed CDN links elsewhere live from
    minutes to days: twenty minutes is a guess on the safe side (a refresh costs one poll)."""

    sonic: PositiveFloat = 1200.0
    sunoapi: PositiveFloat | None = None
    kie: PositiveFloat | None = None
    apibox: PositiveFloat | None = None
    piapi: PositiveFloat | None = None
    aimlapi: PositiveFloat | None = None

    def of(self, provider: str) -> float:
        given: float | None = (getattr(self, provider) if provider in self.__struct_fields__
                               else None)
        if given is None:
            given = documented_link_lifetime(provider)
        return self.sonic if given is None else given


class DownloadOptions(Options, kw_only=True, frozen=True):
    """The handler's options (a route's ``options = { ... }``)."""

    image: bool = False
    video: bool = False
    max_bytes: PositiveInt = 200 * MIB  # per file
    timeout_s: PositiveFloat = 600.0  # per file, the whole download
    allowed_types: AllowedTypes = msgspec.field(default_factory=AllowedTypes)
    link_lifetime_s: LinkLifetimes = msgspec.field(default_factory=LinkLifetimes)
    wait_for_url_s: Seconds = 900.0  # a placeholder audio URL, from the job's creation
    duration_tolerance_s: Seconds = 2.0
    duration_tolerance: Fraction = 0.05  # of the declared duration
    max_wrong_bodies: PositiveInt = 3  # per file

    def duration_allowance(self, declared: float) -> float:
        """How far (seconds) a file may play from a declared duration of ``declared``."""
        return max(self.duration_tolerance_s, declared * self.duration_tolerance)

    @property
    def kinds(self) -> tuple[str, ...]:
        wanted = {"audio": True, "image": self.image, "video": self.video}
        return tuple(kind for kind in KINDS if wanted[kind])


@dataclass(frozen=True, kw_only=True)
class _Failure:
    clip_id: str
    kind: str
    error: FetchError | MediaError
    permanent: bool
    fresh: bool = False  # a fresh link may help: ask the upstream for one
    waiting: bool = False  # no real URL yet: wait for one

    @property
    def why_fresh(self) -> str:
        """Why a fresh link is asked for, as the ``links`` row and the log say it."""
        if isinstance(self.error, FetchBadBody):
            return "wrong_body"
        return "placeholder" if self.waiting else "refused"


@handler(options=DownloadOptions, provides=["files"])
async def handle(event: Event, ctx: Context) -> None:
    """Download the media of every succeeded clip of ``event``'s task (see the module)."""
    options: DownloadOptions = ctx.options
    view = await ctx.task()
    prefix = safe_component(view.task.task_id)
    run = _Run(ctx=ctx, options=options, store=ctx.media, policy=ctx.network, prefix=prefix,
               folder=contained(ctx.media.staging, prefix), links=await _Links.read(ctx))
    stale = await run.stale(view)
    if stale:
        view = await run.refresh(view, stale)
    failures = await run.keep(view, _succeeded(view))
    fresh = {f.clip_id: f.why_fresh for f in failures if f.fresh}
    if fresh and run.may_refresh:
        view = await run.refresh(view, fresh)
        again = [c for c in _succeeded(view) if c.clip_id in fresh]
        failures = [f for f in failures if f.clip_id not in fresh] + await run.keep(view, again)
    _raise_for(ctx, options, failures)


def _succeeded(view: TaskView) -> list[Clip]:
    return [clip for clip in view.clips if clip.state is State.SUCCEEDED]


@dataclass(kw_only=True)
class _Run:
    """One attempt of the handler: where files go, what it knows of the task's links."""

    ctx: Context
    options: DownloadOptions
    store: MediaStore
    policy: NetPolicy
    prefix: str
    folder: Path
    links: _Links
    refreshed: bool = False

    @property
    def may_refresh(self) -> bool:
        """A refresh is possible (a Sonic client) and not made yet in this attempt."""
        return self.ctx.sonic is not None and not self.refreshed

    async def stale(self, view: TaskView) -> dict[str, str]:
        """The clips to refresh before anything is fetched, with why: a file still to keep
        whose link is a placeholder, or older than its provider's lifetime."""
        if not self.may_refresh:
            return {}
        kept = {(f.clip_id, f.kind) for f in await self.ctx.files()}
        lifetime = self.options.link_lifetime_s.of(view.task.provider)
        now = self.ctx.clock.now()
        stale: dict[str, str] = {}
        for clip in _succeeded(view):
            missing = [k for k in self.options.kinds if (clip.clip_id, k) not in kept]
            if "audio" in missing and not clip.audio_url:
                stale[clip.clip_id] = "placeholder"
            elif missing and now - self.links.issued_at(clip) >= lifetime:
                stale[clip.clip_id] = "expired"
        return stale

    async def refresh(self, view: TaskView, reasons: Mapping[str, str]) -> TaskView:
        """The task as get-music says it now (recorded as a poll), each clip's refresh noted;
        ``view`` unchanged when get-music cannot be asked (the failures stand, retried)."""
        self.refreshed = True
        try:
            fresh = await self.ctx.refresh_task()
        except SonicError as exc:
            self.ctx.log.warning("links_refresh_failed", task_id=view.task.task_id,
                                 error=exc.message, clips=sorted(reasons))
            return view
        before = {c.clip_id: c for c in view.clips}
        for clip in fresh.clips:
            if clip.clip_id not in reasons:
                continue
            old = before.get(clip.clip_id)
            changed = [kind for kind in KINDS if old is None or
                       getattr(old, f"{kind}_url") != getattr(clip, f"{kind}_url")]
            await self.links.refreshed(clip.clip_id, reason=reasons[clip.clip_id],
                                       changed=changed, at=self.ctx.clock.now())
            self.ctx.log.info("links_refreshed", clip_id=clip.clip_id,
                              reason=reasons[clip.clip_id], changed=changed,
                              audio_url=safe_url(clip.audio_url) if clip.audio_url else None)
        return fresh

    async def keep(self, view: TaskView, clips: Iterable[Clip]) -> list[_Failure]:
        """Keep every wanted file of ``clips``, and each one's sidecar; what failed."""
        failures: list[_Failure] = []
        for clip in clips:
            failures += await self._keep_clip(clip)
        return failures

    async def _keep_clip(self, clip: Clip) -> list[_Failure]:
        stem = safe_component(clip.clip_id)
        files: dict[str, StoredFile] = {}
        failures: list[_Failure] = []
        for kind in self.options.kinds:
            url: str | None = getattr(clip, f"{kind}_url")
            if not url:
                if kind == "audio":  # a later event, a poll or a refresh may still bring it
                    failures.append(_Failure(
                        clip_id=clip.clip_id, kind=kind, permanent=False, waiting=True,
                        fresh=True, error=FetchFailed(
                            f"clip {clip.clip_id} has no audio_url yet (none, or a "
                            "placeholder)")))
                else:
                    self.ctx.log.info("file_unavailable", clip_id=clip.clip_id, kind=kind)
                continue
            try:
                files[kind] = await _keep(self.ctx, self.store, clip, kind, url,
                                          folder=self.folder, prefix=self.prefix, stem=stem,
                                          options=self.options, policy=self.policy)
            except (FetchError, MediaError) as exc:
                self.ctx.log.warning("file_failed", clip_id=clip.clip_id, kind=kind,
                                     url=safe_url(url), error=exc.message,
                                     permanent=exc.permanent)
                failures.append(await self._failure(clip, kind, url, exc))
        if "audio" in files:  # describes what is kept; rewritten when more is kept later
            try:
                await _keep_sidecar(self.ctx, self.store, clip, files, folder=self.folder,
                                    prefix=self.prefix, stem=stem)
            except MediaError as exc:
                self.ctx.log.warning("file_failed", clip_id=clip.clip_id, kind=SIDECAR,
                                     error=exc.message, permanent=exc.permanent)
                failures.append(_Failure(clip_id=clip.clip_id, kind=SIDECAR, error=exc,
                                         permanent=exc.permanent))
        return failures

    async def _failure(self, clip: Clip, kind: str, url: str,
                       exc: FetchError | MediaError) -> _Failure:
        """What ``exc`` means for ``(clip, kind)``, its link's history counted."""
        sonic = self.ctx.sonic is not None
        if isinstance(exc, LINK_REFUSED):
            denied = await self.links.refused(clip.clip_id, kind, url)
            # A clip refreshed before has shown that its links expire: no grace again.
            expiring = denied >= DENIALS_BEFORE_REFRESH or self.links.refreshes(clip.clip_id) > 0
            # With a way to fresh links, even a 410 is not the end of the file.
            return _Failure(clip_id=clip.clip_id, kind=kind, error=exc,
                            permanent=exc.permanent and not sonic, fresh=sonic and expiring)
        if isinstance(exc, FetchBadBody):
            wrong = await self.links.wrong_body(clip.clip_id, kind, exc.message)
            if wrong >= self.options.max_wrong_bodies:
                ended = FetchBadBody(f"{wrong} wrong bodies, the last: {exc.message}")
                return _Failure(clip_id=clip.clip_id, kind=kind, error=ended, permanent=True)
            return _Failure(clip_id=clip.clip_id, kind=kind, error=exc, permanent=False,
                            fresh=sonic)
        return _Failure(clip_id=clip.clip_id, kind=kind, error=exc, permanent=exc.permanent)


def _raise_for(ctx: Context, options: DownloadOptions, failures: list[_Failure]) -> None:
    """Retry while any failure may pass (a wait for a real URL gives the attempt back); die
    when none can."""
    if not failures:
        return
    summary = "; ".join(f"{f.clip_id}/{f.kind}: {f.error.message}" for f in failures)
    retryable = [f for f in failures if not f.permanent and not f.waiting]
    if retryable:
        raise DownloadIncomplete(summary) from retryable[0].error
    waiting = [f for f in failures if f.waiting]
    if waiting:
        waited = ctx.clock.now() - ctx.job.created_at
        left = options.wait_for_url_s - waited
        if left > 0:
            low, high = _WAIT_STEP_S
            after = min(left, high, max(low, waited))
            raise Retry(f"waiting for a real audio URL: {summary}", after=after, counted=False)
        summary = "; ".join(
            f"{f.clip_id}/{f.kind}: no audio URL after waiting {options.wait_for_url_s:g}s"
            if f.waiting else f"{f.clip_id}/{f.kind}: {f.error.message}" for f in failures)
    raise PermanentError(summary) from failures[0].error


@contextlib.asynccontextmanager
async def _writing(folder: Path) -> AsyncIterator[None]:
    """A folder the receiver may not write in is a setting to fix, not a fault to retry."""
    try:
        yield
    except PermissionError as exc:
        raise MediaRefused(f"cannot write in {folder}: {exc.strerror}") from exc


async def _keep(
    ctx: Context, store: MediaStore, clip: Clip, kind: str, url: str, *, folder: Path,
    prefix: str, stem: str, options: DownloadOptions, policy: NetPolicy,
) -> StoredFile:
    """The recorded file of ``(clip, kind)``: the one already kept if its bytes still match,
    else a new download, checked, staged in ``folder`` and kept under ``prefix/<stem>.<ext>``."""
    async with _writing(folder), locked(folder / f".{stem}.{kind}.lock",
                                        wait_s=options.timeout_s):
        # What a process killed while writing the part's metadata left (only this lock's
        # holder writes these, so none of them is in use).
        await asyncio.to_thread(sweep, folder, f".{stem}.{kind}.part.meta.*.tmp")
        done = await _recorded(ctx, store, clip.clip_id, kind)
        if done is not None:
            ctx.log.info("file_skipped", clip_id=clip.clip_id, kind=kind, path=done.path)
            return done
        got = await download(
            ctx.http, url, folder / f"{stem}.{kind}", policy=policy,
            max_bytes=options.max_bytes, allowed_types=options.allowed_types.of(kind),
            log=ctx.log, timeout_s=options.timeout_s,
            suffix_for=functools.partial(extension_for, kind),
            check=functools.partial(check_body, kind, clip.duration, options),
            prepare=functools.partial(_tag, clip, ctx.log) if kind == "audio" else None,
        )
        stored = await store.keep(f"{prefix}/{got.path.name}", got.path,
                                  content_type=got.content_type, sha256=got.sha256)
        await ctx.record_file(clip_id=clip.clip_id, kind=kind, path=stored.recorded,
                              size=got.size, sha256=got.sha256, url=url,
                              content_type=got.content_type)
        ctx.log.info("file_downloaded", clip_id=clip.clip_id, kind=kind, path=stored.recorded,
                     size=got.size, sha256=got.sha256, content_type=got.content_type,
                     resumed_from=got.resumed_from)
        done = await _recorded(ctx, store, clip.clip_id, kind, verify=False)
        if done is None:  # pragma: no cover - the store lost what it just recorded
            raise FetchFailed(f"{got.path.name} was not recorded")
        return done


async def _recorded(ctx: Context, store: MediaStore, clip_id: str, kind: str, *,
                    verify: bool = True) -> StoredFile | None:
    """The record of ``(clip_id, kind)`` if there is one and (``verify``) the media store
    still holds it with its size and sha256."""
    found = next((f for f in await ctx.files() if f.clip_id == clip_id and f.kind == kind),
                 None)
    if found is None or not verify:
        return found
    key = store.key_of(found.path)
    if key is None:  # kept in another store before RECEIVER_MEDIA changed: keep it here too
        ctx.log.info("file_elsewhere", clip_id=clip_id, kind=kind, path=found.path)
        return None
    held = await store.head(key)
    if held is None or (held.size, held.sha256) != (found.size, found.sha256):
        ctx.log.info("file_changed", clip_id=clip_id, kind=kind, path=found.path,
                     missing=held is None)
        return None
    return found


async def _keep_sidecar(ctx: Context, store: MediaStore, clip: Clip,
                        files: Mapping[str, StoredFile], *, folder: Path, prefix: str,
                        stem: str) -> None:
    data = sidecar(clip, files)
    sha256 = hashlib.sha256(data).hexdigest()
    async with _writing(folder), locked(folder / f".{stem}.{SIDECAR}.lock"):
        await asyncio.to_thread(sweep, folder, f".{stem}.json.*.tmp")
        done = await _recorded(ctx, store, clip.clip_id, SIDECAR)
        if done is not None and done.sha256 == sha256:
            ctx.log.info("file_skipped", clip_id=clip.clip_id, kind=SIDECAR, path=done.path)
            return
        stored = await store.put_bytes(f"{prefix}/{stem}.json", data,
                                       content_type="application/json")
        await ctx.record_file(clip_id=clip.clip_id, kind=SIDECAR, path=stored.recorded,
                              size=stored.size, sha256=sha256, url=None,
                              content_type="application/json")
    ctx.log.info("sidecar_written", clip_id=clip.clip_id, path=stored.recorded, sha256=sha256)


def sweep(folder: Path, pattern: str) -> int:
    """Remove the leftovers matching ``pattern`` in ``folder``; how many there were."""
    removed = 0
    for leftover in folder.glob(pattern):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def sidecar(clip: Clip, files: Mapping[str, StoredFile]) -> bytes:
    """The sidecar's bytes: the same for the same clip and files (no timestamps), so that a
    re-run recognises it."""
    document = {
        "task_id": clip.task_id,
        "clip_id": clip.clip_id,
        "title": clip.title,
        "tags": clip.tags,
        "lyrics": clip.lyrics,
        "duration": clip.duration,
        "model": clip.mv,
        "sources": {"audio": clip.audio_url, "image": clip.image_url, "video": clip.video_url},
        "files": {
            kind: {"name": Path(f.path).name, "size": f.size, "sha256": f.sha256,
                   "content_type": f.content_type}
            for kind, f in sorted(files.items())
        },
    }
    return (json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode()


def extension_for(kind: str, content_type: str) -> str:
    return EXTENSIONS[kind].get(content_type, UNKNOWN_EXTENSION)


def safe_component(value: str) -> str:
    """``value`` as one safe path component: letters, digits, ``_`` and ``-`` only. A value
    that had to be changed gets a short hash of the original, so that two ids never share a
    name (``a/b`` and ``a_b``)."""
    cleaned = _UNSAFE.sub("_", value)[:_MAX_COMPONENT]
    if cleaned == value and cleaned:
        return cleaned
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{cleaned or 'id'}-{digest}"


def contained(root: Path, *parts: str) -> Path:
    """``root/parts...``, refused unless it stays inside ``root`` (symbolic links included)."""
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise PermanentError(f"{path} is outside the media folder")
    return path


# ---- links -----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class _Links:
    """What happened to each clip's links, kept in its ``links`` result row (written before
    the refresh or the retry it leads to)::

        {"refreshes": 1, "refreshed_at": 1700000000.0, "reason": "refused",
         "changed": ["audio", "image"],
         "audio": {"link": "<sha256 of the URL, 16 hex>", "refused": 0, "wrong_bodies": 1,
                   "last_wrong_body": "the body is not audio/wav: ..."}}

    ``refused`` counts the 403/404/410 answers of the file's current link (a new link starts
    again at 0); ``wrong_bodies`` every wrong body of the file, whatever its link.
    """

    ctx: Context
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    async def read(cls, ctx: Context) -> _Links:
        rows = {r.clip_id: copy.deepcopy(dict(r.data)) for r in await ctx.results()
                if r.kind == LINKS}
        return cls(ctx=ctx, rows=rows)

    def issued_at(self, clip: Clip) -> float:
        """When ``clip``'s links were last known fresh: when the receiver recorded them, or
        last refreshed them (a refresh that brought the same links records nothing new)."""
        refreshed = self.rows.get(clip.clip_id, {}).get("refreshed_at")
        return max(clip.updated_at, refreshed if isinstance(refreshed, int | float) else 0.0)

    def refreshes(self, clip_id: str) -> int:
        """How many times ``clip_id``'s links were refreshed."""
        return int(self.rows.get(clip_id, {}).get("refreshes", 0))

    async def refused(self, clip_id: str, kind: str, url: str) -> int:
        """Count a refusal of ``url``; how many its link has had."""
        entry = self._file(clip_id, kind)
        link = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        if entry.get("link") != link:
            entry["link"], entry["refused"] = link, 0
        entry["refused"] = int(entry.get("refused", 0)) + 1
        await self._save(clip_id)
        return int(entry["refused"])

    async def wrong_body(self, clip_id: str, kind: str, reason: str) -> int:
        """Count a wrong body of ``(clip_id, kind)``; how many it has had."""
        entry = self._file(clip_id, kind)
        entry["wrong_bodies"] = int(entry.get("wrong_bodies", 0)) + 1
        entry["last_wrong_body"] = reason
        await self._save(clip_id)
        return int(entry["wrong_bodies"])

    async def refreshed(self, clip_id: str, *, reason: str, changed: list[str],
                        at: float) -> None:
        row = self.rows.setdefault(clip_id, {})
        row.update(refreshes=int(row.get("refreshes", 0)) + 1, refreshed_at=at, reason=reason,
                   changed=changed)
        await self._save(clip_id)

    def _file(self, clip_id: str, kind: str) -> dict[str, Any]:
        entry: dict[str, Any] = self.rows.setdefault(clip_id, {}).setdefault(kind, {})
        return entry

    async def _save(self, clip_id: str) -> None:
        await self.ctx.record_result(clip_id=clip_id, kind=LINKS, data=self.rows[clip_id])


# ---- bodies ----------------------------------------------------------------------------------


def check_body(kind: str, declared_s: float | None, options: DownloadOptions, path: Path,
               content_type: str) -> None:
    """Raise :class:`FetchBadBody` unless the bytes at ``path`` are what ``content_type``
    says: never empty; audio read by mutagen as that format, playing within the options'
    tolerance of ``declared_s`` (when the clip declares a duration); a cover or a video
    starting with its type's magic bytes (a type without known magic: non-empty only)."""
    with path.open("rb") as handle:
        head = handle.read(64)
    if not head:
        raise FetchBadBody(f"the body is empty (0 bytes of {content_type})")
    if kind == "audio":
        length = _audio_length(path, content_type, head)
        if declared_s is not None and declared_s > 0:
            allowance = options.duration_allowance(declared_s)
            if abs(length - declared_s) > allowance:
                raise FetchBadBody(f"the audio plays {length:.2f}s, the clip says "
                                   f"{declared_s:.2f}s (more than {allowance:.2f}s apart)")
        return
    magic = _MAGIC.get(content_type)
    if magic is not None and not all(head[at:at + len(m)] == m for at, m in magic):
        raise FetchBadBody(f"the body is not {content_type} ({_looks_like(head)})")


def _audio_length(path: Path, content_type: str, head: bytes) -> float:
    """How long the audio at ``path`` plays, read as ``content_type`` says it is."""
    # Each reader of the type in turn (Ogg holds several codecs); a type the table lacks (let
    # in by "audio/*") by whatever mutagen recognises from its header, else by any reader
    # (mutagen.File knows a raw MP3 only by its file name, which a part does not have).
    readers = _AUDIO_READERS.get(extension_for("audio", content_type)) or (
        _mutagen.File, *(r for kind in _AUDIO_READERS.values() for r in kind))
    audio: Any = None
    failure: Exception | None = None
    for reader in readers:
        try:
            audio = reader(path)
        # mutagen's parsers raise more than MutagenError on malformed input (struct.error,
        # IndexError...): any failure to read is the body's, never the handler's.
        except Exception as exc:
            failure = exc
            continue
        if audio is not None:
            break
    length = getattr(getattr(audio, "info", None), "length", None)
    if audio is None or not isinstance(length, int | float):
        why = f": {failure}" if failure is not None else ""
        raise FetchBadBody(f"the body is not {content_type} ({_looks_like(head)}{why})")
    if length <= 0:
        raise FetchBadBody(f"the body is {content_type} with no audio in it (0s)")
    return float(length)


def _looks_like(head: bytes) -> str:
    """What the first bytes of a body look like, for a reason a person reads."""
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "it is an HTML page"
    if text.startswith(b"<?xml") or text.startswith(b"<error"):
        return "it is an XML document"
    if text.startswith((b"{", b"[")):
        return "it looks like JSON"
    return f"it starts with {head[:8].hex()}"


# ---- tags ------------------------------------------------------------------------------------


def _tag(clip: Clip, log: Any, path: Path, content_type: str) -> None:
    """Tag the complete part before it is hashed. A file mutagen cannot read is kept untagged:
    the audio matters more than its tags."""
    kind = extension_for("audio", content_type)
    try:
        if kind == ".mp3":
            tag_mp3(path, clip)
        elif kind == ".wav":
            tag_wav(path, clip)
        else:
            return  # m4a, ogg, flac: other tag formats, not written (yet)
    except (MutagenError, OSError, ValueError) as exc:
        log.warning("tagging_failed", clip_id=clip.clip_id, error=str(exc))
        return
    log.info("file_tagged", clip_id=clip.clip_id, format=kind.lstrip("."))


def tag_mp3(path: Path, clip: Clip) -> None:
    """Write ``clip``'s title, lyrics and tags into the ID3 tag of the MP3 at ``path``."""
    try:
        tags = _id3.ID3(path)
    except ID3NoHeaderError:
        tags = _id3.ID3()
    _fill(tags, clip)
    tags.save(path, v2_version=3)  # ID3v2.3: what most players and tag editors read


def tag_wav(path: Path, clip: Clip) -> None:
    """The same, in the ``id3 `` chunk of a WAV file (mutagen's WAVE support)."""
    audio = _wave.WAVE(path)
    if audio.tags is None:
        audio.add_tags()
    _fill(audio.tags, clip)
    audio.save(v2_version=3)


def _fill(tags: Any, clip: Clip) -> None:
    """Set the frames ``clip`` has a value for (an ``mutagen.id3.ID3``), replacing any the
    file came with; encoding 3 is UTF-8."""
    if clip.title:
        tags.setall("TIT2", [_id3.TIT2(encoding=3, text=[clip.title])])
    if clip.lyrics:
        # "XXX": the ID3 code for an unknown language
        tags.setall("USLT", [_id3.USLT(encoding=3, lang="XXX", desc="", text=clip.lyrics)])
    if clip.tags:
        tags.setall("TCON", [_id3.TCON(encoding=3, text=[clip.tags])])
    tags.add(_id3.TXXX(encoding=3, desc="SONIC_CLIP_ID", text=[clip.clip_id]))
    if clip.mv:
        tags.add(_id3.TXXX(encoding=3, desc="SONIC_MODEL", text=[clip.mv]))
