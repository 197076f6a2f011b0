"""Jobs: one handler run owed for one transition, written in the transaction that recorded the
transition, and worked off by :mod:`receiver.worker`.

States: ``queued → running → done``, or ``running → retrying → running ...`` until the last
attempt fails (``dead``, kept with its error). A ``running`` job whose lease has expired (its
worker died) is claimable again. Each job has a unique ``key`` (task, trigger, route,
handler), so a duplicate delivery never creates a second one; handlers use the key to make
their effects idempotent.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from receiver.errors import ReceiverError


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    DEAD = "dead"


class AttemptOutcome(StrEnum):
    """How one run of a job ended (its row in the job's attempt log)."""

    DONE = "done"
    RETRY = "retry"  # failed, retried after a backoff; the attempt counts
    LATER = "later"  # postponed by the handler; the attempt does not count
    DEAD = "dead"
    RELEASED = "released"  # handed back by a worker that stopped
    LOST = "lost"  # its worker died or lost the lease; another worker took the job over


CLAIMABLE = frozenset({JobState.QUEUED, JobState.RETRYING})
FINISHED = frozenset({JobState.DONE, JobState.DEAD})


# Handlers at once, per worker: a handler mostly waits on the network, a slot is a coroutine,
# and it also bounds how many jobs one claim takes (scripts/benchmarks/README.md, dispatch).
DEFAULT_CONCURRENCY = 16


class Retry(ReceiverError):
    """The handler asks to run again in ``after`` seconds. ``counted`` (the default): this
    attempt failed and counts against the job's attempts, and past the last one the job dies
    with this message. Not counted: the handler waits for something and nothing failed; the
    attempt is given back, so a wait must end by itself (a deadline of the handler's own)."""

    def __init__(self, message: str = "", *, after: float, counted: bool = True) -> None:
        self.after = max(0.0, float(after))
        self.counted = counted
        super().__init__(message or f"retry in {self.after:g}s")


class PermanentError(ReceiverError):
    """The handler cannot succeed, whatever the number of attempts: the job dies at once."""


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """A job to create, as routing plans it."""

    key: str
    handler: str
    route: str
    options: Mapping[str, Any]
    task_id: str
    trigger: str
    delivery_id: str | None
    max_attempts: int
    waits_for: tuple[str, ...] = ()  # handlers whose jobs of the same task run first
    wait_s: float = 0.0  # how long at most, from the job's creation


@dataclass(frozen=True, kw_only=True)
class Job:
    id: int
    key: str
    handler: str
    route: str
    options: Mapping[str, Any] = field(repr=False)
    task_id: str
    trigger: str
    delivery_id: str | None
    state: JobState
    attempts: int
    max_attempts: int
    run_after: float
    lease_owner: str | None
    lease_expires_at: float | None
    last_error: str | None
    created_at: float
    updated_at: float
    waits_for: tuple[str, ...] = ()
    wait_until: float | None = None
    runs: int = 0  # claims so far; the current run's row in the attempt log has this number


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How many attempts a job gets and how long to wait after each failure.

    The wait after attempt *n* is ``schedule[n-1]`` (the last entry repeats), spread by
    ``± jitter`` (a fraction) so that jobs failing together do not retry together.
    """

    max_attempts: int = 5
    schedule: Sequence[float] = (2.0, 10.0, 60.0, 300.0)
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        base = self.schedule[min(max(attempt, 1), len(self.schedule)) - 1]
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1.0 + spread))

    def gives_up(self, attempt: int) -> bool:
        return attempt >= self.max_attempts


def job_key(task_id: str, trigger: str, route: str, handler: str, index: int) -> str:
    """The idempotency key of a job: one per (transition, route, handler position)."""
    suffix = f"#{index}" if index else ""
    return f"{task_id}/{trigger}/{route}/{handler}{suffix}"
