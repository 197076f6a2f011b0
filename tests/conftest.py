"""The suite's plugins: the shared fixtures (the package ``tests/fixtures/``, one module per
concern) and pytest's own ``pytester``, which the check of the service markers runs a small
suite with. Async tests run on asyncio through anyio's pytest plugin."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "pytester",
    "tests.fixtures.markers",
    "tests.fixtures.services",
    "tests.fixtures.storage",
    "tests.fixtures.clock",
    "tests.fixtures.apps",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
