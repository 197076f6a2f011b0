"""Parsing callback bodies: every variant UPSTREAM.md lists, and unusable bodies named."""

from __future__ import annotations

import json

import pytest

from receiver.errors import PayloadError
from receiver.payloads import parse_callback, parse_duration
from receiver.states import State, WebhookEvent


def test_full_body_with_every_documented_field() -> None:
    body = {
        "code": 200, "message": "success", "task_id": "t-1", "platform": "sonic",
        "event": "song.completed",
        "data": [{"clip_id": "c1", "state": "succeeded", "title": "Starry", "tags": "pop",
                  "lyrics": "[Verse]", "image_url": "http://i", "audio_url": "http://a",
                  "video_url": None, "created_at": "2026-01-01T00:00:00Z", "mv": "chirp-v5",
                  "gpt_description_prompt": "x", "duration": "104.88",
                  "negative_tags": "folk", "style_weight": 0.5, "brand_new_field": [1, 2]}],
    }
    cb = parse_callback(json.dumps(body).encode())
    assert cb.task_id == "t-1"
    assert cb.platform == "sonic"
    assert cb.event is WebhookEvent.COMPLETED
    clip = cb.clips[0]
    assert clip.duration == pytest.approx(104.88)
    assert clip.mv == "chirp-v5"
    assert clip.raw["brand_new_field"] == [1, 2]  # unknown fields are kept


@pytest.mark.parametrize(
    ("value", "expected"),
    [(104.88, 104.88), (99, 99.0), ("104.88", 104.88), (" 7 ", 7.0), ("abc", None),
     (None, None), (True, None), ("nan", None), (-1, None), ([], None)],
)
def test_duration_is_a_number_or_a_decimal_string(value: object, expected: float | None) -> None:
    assert parse_duration(value) == expected


def test_task_id_platform_and_event_may_all_be_absent() -> None:
    cb = parse_callback(b'{"data": [{"clip_id": "c1", "state": "running"}]}')
    assert (cb.task_id, cb.platform, cb.event) == (None, None, None)
    assert cb.reported_states() == {"c1": State.RUNNING}


def test_task_id_from_the_query_when_the_body_has_none_and_body_wins_otherwise() -> None:
    assert parse_callback(b'{"data": []}', task_id_hint="q-1").task_id == "q-1"
    assert parse_callback(b'{"task_id": "b-1"}', task_id_hint="q-1").task_id == "b-1"


def test_event_header_wins_over_the_body_and_short_names_are_understood() -> None:
    cb = parse_callback(b'{"task_id": "t", "event": "song.streaming"}', event_header="completed")
    assert cb.event is WebhookEvent.COMPLETED
    assert parse_callback(b'{"task_id": "t", "event": "whatever"}').event is None


def test_a_clip_without_state_takes_the_state_its_event_implies() -> None:
    body = b'{"task_id": "t", "data": [{"clip_id": "c1"}, {"clip_id": "c2", "state": "error"}]}'
    cb = parse_callback(body, event_header="song.completed")
    assert cb.reported_states() == {"c1": State.SUCCEEDED, "c2": State.FAILED}


def test_numeric_task_and_clip_ids_and_string_code_are_accepted() -> None:
    cb = parse_callback(b'{"task_id": 42, "code": "200", "data": [{"id": 7}]}')
    assert (cb.task_id, cb.code, cb.clips[0].clip_id) == ("42", 200, "7")


def test_failure_reason_comes_from_the_clip_then_the_message() -> None:
    failed = b'{"task_id": "t", "message": "boom", "data": []}'
    assert parse_callback(failed, event_header="song.failed").failure == "boom"
    clip_error = b'{"task_id":"t","data":[{"clip_id":"c","state":"failed","error_message":"nsfw"}]}'
    assert parse_callback(clip_error).failure == "nsfw"
    assert parse_callback(b'{"task_id": "t"}', event_header="song.completed").failure is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe\x00", "body is not UTF-8"),
        (b"{not json", "body is not JSON"),
        (b"null", "body is a JSON null, not an object"),
        (b"[]", "body is a JSON array, not an object"),
        (b'"text"', "body is a JSON string, not an object"),
        (b'{"data": "x"}', "data is a JSON string, not a list of clips"),
        (b'{"data": [1]}', "data[0] is a JSON number, not a clip object"),
        (b'{"data": [{"title": "no id"}]}', "data[0] has no clip_id"),
        (b'{"data": [{"clip_id": "a"}, {"clip_id": "a"}]}', "data lists the same clip_id twice"),
        (b"{}", "no task_id (in the body or ?task_id=) and no clips"),
        (b'{"task_id": "", "data": []}', "no task_id (in the body or ?task_id=) and no clips"),
        (b"[" * 100_000, "body is not JSON"),
    ],
)
def test_unusable_bodies_say_what_is_wrong(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_callback(body)
    assert caught.value.message == reason
