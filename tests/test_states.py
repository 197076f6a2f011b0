"""State rules: forward only, first terminal state wins, and the task aggregate."""

from __future__ import annotations

import pytest

from receiver.states import Entity, State, WebhookEvent, advances, plan, refreshes, task_state

P, R, S, F = State.PENDING, State.RUNNING, State.SUCCEEDED, State.FAILED


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [(None, P, True), (P, R, True), (R, S, True), (P, F, True), (R, P, False),
     (S, R, False), (S, F, False), (F, S, False), (S, S, False)],
)
def test_states_only_move_forward(current: State | None, new: State, expected: bool) -> None:
    assert advances(current, new) is expected


@pytest.mark.parametrize(
    ("clips", "event", "expected"),
    [
        ([], None, P),
        ([], WebhookEvent.STREAMING, R),
        ([], WebhookEvent.COMPLETED, S),
        ([S, S], WebhookEvent.FAILED, F),
        ([S, F], None, S),
        ([F, F], None, F),
        ([S, R], None, R),
        ([P, P], None, P),
        ([P, R], WebhookEvent.STREAMING, R),
    ],
)
def test_task_state_aggregates_clips_and_failed_events(
    clips: list[State], event: WebhookEvent | None, expected: State
) -> None:
    assert task_state(clips, event) is expected


def test_late_running_after_succeeded_makes_no_move_and_refreshes_nothing() -> None:
    change = plan(task_id="t", task_before=S, clips_before={"a": S, "b": S},
                  reported={"a": R, "b": R}, event=WebhookEvent.STREAMING)
    assert change.moves == ()
    assert change.refresh == frozenset()
    assert change.task_state is S


def test_the_other_terminal_state_arriving_late_changes_nothing() -> None:
    change = plan(task_id="t", task_before=S, clips_before={"a": S},
                  reported={"a": F}, event=WebhookEvent.FAILED)
    assert change.moves == ()
    assert change.task_state is S


def test_first_sight_of_a_finished_task_records_each_clip_and_the_task() -> None:
    change = plan(task_id="t", task_before=None, clips_before={},
                  reported={"a": S, "b": S}, event=WebhookEvent.COMPLETED)
    assert [(m.entity, m.entity_id, m.from_state, m.to_state) for m in change.moves] == [
        (Entity.CLIP, "a", None, S), (Entity.CLIP, "b", None, S), (Entity.TASK, "t", None, S)]


def test_same_state_report_refreshes_data_without_a_move() -> None:
    change = plan(task_id="t", task_before=R, clips_before={"a": R},
                  reported={"a": R}, event=WebhookEvent.STREAMING)
    assert change.moves == ()
    assert change.refresh == frozenset({"a"})


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [(None, P, True), (None, F, True), (P, P, True), (R, R, True), (S, S, True), (F, F, True),
     (P, R, True), (R, S, True), (R, F, True), (P, S, True),
     (R, P, False), (S, R, False), (F, P, False),
     # the other terminal state: same rank, yet never a refresh (the final URLs stay)
     (S, F, False), (F, S, False)],
)
def test_data_is_refreshed_by_the_same_or_a_later_state_only(
    current: State | None, new: State, expected: bool
) -> None:
    assert refreshes(current, new) is expected


def test_a_late_report_of_the_other_terminal_state_refreshes_no_clip() -> None:
    change = plan(task_id="t", task_before=S, clips_before={"a": S, "b": F},
                  reported={"a": F, "b": S}, event=None)
    assert change.refresh == frozenset()
    assert change.moves == ()
    assert change.task_state is S


def test_a_failed_event_fails_a_running_task_even_when_its_clips_report_success() -> None:
    change = plan(task_id="t", task_before=R, clips_before={"a": R},
                  reported={"a": S}, event=WebhookEvent.FAILED)
    assert change.task_state is F
    assert [(m.entity, m.from_state, m.to_state) for m in change.moves] == [
        (Entity.CLIP, R, S), (Entity.TASK, R, F)]
