"""The in-memory twin of :class:`receiver.store.SQLiteStore`, for unit tests of code that
needs a store but not a file. It runs the same :func:`receiver.recording.record`, and the
store contract tests run against both, so the twin cannot drift from the real engine.

A transaction works on a copy of the state and swaps it in on success: all or nothing, like
the real one.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from receiver.models import (
    Clip,
    Delivery,
    Outcome,
    RecordResult,
    StoredDelivery,
    Task,
    TaskView,
    Transition,
)
from receiver.payloads import ClipReport
from receiver.recording import record
from receiver.states import State


@dataclass
class _Tables:
    deliveries: dict[str, tuple[StoredDelivery, Delivery]] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    clips: dict[tuple[str, str], Clip] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)


class MemoryStore:
    """A :class:`receiver.store.Store` held in dicts."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTransaction]:
        async with self._lock:
            work = copy.copy(self._tables)
            work.deliveries = dict(work.deliveries)
            work.tasks = dict(work.tasks)
            work.clips = dict(work.clips)
            work.transitions = list(work.transitions)
            yield MemoryTransaction(work)
            self._tables = work

    async def record_delivery(self, delivery: Delivery) -> RecordResult:
        async with self.transaction() as tx:
            return await record(tx, delivery)

    async def get_task(self, task_id: str) -> TaskView | None:
        tables = self._tables
        task = tables.tasks.get(task_id)
        if task is None:
            return None
        clips = sorted(
            (c for (t, _), c in tables.clips.items() if t == task_id),
            key=lambda c: (c.created_at or "", c.clip_id),
        )
        history = tuple(t for t in tables.transitions if t.task_id == task_id)
        return TaskView(task=task, clips=tuple(clips), transitions=history)

    async def check_writable(self) -> None:
        return None

    async def counts(self) -> Mapping[str, int]:
        t = self._tables
        return {
            "deliveries": len(t.deliveries),
            "tasks": len(t.tasks),
            "clips": len(t.clips),
            "transitions": len(t.transitions),
        }

    async def close(self) -> None:
        return None


class MemoryTransaction:
    def __init__(self, tables: _Tables) -> None:
        self._t = tables

    async def find_delivery(self, delivery_id: str) -> StoredDelivery | None:
        found = self._t.deliveries.get(delivery_id)
        return found[0] if found else None

    async def insert_delivery(
        self, delivery: Delivery, *, outcome: Outcome, task_id: str | None, reason: str | None
    ) -> None:
        stored = StoredDelivery(
            delivery_id=delivery.delivery_id,
            source=delivery.source,
            scheme=delivery.scheme,
            event=delivery.event,
            task_id=task_id,
            outcome=outcome,
            reason=reason,
            received_at=delivery.received_at,
        )
        self._t.deliveries[delivery.delivery_id] = (stored, delivery)

    async def task_for_clips(self, clip_ids: Sequence[str]) -> str | None:
        wanted = set(clip_ids)
        return next((t for (t, c) in self._t.clips if c in wanted), None)

    async def task_state(self, task_id: str) -> State | None:
        task = self._t.tasks.get(task_id)
        return task.state if task else None

    async def clip_states(self, task_id: str) -> Mapping[str, State]:
        return {c: clip.state for (t, c), clip in self._t.clips.items() if t == task_id}

    async def upsert_task(
        self,
        task_id: str,
        *,
        state: State,
        platform: str | None,
        error: str | None,
        delivery_id: str,
        at: float,
    ) -> None:
        old = self._t.tasks.get(task_id)
        if old is None:
            self._t.tasks[task_id] = Task(
                task_id=task_id,
                state=state,
                platform=platform,
                error=error,
                first_seen_at=at,
                updated_at=at,
                last_event_at=at,
                last_delivery_id=delivery_id,
            )
            return
        self._t.tasks[task_id] = replace(
            old,
            state=state,
            updated_at=old.updated_at if old.state == state else at,
            platform=platform or old.platform,
            error=error or old.error,
            last_event_at=max(old.last_event_at, at),
            last_delivery_id=delivery_id,
        )

    async def upsert_clips(
        self, task_id: str, clips: Sequence[tuple[ClipReport, State]], *, at: float
    ) -> None:
        for report, state in clips:
            old = self._t.clips.get((task_id, report.clip_id))

            def pick(new: str | None, previous: str | None) -> str | None:
                return new if new is not None else previous

            self._t.clips[(task_id, report.clip_id)] = Clip(
                task_id=task_id,
                clip_id=report.clip_id,
                state=state,
                title=pick(report.title, old.title if old else None),
                tags=pick(report.tags, old.tags if old else None),
                lyrics=pick(report.lyrics, old.lyrics if old else None),
                audio_url=pick(report.audio_url, old.audio_url if old else None),
                image_url=pick(report.image_url, old.image_url if old else None),
                video_url=pick(report.video_url, old.video_url if old else None),
                duration=report.duration if report.duration is not None else (
                    old.duration if old else None
                ),
                mv=pick(report.mv, old.mv if old else None),
                created_at=pick(report.created_at, old.created_at if old else None),
                updated_at=at,
                data=dict(report.raw),
            )

    async def insert_transitions(self, transitions: Sequence[Transition]) -> None:
        seen = {(t.task_id, t.entity, t.entity_id, t.to_state) for t in self._t.transitions}
        for t in transitions:
            key = (t.task_id, t.entity, t.entity_id, t.to_state)
            if key in seen:
                # the UNIQUE constraint of the SQLite schema
                raise ValueError(f"transition {key} recorded twice")
            seen.add(key)
            self._t.transitions.append(t)
