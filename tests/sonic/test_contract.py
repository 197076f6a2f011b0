"""The contract alone: the seed's tables and rules, with no I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest

from receiver.sonic.contract import (
    MODELS,
    TASKS,
    CreateRequest,
    Message,
    Model,
    OwnMessage,
    PersonaRequest,
    TaskType,
    UploadTaskRequest,
    VoxRequest,
    normalise_model,
    validate,
    validate_persona,
    validate_upload_task,
    validate_vox,
)
from receiver.sonic.errors import InsufficientCredits, SonicValidationError, TaskNotFound
from tests.sonic.support import RULES, SEED_MESSAGES, Rule


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_rule_table_against_the_contract(rule: Rule) -> None:
    """Each row's body, read and validated, gets exactly the row's message (or none)."""
    assert validate(CreateRequest.from_json(rule.body)) == rule.message


def test_rule_table_covers_every_row_of_the_seeds_error_table() -> None:
    """No seed message may be missing from the table the three runs share."""
    assert {r.message for r in RULES} >= SEED_MESSAGES
    assert {str(m) for m in SEED_MESSAGES} == {
        "mv field is invalid",
        "prompt length exceeded",
        "gpt_description_prompt length exceeded",
        "tags length exceeded",
        "continue_clip_id is required",
        "persona_id is required",
        "audio_weight should be 0-1",
    }


def test_credits_and_required_fields_follow_the_seed() -> None:
    """15 credits per generating task, 2 for concat; required fields as the seed lists them."""
    assert {t: s.credits for t, s in TASKS.items()} == {
        TaskType.CREATE_MUSIC: 15,
        TaskType.EXTEND_MUSIC: 15,
        TaskType.COVER_MUSIC: 15,
        TaskType.CONCAT_MUSIC: 2,
        TaskType.PERSONA_MUSIC: 15,
        TaskType.EXTEND_UPLOAD_MUSIC: 15,
        TaskType.COVER_UPLOAD_MUSIC: 15,
    }
    assert TASKS[TaskType.CONCAT_MUSIC].required == ("continue_clip_id",)
    assert TASKS[TaskType.EXTEND_MUSIC].required == (
        "continue_clip_id", "continue_at", "custom_mode", "mv",
    )
    assert TASKS[TaskType.PERSONA_MUSIC].required == ("persona_id", "custom_mode", "mv")
    assert [s.clips for s in TASKS.values()] == [2, 2, 2, 1, 2, 2, 2]


def test_model_limits_and_vocal_gender() -> None:
    """Old models: 3,000 / 200; v4-5 and later (v4-5-all included): 5,000 / 1,000."""
    limits = {m: (s.prompt_max, s.tags_max) for m, s in MODELS.items()}
    assert limits == {
        Model.SONIC_V3_5: (3000, 200),
        Model.SONIC_V4: (3000, 200),
        Model.SONIC_V4_5: (5000, 1000),
        Model.SONIC_V4_5_ALL: (5000, 1000),
        Model.SONIC_V4_5_PLUS: (5000, 1000),
        Model.SONIC_V5: (5000, 1000),
    }
    assert {m for m, s in MODELS.items() if s.vocal_gender} == {
        Model.SONIC_V4_5, Model.SONIC_V4_5_ALL, Model.SONIC_V4_5_PLUS, Model.SONIC_V5,
    }


def test_vocal_gender_on_an_old_model_is_not_refused() -> None:
    """The seed has no error text for it, so the contract sends it as is."""
    request = CreateRequest(mv=Model.SONIC_V3_5, custom_mode=True, vocal_gender="f")
    assert validate(request) is None


def test_uploaded_sources_need_the_upload_task_types() -> None:
    """extend_music/cover_music refuse an uploaded clip; the *_upload_music types take it."""
    for task_type, ok in [
        (TaskType.EXTEND_MUSIC, False),
        (TaskType.COVER_MUSIC, False),
        (TaskType.EXTEND_UPLOAD_MUSIC, True),
        (TaskType.COVER_UPLOAD_MUSIC, True),
    ]:
        request = CreateRequest(
            task_type=task_type, continue_clip_id="up", continue_at=1.0, mv="sonic-v5",
            custom_mode=True,
        )
        assert validate(request) is None
        expected = None if ok else OwnMessage.UPLOAD_NEEDS_UPLOAD_TYPE
        assert validate(request, source_is_upload=True) == expected


def test_to_json_omits_unset_fields_and_round_trips() -> None:
    request = CreateRequest(
        task_type=TaskType.COVER_MUSIC, continue_clip_id="c", mv=Model.SONIC_V5,
        custom_mode=True, audio_weight=0.6, webhook_secret="s3cret",
    )
    body = request.to_json()
    assert body == {
        "task_type": "cover_music", "continue_clip_id": "c", "mv": "sonic-v5",
        "custom_mode": True, "audio_weight": 0.6, "webhook_secret": "s3cret",
    }
    assert type(body["mv"]) is str
    assert CreateRequest.from_json(body) == request


def test_the_webhook_secret_never_shows_in_repr() -> None:
    assert "s3cret" not in repr(CreateRequest(webhook_secret="s3cret"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"mv": 5}, Message.MV_INVALID),
        ({"audio_weight": "high"}, Message.AUDIO_WEIGHT_RANGE),
        ({"custom_mode": "yes"}, "custom_mode is invalid"),
        ({"prompt": ["x"]}, "prompt is invalid"),
        ({"task_type": 3}, OwnMessage.TASK_TYPE_INVALID),
        ({"continue_at": True}, OwnMessage.CONTINUE_AT_INVALID),
        ([], OwnMessage.BODY_INVALID),
    ],
)
def test_fields_of_the_wrong_json_type_are_refused_when_read(body: object, message: str) -> None:
    with pytest.raises(SonicValidationError) as caught:
        CreateRequest.from_json(body)
    assert caught.value.message == message


def test_unknown_fields_and_nulls_are_ignored_when_read() -> None:
    request = CreateRequest.from_json({"mv": "sonic-v4", "custom_mode": True, "x": 1, "tags": None})
    assert request == CreateRequest(mv="sonic-v4", custom_mode=True)


def test_answers_model_names_are_normalised() -> None:
    """Responses may say chirp-v5 for sonic-v5."""
    assert normalise_model("chirp-v5") is Model.SONIC_V5
    assert normalise_model("chirp-v4-5-plus") is Model.SONIC_V4_5_PLUS
    assert normalise_model("sonic-v4") is Model.SONIC_V4
    assert normalise_model(" Chirp-V3-5 ") is Model.SONIC_V3_5
    assert normalise_model("chirp-v9") is None
    assert normalise_model(None) is None


def test_one_stop_requests_take_a_url_instead_of_a_clip() -> None:
    request = CreateRequest(
        task_type=TaskType.EXTEND_UPLOAD_MUSIC, continue_at=3.0, mv="sonic-v4", custom_mode=True
    )
    upload = UploadTaskRequest(url="http://h/a.wav", request=request)
    assert validate_upload_task(upload) is None
    assert validate_upload_task(replace(upload, url="")) == OwnMessage.URL_REQUIRED
    body = upload.to_json()
    assert body == {
        "url": "http://h/a.wav", "continue_at": 3.0, "mv": "sonic-v4", "custom_mode": True,
    }
    read = UploadTaskRequest.from_json(
        {**body, "task_type": "create_music"}, task_type=TaskType.COVER_UPLOAD_MUSIC
    )
    assert read.request.task_type is TaskType.COVER_UPLOAD_MUSIC


def test_persona_and_vox_rules() -> None:
    """A persona needs a clip and a name; a vox range must end after it starts."""
    assert validate_persona(PersonaRequest(name="A", continue_clip_id="")) == (
        Message.CONTINUE_CLIP_ID_REQUIRED
    )
    nameless = PersonaRequest(name="", continue_clip_id="c")
    assert validate_persona(nameless) == OwnMessage.NAME_REQUIRED
    assert validate_vox(VoxRequest(clip_id="c", vocal_start_s=2, vocal_end_s=1)) == (
        OwnMessage.VOX_RANGE_INVALID
    )
    assert validate_vox(VoxRequest(clip_id="c", vocal_start_s=1, vocal_end_s=2)) is None


def test_error_defaults_match_the_contract_texts() -> None:
    """The named errors' default messages are the texts the service uses."""
    assert InsufficientCredits().message == Message.INSUFFICIENT_CREDITS
    assert TaskNotFound().message == Message.TASK_NOT_FOUND
    assert Message.INSUFFICIENT_CREDITS.startswith("The remaining credits are not enough")
