"""A test that needs PostgreSQL, S3 or Chromium carries its marker, or the run says so: checked
on small suites run by ``pytester`` with the project's fixture plugins, the session's services
replaced by stand-ins (nothing is started)."""

from __future__ import annotations

import pytest

CONFTEST = """
from pathlib import Path

import pytest

from tests.services import PostgresServer, S3Server

pytest_plugins = ["tests.fixtures.markers", "tests.fixtures.services", "tests.fixtures.storage"]


# stand-ins for the services: a test that gets this far would fail to reach them
@pytest.fixture(scope="session")
def _pg_cluster():
    return PostgresServer(host="127.0.0.1", port=1, socket_dir=Path("/nonexistent"))


@pytest.fixture(scope="session")
def _s3_service():
    return S3Server(endpoint_url="http://127.0.0.1:1")


@pytest.fixture(scope="session")
def _chromium_path():
    return Path("/nonexistent/chromium")


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""

INI = """
[pytest]
addopts = -p no:cacheprovider --strict-markers
markers =
    postgres: PostgreSQL
    s3: S3
    browser: Chromium
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    return pytester


@pytest.mark.parametrize(("fixture", "marker"), [
    ("pg_server", "postgres"), ("pg_dsn", "postgres"), ("s3_server", "s3"),
    ("s3_bucket", "s3"), ("chromium", "browser"), ("browser", "browser")])
def test_a_test_requesting_a_service_without_its_marker_stops_the_run(
    suite: pytest.Pytester, fixture: str, marker: str
) -> None:
    """Found at collection, before ``-m`` deselects anything: the run ends with the list."""
    suite.makepyfile(test_unmarked=f"""
        import pytest

        @pytest.fixture
        def through(request):  # another fixture in between is seen too
            return request

        def test_direct({fixture}):
            pass

        def test_through(through, {fixture}):
            pass

        @pytest.mark.{marker}
        def test_marked({fixture}):
            pass
        """)
    result = suite.runpytest("--collect-only", "-m", f"not {marker}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*tests that use a service must carry its marker:",
        f"*test_unmarked.py::test_direct: {fixture} (needs @pytest.mark.{marker})",
        f"*test_unmarked.py::test_through: {fixture} (needs @pytest.mark.{marker})",
    ])
    assert "test_marked" not in result.stderr.str()


# (``browser``, an async fixture, cannot be reached through getfixturevalue at all)
@pytest.mark.parametrize(("fixture", "marker"), [
    ("pg_server", "postgres"), ("pg_dsn", "postgres"), ("s3_server", "s3"),
    ("s3_bucket", "s3"), ("chromium", "browser")])
def test_a_service_reached_at_run_time_without_its_marker_fails_that_test(
    suite: pytest.Pytester, fixture: str, marker: str
) -> None:
    """``request.getfixturevalue`` escapes the collection: the fixture itself fails the test,
    before it reaches the service."""
    suite.makepyfile(test_dynamic=f"""
        def test_unmarked(request):
            request.getfixturevalue("{fixture}")
        """)
    result = suite.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"*test_dynamic.py::test_unmarked uses {fixture} without @pytest.mark.{marker}*"])


def test_a_marked_test_reaches_the_service_at_run_time(suite: pytest.Pytester) -> None:
    """With its marker, the same request gets the service."""
    suite.makepyfile(test_dynamic="""
        import pytest

        @pytest.mark.postgres
        def test_marked(request):
            assert request.getfixturevalue("pg_server").port == 1
        """)
    suite.runpytest().assert_outcomes(passed=1)


def test_the_postgresql_run_of_the_store_carries_the_marker(suite: pytest.Pytester) -> None:
    """The ``store`` fixture's PostgreSQL parameter is marked: ``-m "not postgres"`` keeps only
    the SQLite run, ``-m postgres`` only the PostgreSQL one."""
    suite.makepyfile(test_store="""
        def test_contract(store):
            pass
        """)
    suite.runpytest("--collect-only", "-q", "-m", "not postgres").stdout.fnmatch_lines([
        "test_store.py::test_contract[[]sqlite[]]", "*1/2 tests collected (1 deselected)*"])
    suite.runpytest("--collect-only", "-q", "-m", "postgres").stdout.fnmatch_lines([
        "test_store.py::test_contract[[]postgresql[]]", "*1/2 tests collected (1 deselected)*"])
