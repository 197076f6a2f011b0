"""The sandbox's media: real WAV and PNG bytes, byte ranges, and media faults."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import httpx
import pytest

from receiver.clock import FakeClock
from receiver.sonic.sandbox import FaultConfig, MediaFault, MediaFaultKind, SandboxConfig, Speed
from tests.sonic.support import (
    KEY,
    OK_CUSTOM,
    SECRET,
    SandboxHandle,
    measured_bpm,
    read_wav,
    serve_receiver,
    serve_sandbox,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


async def _clips(sb: SandboxHandle, body: dict[str, Any] | None = None, key: str = KEY) -> list[
    dict[str, Any]
]:
    clips: list[dict[str, Any]] = (await sb.music(await sb.create(body or OK_CUSTOM, key), key))[
        "data"
    ]
    return clips


async def test_audio_is_a_wav_as_long_as_the_clip_at_the_tempo_get_bpm_reports() -> None:
    async with serve_sandbox() as sb:
        for clip in await _clips(sb) + await _clips(sb, {**OK_CUSTOM, "mv": "sonic-v3-5"}):
            audio = await sb.http.get(clip["audio_url"])
            assert audio.headers["content-type"] == "audio/wav"
            assert int(audio.headers["content-length"]) == len(audio.content)
            channels, width, rate, samples = read_wav(audio.content)
            assert (channels, width, rate) == (1, 2, 8000)
            assert len(samples) / rate == float(clip["duration"])  # exact, to the sample
            bpm = (await sb.post("/api/v1/sonic/bpm", {"clip_id": clip["clip_id"]})).json()
            assert measured_bpm(samples, rate) == pytest.approx(bpm["data"]["avg_bpm"], abs=0.5)


async def test_the_cover_is_a_valid_png() -> None:
    async with serve_sandbox() as sb:
        clip = (await _clips(sb))[0]
        image = await sb.http.get(clip["image_url"])
    assert image.headers["content-type"] == "image/png"
    data = image.content
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks = []
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.append((kind, body))
        at += 12 + length
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert (width, height) == (64, 64)
    assert len(zlib.decompress(chunks[1][1])) == 64 * (1 + 64 * 3)


async def test_byte_ranges() -> None:
    """The audio URL honours single byte ranges (206 with Content-Range, 416 past the end) and
    answers several ranges with the whole file."""
    async with serve_sandbox() as sb:
        url = (await _clips(sb))[0]["audio_url"]
        whole = (await sb.http.get(url)).content
        size = len(whole)
        for header, first, last in [
            ("bytes=0-99", 0, 99),
            ("bytes=100-", 100, size - 1),
            ("bytes=-44", size - 44, size - 1),
            (f"bytes=10-{size + 500}", 10, size - 1),
        ]:
            part = await sb.http.get(url, headers={"Range": header})
            assert part.status_code == 206, header
            assert part.headers["content-range"] == f"bytes {first}-{last}/{size}"
            assert part.content == whole[first : last + 1]
            assert int(part.headers["content-length"]) == last - first + 1
        beyond = await sb.http.get(url, headers={"Range": f"bytes={size}-"})
        assert beyond.status_code == 416
        assert beyond.headers["content-range"] == f"bytes */{size}"
        several = await sb.http.get(url, headers={"Range": "bytes=0-1,5-6"})
        assert several.status_code == 200
        assert several.content == whole
        head = await sb.http.head(url)
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["content-length"]) == size
        assert head.headers["accept-ranges"] == "bytes"


async def test_media_urls_use_the_configured_public_base() -> None:
    config = SandboxConfig(
        api_keys={KEY: 100}, speed=Speed.INSTANT, public_base_url="https://cdn.example.test/"
    )
    async with serve_sandbox(config) as sb:
        clip = (await _clips(sb))[0]
    assert clip["audio_url"].startswith("https://cdn.example.test/media/audio/")
    assert clip["image_url"].startswith("https://cdn.example.test/media/image/")


def _with_media(fault: MediaFault, key: str = KEY) -> SandboxConfig:
    return SandboxConfig(
        api_keys={KEY: 1_000, "clean": 1_000},
        speed=Speed.INSTANT,
        key_faults={key: FaultConfig(media=fault)},
    )


async def test_media_fault_500_for_the_first_requests_only() -> None:
    fault = MediaFault(kind=MediaFaultKind.STATUS_500, times=2)
    async with serve_sandbox(_with_media(fault)) as sb:
        url = (await _clips(sb))[0]["audio_url"]
        statuses = [(await sb.http.get(url)).status_code for _ in range(3)]
        clean = (await _clips(sb, key="clean"))[0]["audio_url"]
        assert (await sb.http.get(clean)).status_code == 200  # another key: no fault
    assert statuses == [500, 500, 200]


async def test_media_fault_truncated_body() -> None:
    """Content-Length promises the whole file, the connection closes halfway."""
    async with serve_sandbox(_with_media(MediaFault(kind=MediaFaultKind.TRUNCATE))) as sb:
        url = (await _clips(sb))[0]["audio_url"]
        with pytest.raises(httpx.RemoteProtocolError):
            await sb.http.get(url)


async def test_media_fault_redirect() -> None:
    """A redirect fault answers the audio URL with a 302 to the configured place."""
    target = "http://127.0.0.1:9/elsewhere.wav"
    fault = MediaFault(kind=MediaFaultKind.REDIRECT, url=target)
    async with serve_sandbox(_with_media(fault)) as sb:
        answer = await sb.http.get((await _clips(sb))[0]["audio_url"])
    assert (answer.status_code, answer.headers["location"]) == (302, target)


async def test_media_fault_slow_body_takes_its_time_on_the_clock() -> None:
    """A slow body arrives whole, paced on the injected clock (no real waiting)."""
    clock = FakeClock()
    fault = MediaFault(kind=MediaFaultKind.SLOW, bytes_per_s=100_000)
    async with serve_sandbox(_with_media(fault), clock=clock) as sb:
        clip = (await _clips(sb))[0]
        before = clock.now()
        body = (await sb.http.get(clip["audio_url"])).content
        took = clock.now() - before
        _, _, rate, samples = read_wav(body)
    assert len(samples) / rate == float(clip["duration"])
    assert took == pytest.approx(len(body) / 100_000)


async def test_media_faults_can_be_set_at_runtime() -> None:
    async with serve_sandbox() as sb:
        url = (await _clips(sb))[0]["image_url"]
        assert (await sb.http.get(url)).status_code == 200
        await sb.set_faults({"media": {"kind": "status_500"}})
        assert (await sb.http.get(url)).status_code == 500
        assert (await sb.http.delete("/_sandbox/faults")).status_code == 200
        assert (await sb.http.get(url)).status_code == 200
        bad = await sb.http.put("/_sandbox/faults",
                                json={"global": {"media": {"kind": "redirect"}}})
        assert bad.status_code == 400
        assert "url" in bad.json()["message"]


@pytest.mark.parametrize("kind", [MediaFaultKind.HTML, MediaFaultKind.EMPTY])
async def test_media_faults_html_and_empty_answer_200_under_the_media_type(
    kind: MediaFaultKind,
) -> None:
    """What a CDN does wrong while saying all is well: a 200 with an error page, or with no
    bytes, under the audio's own content type."""
    async with serve_sandbox(_with_media(MediaFault(kind=kind, times=1))) as sb:
        url = (await _clips(sb))[0]["audio_url"]
        wrong, right = await sb.http.get(url), await sb.http.get(url)
    assert (wrong.status_code, wrong.headers["content-type"]) == (200, "audio/wav")
    if kind is MediaFaultKind.HTML:
        assert wrong.content.startswith(b"<!DOCTYPE html>")
    else:
        assert wrong.content == b""
    assert right.content[:4] == b"RIFF"


async def test_media_fault_short_serves_valid_audio_a_quarter_as_long() -> None:
    async with serve_sandbox(_with_media(MediaFault(kind=MediaFaultKind.SHORT))) as sb:
        clip = (await _clips(sb))[0]
        _, _, rate, samples = read_wav((await sb.http.get(clip["audio_url"])).content)
    assert len(samples) / rate == pytest.approx(float(clip["duration"]) / 4, abs=0.01)


def _with_links(**links: Any) -> SandboxConfig:
    return SandboxConfig(api_keys={KEY: 1_000, "clean": 1_000}, speed=Speed.INSTANT,
                         key_faults={KEY: FaultConfig.from_json({"links": links})})


async def test_expiring_links_answer_403_once_old_and_get_music_gives_fresh_ones() -> None:
    clock = FakeClock()
    async with serve_sandbox(_with_links(expire_s=20), clock=clock) as sb:
        task_id = await sb.create(OK_CUSTOM)
        first = (await sb.music(task_id))["data"][0]
        assert "expires=" in first["audio_url"]
        assert (await sb.http.get(first["audio_url"])).status_code == 200
        assert (await sb.http.get(first["image_url"])).status_code == 200
        clock.advance(20)
        old = await sb.http.get(first["audio_url"])
        assert (await sb.http.get(first["image_url"])).status_code == 403
        unsigned = await sb.http.get(first["audio_url"].split("?", 1)[0])
        fresh = (await sb.music(task_id))["data"][0]
        again = await sb.http.get(fresh["audio_url"])
        clean = (await _clips(sb, key="clean"))[0]["audio_url"]
        assert "expires=" not in clean  # another key: links do not expire
    assert (old.status_code, old.headers["content-type"]) == (403, "application/xml")
    assert b"AccessDenied" in old.content
    assert unsigned.status_code == 403
    assert fresh["audio_url"] != first["audio_url"]
    assert again.status_code == 200
    assert again.content[:4] == b"RIFF"


async def test_a_webhooks_links_are_as_old_as_its_event() -> None:
    """A delivery sent late (here: delayed 6 s) carries links made when its event happened,
    expired already (after 5 s)."""
    clock = FakeClock()
    config = SandboxConfig(api_keys={KEY: 1_000}, speed=Speed.INSTANT, faults=FaultConfig.from_json(
        {"links": {"expire_s": 5}, "delay_s": 6}))
    async with serve_receiver() as hook, serve_sandbox(config, clock=clock) as sb:
        await sb.create({**OK_CUSTOM, "webhook_url": f"{hook.url}/hook",
                         "webhook_secret": SECRET})
        await wait_until(lambda: "song.completed" in hook.events(), what="song.completed")
        completed = next(r for r in hook.got if r.headers["x-webhook-event"] == "song.completed")
        clip = json.loads(completed.body)["data"][0]
        answer = await sb.http.get(clip["audio_url"])
    assert answer.status_code == 403


async def test_placeholders_on_succeeded_clips_for_a_while_and_on_failed_clips() -> None:
    clock = FakeClock()
    config = SandboxConfig(api_keys={KEY: 1_000}, speed=Speed.INSTANT, faults=FaultConfig.from_json(
        {"links": {"placeholder_s": 30, "placeholder_failed": True}}))
    async with serve_sandbox(config, clock=clock) as sb:
        task_id = await sb.create(OK_CUSTOM)
        early = (await sb.music(task_id))["data"][0]["audio_url"]
        clock.advance(30)
        late = (await sb.music(task_id))["data"][0]["audio_url"]
        await sb.set_faults({"fail_tasks": 1.0, "links": {"placeholder_failed": True}})
        failed = (await sb.music(await sb.create(OK_CUSTOM)))["data"][0]
        placeholder = await sb.http.get(early)
    assert early.endswith("/media/audio/None.mp3")
    assert late.endswith(".wav")
    assert (failed["state"], failed["audio_url"].rsplit("/", 1)[1]) == ("failed", "None.mp3")
    assert placeholder.status_code == 404


async def test_link_faults_are_checked_when_set() -> None:
    async with serve_sandbox() as sb:
        for links, word in (({"expire_s": 0}, "expire_s"), ({"placeholder_s": -1}, "placeholder_s"),
                            ({"expires": 3}, "expires"), ({"placeholder_failed": 1}, "true")):
            answer = await sb.http.put("/_sandbox/faults", json={"global": {"links": links}})
            assert answer.status_code == 400
            assert word in answer.json()["message"]
