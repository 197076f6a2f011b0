"""Where media live: a local folder or an object store, behind one small seam.

``RECEIVER_MEDIA`` names the place: a path or ``file:///...`` (the default, ``media/``), or
``s3://bucket/prefix`` (any S3-compatible service: credentials, region and endpoint from the
standard ``AWS_*`` variables, ``AWS_ENDPOINT_URL`` for MinIO or R2), ``gs://bucket/prefix``
or ``az://container/prefix``. Object stores go through obstore (the Rust ``object_store``
crate that DataFusion and others ship): it parses those URLs, reads the standard variables,
uploads in parts, and signs URLs. Its blocking calls are used, in worker threads
(``asyncio.to_thread``), not its ``*_async`` ones: on Python < 3.13 a process that awaited
those can abort at exit (SIGABRT), when a runtime thread of the extension attaches to the
interpreter while it finalizes; the blocking calls never touch the event loop.

A :class:`MediaStore` keeps objects under keys (``<task>/<clip>.<ext>``) and promises:

* **Nothing partial under a final key.** The local folder writes a temporary beside the final
  name, fsyncs it and renames it (``os.replace``), then fsyncs the folder. An object store
  receives a multipart upload, which the service makes visible only when the upload is
  completed, all at once (S3 ``CompleteMultipartUpload``); a process killed in the middle
  leaves an incomplete upload that no reader can see (a bucket lifecycle rule should abort
  those after a day). Uploading to a temporary key and copying it over is *not* used: S3's
  copy is a second write, and a copy of a large object is itself a multipart operation.
* **Verified on the way.** ``put_*`` computes the size and sha256 while the bytes stream
  through; given the sha256 the caller expects, a mismatch aborts the write (the local
  temporary is removed, the multipart upload aborted) so an object never stands under its
  key with other bytes than the recorded ones. Object stores keep the sha256 as the object's
  ``sha256`` metadata, so that :meth:`MediaStore.head` can tell it without reading the bytes.
* **Bounded memory.** Bytes move in chunks of :data:`CHUNK` and (object stores) parts of
  :data:`PART`, at most :data:`PART_CONCURRENCY` of them in flight.

Where files are recorded: ``files.path`` holds the local path for the local folder and the
object's URL (``s3://bucket/prefix/task/clip.wav``) for an object store;
:meth:`MediaStore.key_of` reads either back. ``files.url`` keeps the URL the file was
downloaded from. :func:`file_response` hands a recorded file to an admin.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import obstore
import obstore.exceptions as obx
from obstore.store import AzureStore, GCSStore, S3Store, from_url
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from receiver.errors import ReceiverError
from receiver.fetching import file_digest, media_type
from receiver.models import StoredFile

if TYPE_CHECKING:
    from obstore import GetOptions
    from obstore.store import ClientConfig, ObjectStore, RetryConfig, S3Config

    from receiver.settings import Settings

MIB = 1024 * 1024
CHUNK = MIB  # read and hash this much at a time
PART = 8 * MIB  # an object store's multipart part (S3's minimum is 5 MiB)
PART_CONCURRENCY = 2  # parts in flight: memory stays under ~(2 + 1) x PART per upload
PRESIGN_S = 300  # how long a presigned GET handed to an admin stays valid
SHA256_META = "sha256"  # the object's metadata entry holding its sha256 (hex)
STALL_S = 300.0  # an upload whose source gives no chunk for this long is aborted


class MediaError(ReceiverError):
    """The media store failed; ``permanent`` says whether another attempt can help."""

    permanent: ClassVar[bool] = False


class MediaRefused(MediaError):
    """The store refuses the write: no permission, no such bucket, bad credentials."""

    permanent = True


class MediaMismatch(MediaError):
    """The bytes that streamed through are not the ones expected: nothing was kept."""


class MediaUnavailable(MediaError):
    """The store could not be reached or failed; a later attempt may succeed."""


@dataclass(frozen=True, kw_only=True)
class StoredObject:
    """An object under its final key, with what proves its content."""

    key: str
    location: str  # file:///... or s3://bucket/prefix/key
    recorded: str  # what ``files.path`` holds for it
    size: int
    sha256: str | None  # None: an object store's object written without it
    content_type: str | None


class MediaStore(ABC):
    """Objects under keys like ``task/clip.wav``. ``url`` names the store, ``staging`` is a
    local folder where downloads are put together (resumed, tagged) before they are kept."""

    url: str
    staging: Path

    @abstractmethod
    def location(self, key: str) -> str:
        """The URL of ``key``'s object (``file://...``, ``s3://...``)."""

    @abstractmethod
    def recorded(self, key: str) -> str:
        """What ``files.path`` holds for ``key``."""

    @abstractmethod
    def key_of(self, recorded: str) -> str | None:
        """The key of a recorded path, or None when it is not in this store."""

    @abstractmethod
    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *,
                         content_type: str | None, sha256: str | None = None) -> StoredObject:
        """Keep ``chunks`` under ``key``, visible only once complete; size and sha256 are
        computed on the way and, when ``sha256`` is given, a mismatch keeps nothing and raises
        :class:`MediaMismatch`."""

    @abstractmethod
    async def head(self, key: str, *, verify: bool = True) -> StoredObject | None:
        """The object under ``key``, or None. ``verify``: a local file's sha256 is read off its
        bytes (an object store's comes from its metadata, without reading)."""

    @abstractmethod
    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes ``[start, end)`` of ``key``'s object, streamed."""

    @abstractmethod
    async def presigned_url(self, key: str, *, expires_s: int = PRESIGN_S) -> str | None:
        """A short-lived URL that reads ``key`` without credentials, or None (local folder)."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``'s object; nothing happens when there is none."""

    async def put_file(self, key: str, source: Path, *, content_type: str | None,
                       sha256: str | None = None) -> StoredObject:
        """Keep the local file ``source`` under ``key`` (see :meth:`put_stream`)."""
        return await self.put_stream(key, file_chunks(source), content_type=content_type,
                                     sha256=sha256)

    async def put_bytes(self, key: str, data: bytes, *, content_type: str | None,
                        ) -> StoredObject:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(key, one(), content_type=content_type,
                                     sha256=hashlib.sha256(data).hexdigest())

    async def keep(self, key: str, staged: Path, *, content_type: str | None, sha256: str,
                   ) -> StoredObject:
        """Keep a file complete in :attr:`staging` under ``key`` and drop the staged copy."""
        stored = await self.put_file(key, staged, content_type=content_type, sha256=sha256)
        await asyncio.to_thread(staged.unlink, missing_ok=True)
        return stored


async def file_chunks(path: Path, start: int = 0, end: int | None = None,
                      ) -> AsyncIterator[bytes]:
    """The bytes ``[start, end)`` of ``path`` in chunks of :data:`CHUNK`."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        await asyncio.to_thread(handle.seek, start)
        left = None if end is None else max(0, end - start)
        while left is None or left > 0:
            block = await asyncio.to_thread(handle.read, CHUNK if left is None
                                            else min(CHUNK, left))
            if not block:
                return
            if left is not None:
                left -= len(block)
            yield block
    finally:
        await asyncio.to_thread(handle.close)


class _Hashing:
    """Counts and hashes chunks as they pass; raises at the end of a stream whose sha256 is
    not the expected one (so an upload consuming it is aborted, not completed)."""

    def __init__(self, chunks: AsyncIterable[bytes], expected: str | None) -> None:
        self.chunks = chunks
        self.expected = expected
        self.size = 0
        self.digest = hashlib.sha256()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            self.size += len(chunk)
            self.digest.update(chunk)
            yield chunk
        self.check()

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

    def check(self) -> None:
        if self.expected is not None and self.sha256 != self.expected:
            raise MediaMismatch(f"the bytes have sha256 {self.sha256[:12]}..., not the "
                                f"expected {self.expected[:12]}...: nothing kept")


# ---- the local folder ------------------------------------------------------------------------


class LocalMedia(MediaStore):
    """A folder: today's behaviour. Downloads are staged in the folder itself (the ``.part``
    beside the final name), so keeping one is already done when it is complete."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root
        self.url = root.resolve().as_uri()

    def path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def location(self, key: str) -> str:
        return self.path(key).resolve().as_uri()

    def recorded(self, key: str) -> str:
        return str(self.path(key))

    def key_of(self, recorded: str) -> str | None:
        path = Path(recorded.removeprefix("file://")).resolve()
        root = self.root.resolve()
        if not path.is_relative_to(root):
            return None
        return path.relative_to(root).as_posix()

    def _object(self, key: str, size: int, sha256: str | None,
                content_type: str | None) -> StoredObject:
        return StoredObject(key=key, location=self.location(key), recorded=self.recorded(key),
                            size=size, sha256=sha256, content_type=content_type)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *,
                         content_type: str | None, sha256: str | None = None) -> StoredObject:
        final = self.path(key)
        hashing = _Hashing(chunks, sha256)
        try:
            await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
            fd, name = await asyncio.to_thread(
                tempfile.mkstemp, dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
        except PermissionError as exc:
            raise MediaRefused(f"cannot write under {final.parent}: {exc.strerror}") from exc
        except OSError as exc:
            raise MediaUnavailable(f"cannot write under {final.parent}: {exc}") from exc
        temporary = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in hashing:
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(_sync, out)
            await asyncio.to_thread(_replace, temporary, final)
        except BaseException as exc:
            _discard(temporary)
            if isinstance(exc, OSError):
                raise MediaUnavailable(f"cannot write {final}: {exc}") from exc
            raise
        return self._object(key, hashing.size, hashing.sha256, content_type)

    async def keep(self, key: str, staged: Path, *, content_type: str | None, sha256: str,
                   ) -> StoredObject:
        final = self.path(key)
        if staged == final:  # downloaded in place (staging is the folder): already kept
            size = (await asyncio.to_thread(final.stat)).st_size
            return self._object(key, size, sha256, content_type)
        return await super().keep(key, staged, content_type=content_type, sha256=sha256)

    async def head(self, key: str, *, verify: bool = True) -> StoredObject | None:
        path = self.path(key)
        if verify:
            found = await asyncio.to_thread(file_digest, path)
            return None if found is None else self._object(key, found[0], found[1], None)
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except OSError:
            return None
        return self._object(key, size, None, None)

    async def read(self, key: str, start: int = 0, end: int | None = None,
                   ) -> AsyncIterator[bytes]:
        async for chunk in file_chunks(self.path(key), start, end):
            yield chunk

    async def presigned_url(self, key: str, *, expires_s: int = PRESIGN_S) -> str | None:
        return None

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, missing_ok=True)


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


def _sync(out: Any) -> None:
    out.flush()
    os.fsync(out.fileno())


def _replace(temporary: Path, final: Path) -> None:
    os.replace(temporary, final)
    fd = os.open(final.parent, os.O_RDONLY)  # the rename itself must survive a crash
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- object stores ---------------------------------------------------------------------------


class ObjectMedia(MediaStore):
    """An object store through obstore. ``url`` is ``scheme://bucket[/prefix]``; downloads
    are staged in the local ``staging`` folder and uploaded in parts once complete."""

    def __init__(self, url: str, *, staging: Path, store: ObjectStore | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.staging = staging
        self.store = store if store is not None else _open_store(self.url, env or os.environ)

    def location(self, key: str) -> str:
        return f"{self.url}/{key}"

    def recorded(self, key: str) -> str:
        return self.location(key)

    def key_of(self, recorded: str) -> str | None:
        prefix = self.url + "/"
        return recorded.removeprefix(prefix) if recorded.startswith(prefix) else None

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *,
                         content_type: str | None, sha256: str | None = None) -> StoredObject:
        loop = asyncio.get_running_loop()
        source = aiter(chunks)

        async def following() -> bytes:
            return await anext(source)

        def pulled() -> Iterator[bytes]:
            # Runs in the upload's thread: each chunk is asked of this loop in turn.
            while True:
                try:
                    yield asyncio.run_coroutine_threadsafe(
                        following(), loop).result(timeout=STALL_S)
                except StopAsyncIteration:
                    return

        return await self._put(key, pulled(), content_type=content_type, sha256=sha256)

    async def put_file(self, key: str, source: Path, *, content_type: str | None,
                       sha256: str | None = None) -> StoredObject:
        def read() -> Iterator[bytes]:
            with source.open("rb") as handle:
                while block := handle.read(CHUNK):
                    yield block

        return await self._put(key, read(), content_type=content_type, sha256=sha256)

    async def _put(self, key: str, chunks: Iterator[bytes], *, content_type: str | None,
                   sha256: str | None) -> StoredObject:
        """One multipart upload of ``chunks``, hashed on the way, aborted on a mismatch."""
        hashing = _HashingIterator(chunks, sha256)
        attributes: dict[str, str] = {}
        if content_type:
            attributes["Content-Type"] = content_type
        if sha256:  # known before the upload starts: it goes with the object
            attributes[SHA256_META] = sha256
        try:
            await asyncio.to_thread(obstore.put, self.store, key, hashing,
                                    attributes=attributes, chunk_size=PART,
                                    max_concurrency=PART_CONCURRENCY)
        except MediaError:
            raise
        except Exception as exc:
            raise _translate(exc, f"cannot write {self.location(key)}") from exc
        return StoredObject(key=key, location=self.location(key), recorded=self.recorded(key),
                            size=hashing.size, sha256=hashing.sha256, content_type=content_type)

    async def head(self, key: str, *, verify: bool = True) -> StoredObject | None:
        try:
            got = await asyncio.to_thread(obstore.get, self.store, key, options={"head": True})
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise _translate(exc, f"cannot read {self.location(key)}") from exc
        attributes: Mapping[str, Any] = got.attributes
        sha256 = attributes.get(SHA256_META)
        content_type = attributes.get("Content-Type")
        return StoredObject(key=key, location=self.location(key), recorded=self.recorded(key),
                            size=got.meta["size"],
                            sha256=sha256 if isinstance(sha256, str) else None,
                            content_type=content_type if isinstance(content_type, str) else None)

    async def read(self, key: str, start: int = 0, end: int | None = None,
                   ) -> AsyncIterator[bytes]:
        options: GetOptions = {"range": {"offset": start} if end is None else (start, end)}
        try:
            got = await asyncio.to_thread(obstore.get, self.store, key, options=options)
        except Exception as exc:
            raise _translate(exc, f"cannot read {self.location(key)}") from exc
        stream = got.stream(min_chunk_size=CHUNK)
        while (chunk := await asyncio.to_thread(next, stream, None)) is not None:
            yield bytes(chunk)

    async def presigned_url(self, key: str, *, expires_s: int = PRESIGN_S) -> str | None:
        if not isinstance(self.store, S3Store | GCSStore | AzureStore):
            return None
        try:
            return await asyncio.to_thread(obstore.sign, self.store, "GET", key,
                                           timedelta(seconds=expires_s))
        except Exception as exc:
            raise _translate(exc, f"cannot sign a URL for {self.location(key)}") from exc

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(obstore.delete, self.store, key)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise _translate(exc, f"cannot delete {self.location(key)}") from exc


class _HashingIterator:
    """:class:`_Hashing` for a plain iterator, consumed by obstore's upload thread."""

    def __init__(self, chunks: Iterator[bytes], expected: str | None) -> None:
        self.chunks = chunks
        self.expected = expected
        self.size = 0
        self.digest = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self.chunks)
        except StopIteration:
            if self.expected is not None and self.sha256 != self.expected:
                raise MediaMismatch(f"the bytes have sha256 {self.sha256[:12]}..., not the "
                                    f"expected {self.expected[:12]}...: nothing kept") from None
            raise
        self.size += len(chunk)
        self.digest.update(chunk)
        return chunk

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


def _open_store(url: str, env: Mapping[str, str]) -> ObjectStore:
    """obstore's store for ``url``; credentials, region and endpoint from ``env``'s standard
    variables. Plain-HTTP endpoints (MinIO, moto on a laptop) are allowed when the endpoint
    itself says ``http://``."""
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    client: ClientConfig = {"connect_timeout": timedelta(seconds=10),
                            "timeout": timedelta(seconds=300)}
    if endpoint.startswith("http://"):
        client["allow_http"] = True
    retry: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=60)}
    try:
        if not url.startswith("s3://"):
            return from_url(url, client_options=client, retry_config=retry)
        config: S3Config = {}
        if endpoint:
            config["endpoint"] = endpoint
        for key, name in (("access_key_id", "AWS_ACCESS_KEY_ID"),
                          ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                          ("session_token", "AWS_SESSION_TOKEN")):
            if env.get(name):
                config[key] = env[name]  # type: ignore[literal-required]
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region:
            config["region"] = region
        return from_url(url, config=config, client_options=client, retry_config=retry)
    except Exception as exc:
        raise MediaRefused(f"RECEIVER_MEDIA {url}: {exc}") from exc


def _translate(exc: Exception, what: str) -> MediaError:
    """obstore's error as ours: refusals are permanent, the rest worth another attempt."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, obx.PermissionDeniedError | obx.UnauthenticatedError
                  | obx.InvalidPathError | obx.UnknownConfigurationKeyError):
        return MediaRefused(f"{what}: {first}")
    if isinstance(exc, FileNotFoundError | obx.NotFoundError):
        # On a write, "not found" is the bucket or container: no retry will create it.
        return MediaRefused(f"{what}: {first}")
    return MediaUnavailable(f"{what}: {first}")


# ---- opening ---------------------------------------------------------------------------------

def open_media(settings: Settings) -> MediaStore:
    """The media store ``settings`` name. The runtime opens it once and every job of the
    process shares it (an object store's client holds a connection pool; it needs no closing:
    it goes with its last reference)."""
    if settings.media_url is None:
        return LocalMedia(settings.media_dir)
    return ObjectMedia(settings.media_url, staging=settings.db_path.parent / "media-staging")


# ---- serving ---------------------------------------------------------------------------------


# A kept file is a payload's bytes: shown by the browser as media at most, never as a page.
KEPT_FILE_CSP = ("default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline';"
                 " frame-ancestors 'none'; sandbox")
# Types a browser shows as they are, without running anything: inline; any other is a download.
INLINE_TYPES = ("audio/", "video/", "image/png", "image/jpeg", "image/gif", "image/webp",
                "image/avif")


def kept_file_headers(content_type: str | None, name: str) -> dict[str, str]:
    """The headers a kept file is served with: a CSP that runs nothing, and an attachment
    (a download) for any type a browser could render as a page or a script (HTML, SVG, XML,
    JSON, unknown)."""
    media = (content_type or "").split(";")[0].strip().lower()
    inline = media.startswith(INLINE_TYPES)
    disposition = "inline" if inline else "attachment"
    # A header holds Latin-1 at most, and a quote or a line break would end it: the plain
    # name is ASCII letters, digits and "._-"; the whole name goes percent-encoded as UTF-8
    # (RFC 6266's filename*) for the browsers that read it.
    name = name[:100]
    safe_name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_"
                        for c in name) or "file"
    whole = quote(name.encode("utf-8", "replace"), safe="")
    return {"Content-Security-Policy": KEPT_FILE_CSP, "X-Frame-Options": "DENY",
            "Content-Disposition": f"{disposition}; filename=\"{safe_name}\"; "
                                   f"filename*=UTF-8''{whole or 'file'}"}


async def file_response(store: MediaStore, file: StoredFile, request: Request) -> Response:
    """``file`` for an admin: from a local folder, the bytes with HTTP Range (206, 416,
    ``Accept-Ranges``); from an object store, a redirect to a presigned GET valid for
    :data:`PRESIGN_S` seconds when its type is shown inline (the bucket answers with none of
    our headers, so a type a browser could run is never handed out that way), otherwise (or
    where the store cannot sign) the bytes streamed through. The bytes come with
    :func:`kept_file_headers`."""
    # A recorded type is served only as a plain media type (a handler may record anything; a
    # header holds Latin-1 at most): else as bytes, downloaded.
    served = media_type(file.content_type) or "application/octet-stream"
    key = store.key_of(file.path)
    if key is None:
        return Response(f"{file.path} is not in the configured media store\n", status_code=404,
                        media_type="text/plain")
    if isinstance(store, LocalMedia):
        path = store.path(key)
        if not await asyncio.to_thread(path.is_file):
            return Response("the file is gone from the media folder\n", status_code=404,
                            media_type="text/plain")
        response = FileResponse(path, media_type=served)
        response.headers.update(kept_file_headers(served, path.name))
        return response
    headers = kept_file_headers(served, key)
    url = None
    if headers["Content-Disposition"].startswith("inline"):
        url = await store.presigned_url(key)
    if url is not None:
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    found = await store.head(key, verify=False)
    if found is None:
        return Response("the object is gone from the media store\n", status_code=404,
                        media_type="text/plain")
    return StreamingResponse(store.read(key), media_type=served,
                             headers={"Content-Length": str(found.size), **headers})
