"""Behind a reverse proxy: ``X-Forwarded-For``, ``-Proto`` and ``-Host`` are believed from the
trusted proxies only (``RECEIVER_TRUSTED_PROXIES``). An operator logs in through an https
proxy on another host and the audit log records their own address; without the setting, or
from anyone else, the forwarded headers are ignored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.app import create_app
from receiver.errors import SettingsError
from receiver.proxies import TrustedProxies, forwarded_client
from receiver.server import running
from receiver.settings import load
from tests.support import http_client, settings_for

pytestmark = pytest.mark.anyio
TOKEN = "proxy-test-token-3e8a1f6b2c9d4e70"
PROXY_HOST = "127.0.0.2"  # the proxy's own address, as the receiver sees it: another host
OPERATOR = "127.0.0.4"  # the operator's browser, as the proxy sees it
PUBLIC = "https://console.example"
HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "content-encoding"}


@asynccontextmanager
async def https_proxy(upstream: str) -> AsyncIterator[str]:
    """A reverse proxy that terminates https for ``console.example`` (played over plain
    http here), connects to the receiver from :data:`PROXY_HOST` and says so in
    ``X-Forwarded-*``, as nginx, Caddy or a platform's router do."""
    transport = httpx.AsyncHTTPTransport(local_address=PROXY_HOST)
    async with httpx.AsyncClient(transport=transport, base_url=upstream) as http:

        async def forward(request: Request) -> Response:
            headers = {k: v for k, v in request.headers.items() if k not in ("host",
                                                                             *HOP_BY_HOP)}
            client = request.client.host if request.client else "?"
            headers.update({"x-forwarded-for": client, "x-forwarded-proto": "https",
                            "x-forwarded-host": "console.example"})
            answer = await http.request(request.method, request.url.path,
                                        params=request.query_params, headers=headers,
                                        content=await request.body())
            response = Response(answer.content, answer.status_code)
            response.raw_headers = [(k, v) for k, v in answer.headers.raw
                                    if k.decode().lower() not in HOP_BY_HOP]
            response.headers["content-length"] = str(len(answer.content))
            return response

        app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
        async with running(app) as url:
            yield url


def operator_browser(proxy: str) -> httpx.AsyncClient:
    """The operator's browser, reaching the proxy from :data:`OPERATOR`."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=OPERATOR),
                             base_url=proxy, headers={"Host": "console.example"})


async def login_through(proxy: str) -> tuple[httpx.Response, str | None]:
    async with operator_browser(proxy) as browser:
        answer = await browser.post("/ui/login", params={"next": "/ui/tasks"},
                                    data={"token": TOKEN},
                                    headers={"Origin": PUBLIC, "Referer": f"{PUBLIC}/ui/login"})
        cookie = answer.headers.get("set-cookie")
        if answer.status_code != 303 or cookie is None:
            return answer, None
        # the cookie is Secure: a browser sends it back over https, here through the proxy
        value = cookie.split(";")[0]
        page = await browser.get("/ui/tasks", headers={"Cookie": value})
        return page, cookie


async def test_a_login_through_an_https_proxy_on_another_host_works_when_it_is_trusted(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                            insecure_open_admin=False, trusted_proxies=(f"{PROXY_HOST}/32",))
    async with running(create_app(settings)) as receiver, https_proxy(receiver) as proxy:
        page, cookie = await login_through(proxy)
        async with http_client(base_url=receiver) as direct:
            audit = (await direct.get("/audit", headers={
                "Authorization": f"Bearer {TOKEN}"})).json()["items"]
    assert page.status_code == 200
    assert cookie is not None
    assert "Secure" in cookie
    assert "HttpOnly" in cookie
    assert [(a["action"], a["actor"]) for a in audit] == [
        ("login", f"admin via login from {OPERATOR}")]


async def test_without_the_setting_forwarded_headers_are_ignored(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                            insecure_open_admin=False)
    async with running(create_app(settings)) as receiver, https_proxy(receiver) as proxy:
        refused, cookie = await login_through(proxy)
        # a client on this very host forging its address is not believed either
        async with http_client(base_url=receiver) as local:
            forged = {"Authorization": "Bearer wrong-but-long-enough-0123456789",
                      "X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
            assert (await local.get("/jobs", headers=forged)).status_code == 401
            audit = (await local.get("/audit", headers={
                "Authorization": f"Bearer {TOKEN}"})).json()["items"]
    assert refused.status_code == 403
    assert "Log in from this site" in refused.text
    assert cookie is None
    assert [a["actor"] for a in audit] == ["unknown via token from 127.0.0.1"]


async def test_a_peer_that_is_not_a_trusted_proxy_cannot_forge_its_address(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                            insecure_open_admin=False, trusted_proxies=(f"{PROXY_HOST}/32",))
    async with running(create_app(settings)) as receiver:
        async with operator_browser(receiver) as stranger:
            await stranger.get("/jobs", headers={
                "Authorization": "Bearer wrong-but-long-enough-0123456789",
                "X-Forwarded-For": "198.51.100.7"})
        async with http_client(base_url=receiver) as local:
            audit = (await local.get("/audit", headers={
                "Authorization": f"Bearer {TOKEN}"})).json()["items"]
    assert [a["actor"] for a in audit] == [f"unknown via token from {OPERATOR}"]


def test_the_client_is_the_rightmost_address_no_trusted_proxy_added() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "fd00::/8"])
    assert forwarded_client(["198.51.100.7"], trusted) == "198.51.100.7"
    # a client forging a first hop is still found by what the trusted proxies added
    assert forwarded_client(["6.6.6.6", "198.51.100.7", "10.1.2.3"], trusted) == "198.51.100.7"
    assert forwarded_client(["10.0.0.9", "10.1.2.3"], trusted) == "10.0.0.9"
    assert forwarded_client([], trusted) is None
    assert forwarded_client(["6.6.6.6", "198.51.100.7"], TrustedProxies(["*"])) == "6.6.6.6"
    assert "::ffff:10.0.0.1" in trusted
    assert "fd00::1" in trusted
    assert "11.0.0.1" not in trusted
    assert "unix-socket" not in trusted
    assert not TrustedProxies([])


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ()),
    ({"RECEIVER_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"}, ("10.0.0.0/8", "192.0.2.1/32")),
    ({"FORWARDED_ALLOW_IPS": "*"}, ("*",)),
    ({"FORWARDED_ALLOW_IPS": "*", "RECEIVER_TRUSTED_PROXIES": "fd00::/8"}, ("fd00::/8",)),
])
def test_the_setting_and_uvicorns_name_for_it(env: dict[str, str],
                                              expected: tuple[str, ...]) -> None:
    assert load({"SONIC_WEBHOOK_SECRET": "s", **env}).trusted_proxies == expected


@pytest.mark.parametrize(("env", "where"), [
    ({"RECEIVER_TRUSTED_PROXIES": "10.0.0.0/33"}, "RECEIVER_TRUSTED_PROXIES"),
    ({"FORWARDED_ALLOW_IPS": "proxy.local"}, "FORWARDED_ALLOW_IPS"),
    ({"RECEIVER_TRUSTED_PROXIES": " , "}, "RECEIVER_TRUSTED_PROXIES"),
])
def test_a_bad_proxy_setting_stops_start_up_naming_it(env: dict[str, str], where: str) -> None:
    with pytest.raises(SettingsError, match=f"^{where}: "):
        load({"SONIC_WEBHOOK_SECRET": "s", **env})


def test_the_config_file_sets_it_too(tmp_path: Path) -> None:
    config = tmp_path / "receiver.toml"
    config.write_text('[receiver]\ntrusted_proxies = ["10.0.0.0/8"]\n')
    assert load({"SONIC_WEBHOOK_SECRET": "s"}, config_file=config).trusted_proxies == (
        "10.0.0.0/8",)
    config.write_text('[receiver]\ntrusted_proxies = ["nope"]\n')
    with pytest.raises(SettingsError, match=r"^receiver\.trusted_proxies"):
        load({"SONIC_WEBHOOK_SECRET": "s"}, config_file=config)
