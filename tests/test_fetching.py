"""receiver.fetching: the network policy on its own, and downloads over real HTTP from a media
server on loopback. Nothing is ever sent outside 127.0.0.0/8: refused addresses are refused
before any connection, which the watched client's list of sent requests shows."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.errors import SettingsError
from receiver.fetching import (
    Downloaded,
    FetchBadStatus,
    FetchFailed,
    FetchRefused,
    FetchTooLarge,
    FetchWrongType,
    NetPolicy,
    download,
    type_allowed,
)
from tests.handlers import LOOPBACK_ONLY, Media, MediaServer, media_server, watched_client
from tests.support import http_client

pytestmark = pytest.mark.anyio

LOCAL = NetPolicy.from_config(LOOPBACK_ONLY)
AUDIO = {"audio/mpeg", "audio/wav"}
BODY = bytes(range(256)) * 400  # 100 KiB, every byte value


# ---- the policy ------------------------------------------------------------------------------

REFUSED_BY_DEFAULT = [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "224.0.0.251", "239.1.2.3", "240.0.0.1", "255.255.255.255",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "fec0::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    "2002:a00:1::1",  # 6to4 for 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 for 169.254.169.254
]


@pytest.mark.parametrize("text", REFUSED_BY_DEFAULT)
def test_special_addresses_are_refused_by_default(text: str) -> None:
    """Loopback, private, link-local, multicast, reserved, unspecified, IPv6 and IPv4 inside
    IPv6: all refused by a policy with no exceptions."""
    assert NetPolicy().refusal(ipaddress.ip_address(text)) is not None


@pytest.mark.parametrize("text", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_global_addresses_are_allowed_by_default(text: str) -> None:
    assert NetPolicy().refusal(ipaddress.ip_address(text)) is None


def test_refusals_say_what_the_address_is() -> None:
    policy = NetPolicy()
    assert "link-local" in (policy.refusal(ipaddress.ip_address("169.254.169.254")) or "")
    assert "private" in (policy.refusal(ipaddress.ip_address("10.0.0.1")) or "")
    assert "10.0.0.1" in (policy.refusal(ipaddress.ip_address("::ffff:10.0.0.1")) or "")
    assert "10.0.0.1" in (policy.refusal(ipaddress.ip_address("2002:a00:1::1")) or "")


def test_configured_networks_are_allowed_and_nothing_else() -> None:
    policy = NetPolicy.from_config({"network": {"allow_networks": ["127.0.0.0/8", "fd00::/8"]}})
    for allowed in ("127.0.0.1", "127.1.2.3", "::ffff:127.0.0.1", "fd00::5"):
        assert policy.refusal(ipaddress.ip_address(allowed)) is None, allowed
    for refused in ("10.0.0.1", "::1", "169.254.169.254", "::ffff:10.0.0.1", "fc00::1"):
        assert policy.refusal(ipaddress.ip_address(refused)) is not None, refused


def test_the_config_table_is_checked() -> None:
    """[network] goes through its schema: each refusal names the key's path."""
    assert NetPolicy.from_config({}) == NetPolicy()
    for table, message in (
        ({"allow_networks": ["10.0.0.0/8", "127.0.0.0/33"]},
         r"^network\.allow_networks\[1\]: '127\.0\.0\.0/33' is not a network"),
        ({"allow_hosts": "localhost"},
         r"^network\.allow_hosts: expected a list \(a non-empty string each\), got 'localhost'$"),
        (["127.0.0.0/8"], r"^network: expected a table, got \['127\.0\.0\.0/8'\]$"),
        ({"allow_network": []}, r"^network\.allow_network: unknown key$"),
    ):
        with pytest.raises(SettingsError, match=message):
            NetPolicy.from_config({"network": table})


def resolver(table: dict[str, list[str]], asked: list[str] | None = None) -> Any:
    """A DNS answering from ``table``: no query leaves the machine."""

    async def resolve(host: str, port: int) -> list[str]:
        if asked is not None:
            asked.append(host)
        return table[host]

    return resolve


async def test_every_resolved_address_is_checked() -> None:
    """One refused answer among good ones is enough to refuse the name."""
    resolve = resolver({"cdn.example": ["93.184.215.14", "10.0.0.1"]})
    with pytest.raises(FetchRefused, match=r"cdn\.example resolves to a refused address"):
        await NetPolicy().addresses("cdn.example", 443, resolve=resolve)
    ok = resolver({"cdn.example": ["93.184.215.14", "2606:4700:4700::1111"]})
    assert len(await NetPolicy().addresses("cdn.example", 443, resolve=ok)) == 2


async def test_an_allowed_host_may_resolve_anywhere() -> None:
    policy = NetPolicy.from_config({"network": {"allow_hosts": ["Media.LAN."]}})
    resolve = resolver({"media.lan": ["10.0.0.5"], "other.lan": ["10.0.0.6"]})
    assert await policy.addresses("media.lan", 80, resolve=resolve) == [
        ipaddress.ip_address("10.0.0.5")]
    with pytest.raises(FetchRefused):
        await policy.addresses("other.lan", 80, resolve=resolve)


@pytest.mark.parametrize("url", [
    "http://[::1/x", "http:///x", "file:///etc/passwd", "ftp://127.0.0.1/x",
    "gopher://127.0.0.1/", "data:audio/mpeg,abc", "http://user:pw@127.0.0.1/x",
])
async def test_urls_that_are_not_plain_http_are_refused_before_sending(
    tmp_path: Path, url: str
) -> None:
    async with watched_client() as (client, sent):
        with pytest.raises(FetchRefused):
            await download(client, url, tmp_path / "x.mp3", policy=LOCAL, max_bytes=1000,
                           allowed_types=AUDIO)
    assert sent == []
    assert leftovers(tmp_path) == []


def test_content_types_match_exactly_or_by_prefix() -> None:
    assert type_allowed("Audio/MPEG; charset=binary", {"audio/mpeg"})
    assert type_allowed("audio/flac", {"audio/*"})
    assert not type_allowed("audio/mpegx", {"audio/mpeg"})
    assert not type_allowed("text/html", {"audio/*"})
    assert not type_allowed("", {"audio/*"})


# ---- downloads over loopback -----------------------------------------------------------------


async def fetch(server: MediaServer, client: httpx.AsyncClient, path: str, dest: Path,
                **options: Any) -> Downloaded:
    options.setdefault("policy", LOCAL)
    options.setdefault("max_bytes", 10 * len(BODY))
    options.setdefault("allowed_types", AUDIO)
    return await download(client, server.url(path), dest, **options)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_a_download_lands_whole_with_its_digest(tmp_path: Path) -> None:
    async with media_server() as server, watched_client() as (client, sent):
        server.files["/a.mp3"] = Media(body=BODY)
        got = await fetch(server, client, "/a.mp3", tmp_path / "out" / "a.audio",
                          suffix_for=lambda _type: ".mp3")
    assert got.path == tmp_path / "out" / "a.mp3"
    assert got.path.read_bytes() == BODY
    assert (got.size, got.sha256) == (len(BODY), hashlib.sha256(BODY).hexdigest())
    assert got.content_type == "audio/mpeg"
    assert leftovers(tmp_path / "out") == ["a.mp3"]
    assert {url.host for url in sent} == {"127.0.0.1"}


async def test_prepare_runs_on_the_part_before_hash_and_rename(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []

    def prepare(part: Path, content_type: str) -> None:
        seen.append((part.name, content_type))
        with part.open("ab") as handle:
            handle.write(b"TAG")

    async with media_server() as server, watched_client() as (client, _):
        server.files["/a.mp3"] = Media(body=BODY)
        got = await fetch(server, client, "/a.mp3", tmp_path / "a.mp3", prepare=prepare)
    assert seen == [("a.mp3.part", "audio/mpeg")]
    assert got.sha256 == hashlib.sha256(BODY + b"TAG").hexdigest()
    assert got.path.read_bytes() == BODY + b"TAG"


async def test_connections_go_to_the_checked_address_with_the_name_kept(tmp_path: Path) -> None:
    """The name is resolved once, its address checked, and the request sent to that address
    with the name in Host: a second, different DNS answer could not be used."""
    asked: list[str] = []
    async with media_server() as server, watched_client() as (client, sent):
        port = httpx.URL(server.base).port
        server.files["/a.mp3"] = Media(body=BODY)
        await download(client, f"http://media.test:{port}/a.mp3", tmp_path / "a.mp3",
                       policy=LOCAL, max_bytes=len(BODY), allowed_types=AUDIO,
                       resolve=resolver({"media.test": ["127.0.0.1"]}, asked))
    assert asked == ["media.test"]
    assert [str(u) for u in sent] == [f"http://127.0.0.1:{port}/a.mp3"]
    assert server.seen[0].host == f"media.test:{port}"


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` and its key, made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}",
         "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_https_goes_to_the_checked_address_with_sni_and_the_name_verified(
    tmp_path: Path,
) -> None:
    """Over TLS the IP is in the URL, yet the server sees SNI ``media.test`` and the client
    verifies the certificate of ``media.test``: pinning does not weaken TLS."""
    cert, key = self_signed(tmp_path, "media.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    names: list[str | None] = []
    heads: list[bytes] = []

    def note_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    server_tls.sni_callback = note_sni

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: audio/mpeg\r\nconnection: close\r\n"
                     + f"content-length: {len(BODY)}\r\n\r\n".encode() + BODY)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    sent: list[httpx.URL] = []

    async def note(request: httpx.Request) -> None:
        sent.append(request.url)

    trust = ssl.create_default_context(cafile=str(cert))
    try:
        async with http_client(verify=trust, timeout=5.0,
                                     event_hooks={"request": [note]}) as client:
            got = await download(client, f"https://media.test:{port}/a.mp3", tmp_path / "a.mp3",
                                 policy=LOCAL, max_bytes=len(BODY), allowed_types=AUDIO,
                                 resolve=resolver({"media.test": ["127.0.0.1"]}))
    finally:
        server.close()
        await server.wait_closed()
    assert got.sha256 == hashlib.sha256(BODY).hexdigest()
    assert [str(u) for u in sent] == [f"https://127.0.0.1:{port}/a.mp3"]
    assert names == ["media.test"]
    assert f"host: media.test:{port}".encode() in heads[0].lower()


@pytest.mark.parametrize(("target", "why"), [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is link-local"),
    ("http://10.0.0.1/x", "10.0.0.1 is private"),
    ("http://[::ffff:10.0.0.1]/x", "^::ffff:a00:1 maps 10.0.0.1 is private$"),
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
])
async def test_redirects_are_checked_before_they_are_followed(
    tmp_path: Path, target: str, why: str
) -> None:
    async with media_server() as server, watched_client() as (client, sent):
        server.files["/a.mp3"] = Media(body=BODY, redirect=target)
        with pytest.raises(FetchRefused, match=why):
            await fetch(server, client, "/a.mp3", tmp_path / "a.mp3")
    assert [u.host for u in sent] == ["127.0.0.1"]  # the first hop only
    assert leftovers(tmp_path) == []


async def test_a_redirect_to_a_name_that_resolves_inside_is_refused(tmp_path: Path) -> None:
    asked: list[str] = []
    async with media_server() as server, watched_client() as (client, sent):
        server.files["/a.mp3"] = Media(body=BODY, redirect="http://internal.test/x")
        with pytest.raises(FetchRefused, match=r"internal\.test resolves to a refused address"):
            await fetch(server, client, "/a.mp3", tmp_path / "a.mp3", resolve=resolver(
                {"127.0.0.1": ["127.0.0.1"], "internal.test": ["10.1.2.3"]}, asked))
    assert asked == ["127.0.0.1", "internal.test"]
    assert len(sent) == 1


async def test_allowed_redirects_are_followed_and_loops_are_not(tmp_path: Path) -> None:
    async with media_server() as server, watched_client() as (client, _):
        server.files["/a.mp3"] = Media(body=b"", redirect="/b.mp3")
        server.files["/b.mp3"] = Media(body=BODY)
        got = await fetch(server, client, "/a.mp3", tmp_path / "a.mp3")
        assert got.final_url == server.url("/b.mp3")
        assert got.path.read_bytes() == BODY
        server.files["/loop"] = Media(body=b"", redirect="/loop")
        with pytest.raises(FetchRefused, match="more than 5"):
            await fetch(server, client, "/loop", tmp_path / "loop.mp3")
        assert server.hits("/loop") == 6


async def test_wrong_content_type_is_refused(tmp_path: Path) -> None:
    async with media_server() as server, watched_client() as (client, _):
        server.files["/a.mp3"] = Media(body=b"<html>", content_type="text/html")
        with pytest.raises(FetchWrongType, match="text/html"):
            await fetch(server, client, "/a.mp3", tmp_path / "a.mp3")
    assert leftovers(tmp_path) == []


async def test_too_large_is_refused_by_length_before_the_body(tmp_path: Path) -> None:
    async with media_server() as server, watched_client() as (client, _):
        server.files["/a.mp3"] = Media(body=BODY)
        with pytest.raises(FetchTooLarge, match=f"{len(BODY)} bytes"):
            await fetch(server, client, "/a.mp3", tmp_path / "a.mp3", max_bytes=len(BODY) - 1)
    assert leftovers(tmp_path) == []


async def test_too_large_is_refused_while_streaming_without_a_length(tmp_path: Path) -> None:
    async with media_server() as server, watched_client() as (client, _):
        server.files["/a.mp3"] = Media(body=BODY, length=False)
        with pytest.raises(FetchTooLarge, match="over the limit"):
            await fetch(server, client, "/a.mp3", tmp_path / "a.mp3", max_bytes=len(BODY) // 3)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("status", "error"), [
    (500, FetchFailed), (503, FetchFailed), (404, FetchFailed), (429, FetchFailed),
    (410, FetchBadStatus), (401, FetchBadStatus),
])
async def test_statuses_are_told_apart(tmp_path: Path, status: int, error: type[Exception],
                                       ) -> None:
    async with media_server() as server, watched_client() as (client, _):
        server.files["/a.mp3"] = Media(body=BODY, fail_first=1, fail_status=status)
        with pytest.raises(error, match=f"HTTP {status}"):
            await fetch(server, client, "/a.mp3", tmp_path / "a.mp3")
    assert leftovers(tmp_path) == []


async def test_a_body_cut_short_is_never_a_file_and_resumes(tmp_path: Path) -> None:
    dest = tmp_path / "a.mp3"
    async with media_server() as server, watched_client() as (client, _):
        server.files["/a.mp3"] = Media(body=BODY, cut_first=1, etag='"v1"')
        with pytest.raises(FetchFailed, match=r"interrupted|cut short"):
            await fetch(server, client, "/a.mp3", dest)
        assert not dest.exists()
        kept = (tmp_path / "a.mp3.part").read_bytes()
        assert 0 < len(kept) < len(BODY)
        assert BODY.startswith(kept)
        got = await fetch(server, client, "/a.mp3", dest)
        assert server.ranges("/a.mp3") == [None, f"bytes={len(kept)}-"]
        assert server.seen[-1].if_range == '"v1"'
    assert got.resumed_from == len(kept)
    assert got.sha256 == hashlib.sha256(BODY).hexdigest()
    assert dest.read_bytes() == BODY
    assert leftovers(tmp_path) == ["a.mp3"]


async def test_a_changed_resource_is_downloaded_again_whole(tmp_path: Path) -> None:
    """If-Range: when the ETag no longer matches, the server sends all of it (200)."""
    dest = tmp_path / "a.mp3"
    async with media_server() as server, watched_client() as (client, _):
        server.files["/a.mp3"] = Media(body=BODY, cut_first=1, etag='"v1"')
        with pytest.raises(FetchFailed):
            await fetch(server, client, "/a.mp3", dest)
        server.files["/a.mp3"] = Media(body=BODY[::-1], etag='"v2"')
        got = await fetch(server, client, "/a.mp3", dest)
    assert got.resumed_from == 0
    assert dest.read_bytes() == BODY[::-1]


async def test_a_server_ignoring_range_gets_a_full_download(tmp_path: Path) -> None:
    dest = tmp_path / "a.mp3"
    async with media_server() as server, watched_client() as (client, _):
        server.files["/a.mp3"] = Media(body=BODY, cut_first=1, ranges=False)
        with pytest.raises(FetchFailed):
            await fetch(server, client, "/a.mp3", dest)
        got = await fetch(server, client, "/a.mp3", dest)
        assert server.ranges("/a.mp3")[-1] is not None  # asked, and answered 200
    assert got.resumed_from == 0
    assert dest.read_bytes() == BODY


async def test_a_part_of_another_url_is_not_continued(tmp_path: Path) -> None:
    dest = tmp_path / "a.mp3"
    async with media_server() as server, watched_client() as (client, _):
        server.files["/old.mp3"] = Media(body=BODY[::-1], cut_first=1)
        server.files["/new.mp3"] = Media(body=BODY)
        with pytest.raises(FetchFailed):
            await fetch(server, client, "/old.mp3", dest)
        got = await fetch(server, client, "/new.mp3", dest)
        assert server.ranges("/new.mp3") == [None]
    assert got.path.read_bytes() == BODY


async def test_a_part_without_its_record_is_not_trusted(tmp_path: Path) -> None:
    """A stray .part (no .meta saying where it came from) is started over, not continued."""
    (tmp_path / "a.mp3.part").write_bytes(b"junk")
    async with media_server() as server, watched_client() as (client, _):
        server.files["/a.mp3"] = Media(body=BODY)
        got = await fetch(server, client, "/a.mp3", tmp_path / "a.mp3")
        assert server.ranges("/a.mp3") == [None]
    assert got.path.read_bytes() == BODY


async def test_a_slow_body_completes(tmp_path: Path) -> None:
    started = time.monotonic()
    async with media_server() as server, watched_client() as (client, _):
        server.files["/a.mp3"] = Media(body=BODY, chunk=len(BODY) // 8, pause_s=0.05)
        got = await fetch(server, client, "/a.mp3", tmp_path / "a.mp3", timeout_s=10)
    assert got.path.read_bytes() == BODY
    assert 0.3 < time.monotonic() - started < 5


async def test_a_body_slower_than_the_deadline_fails_and_keeps_its_part(tmp_path: Path) -> None:
    async with media_server() as server, watched_client() as (client, _):
        server.files["/a.mp3"] = Media(body=BODY, chunk=len(BODY) // 8, pause_s=0.2)
        with pytest.raises(FetchFailed, match=r"took longer than 0\.3s"):
            await fetch(server, client, "/a.mp3", tmp_path / "a.mp3", timeout_s=0.3)
    assert leftovers(tmp_path) == ["a.mp3.part", "a.mp3.part.meta"]
