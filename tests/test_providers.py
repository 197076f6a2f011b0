"""Each provider's adapter (receiver/providers): its documented bodies read into the
receiver's callback (stages, failure codes and their categories, snake and camelCase,
placeholder and stream URLs), and how it authenticates a callback, or refuses one."""

from __future__ import annotations

import json

import pytest

from receiver.clock import FakeClock
from receiver.config import ProviderTable
from receiver.errors import VerificationError
from receiver.failures import FailureCategory
from receiver.providers import Adapter, Inbound
from receiver.providers.aimlapi import AimlapiAdapter
from receiver.providers.apibox import ApiboxAdapter
from receiver.providers.kie import KieAdapter
from receiver.providers.piapi import PiapiAdapter
from receiver.providers.registry import ADAPTERS
from receiver.providers.sunoapi import SunoapiAdapter
from receiver.signatures import Scheme, sign_kie, sign_standard
from receiver.states import State, WebhookEvent
from tests.provider_bodies import (
    AIMLAPI_SECRET,
    HMAC_KEY,
    PIAPI_SECRET,
    aimlapi,
    piapi,
    piapi_clip,
    providers_table,
    record_info,
    suno,
    suno_clip,
)

NOW = 1_800_000_000


def adapter(name: str, **table: object) -> Adapter:
    tables = providers_table(**{name: table})
    return ADAPTERS[name](tables.tables()[name], tolerance_s=300, clock=FakeClock(NOW))


SUNO = SunoapiAdapter(ProviderTable(), tolerance_s=300, clock=FakeClock(NOW))


# ---- sunoapi.org's shape ---------------------------------------------------------------------


def test_text_and_first_are_progress_with_stream_urls_and_complete_is_terminal() -> None:
    """text and first: the task and its clips running (first's clip playable by its stream
    URL while its audio_url is empty); complete: succeeded, the final audio, its duration,
    model, lyrics (prompt) and creation time."""
    text, _ = SUNO.parse(suno("text", clips=[suno_clip("a", audio="", stream="")]))
    assert text is not None
    assert text.event is WebhookEvent.STREAMING
    assert [(c.clip_id, c.state, c.audio_url) for c in text.clips] == [("a", State.RUNNING,
                                                                          None)]
    assert text.clips[0].lyrics == "[Verse] Night city lights shining bright"
    first, _ = SUNO.parse(suno("first", clips=[suno_clip("a", audio=""), suno_clip("b",
                                                                                  audio="")]))
    assert first is not None
    assert first.event is WebhookEvent.STREAMING
    assert [c.audio_url for c in first.clips] == ["http://cdn/stream/a", "http://cdn/stream/b"]
    done, _ = SUNO.parse(suno("complete", clips=[suno_clip("a"), suno_clip("b")]))
    assert done is not None
    assert done.event is WebhookEvent.COMPLETED
    assert done.reported_states() == {"a": State.SUCCEEDED, "b": State.SUCCEEDED}
    a = done.clips[0]
    assert (a.audio_url, a.duration, a.model, a.created_at, a.title) == (
        "http://cdn/a.mp3", 198.44, "sonic-v3-5", "2025-01-01 00:00:00", "Iron Man")
    assert a.raw["source_audio_url"] == "http://cdn/a.mp3"  # every field kept raw
    assert done.task_id == "t-1"
    assert done.platform == "sunoapi"
    assert done.failure is None


def test_camel_case_and_snake_case_read_alike() -> None:
    snake, _ = SUNO.parse(suno("complete", clips=[suno_clip("a", duration="104.88")]))
    camel, _ = SUNO.parse(suno("complete", clips=[suno_clip("a", camel=True,
                                                             duration="104.88")], camel=True))
    assert snake is not None
    assert camel is not None
    fields = ("clip_id", "state", "audio_url", "image_url", "duration", "mv", "created_at",
              "lyrics", "title", "tags")
    assert [getattr(camel.clips[0], f) for f in fields] == [getattr(snake.clips[0], f)
                                                            for f in fields]
    assert camel.task_id == snake.task_id == "t-1"


def test_a_completed_clip_never_takes_its_stream_url_and_a_placeholder_is_no_url() -> None:
    done, _ = SUNO.parse(suno("complete", clips=[
        suno_clip("a", audio=""), suno_clip("b", audio="http://cdn/None.mp3"),
        suno_clip("c", audio="null")]))
    assert done is not None
    assert [c.audio_url for c in done.clips] == [None, None, None]


@pytest.mark.parametrize(("code", "msg", "category"), [
    (400, "Validation Error", FailureCategory.COPYRIGHT),
    (400, "Lyrics contained copyrighted material", FailureCategory.COPYRIGHT),
    (400, "Your lyrics contain sensitive words", FailureCategory.MODERATION),
    (408, "Rate Limited - Timeout", FailureCategory.TIMEOUT),
    (413, "Uploaded audio matches existing work of art", FailureCategory.COPYRIGHT),
    (500, "Server Error", FailureCategory.UPSTREAM),
    (501, "Audio generation failed.", FailureCategory.UPSTREAM),
    (531, "Sorry, the generation failed due to an issue. Your credits have been refunded. "
          "Please try again", FailureCategory.UPSTREAM),
])
def test_each_documented_failure_code_has_its_category(
        code: int, msg: str, category: FailureCategory) -> None:
    """The documented codes name the category (531 refunded the credits: the provider
    failed, the account did not run out); words of a content refusal refine them."""
    failed, _ = SUNO.parse(suno("error", code=code, msg=msg))
    assert failed is not None
    assert failed.event is WebhookEvent.FAILED
    assert failed.failure_category is category
    assert failed.failure == msg


def test_a_failure_sent_as_complete_or_with_its_detail_fails_the_task() -> None:
    """An older generation reported a failure as callbackType complete with code 501; the
    detail in data.error is the task's error."""
    old, _ = SUNO.parse(suno("complete", code=501, msg="Audio generation failed.",
                             clips=[suno_clip("a")]))
    assert old is not None
    assert old.event is WebhookEvent.FAILED
    assert old.reported_states() == {"a": State.FAILED}
    detail, _ = SUNO.parse(suno("error", code=501, msg="Audio generation failed.",
                                error="Generation failed due to technical issues"))
    assert detail is not None
    assert detail.failure == "Generation failed due to technical issues"


def test_apibox_fails_with_failed_and_every_adapter_reads_both() -> None:
    box = ApiboxAdapter(ProviderTable(), tolerance_s=300, clock=FakeClock(NOW))
    for reader in (box, SUNO):
        failed, _ = reader.parse(suno("failed", code=501, msg="Audio generation failed."))
        assert failed is not None
        assert failed.event is WebhookEvent.FAILED


def test_a_second_stage_is_progress_and_an_unknown_one_is_not_used() -> None:
    second, _ = SUNO.parse(suno("second", clips=[suno_clip("a")]))
    assert second is not None
    assert second.event is WebhookEvent.STREAMING
    callback, error = SUNO.parse(suno("halfway", clips=[suno_clip("a")]))
    assert callback is None
    assert error == "unknown callbackType 'halfway'"
    callback, error = SUNO.parse(suno(None))
    assert callback is None
    assert error == "no callbackType"
    callback, error = SUNO.parse(b'{"code": 200, "msg": "ok", "data": {"callbackType": "text"}}')
    assert callback is None
    assert error == "no task_id in data"


@pytest.mark.parametrize(("status", "event", "category"), [
    ("PENDING", None, None),
    ("TEXT_SUCCESS", WebhookEvent.STREAMING, None),
    ("FIRST_SUCCESS", WebhookEvent.STREAMING, None),
    ("SUCCESS", WebhookEvent.COMPLETED, None),
    ("SENSITIVE_WORD_ERROR", WebhookEvent.FAILED, FailureCategory.MODERATION),
    ("GENERATE_AUDIO_FAILED", WebhookEvent.FAILED, FailureCategory.UPSTREAM),
    ("CREATE_TASK_FAILED", WebhookEvent.FAILED, FailureCategory.INVALID_REQUEST),
])
def test_record_info_statuses(status: str, event: WebhookEvent | None,
                              category: FailureCategory | None) -> None:
    document = json.loads(record_info(status, clips=[suno_clip("a", camel=True)]))
    read = SUNO.poll_callback(document, "t-1")
    assert (read.event, read.failure_category) == (event, category)


def test_a_callback_exception_is_done_when_every_clip_has_audio() -> None:
    done = SUNO.poll_callback(json.loads(record_info(
        "CALLBACK_EXCEPTION", clips=[suno_clip("a", camel=True)])), "t-1")
    assert done.event is WebhookEvent.COMPLETED
    none = SUNO.poll_callback(json.loads(record_info(
        "CALLBACK_EXCEPTION", clips=[suno_clip("a", camel=True, audio="")])), "t-1")
    assert none.event is WebhookEvent.FAILED


# ---- authentication --------------------------------------------------------------------------


def inbound(body: bytes, headers: dict[str, str] | None = None) -> Inbound:
    return Inbound(headers={k.lower(): v for k, v in (headers or {}).items()}, body=body)


def test_sunoapi_carries_nothing_to_authenticate_so_its_bodies_are_confirmed() -> None:
    assert SUNO.authenticate(inbound(suno("complete"))) is None
    assert SUNO.tokens
    assert SUNO.confirms
    assert not adapter("sunoapi", confirm=False).confirms  # the operator may opt out


def test_kie_signs_the_task_and_the_time_not_the_body() -> None:
    kie = adapter("kie", hmac_key=HMAC_KEY)
    assert isinstance(kie, KieAdapter)
    assert kie.confirms
    body = suno("complete", clips=[suno_clip("a")])
    headers = sign_kie(HMAC_KEY, "t-1", NOW)
    verified = kie.authenticate(inbound(body, headers))
    assert verified is not None
    assert verified.scheme is Scheme.KIE
    # another body of the same task passes: the signature covers no part of it
    other = suno("complete", clips=[suno_clip("evil", audio="http://evil/x.mp3")])
    assert kie.authenticate(inbound(other, headers)) is not None
    # another task's body does not
    with pytest.raises(VerificationError) as mismatch:
        kie.authenticate(inbound(suno("complete", task_id="t-2"), headers))
    assert (mismatch.value.reason, mismatch.value.scheme) == ("signature_mismatch", "kie")
    for bad, reason in (({}, "missing_signature"),
                        (sign_kie("not-the-key", "t-1", NOW), "signature_mismatch"),
                        (sign_kie(HMAC_KEY, "t-1", NOW - 301), "timestamp_expired"),
                        ({**headers, "X-Webhook-Signature": "%%%"}, "malformed_signature")):
        with pytest.raises(VerificationError) as refused:
            kie.authenticate(inbound(body, bad))
        assert refused.value.reason == reason
    assert adapter("kie").authenticate(inbound(body)) is None  # no key: nothing to check


def test_piapi_compares_its_secret_header_with_each_configured_secret() -> None:
    pi = adapter("piapi", webhook_secret=["old-secret-0123456789", PIAPI_SECRET], api_key="k")
    assert isinstance(pi, PiapiAdapter)
    assert not pi.confirms
    body = piapi("completed", clips=[piapi_clip("c-1")])
    verified = pi.authenticate(inbound(body, {"x-webhook-secret": PIAPI_SECRET}))
    assert verified is not None
    assert verified.scheme is Scheme.HEADER_SECRET
    for headers, reason in (({}, "missing_signature"),
                            ({"x-webhook-secret": PIAPI_SECRET + "x"}, "signature_mismatch"),
                            ({"x-webhook-secret": ""}, "signature_mismatch")):
        with pytest.raises(VerificationError) as refused:
            pi.authenticate(inbound(body, headers))
        assert refused.value.reason == reason


def test_aimlapi_verifies_standard_webhooks_over_the_body() -> None:
    ai = adapter("aimlapi", webhook_secret=AIMLAPI_SECRET)
    assert isinstance(ai, AimlapiAdapter)
    assert not ai.confirms
    body = aimlapi("completed")
    headers = sign_standard(AIMLAPI_SECRET, "msg_1", body, NOW)
    verified = ai.authenticate(inbound(body, headers))
    assert verified is not None
    assert verified.scheme is Scheme.STANDARD
    with pytest.raises(VerificationError):
        ai.authenticate(inbound(aimlapi("completed", url="http://evil/x.mp3"), headers))


# ---- PiAPI's and AIMLAPI's bodies ------------------------------------------------------------


def test_piapi_statuses_and_clips_keyed_or_listed() -> None:
    pi = adapter("piapi", webhook_secret=PIAPI_SECRET)
    for keyed in (True, False):
        done, _ = pi.parse(piapi("completed", clips=[piapi_clip("c-1"), piapi_clip("c-2")],
                                 keyed=keyed))
        assert done is not None
        assert done.event is WebhookEvent.COMPLETED
        assert done.reported_states() == {"c-1": State.SUCCEEDED, "c-2": State.SUCCEEDED}
        c = done.clips[0]
        assert (c.audio_url, c.duration, c.tags, c.lyrics) == (
            "http://cdn/c-1.mp3", 120.5, "rock", "[Verse] lights")
    running, _ = pi.parse(piapi("processing", clips=[piapi_clip("c-1", "streaming")]))
    assert running is not None
    assert running.event is WebhookEvent.STREAMING
    assert running.reported_states() == {"c-1": State.RUNNING}
    failed, _ = pi.parse(piapi("failed", error={"code": 10000, "message":
                                                "prompt violates the content policy"}))
    assert failed is not None
    assert failed.failure_category is FailureCategory.MODERATION
    pending, _ = pi.parse(piapi("pending"))
    assert pending is not None
    assert pending.event is None
    assert pending.clips == ()
    assert pi.parse(piapi("exploded"))[1] == "unknown status 'exploded'"


def test_piapi_reads_the_udio_songs_shape() -> None:
    pi = adapter("piapi", webhook_secret=PIAPI_SECRET)
    body = json.dumps({"timestamp": 1, "data": {"task_id": "u-1", "status": "completed",
                       "output": {"songs": [{"id": "s-1", "song_path": "http://cdn/s.mp3",
                                             "image_path": "http://cdn/s.png", "finished": True,
                                             "duration": 32.5, "lyrics": "la"}]}}}).encode()
    done, _ = pi.parse(body)
    assert done is not None
    assert [(c.clip_id, c.state, c.audio_url, c.image_url, c.duration) for c in done.clips] == [
        ("s-1", State.SUCCEEDED, "http://cdn/s.mp3", "http://cdn/s.png", 32.5)]


def test_aimlapi_generations_bare_or_in_an_envelope() -> None:
    ai = adapter("aimlapi", webhook_secret=AIMLAPI_SECRET)
    for envelope in (True, False):
        done, _ = ai.parse(aimlapi("completed", envelope=envelope))
        assert done is not None
        assert done.event is WebhookEvent.COMPLETED
        assert [(c.clip_id, c.audio_url) for c in done.clips] == [("g-1", "http://cdn/g.mp3")]
    failed, _ = ai.parse(aimlapi("error", url=None, error={"message": "request timed out"}))
    assert failed is not None
    assert failed.failure_category is FailureCategory.TIMEOUT


def test_every_adapter_keeps_any_bytes_as_a_reason_never_an_exception() -> None:
    garbage = [b"", b"\xff\xfe", b"[]", b'{"data": 1}', b'{"data": {"data": [1]}}',
               b'{"code": "x", "data": {"callbackType": 7, "task_id": {}}}',
               b'{"data": {"status": "completed", "task_id": "t", "output": {"clips": 5}}}',
               b"[" * 100_000, b'{"data": {"callbackType": "complete", "task_id": "t", '
               b'"data": [{"id": "a"}, {"id": "a"}]}}']
    readers: list[Adapter] = [SUNO, adapter("piapi", webhook_secret=PIAPI_SECRET),
                              adapter("aimlapi", webhook_secret=AIMLAPI_SECRET)]
    for reader in readers:
        for body in garbage:
            callback, error = reader.parse(body)
            assert (callback is None) != (error is None), (reader.name, body[:40])
