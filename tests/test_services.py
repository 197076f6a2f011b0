"""The real peer services the tests start (tests/services.py) answer as the real thing:
PostgreSQL through psycopg, moto's S3 over signed HTTP, Chromium through Playwright."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from playwright.async_api import Browser, expect
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from receiver.server import running
from tests.services import PostgresServer, S3Server, fresh_database, unavailable
from tests.support import http_client

pytestmark = pytest.mark.anyio


@pytest.mark.postgres
async def test_postgres_answers_in_a_fresh_database(pg_dsn: str) -> None:
    """pg_dsn is a new, empty database of the throwaway cluster, reached with psycopg async."""
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cursor = await conn.execute("SELECT 1, current_database(), current_setting('fsync')")
        assert await cursor.fetchone() == (1, pg_dsn.rsplit("/", 1)[1], "off")
        cursor = await conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        assert await cursor.fetchone() == (0,)


@pytest.mark.postgres
def test_a_test_database_is_dropped_after_it_even_with_a_connection_open(
    pg_server: PostgresServer,
) -> None:
    """fresh_database (behind pg_dsn) drops its database, whatever the test left connected."""

    def databases() -> set[str]:
        with psycopg.connect(pg_server.admin_dsn) as conn:
            return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}

    with fresh_database(pg_server) as dsn:
        name = dsn.rsplit("/", 1)[1]
        assert name in databases()
        left_open = psycopg.connect(dsn)
    with left_open:
        assert name not in databases()
        with pytest.raises(psycopg.OperationalError):
            left_open.execute("SELECT 1")


@pytest.mark.parametrize(("ci", "outcome"), [
    ("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_service_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException],
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no PostgreSQL here"):
        unavailable("no PostgreSQL here")


def _signed(server: S3Server, method: str, url: str, body: bytes = b"") -> dict[str, str]:
    """SigV4 headers, as an S3 client library would send them (moto only checks that they are
    there, but the test then exercises the request a real store would see)."""
    request = AWSRequest(method=method, url=url, data=body)
    credentials = Credentials(server.access_key_id, server.secret_access_key)
    S3SigV4Auth(credentials, "s3", server.region).add_auth(request)
    return {str(k): str(v) for k, v in request.headers.items()}


@pytest.mark.s3
async def test_s3_stores_and_returns_an_object(s3_server: S3Server, s3_bucket: str) -> None:
    """A signed PUT then GET gives the same bytes back; an anonymous GET is refused."""
    url = f"{s3_server.endpoint_url}/{s3_bucket}/songs/a.txt"
    body = b"a song's bytes\x00\xff"
    async with http_client() as client:
        put = await client.put(url, content=body, headers=_signed(s3_server, "PUT", url, body))
        assert put.status_code == 200
        got = await client.get(url, headers=_signed(s3_server, "GET", url))
        assert got.status_code == 200
        assert got.content == body
        assert (await client.get(url)).status_code == 403


PAGE = """<!doctype html>
<html><head><title>services</title></head>
<body style="font: 20px sans-serif">
  <p id="status">waiting</p>
  <button onclick="document.getElementById('status').textContent = 'clicked'">Press</button>
</body></html>"""


async def _page(_: object) -> HTMLResponse:
    return HTMLResponse(PAGE)


@pytest.mark.browser
async def test_browser_sees_a_click_change_the_page(browser: Browser, screenshots: Path) -> None:
    """Chromium loads a page served by uvicorn on loopback; a click changes its text."""
    async with running(Starlette(routes=[Route("/", _page)])) as base:
        page = await browser.new_page()
        await page.goto(base)
        status = page.locator("#status")
        await expect(status).to_have_text("waiting")
        await page.get_by_role("button", name="Press").click()
        await expect(status).to_have_text("clicked")
        shot = screenshots / "services-click.png"
        await page.screenshot(path=shot)
        assert shot.read_bytes().startswith(b"\x89PNG")
