"""Shared fixtures: async tests run on asyncio through anyio's pytest plugin; real peer
services (PostgreSQL, an S3-compatible server, Chromium) come from ``tests/services.py``."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright
from playwright.async_api import Error as PlaywrightError

from tests.services import (
    CHROMIUM_ARGS,
    PostgresServer,
    S3Server,
    ServiceUnavailable,
    chromium_executable,
    fresh_database,
    running_postgres,
    running_s3,
    unavailable,
)

# tests using these fixtures get the marker, so `pytest -m "not browser"` leaves them out
SERVICE_MARKERS = {"pg_server": "postgres", "s3_server": "s3", "chromium": "browser"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        for fixture, marker in SERVICE_MARKERS.items():
            if fixture in names:
                item.add_marker(marker)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for the whole session (``admin_dsn`` is its superuser)."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_postgres())
        except ServiceUnavailable as exc:
            unavailable(f"PostgreSQL unavailable: {exc}")
        yield server


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh, empty database for this test, dropped after it."""
    with fresh_database(pg_server) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3-compatible server for the whole session (``endpoint_url``, ``env``)."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_s3())
        except ServiceUnavailable as exc:
            unavailable(f"S3 server (moto) unavailable: {exc}")
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on ``s3_server`` for this test."""
    name = f"test-{secrets.token_hex(8)}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium executable, checked once."""
    try:
        return chromium_executable()
    except ServiceUnavailable as exc:
        unavailable(f"Chromium unavailable: {exc}")


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    """A headless Chromium driven by Playwright's async API, for one test.

    Launched per test (a fraction of a second): a session-wide async fixture would make anyio
    run every later test of the session in one shared event loop.
    """
    async with async_playwright() as playwright:
        try:
            launched = await playwright.chromium.launch(
                executable_path=chromium, headless=True, args=list(CHROMIUM_ARGS))
        except PlaywrightError as exc:
            unavailable(f"Chromium at {chromium} did not start: {exc.message}")
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Path:
    """``test-results/screenshots/`` (git-ignored), where browser tests leave what they saw."""
    folder = Path(request.config.rootpath) / "test-results" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
