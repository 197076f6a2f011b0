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

It is idempotent: a file already recorded whose kept bytes still match its size and sha256 is
skipped (an object store's sha256 is its metadata, written by the upload that verified it), a
download cut short resumes from its ``.part`` on the next attempt, and a file stands under its
final name only once complete. Files are put together in the store's staging folder (the
media folder itself when it is local, so the ``.part`` and the rename are today's), then kept:
in place locally; by a multipart upload, checked against the sha256, to an object store.
``files.path`` records the local path or the object's URL. Leftover temporaries of a process
killed while writing (``.<clip>.<kind>.part.meta.*.tmp``, ``.<clip>.json.*.tmp``) are removed
under the clip's lock, which every writer of them holds. A media folder or bucket that refuses
writes ends the job at once. Downloads follow the receiver's network policy (``ctx.network``:
the config's ``[network]`` table). It ``provides`` the task's ``files``: the jobs of handlers
that need them (``forward``) run once its job of the same task is finished.

Options (all optional; :class:`DownloadOptions`, checked at start-up)::

    [[routes.handlers]]
    name = "download_audio"
    [routes.handlers.options]
    image = true                        # the cover too
    video = false
    max_bytes = 209715200               # per file
    timeout_s = 600                     # per file, the whole download
    allowed_types = { audio = ["audio/mpeg", "audio/wav"] }   # per kind, or "audio/*"

A refused URL or address, a file too large and a wrong content type end the job (``dead``,
with the reason); a 5xx, a connection error, a timeout or a body cut short are retried with
backoff. One clip's failure does not stop the others from being downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import mutagen.id3
import mutagen.wave
from mutagen import MutagenError
from mutagen.id3 import ID3NoHeaderError

from receiver.plugin import (
    Clip,
    Context,
    Event,
    FetchError,
    FetchFailed,
    MediaError,
    MediaRefused,
    MediaStore,
    NetPolicy,
    Options,
    PermanentError,
    PositiveFloat,
    PositiveInt,
    ReceiverError,
    State,
    StoredFile,
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


class DownloadOptions(Options, kw_only=True, frozen=True):
    """The handler's options (a route's ``options = { ... }``)."""

    image: bool = False
    video: bool = False
    max_bytes: PositiveInt = 200 * MIB  # per file
    timeout_s: PositiveFloat = 600.0  # per file, the whole download
    allowed_types: AllowedTypes = msgspec.field(default_factory=AllowedTypes)

    @property
    def kinds(self) -> tuple[str, ...]:
        wanted = {"audio": True, "image": self.image, "video": self.video}
        return tuple(kind for kind in KINDS if wanted[kind])


@dataclass(frozen=True, kw_only=True)
class _Failure:
    clip_id: str
    kind: str
    error: FetchError | MediaError


@handler(options=DownloadOptions, provides=["files"])
async def handle(event: Event, ctx: Context) -> None:
    """Download the media of every succeeded clip of ``event``'s task (see the module)."""
    options: DownloadOptions = ctx.options
    policy, store = ctx.network, ctx.media
    view = await ctx.task()
    prefix = safe_component(view.task.task_id)
    folder = contained(store.staging, prefix)
    failures: list[_Failure] = []
    for clip in view.clips:
        if clip.state is not State.SUCCEEDED:
            continue
        stem = safe_component(clip.clip_id)
        files: dict[str, StoredFile] = {}
        for kind in options.kinds:
            url: str | None = getattr(clip, f"{kind}_url")
            if not url:
                if kind == "audio":  # a later event (or a poll) may still bring it
                    failures.append(_Failure(clip_id=clip.clip_id, kind=kind, error=FetchFailed(
                        f"clip {clip.clip_id} has no audio_url")))
                else:
                    ctx.log.info("file_unavailable", clip_id=clip.clip_id, kind=kind)
                continue
            try:
                files[kind] = await _keep(ctx, store, clip, kind, url, folder=folder,
                                          prefix=prefix, stem=stem, options=options,
                                          policy=policy)
            except (FetchError, MediaError) as exc:
                ctx.log.warning("file_failed", clip_id=clip.clip_id, kind=kind,
                                url=safe_url(url), error=exc.message, permanent=exc.permanent)
                failures.append(_Failure(clip_id=clip.clip_id, kind=kind, error=exc))
        if "audio" in files:  # describes what is kept; rewritten when more is kept later
            try:
                await _keep_sidecar(ctx, store, clip, files, folder=folder, prefix=prefix,
                                    stem=stem)
            except MediaError as exc:
                ctx.log.warning("file_failed", clip_id=clip.clip_id, kind=SIDECAR,
                                error=exc.message, permanent=exc.permanent)
                failures.append(_Failure(clip_id=clip.clip_id, kind=SIDECAR, error=exc))
    _raise_for(failures)


def _raise_for(failures: list[_Failure]) -> None:
    """Retry while any failure may pass; die when none can."""
    if not failures:
        return
    summary = "; ".join(f"{f.clip_id}/{f.kind}: {f.error.message}" for f in failures)
    if all(f.error.permanent for f in failures):
        raise PermanentError(summary) from failures[0].error
    retryable = next(f.error for f in failures if not f.error.permanent)
    raise DownloadIncomplete(summary) from retryable


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
    else a new download, staged in ``folder`` and kept under ``prefix/<stem>.<ext>``."""
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
