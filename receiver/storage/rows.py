"""Rows to records: one reader per kind of row, shared by the storage logic
(:mod:`receiver.storage.store`) and the console's queries (:mod:`receiver.storage.admin`). A
row's columns are in the order of the matching ``*_COLUMNS`` of
:mod:`receiver.storage.statements`."""

from __future__ import annotations

import json

import orjson

from receiver.jobs import Job, JobState
from receiver.models import (
    ChildState,
    ChildTask,
    Clip,
    Outcome,
    Source,
    StoredDelivery,
    StoredFile,
    Task,
    Transition,
)
from receiver.states import Entity, State
from receiver.storage.connector import Row


def delivery(row: Row) -> StoredDelivery:
    return StoredDelivery(delivery_id=row[0], source=Source(row[1]), scheme=row[2],
                          event=row[3], task_id=row[4], outcome=Outcome(row[5]), reason=row[6],
                          received_at=row[7])


def task(row: Row) -> Task:
    return Task(task_id=row[0], state=State(row[1]), platform=row[2], error=row[3],
                first_seen_at=row[4], updated_at=row[5], last_event_at=row[6],
                last_delivery_id=row[7], task_type=row[8], parent_task_id=row[9])


def clip(row: Row) -> Clip:
    return Clip(task_id=row[0], clip_id=row[1], state=State(row[2]), title=row[3], tags=row[4],
                lyrics=row[5], audio_url=row[6], image_url=row[7], video_url=row[8],
                duration=row[9], mv=row[10], created_at=row[11], updated_at=row[12],
                data=json.loads(row[13]))


def transition(row: Row) -> Transition:
    return Transition(task_id=row[0], entity=Entity(row[1]), entity_id=row[2],
                      from_state=State(row[3]) if row[3] else None, to_state=State(row[4]),
                      delivery_id=row[5], source=Source(row[6]), at=row[7])


def job(row: Row) -> Job:
    return Job(id=row[0], key=row[1], handler=row[2], route=row[3], options=orjson.loads(row[4]),
               task_id=row[5], trigger=row[6], delivery_id=row[7], state=JobState(row[8]),
               attempts=row[9], max_attempts=row[10], run_after=row[11], lease_owner=row[12],
               lease_expires_at=row[13], last_error=row[14], created_at=row[15],
               updated_at=row[16])


def child(row: Row) -> ChildTask:
    return ChildTask(trigger_key=row[0], parent_task_id=row[1], root_task_id=row[2],
                     rule=row[3], depth=row[4], task_type=row[5], credits=row[6],
                     request=json.loads(row[7]), child_task_id=row[8],
                     state=ChildState(row[9]), error=row[10], created_at=row[11],
                     updated_at=row[12])


def file(row: Row) -> StoredFile:
    return StoredFile(task_id=row[0], clip_id=row[1], kind=row[2], path=row[3], size=row[4],
                      sha256=row[5], url=row[6], content_type=row[7], job_key=row[8],
                      created_at=row[9])
