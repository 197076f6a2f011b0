"""Parsing callback bodies: every variant UPSTREAM.md lists, and unusable bodies named; and the
one clip reader's rules, checked on a webhook's clip and on a get-music answer's alike."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.clips import ClipReport, parse_duration
from receiver.errors import PayloadError
from receiver.payloads import parse_callback
from receiver.sonic.contract import Model
from receiver.sonic.errors import SonicProtocolError
from receiver.sonic.responses import Music
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
        # deeper than Python's parser can walk: what is wrong first is the depth, balanced
        # (valid JSON) or not
        (b"[" * 100_000, "body nests deeper than 64 levels"),
        (b'{"task_id": "t", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
         "body nests deeper than 64 levels"),
        (b'{"task_id": "t", "x": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
         "body nests deeper than 64 levels"),
    ],
)
def test_unusable_bodies_say_what_is_wrong(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_callback(body)
    assert caught.value.message == reason


# ---- the one clip reader: a webhook's clip and a get-music answer's, by the same rules ---------


def in_webhook(item: dict[str, Any]) -> ClipReport:
    return parse_callback(json.dumps({"task_id": "t", "data": [item]}).encode()).clips[0]


def in_answer(item: dict[str, Any]) -> ClipReport:
    return Music.from_json({"code": 200, "message": "success", "data": [item]}).clips[0]


both_shapes = pytest.mark.parametrize("read", [in_webhook, in_answer], ids=["webhook", "get-music"])


@both_shapes
@pytest.mark.parametrize(
    ("spelling", "state"),
    [("pending", State.PENDING), ("running", State.RUNNING), ("succeeded", State.SUCCEEDED),
     ("failed", State.FAILED), ("queued", State.PENDING), ("submitted", State.PENDING),
     ("streaming", State.RUNNING), ("processing", State.RUNNING),
     ("complete", State.SUCCEEDED), ("completed", State.SUCCEEDED),
     ("success", State.SUCCEEDED), ("error", State.FAILED), (" Completed ", State.SUCCEEDED),
     ("SUCCESS", State.SUCCEEDED), ("Error\n", State.FAILED), ("done", None), ("", None)],
)
def test_states_and_their_spellings_read_alike_in_any_case(
    read: Callable[[dict[str, Any]], ClipReport], spelling: str, state: State | None
) -> None:
    assert read({"clip_id": "c", "state": spelling}).state is state
    assert read({"clip_id": "c", "status": spelling}).state is state  # the older name


@both_shapes
def test_a_state_the_reader_does_not_know_gives_way_to_the_status_it_knows(
    read: Callable[[dict[str, Any]], ClipReport],
) -> None:
    assert read({"clip_id": "c", "state": "done", "status": "success"}).state is State.SUCCEEDED


@both_shapes
@pytest.mark.parametrize(
    ("value", "expected"),
    [("104.88", 104.88), (" 7 ", 7.0), (99, 99.0), (0, 0.0), ("-1", None), (-0.5, None),
     ("nan", None), ("inf", None), (math.inf, None), (math.nan, None), ("abc", None),
     (True, None), ([1], None)],
)
def test_durations_may_be_strings_and_unusable_ones_are_unknown(
    read: Callable[[dict[str, Any]], ClipReport], value: object, expected: float | None
) -> None:
    clip = read({"clip_id": "c", "duration": value})
    assert clip.duration == expected
    assert strictly_serialisable(dict(clip.raw))


@both_shapes
def test_weights_may_be_strings_and_non_finite_ones_are_unknown(
    read: Callable[[dict[str, Any]], ClipReport],
) -> None:
    clip = read({"clip_id": "c", "style_weight": " 0.5", "weirdnessConstraint": -0.25})
    assert (clip.style_weight, clip.weirdness_constraint) == (0.5, -0.25)
    clip = read({"clip_id": "c", "style_weight": "nan", "weirdness_constraint": math.inf})
    assert (clip.style_weight, clip.weirdness_constraint) == (None, None)


PLACEHOLDER_URLS = ["", "None", "null", "NULL", " none ", "https://cdn.example/None.mp3",
                    "https://cdn.example/a/null.png?size=2", "http://cdn/x/None.wav#t=1",
                    "None.mp4"]


@both_shapes
@pytest.mark.parametrize("url", [*PLACEHOLDER_URLS, None])
@pytest.mark.parametrize("name", ["audio_url", "image_url", "video_url"])
def test_null_and_placeholder_urls_are_absent(
    read: Callable[[dict[str, Any]], ClipReport], name: str, url: str | None
) -> None:
    clip = read({"clip_id": "c", "state": "error", name: url})
    assert getattr(clip, name) is None
    assert clip.raw[name] == url  # kept as it came


@both_shapes
@pytest.mark.parametrize(
    "url",
    ["https://cdn.example/Nonesuch.mp3", "https://cdn.example/None/a.mp3",
     "https://null.example/a.mp3", "https://cdn.example/a.mp3?f=None.mp3"],
)
def test_a_url_only_looking_like_a_placeholder_is_kept(
    read: Callable[[dict[str, Any]], ClipReport], url: str
) -> None:
    assert read({"clip_id": "c", "audio_url": url}).audio_url == url


@both_shapes
def test_none_and_null_are_absent_in_machine_fields_and_kept_in_prose(
    read: Callable[[dict[str, Any]], ClipReport],
) -> None:
    clip = read({"clip_id": "c", "created_at": "None", "mv": "null", "error_message": "None",
                 "title": "None", "lyrics": "null", "tags": ""})
    assert (clip.created_at, clip.mv, clip.error_message) == (None, None, None)
    assert (clip.title, clip.lyrics, clip.tags) == ("None", "null", None)


CAMEL = {"clipId": "c1", "audioUrl": "https://cdn/a.mp3", "imageUrl": "https://cdn/a.png",
         "videoUrl": "https://cdn/a.mp4", "createdAt": "2026-01-01T00:00:00Z",
         "errorMessage": "lyrics rejected", "modelName": "chirp-v5", "negativeTags": "folk",
         "gptDescriptionPrompt": "rain", "styleWeight": "0.5", "state": "failed"}


@both_shapes
def test_camel_case_twins_are_read_when_snake_case_is_absent(
    read: Callable[[dict[str, Any]], ClipReport],
) -> None:
    clip = read(CAMEL)
    assert clip.clip_id == "c1"
    assert (clip.audio_url, clip.image_url, clip.video_url) == (
        "https://cdn/a.mp3", "https://cdn/a.png", "https://cdn/a.mp4")
    assert (clip.created_at, clip.error_message) == ("2026-01-01T00:00:00Z", "lyrics rejected")
    assert (clip.mv, clip.model) == ("chirp-v5", Model.SONIC_V5)
    assert (clip.negative_tags, clip.gpt_description_prompt, clip.style_weight) == (
        "folk", "rain", 0.5)
    assert dict(clip.raw) == CAMEL  # every field kept under the name it came with
    assert read({"id": 7}).clip_id == "7"


@both_shapes
def test_snake_case_wins_when_both_twins_give_a_value(
    read: Callable[[dict[str, Any]], ClipReport],
) -> None:
    snake = {"clip_id": "s", "audio_url": "https://cdn/s.mp3", "created_at": "s-time",
             "error_message": "s-why", "model_name": "sonic-v4"}
    clip = read({**CAMEL, **snake, "id": "other"})
    assert (clip.clip_id, clip.audio_url, clip.created_at, clip.error_message, clip.mv) == (
        "s", "https://cdn/s.mp3", "s-time", "s-why", "sonic-v4")
    # a snake_case placeholder gives no value: the twin's is taken
    clip = read({**CAMEL, "audio_url": "https://cdn.example/None.mp3", "clip_id": " "})
    assert (clip.clip_id, clip.audio_url) == ("c1", "https://cdn/a.mp3")


def test_a_failure_reason_may_come_in_camel_case() -> None:
    body = {"task_id": "t", "data": [{"clipId": "c", "state": "error", "errorMessage": "nsfw",
                                      "audioUrl": "https://cdn.example/None.mp3"}]}
    cb = parse_callback(json.dumps(body).encode())
    assert (cb.failure, cb.reported_states()) == ("nsfw", {"c": State.FAILED})


@both_shapes
def test_both_shapes_read_the_same_clip(read: Callable[[dict[str, Any]], ClipReport]) -> None:
    item = {**CAMEL, "duration": "104.88", "title": "Rain", "x": [1, {"y": None}]}
    assert read(item) == in_webhook(item)


@pytest.mark.parametrize(
    ("data", "reason"),
    [([{"title": "no id"}], "data[0] has no clip_id"),
     ([{"clip_id": "None "}, {"clipId": "None"}], "data lists the same clip_id twice"),
     ([[]], "data[0] is a JSON array, not a clip object"),
     (7, "data is a JSON number, not a list of clips")],
)
def test_an_unusable_clip_is_a_payload_error_in_a_webhook_and_a_protocol_error_in_an_answer(
    data: object, reason: str
) -> None:
    with pytest.raises(PayloadError) as webhook:
        parse_callback(json.dumps({"task_id": "t", "data": data}).encode())
    with pytest.raises(SonicProtocolError) as answer:
        Music.from_json({"code": 200, "data": data})
    assert webhook.value.message == reason
    assert answer.value.message == f"get-music answer: {reason}"


def test_an_answer_is_cleaned_as_a_body_is_and_too_deep_is_a_protocol_error() -> None:
    music = Music.from_json({"code": 200, "n": 10**5000, "x": (math.nan, "\ud800"), 3: "k",
                             "data": [{"clip_id": "c", "title": "a\ud800", "d": math.inf}]})
    assert dict(music.raw) == {"code": 200, "n": None, "x": [None, None],
                               "data": [{"clip_id": "c", "title": None, "d": None}]}
    assert strictly_serialisable(dict(music.raw))
    deep: object = []
    for _ in range(70):
        deep = [deep]
    with pytest.raises(SonicProtocolError, match="nests deeper than 64 levels"):
        Music.from_json({"data": [], "x": deep})


# ---- validly signed garbage: every class the fuzzer found, read without raising ---------------


def strictly_serialisable(value: object) -> bool:
    """What the store and the read API need: JSON without NaN, encodable as UTF-8."""
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    return True


def test_an_integer_past_pythons_digit_limit_is_dropped_not_raised() -> None:
    huge = "1" * 5000
    cb = parse_callback(f'{{"task_id": {huge}, "x": [{huge}]}}'.encode(), task_id_hint="q-1")
    assert cb.task_id == "q-1"  # the body's id is unusable: the query's is taken
    cb = parse_callback(f'{{"task_id": "t", "data": [{{"id": {huge}, "clip_id": "c"}}]}}'.encode())
    assert cb.clips[0].raw["id"] is None
    assert strictly_serialisable(dict(cb.clips[0].raw))
    with pytest.raises(PayloadError, match="no task_id"):
        parse_callback(f'{{"task_id": -{huge}}}'.encode())


def test_an_integer_id_longer_than_an_id_is_not_an_id() -> None:
    long_id = "9" * 300
    with pytest.raises(PayloadError, match="data\\[0\\] has no clip_id"):
        parse_callback(f'{{"task_id": "t", "data": [{{"clip_id": {long_id}}}]}}'.encode())


@pytest.mark.parametrize("field", ["title", "tags", "lyrics", "audio_url", "image_url",
                                   "video_url", "mv", "created_at", "state", "error_message"])
def test_a_lone_surrogate_in_a_clip_field_drops_that_field(field: str) -> None:
    body = f'{{"task_id": "t", "data": [{{"clip_id": "c", "{field}": "a\\ud800b"}}]}}'
    cb = parse_callback(body.encode())
    clip = cb.clips[0]
    assert clip.raw[field] is None
    assert getattr(clip, field, None) is None
    assert strictly_serialisable(dict(clip.raw))


@pytest.mark.parametrize(
    "body",
    [
        b'{"task_id": "\\ud800", "data": [{"clip_id": "c"}]}',
        b'{"task_id": "t\\udfff", "data": [{"clip_id": "c"}]}',
        b'{"task_id": "\\uDBFF\\uDBFF", "data": [{"clip_id": "c"}]}',
    ],
)
def test_a_lone_surrogate_in_the_task_id_makes_it_unknown(body: bytes) -> None:
    assert parse_callback(body).task_id is None
    assert parse_callback(body, task_id_hint="q").task_id == "q"


def test_a_lone_surrogate_anywhere_else_is_dropped_and_a_pair_is_kept() -> None:
    body = (b'{"task_id": "t", "platform": "\\ud800", "message": "\\udc00", '
            b'"event": "\\ud800", "data": [{"clip_id": "\\ud800"}, {"clip_id": "c", '
            b'"\\ud800key": 1, "nested": {"k": ["\\udfff", "ok"]}, "pair": "\\ud83c\\udfb5"}]}')
    with pytest.raises(PayloadError, match="data\\[0\\] has no clip_id"):
        parse_callback(body)
    body = body.replace(b'{"clip_id": "\\ud800"}, ', b"")
    cb = parse_callback(body)
    assert (cb.platform, cb.message, cb.event) == (None, None, None)
    raw = dict(cb.clips[0].raw)
    assert raw == {"clip_id": "c", "nested": {"k": [None, "ok"]}, "pair": "\N{MUSICAL NOTE}"}
    assert strictly_serialisable(raw)


@pytest.mark.parametrize(
    ("code", "expected"),
    [(200, 200), ("200", 200), (" 404 ", 404), ("\u00b2", None), ("\u0663", None),
     ("9" * 5000, None), (10**20, None), (True, None), ("-1", None), (1.5, None)],
)
def test_code_is_a_bounded_number_or_ascii_digits(code: object, expected: int | None) -> None:
    assert parse_callback(json.dumps({"task_id": "t", "code": code}).encode()).code == expected


@pytest.mark.parametrize("value", [10**400, -(10**400), "1e400", "-inf", "Infinity"])
def test_durations_outside_the_float_range_are_unknown(value: object) -> None:
    assert parse_duration(value) is None


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
def test_non_finite_numbers_are_read_as_null(literal: bytes) -> None:
    body = b'{"task_id": "t", "data": [{"clip_id": "c", "duration": %s, "x": [%s]}]}' % (
        literal, literal)
    clip = parse_callback(body).clips[0]
    assert clip.duration is None
    assert dict(clip.raw) == {"clip_id": "c", "duration": None, "x": [None]}


def test_nesting_is_capped_below_anything_that_could_recurse_too_deep() -> None:
    from receiver.clips import MAX_DEPTH

    def nested(levels: int) -> bytes:  # the body object is level 1
        return b'{"task_id": "t", "x": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"

    assert parse_callback(nested(MAX_DEPTH)).task_id == "t"
    with pytest.raises(PayloadError) as caught:
        parse_callback(nested(MAX_DEPTH + 1))
    assert caught.value.message == f"body nests deeper than {MAX_DEPTH} levels"
    with pytest.raises(PayloadError, match="nests deeper"):
        parse_callback(b'{"task_id": "t", "x": ' + b'{"a": ' * 900 + b"1" + b"}" * 901)


def test_try_parse_never_raises_even_when_the_parser_has_a_bug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bug cannot be made on purpose through the input any more: one is planted instead.
    from receiver import payloads

    def broken(value: object) -> None:
        raise ZeroDivisionError

    monkeypatch.setattr(payloads, "read_clips", broken)
    callback, error = payloads.try_parse(b'{"task_id": "t", "data": [{"clip_id": "c"}]}')
    assert (callback, error) == (None, "internal error while parsing: ZeroDivisionError")


# ---- the fast reader (orjson) reads exactly what the careful one (json + cleaning) reads -------

_EDGES = [
    b'{"a": 9223372036854775807, "b": -9223372036854775808}',
    b'{"a": 18446744073709551615}',  # 20 digits: past int64, still uint64
    b'{"a": 123456789012345678901234}',  # past uint64: orjson would make it a float
    b'{"a": -9223372036854775809}',
    b'{"a": "12345678901234567890123"}',  # a long digit run in a string: careful path, same
    b'{"a": 1e308, "b": 1.7976931348623157e308, "c": 5e-324, "d": 1e-400, "e": -0.0}',
    b'{"a": 0.1, "b": 2.5e-3, "c": 1E+2, "d": 104.88}',
    b'{"a": 1, "a": 2}',
    b'{"a": "\\u00e9\\ud83c\\udfb5\\n\\"", "\\u00e9": "caf\xc3\xa9"}',
    b'{"x": ' + b"[" * 63 + b"]" * 63 + b"}",
    b'{"x": ' + b"[" * 64 + b"]" * 64 + b"}",
    b'{"x": "' + b"[" * 70 + b'"}',  # brackets in a string: walked, not refused
    b'  {"data": [{"clip_id": "c", "state": null, "k": [true, false, {}]}]}\n',
]


def _both(body: bytes) -> tuple[object, object]:
    from receiver import clips

    try:
        careful: object = clips._load(body.decode("utf-8"))
    except (PayloadError, UnicodeDecodeError) as exc:
        careful = type(exc)
    try:
        fast = clips._fast_load(body)
    except PayloadError as exc:
        fast = type(exc)
    return careful, (careful if fast is clips._SLOW else fast)


@pytest.mark.parametrize("body", _EDGES)
def test_the_fast_reader_reads_what_the_careful_one_reads(body: bytes) -> None:
    careful, fast = _both(body)
    assert repr(fast) == repr(careful)  # repr: 0.0 and -0.0, 1 and 1.0 differ


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_the_fast_reader_agrees_on_any_json_document(value: object) -> None:
    body = json.dumps({"v": value}, ensure_ascii=False).encode("utf-8", "surrogatepass")
    careful, fast = _both(body)
    assert repr(fast) == repr(careful)
