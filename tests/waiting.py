"""Waiting for a condition with a deadline, never for a fixed time.

A test that needs something to have happened (a process answering, a log line written, a worker
idle, a file on disk) polls for it with :func:`wait_until` (or :func:`wait_until_blocking` in a
test that is not async): it goes on as soon as the condition holds and fails after ``within``
seconds naming ``what`` it waited for. A check may raise to fail at once (the process it waits
for has exited). A fixed sleep stays only where it is the behaviour under test (a client that
trickles bytes, a handler that holds its job), with a comment saying so.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


def _timed_out(what: str, within: float, detail: Callable[[], str] | None) -> AssertionError:
    message = f"timed out after {within:g} s waiting for {what}"
    return AssertionError(f"{message}\n{detail()}" if detail is not None else message)


async def wait_until(
    check: Callable[[], object | Awaitable[object]],
    *,
    within: float = 5.0,
    what: str = "the condition",
    every: float = 0.01,
    detail: Callable[[], str] | None = None,
) -> None:
    """Return once ``check()`` (awaited if it returns an awaitable) is true; raise
    AssertionError after ``within`` seconds, with ``detail()`` (a log's tail) when given."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise _timed_out(what, within, detail)
        await asyncio.sleep(every)


def wait_until_blocking(
    check: Callable[[], object],
    *,
    within: float = 5.0,
    what: str = "the condition",
    every: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> None:
    """:func:`wait_until` for a test that is not async (it blocks the thread between checks)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise _timed_out(what, within, detail)
        time.sleep(every)
