"""Cover art the receiver fetches for the console, so that the operator's browser never loads a
URL a payload named (a tracking pixel would see the operator's visit).

``GET /ui/cover?task_id=&clip_id=`` serves a clip's kept image when a handler kept one, else
fetches the clip's stored ``image_url`` under the download network policy
(:func:`receiver.fetching.download`: http(s) only, no private or loopback address unless
``[network]`` allows it, redirects checked, size and type bounded) and keeps it in a cache
folder beside the database (one file per URL, the oldest dropped past :data:`KEEP`). Only
raster images are served (never SVG, which can carry scripts), with the kept files' headers.
The URL is always the store's, never the request's: this is not an open proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import structlog
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from receiver.fetching import FetchError, download, locked
from receiver.media import file_response, kept_file_headers
from receiver.runtime import Runtime, runtime_of

log = structlog.get_logger("receiver.console")

RASTER = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/avif")
MAX_BYTES = 5 * 1000 * 1000
TIMEOUT_S = 15.0
KEEP = 500  # cached covers; the least recently fetched go first
SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif",
          "image/webp": ".webp", "image/avif": ".avif"}


def cache_folder(runtime: Runtime) -> Path:
    return runtime.settings.db_path.parent / "console-covers"


def _not_found(why: str) -> Response:
    return Response(f"{why}\n", status_code=404, media_type="text/plain")


async def cover(request: Request) -> Response:
    runtime = runtime_of(request)
    task_id = request.query_params.get("task_id", "")
    clip_id = request.query_params.get("clip_id", "")
    admin = runtime.storage.admin
    kept = next((f for f in await admin.list_files(task_id)
                 if f.clip_id == clip_id and f.kind == "image"), None)
    if kept is not None:
        return await file_response(runtime.media, kept, request)
    view = await admin.get_task(task_id)
    clip = next((c for c in view.clips if c.clip_id == clip_id), None) if view else None
    url = clip.image_url if clip is not None else None
    if not url:
        return _not_found("no cover for this clip")
    try:
        path, content_type = await _cached(runtime, url)
    except FetchError as exc:
        log.info("cover_not_fetched", task_id=task_id, clip_id=clip_id, reason=exc.message)
        return _not_found("the cover could not be fetched")
    response = FileResponse(path, media_type=content_type)
    response.headers.update(kept_file_headers(content_type, path.name))
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


async def _cached(runtime: Runtime, url: str) -> tuple[Path, str]:
    folder = cache_folder(runtime)
    stem = folder / hashlib.sha256(url.encode()).hexdigest()
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    async with locked(stem.with_suffix(".lock")):
        for content_type, suffix in SUFFIX.items():
            found = stem.with_suffix(suffix)
            if await asyncio.to_thread(found.is_file):
                return found, content_type
        got = await download(runtime.http, url, stem.with_suffix(".cover"),
                             policy=runtime.network, max_bytes=MAX_BYTES, allowed_types=RASTER,
                             suffix_for=lambda media: SUFFIX.get(media, ".bin"),
                             timeout_s=TIMEOUT_S, log=log)
    await asyncio.to_thread(_forget_oldest, folder)
    return got.path, got.content_type


def _forget_oldest(folder: Path) -> None:
    covers = [p for p in folder.iterdir() if p.suffix in SUFFIX.values()]
    if len(covers) <= KEEP:
        return
    covers.sort(key=lambda p: p.stat().st_mtime)
    for old in covers[:len(covers) - KEEP]:
        old.unlink(missing_ok=True)
