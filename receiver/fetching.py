"""Safe streaming downloads, for any handler that fetches a URL it was handed.

A URL in a callback is not ours: it may point at the cloud metadata service, at a service on
the receiver's own network, or redirect there. :class:`NetPolicy` says which addresses may be
connected to, and :func:`download` enforces it on the first request and on every redirect:

* only ``http`` and ``https``, no credentials in the URL;
* the host is resolved once (``getaddrinfo``) and *every* address it resolves to is checked:
  loopback, private, link-local (169.254.169.254 among them), multicast, reserved,
  unspecified and other non-global addresses are refused, IPv4 and IPv6 alike, including
  IPv4 addresses carried inside IPv6 ones (``::ffff:10.0.0.1``, 6to4, Teredo, NAT64), unless
  the address is in ``[network] allow_networks`` or the host is in ``[network] allow_hosts``;
* the connection is then made to the checked address itself (the URL carries the IP; the
  ``Host`` header and the TLS SNI/certificate name stay the original host's), so a DNS
  answer that changes between the check and the connect (rebinding) cannot redirect it;
* redirects are followed here, never by httpx, at most :data:`MAX_REDIRECTS` of them.

The body is streamed to ``<dest>.part`` beside the destination, checked against the allowed
content types and ``max_bytes`` (``Content-Length`` first, then while streaming), resumed
with ``Range`` when an earlier attempt left a part of the same URL, fsynced, checked by the
caller's ``check`` (are these bytes what the content type says?), renamed over the
destination with ``os.replace`` and the directory fsynced. A file under its final name is
always complete and passed its check; a body cut short stays a ``.part`` and raises
:class:`FetchFailed`; a body that fails its check is discarded.

Failures (all :class:`receiver.errors.ReceiverError`)::

    FetchError                  a download failed; ``permanent`` says whether a retry can help
    ├── FetchRefused            the policy refused a URL, an address or a redirect (permanent)
    ├── FetchTooLarge           the body is over max_bytes (permanent)
    ├── FetchWrongType          the content type is not an allowed one (permanent)
    ├── FetchBadBody            the bytes are not what the content type says (retry)
    ├── FetchBadStatus          a 4xx that retrying cannot fix: 400, 401... (permanent)
    │   └── FetchGone           410: this link is gone (permanent for this URL)
    └── FetchFailed             5xx, 408/429, connection, timeout, short body (retry)
        └── FetchDenied         403/404: the link is refused, for a moment or for good (retry)

:class:`FetchDenied` and :class:`FetchGone` are what an expired link answers: a caller that
can get a fresh URL for the same file (:data:`LINK_REFUSED`) does so rather than retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import structlog

from receiver.config import NetworkTable
from receiver.conversion import convert
from receiver.errors import ReceiverError
from receiver.redact import scrub_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) → addresses``; the default asks the running loop's ``getaddrinfo``."""

MAX_REDIRECTS = 5
USER_AGENT = "sonic-receiver"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Worth another attempt: a CDN object may not be there yet (403/404 right after a task
# succeeds) and a later attempt re-reads the task, whose URLs a newer event may have renewed.
RETRYABLE_STATUSES = frozenset({403, 404, 408, 425, 429})
DENIED_STATUSES = frozenset({403, 404})
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$", re.IGNORECASE)
# RFC 9110 §8.3.1: type "/" subtype, each a token (ASCII letters, digits, !#$%&'*+-.^_`|~).
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+/[A-Za-z0-9!#$%&'*+.^_`|~-]+")

_log = structlog.get_logger("receiver.fetching")


class FetchError(ReceiverError):
    """A download failed."""

    permanent: ClassVar[bool] = False


class FetchRefused(FetchError):
    """The network policy refused the URL, an address it resolves to, or a redirect."""

    permanent = True


class FetchTooLarge(FetchError):
    """The body is larger than allowed."""

    permanent = True


class FetchWrongType(FetchError):
    """The content type is not an allowed one."""

    permanent = True


class FetchBadBody(FetchError):
    """The body is not what its content type says (an HTML page or no bytes under an audio
    type): another attempt, or another URL, may serve the right bytes."""


class FetchBadStatus(FetchError):
    """The server answered with a status that another attempt cannot change."""

    permanent = True

    def __init__(self, status: int, message: str | None = None) -> None:
        self.status = status
        super().__init__(message or f"HTTP {status}")


class FetchGone(FetchBadStatus):
    """410: the link is gone for good (a fresh link to the same file may not be)."""


class FetchFailed(FetchError):
    """The download failed in a way another attempt may not: a 5xx, a connection error, a
    timeout, a body cut short."""


class FetchDenied(FetchFailed):
    """403 or 404: the link is refused. Right after a file is made this passes by itself;
    a link that expired answers it from then on."""

    def __init__(self, status: int, message: str | None = None) -> None:
        self.status = status
        super().__init__(message or f"HTTP {status}")


LINK_REFUSED = (FetchDenied, FetchGone)
"""What a link that expired (or was withdrawn) answers."""


# ---- the policy ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NetPolicy:
    """Where downloads may connect. By default: any globally routable address, over http(s).

    ``allow_networks`` and ``allow_hosts`` open exceptions (``127.0.0.0/8`` for a local media
    server, a storage host on the LAN). A host in ``allow_hosts`` is trusted whatever it
    resolves to; otherwise every address it resolves to must be global or in
    ``allow_networks``.
    """

    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    schemes: frozenset[str] = frozenset({"http", "https"})

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NetPolicy:
        """The policy of a parsed config file's ``[network]`` table
        (:class:`receiver.config.NetworkTable`)::

            [network]
            allow_networks = ["127.0.0.0/8"]
            allow_hosts = ["media.lan"]
        """
        return cls.from_table(convert(config.get("network", {}), NetworkTable, path="network"))

    @classmethod
    def from_table(cls, table: NetworkTable) -> NetPolicy:
        return cls(allow_networks=tuple(n.network for n in table.allow_networks),
                   allow_hosts=frozenset(_normal_host(h) for h in table.allow_hosts))

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be connected to, or None when it may."""
        if self._allowed(address):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            mapped = address.ipv4_mapped
            if mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d, allowed or not
                why = self.refusal(mapped)
                return None if why is None else f"{address} maps {why}"
            for inner in _embedded_ipv4(address):
                inner_why = _special(inner)
                if inner_why is not None and not self._allowed(inner):
                    return f"{address} carries {inner}, which is {inner_why}"
        why = _special(address)
        return None if why is None else f"{address} is {why}"

    def _allowed(self, address: IPAddress) -> bool:
        return any(_contains(network, address) for network in self.allow_networks)

    def check_url(self, url: httpx.URL) -> str:
        """The normalised host of ``url``; raises :class:`FetchRefused` when the URL itself
        (scheme, host, credentials) cannot be fetched."""
        if url.scheme not in self.schemes:
            raise FetchRefused(f"scheme {url.scheme or '(none)'!r} is not allowed "
                               f"({', '.join(sorted(self.schemes))} only)")
        if not url.host:
            raise FetchRefused(f"{safe_url(url)} has no host")
        if url.userinfo:
            raise FetchRefused(f"{safe_url(url)} carries credentials")
        # The ASCII (IDNA) form: what the resolver, SNI and allow_hosts all compare.
        return _normal_host(url.raw_host.decode("ascii"))

    async def addresses(self, host: str, port: int, *, resolve: Resolver | None = None,
                        ) -> list[IPAddress]:
        """The addresses ``host`` resolves to, every one of them allowed; raises
        :class:`FetchRefused` if any is not (one bad answer is enough to distrust the name)."""
        try:
            found = await (resolve or system_resolve)(host, port)
        except (OSError, UnicodeError) as exc:
            raise FetchFailed(f"cannot resolve {host}: {exc}") from exc
        addresses: list[IPAddress] = []
        for text in found:
            address = _parse_address(text)
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise FetchFailed(f"{host} resolves to no address")
        if _normal_host(host) in self.allow_hosts:
            return addresses
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                literal = _literal(host) == address
                raise FetchRefused(why if literal else f"{host} resolves to a refused address: "
                                   f"{why}")
        return addresses


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives ``host`` (an IP literal resolves to itself,
    without any query)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


def _special(address: IPAddress) -> str | None:
    """What makes ``address`` one that a fetch must not reach, or None for a global one."""
    checks: tuple[tuple[bool, str], ...] = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (isinstance(address, ipaddress.IPv6Address) and address.is_site_local, "site-local"),
        (not address.is_global, "not globally routable"),
    )
    return next((why for hit, why in checks if hit), None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 one leads to: 6to4, Teredo client, NAT64 (64:ff9b::/96) and the
    deprecated IPv4-compatible form (mapped ones are handled as the IPv4 address they are)."""
    inner: list[ipaddress.IPv4Address] = []
    if address.sixtofour is not None:
        inner.append(address.sixtofour)
    if address.teredo is not None:
        inner.append(address.teredo[1])
    low = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 0xFFFF):
        inner.append(low)
    return inner


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _contains(network: IPNetwork, address: IPAddress) -> bool:
    return network.version == address.version and address in network


def _parse_address(text: str) -> IPAddress:
    # A link-local IPv6 answer may carry a zone ("fe80::1%eth0"): the zone does not change
    # what the address is.
    return ipaddress.ip_address(text.split("%", 1)[0])


def _literal(host: str) -> IPAddress | None:
    try:
        return _parse_address(host)
    except ValueError:
        return None


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


# ``url`` as logs and error messages may show it: no userinfo, query or fragment (signed CDN
# links carry tokens there). The one scrubber, shared with the log redaction.
safe_url = scrub_url


# ---- content types ---------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """``"Audio/MPEG; charset=x"`` → ``"audio/mpeg"``; ``""`` when absent or not a media type
    (``type/subtype`` of RFC 9110 tokens): a type that is kept, sent as a header again or
    named in an object store must be plain ASCII, whatever a ``"audio/*"`` lets in."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return kind if _MEDIA_TYPE.fullmatch(kind) else ""


def type_allowed(content_type: str, allowed: Collection[str]) -> bool:
    """Whether ``content_type`` is one of ``allowed``: exact media types, or prefixes written
    ``"audio/*"`` (or ``"audio/"``)."""
    kind = media_type(content_type)
    if not kind:
        return False
    for entry in allowed:
        want = entry.strip().lower()
        if want.endswith("/*"):
            want = want[:-1]
        if kind == want or (want.endswith("/") and kind.startswith(want)):
            return True
    return False


# ---- downloading -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Downloaded:
    """A file now complete under its final name."""

    path: Path
    size: int
    sha256: str
    content_type: str  # the media type, without parameters
    url: str  # as asked for
    final_url: str  # after redirects
    resumed_from: int = 0  # bytes kept from an earlier attempt


@dataclass(frozen=True, kw_only=True)
class _Part:
    """What an attempt left in ``<dest>.part``: its bytes, and in ``<dest>.part.meta`` which
    URL and which version of the resource they come from."""

    path: Path
    meta: Path
    size: int
    validator: str | None  # a strong ETag or a Last-Modified, for If-Range
    length: int | None  # the whole resource's length, when it was known


async def download(
    http: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    policy: NetPolicy,
    max_bytes: int,
    allowed_types: Collection[str],
    log: Any = None,
    suffix_for: Callable[[str], str] | None = None,
    check: Callable[[Path, str], None] | None = None,
    prepare: Callable[[Path, str], None] | None = None,
    max_redirects: int = MAX_REDIRECTS,
    timeout_s: float | None = None,
    resolve: Resolver | None = None,
) -> Downloaded:
    """Fetch ``url`` into ``dest`` under ``policy``, never leaving a partial file there.

    ``allowed_types`` are media types or ``"type/*"`` prefixes. ``suffix_for(media_type)``,
    when given, picks the final name's suffix from the content type (``dest`` is then a
    stem: ``clip.audio`` becomes ``clip.mp3``; the part is ``clip.audio.part`` whatever the
    type, so that it can be resumed before the type is known). ``check(part, media_type)``
    runs in a thread on the complete part and raises :class:`FetchBadBody` when its bytes are
    not what the type says (the part is then discarded: it is never resumed nor kept).
    ``prepare(part, media_type)`` runs in a thread on the checked part before it is hashed and
    renamed (to tag it, say).
    ``timeout_s`` bounds the whole download (the client's own timeouts bound each read).
    Raises a :class:`FetchError`.
    """
    bound = log if log is not None else _log
    part = _part_of(dest)
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise FetchRefused(f"not a valid URL: {exc}") from exc
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
            response_type, final_url, resumed_from = await _fetch(
                http, parsed, part, policy=policy, max_bytes=max_bytes,
                allowed_types=allowed_types, max_redirects=max_redirects, resolve=resolve,
                log=bound,
            )
    except TimeoutError as exc:
        raise FetchFailed(f"{safe_url(url)} took longer than {timeout_s:g}s") from exc
    except FetchError as exc:
        if exc.permanent:
            await asyncio.to_thread(_discard, part)
        raise
    if check is not None:
        try:
            await asyncio.to_thread(check, part, response_type)
        except FetchError:
            await asyncio.to_thread(_discard, part)
            raise
    final = dest.with_suffix(suffix_for(response_type)) if suffix_for else dest
    size, sha256 = await asyncio.to_thread(_commit, part, final, prepare, response_type)
    return Downloaded(path=final, size=size, sha256=sha256, content_type=response_type,
                      url=url, final_url=str(final_url), resumed_from=resumed_from)


async def _fetch(
    http: httpx.AsyncClient,
    url: httpx.URL,
    part: Path,
    *,
    policy: NetPolicy,
    max_bytes: int,
    allowed_types: Collection[str],
    max_redirects: int,
    resolve: Resolver | None,
    log: Any,
) -> tuple[str, httpx.URL, int]:
    """Stream ``url`` into ``part``; ``(media type, final URL, bytes resumed from)``."""
    earlier = await asyncio.to_thread(_resumable, part, str(url))
    for resuming in (earlier is not None, False):
        headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
        if resuming and earlier is not None:
            headers["Range"] = f"bytes={earlier.size}-"
            if earlier.validator:
                headers["If-Range"] = earlier.validator
        async with _open(http, url, policy=policy, headers=headers, max_redirects=max_redirects,
                         resolve=resolve, log=log) as (response, final_url):
            status = response.status_code
            if resuming and status == 416:
                log.info("fetch_resume_refused", url=safe_url(url), status=status)
                continue  # the part cannot be continued: start over
            _check_status(response, final_url)
            kind = media_type(response.headers.get("content-type"))
            if not type_allowed(kind, allowed_types):
                raise FetchWrongType(f"{safe_url(final_url)} is {kind or 'untyped'!s}, not one of "
                                     f"{', '.join(sorted(allowed_types))}")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise FetchWrongType(f"{safe_url(final_url)} is sent {encoding}-encoded")
            offset = 0
            if resuming and earlier is not None and status == 206:
                continued = _resume_offset(response, earlier)
                if continued is None:
                    log.info("fetch_resume_mismatch", url=safe_url(url),
                             content_range=response.headers.get("content-range"))
                    continue
                offset = continued
                log.info("fetch_resumed", url=safe_url(url), offset=offset)
            elif status == 206:
                raise FetchFailed(f"{safe_url(final_url)} answered 206 to a request for "
                                  "the whole body")
            total = _expected_total(response, offset)
            if total is not None and total > max_bytes:
                raise FetchTooLarge(f"{safe_url(final_url)} is {total} bytes, over the limit "
                                    f"of {max_bytes}")
            await asyncio.to_thread(_write_meta, part, str(url), response, total)
            await _stream(response, part, offset=offset, total=total, max_bytes=max_bytes,
                          where=safe_url(final_url))
            return kind, final_url, offset
    raise FetchFailed(f"{safe_url(url)} could not be resumed or restarted")  # pragma: no cover


@contextlib.asynccontextmanager
async def _open(
    http: httpx.AsyncClient,
    url: httpx.URL,
    *,
    policy: NetPolicy,
    headers: Mapping[str, str],
    max_redirects: int,
    resolve: Resolver | None,
    log: Any,
) -> AsyncIterator[tuple[httpx.Response, httpx.URL]]:
    """The response to ``GET url`` after redirects, each hop checked before it is sent."""
    current = url
    for _hop in range(max_redirects + 1):
        response = await _send_pinned(http, current, policy=policy, headers=headers,
                                      resolve=resolve)
        if response.status_code in REDIRECT_STATUSES:
            location = response.headers.get("location")
            await response.aclose()
            if not location:
                raise FetchBadStatus(response.status_code,
                                     f"{safe_url(current)} redirects nowhere (no Location)")
            try:
                target = current.join(location)
            except httpx.InvalidURL as exc:
                raise FetchRefused(f"{safe_url(current)} redirects to an invalid URL") from exc
            log.info("fetch_redirected", url=safe_url(current), to=safe_url(target),
                     status=response.status_code)
            current = target
            continue
        try:
            yield response, current
        finally:
            await response.aclose()
        return
    raise FetchRefused(f"{safe_url(url)} redirects more than {max_redirects} times")


async def _send_pinned(
    http: httpx.AsyncClient,
    url: httpx.URL,
    *,
    policy: NetPolicy,
    headers: Mapping[str, str],
    resolve: Resolver | None,
) -> httpx.Response:
    """Send ``GET url`` to an address the policy checked, not to whatever the name resolves
    to at connect time: the URL carries the IP, the Host header and TLS SNI the name.

    The request is built here rather than by the client, so that none of the shared client's
    default headers, cookies or auth can reach a media host.
    """
    host = policy.check_url(url)
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await policy.addresses(host, port, resolve=resolve)
    extensions: dict[str, Any] = {"sni_hostname": host} if url.scheme == "https" else {}
    failure: Exception | None = None
    for address in addresses:  # like a browser: the next address when one does not connect
        request = httpx.Request(
            "GET", url.copy_with(host=str(address), fragment=None),
            headers={**headers, "Host": url.netloc.decode("ascii")}, extensions=extensions,
        )
        try:
            return await http.send(request, stream=True, follow_redirects=False, auth=None)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failure = exc
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{safe_url(url)}: {type(exc).__name__}: {exc}") from exc
    raise FetchFailed(f"cannot connect to {host}: {failure}") from failure


def _check_status(response: httpx.Response, url: httpx.URL) -> None:
    status = response.status_code
    if status in (200, 206):
        return
    message = f"{safe_url(url)} answered HTTP {status}"
    if status in DENIED_STATUSES:
        raise FetchDenied(status, message)
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise FetchFailed(message)
    if status == 410:
        raise FetchGone(status, message)
    raise FetchBadStatus(status, message)


def _resume_offset(response: httpx.Response, earlier: _Part) -> int | None:
    """Where a 206 continues the part, or None when it does not continue it exactly."""
    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if match is None:
        return None
    first, last, total = (int(g) for g in match.groups())
    if first != earlier.size or last != total - 1:
        return None
    if earlier.length is not None and total != earlier.length:
        return None
    return first


def _expected_total(response: httpx.Response, offset: int) -> int | None:
    """The whole file's size once this response is written after ``offset`` bytes."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if match is not None:
            return int(match.group(3))
    length = response.headers.get("content-length")
    if length is None or not (length.strip().isascii() and length.strip().isdigit()):
        return None
    return offset + int(length)


async def _stream(response: httpx.Response, part: Path, *, offset: int, total: int | None,
                  max_bytes: int, where: str) -> None:
    written = offset
    out = await asyncio.to_thread(_open_part, part, offset)
    try:
        try:
            # As received: a chunk size would make httpx hold bytes back, and lose them when
            # the connection breaks, bytes a resume would then fetch again.
            async for chunk in response.aiter_raw():
                written += len(chunk)
                if written > max_bytes:
                    raise FetchTooLarge(f"{where} is over the limit of {max_bytes} bytes")
                if total is not None and written > total:
                    raise FetchFailed(f"{where} sent more than its {total} bytes")
                await asyncio.to_thread(out.write, chunk)
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{where}: body interrupted after {written} bytes "
                              f"({type(exc).__name__}: {exc})") from exc
        finally:
            await asyncio.to_thread(_flush, out)
    finally:
        await asyncio.to_thread(out.close)
    if total is not None and written != total:
        raise FetchFailed(f"{where}: body cut short: {written} of {total} bytes")


def _part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _meta_of(part: Path) -> Path:
    return part.with_name(part.name + ".meta")


def _open_part(part: Path, offset: int) -> Any:
    out = part.open("r+b" if offset else "wb")
    out.seek(offset)
    out.truncate()
    return out


def _flush(out: Any) -> None:
    # What was written survives a crash, so that the next attempt resumes after it.
    out.flush()
    os.fsync(out.fileno())


def _resumable(part: Path, url: str) -> _Part | None:
    """The part an earlier attempt at ``url`` left, or None (and no stale part) if there is
    none worth continuing."""
    meta_path = _meta_of(part)
    try:
        size = part.stat().st_size
        meta = json.loads(meta_path.read_text("utf-8"))
    except (OSError, ValueError):
        _discard(part)
        return None
    length = meta.get("length") if isinstance(meta, dict) else None
    if (
        not isinstance(meta, dict)
        or meta.get("url") != url
        or size == 0
        or (isinstance(length, int) and size >= length)
    ):
        _discard(part)
        return None
    validator = meta.get("validator")
    return _Part(path=part, meta=meta_path, size=size,
                 validator=validator if isinstance(validator, str) else None,
                 length=length if isinstance(length, int) else None)


def _write_meta(part: Path, url: str, response: httpx.Response, total: int | None) -> None:
    etag = response.headers.get("etag")
    strong = etag if etag and not etag.startswith("W/") else None
    meta = {"url": url, "validator": strong or response.headers.get("last-modified"),
            "length": total}
    write_atomic(_meta_of(part), json.dumps(meta).encode())


def _discard(part: Path) -> None:
    for path in (part, _meta_of(part)):
        path.unlink(missing_ok=True)


def _commit(part: Path, final: Path, prepare: Callable[[Path, str], None] | None,
            content_type: str) -> tuple[int, str]:
    if prepare is not None:
        prepare(part, content_type)
    with part.open("rb") as handle:
        os.fsync(handle.fileno())
        size, sha256 = _digest(handle)
    os.replace(part, final)
    _fsync_dir(final.parent)
    _meta_of(part).unlink(missing_ok=True)
    return size, sha256


# ---- files on disk ---------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> tuple[int, str]:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one:
    a temporary beside it, fsync, ``os.replace``, fsync the directory. ``(size, sha256)``."""
    # A temporary of its own: two writers of one path never write into each other's file.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return len(data), hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> tuple[int, str] | None:
    """``(size, sha256)`` of the file at ``path``, or None when there is none."""
    try:
        with path.open("rb") as handle:
            return _digest(handle)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _digest(handle: Any) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while block := handle.read(1024 * 1024):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


@contextlib.asynccontextmanager
async def locked(path: Path, *, wait_s: float = 30.0, poll_s: float = 0.05) -> AsyncIterator[None]:
    """Hold an exclusive lock on ``path`` (``flock``: it excludes other processes and other
    holders in this one), waiting up to ``wait_s``; raises :class:`FetchFailed` (retry later)
    if it stays held. Callers that may fetch one destination concurrently (two jobs, or a job
    whose lease expired while it ran) hold it around their check-then-download."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (fd := await asyncio.to_thread(_try_lock, path)) is None:
        if loop.time() >= deadline:
            raise FetchFailed(f"{path.name} is being written by another job")
        await asyncio.sleep(poll_s)  # a real wait on a real lock, not the domain's clock
    try:
        yield
    finally:
        # Not awaited: a release must happen even while the task is being cancelled, and it is
        # one unlink and one close.
        _unlock(path, fd)


def _try_lock(path: Path) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass  # held, or unlinked by its holder between our open and our lock: try again
    os.close(fd)
    return None


def _unlock(path: Path, fd: int) -> None:
    # Unlink before closing: a waiter that opened the old file then sees a different inode
    # under the name (above) and tries again, so two holders never hold two files.
    path.unlink(missing_ok=True)
    os.close(fd)


def _fsync_dir(directory: Path) -> None:
    # The rename itself must survive a crash, not only the file's bytes.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
