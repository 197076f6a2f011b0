"""The Sonic API contract, as the provider's excerpt (``sonic-api-seed.txt``) states it.

Pure: no I/O. The client checks a request with :func:`validate` before sending it and the
sandbox answers with the same function, so both speak the seed's words:

* seven task types with their required fields and credit costs (:data:`TASKS`);
* six models with their length limits and vocal-gender support (:data:`MODELS`);
* the error texts, word for word (:class:`Message`), and the few texts this project had to
  choose where the seed says nothing (:class:`OwnMessage`, never the service's words);
* typed requests (:class:`CreateRequest`, :class:`UploadTaskRequest`, :class:`PersonaRequest`,
  :class:`VoxRequest`) whose ``to_json()`` omits what is unset and whose ``from_json()`` reads a
  JSON body, raising :class:`~receiver.sonic.errors.SonicValidationError` on a wrong type;
* :func:`normalise_model`, since answers may name ``chirp-v5`` a task sent as ``sonic-v5``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Self

from receiver.sonic.errors import SonicValidationError

# Clip states and webhook events are the receiver's own vocabulary: one definition of each.
# (re-exported under the contract's names)
from receiver.states import EVENT_STATE as EVENT_STATE
from receiver.states import TERMINAL as TERMINAL
from receiver.states import State
from receiver.states import WebhookEvent as WebhookEvent

ClipState = State


class TaskType(StrEnum):
    CREATE_MUSIC = "create_music"
    EXTEND_MUSIC = "extend_music"
    COVER_MUSIC = "cover_music"
    CONCAT_MUSIC = "concat_music"
    PERSONA_MUSIC = "persona_music"
    EXTEND_UPLOAD_MUSIC = "extend_upload_music"
    COVER_UPLOAD_MUSIC = "cover_upload_music"


class Model(StrEnum):
    SONIC_V3_5 = "sonic-v3-5"
    SONIC_V4 = "sonic-v4"
    SONIC_V4_5 = "sonic-v4-5"
    SONIC_V4_5_ALL = "sonic-v4-5-all"
    SONIC_V4_5_PLUS = "sonic-v4-5-plus"
    SONIC_V5 = "sonic-v5"


class VocalGender(StrEnum):
    FEMALE = "f"
    MALE = "m"


class Message(StrEnum):
    """The service's own error texts, word for word (the seed's error table, plus the 403 and
    not-found answers restated in UPSTREAM.md)."""

    MV_INVALID = "mv field is invalid"
    PROMPT_TOO_LONG = "prompt length exceeded"
    GPT_DESCRIPTION_PROMPT_TOO_LONG = "gpt_description_prompt length exceeded"
    TAGS_TOO_LONG = "tags length exceeded"
    CONTINUE_CLIP_ID_REQUIRED = "continue_clip_id is required"
    PERSONA_ID_REQUIRED = "persona_id is required"
    AUDIO_WEIGHT_RANGE = "audio_weight should be 0-1"
    # UPSTREAM.md quotes only the start, "The remaining credits are not enough...": the rest of
    # the sentence is ours. Clients match on the start (CREDITS_PREFIX), never on the whole.
    INSUFFICIENT_CREDITS = "The remaining credits are not enough for this task."
    TASK_NOT_FOUND = "task not found."


CREDITS_PREFIX = "The remaining credits are not enough"


class OwnMessage(StrEnum):
    """Texts this project chose where the seed has no rule or no wording: the sandbox answers
    with them (400 unless noted) and the client refuses with them, but they are NOT the
    service's words and a real service may answer differently."""

    TASK_TYPE_INVALID = "task_type is invalid"
    CUSTOM_MODE_REQUIRED = "custom_mode is required"
    CONTINUE_AT_REQUIRED = "continue_at is required"
    CONTINUE_AT_INVALID = "continue_at is invalid"
    CONTINUE_AT_BEYOND_END = "continue_at is beyond the end of the clip"
    CONTINUE_CLIP_ID_INVALID = "continue_clip_id is invalid"
    STYLE_WEIGHT_RANGE = "style_weight should be 0-1"
    WEIRDNESS_CONSTRAINT_RANGE = "weirdness_constraint should be 0-1"
    VOCAL_GENDER_INVALID = "vocal_gender is invalid"
    PERSONA_ID_INVALID = "persona_id is invalid"
    UPLOAD_NEEDS_UPLOAD_TYPE = (
        "continue_clip_id is an uploaded clip: use extend_upload_music or cover_upload_music"
    )
    URL_REQUIRED = "url is required"
    URL_NOT_ALLOWED = "url must point at a loopback address"
    URL_NOT_FETCHED = "url could not be fetched"
    URL_NOT_AUDIO = "url is not audio"
    URL_TOO_LARGE = "url is too large"
    NAME_REQUIRED = "name is required"
    CLIP_ID_REQUIRED = "clip_id is required"
    CLIP_NOT_FOUND = "clip not found."  # 404
    VOX_RANGE_INVALID = "vocal_start_s and vocal_end_s are invalid"
    BODY_INVALID = "request body must be a JSON object"
    UNAUTHORIZED = "unauthorized"  # 401


def field_invalid(name: str) -> str:
    """Our text for a field of the wrong JSON type (the seed has none)."""
    return f"{name} is invalid"


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """What a task type needs and costs."""

    task_type: TaskType
    description: str
    credits: int
    required: tuple[str, ...]  # the seed's "Required Parameters", in its order
    clips: int  # clips one task yields
    upload_variant: TaskType | None = None  # the type to use when the source is an upload

    @property
    def needs_source_clip(self) -> bool:
        return "continue_clip_id" in self.required


_MODE = ("custom_mode", "mv")
TASKS: Mapping[TaskType, TaskSpec] = MappingProxyType(
    {
        spec.task_type: spec
        for spec in (
            TaskSpec(
                task_type=TaskType.CREATE_MUSIC,
                description="Create new music from scratch",
                credits=15,
                required=_MODE,
                clips=2,
            ),
            TaskSpec(
                task_type=TaskType.EXTEND_MUSIC,
                description="Extend an existing song from a timestamp",
                credits=15,
                required=("continue_clip_id", "continue_at", *_MODE),
                clips=2,
                upload_variant=TaskType.EXTEND_UPLOAD_MUSIC,
            ),
            TaskSpec(
                task_type=TaskType.COVER_MUSIC,
                description="Create a cover version with style transformation",
                credits=15,
                required=("continue_clip_id", *_MODE),
                clips=2,
                upload_variant=TaskType.COVER_UPLOAD_MUSIC,
            ),
            TaskSpec(
                task_type=TaskType.CONCAT_MUSIC,
                description="Concatenate/merge songs together",
                credits=2,
                required=("continue_clip_id",),
                clips=1,
            ),
            TaskSpec(
                task_type=TaskType.PERSONA_MUSIC,
                description="Generate music with a virtual singer's voice",
                credits=15,
                required=("persona_id", *_MODE),
                clips=2,
            ),
            TaskSpec(
                task_type=TaskType.EXTEND_UPLOAD_MUSIC,
                description="Extend your own uploaded music",
                credits=15,
                required=("continue_clip_id", "continue_at", *_MODE),
                clips=2,
            ),
            TaskSpec(
                task_type=TaskType.COVER_UPLOAD_MUSIC,
                description="Cover your own uploaded music",
                credits=15,
                required=("continue_clip_id", *_MODE),
                clips=2,
            ),
        )
    }
)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A model's limits, in characters as Python counts them (code points)."""

    model: Model
    description: str
    prompt_max: int
    tags_max: int
    vocal_gender: bool
    # Clips of v4-5 and later carry negative_tags, style_weight and weirdness_constraint.
    newer: bool


GPT_DESCRIPTION_PROMPT_MAX = 400

# Vocal gender: the seed's model table says Yes for v4-5, v4-5-all, v4-5-plus and v5, while the
# sentence under it (and UPSTREAM.md) leaves out v4-5-all. We follow the table: it is the more
# specific statement, and v4-5-all is the fast variant of v4-5. It is NOT a validation rule:
# the seed has no error text for it, so a request with vocal_gender on a model without support
# is sent as is (the sandbox ignores the field there) rather than refused by us.
#
# sonic-v4-5-all is missing from both limit tables: we treat it as the v4-5 family (5,000 /
# 1,000), like every other "v4-5 and later" model. If the service is stricter, its 400 comes
# back as SonicValidationError with its own text.
MODELS: Mapping[Model, ModelSpec] = MappingProxyType(
    {
        spec.model: spec
        for spec in (
            ModelSpec(
                model=Model.SONIC_V3_5,
                description="Legacy model",
                prompt_max=3_000,
                tags_max=200,
                vocal_gender=False,
                newer=False,
            ),
            ModelSpec(
                model=Model.SONIC_V4,
                description="Improved quality",
                prompt_max=3_000,
                tags_max=200,
                vocal_gender=False,
                newer=False,
            ),
            ModelSpec(
                model=Model.SONIC_V4_5,
                description="Enhanced vocals and instruments",
                prompt_max=5_000,
                tags_max=1_000,
                vocal_gender=True,
                newer=True,
            ),
            ModelSpec(
                model=Model.SONIC_V4_5_ALL,
                description="fast model",
                prompt_max=5_000,
                tags_max=1_000,
                vocal_gender=True,
                newer=True,
            ),
            ModelSpec(
                model=Model.SONIC_V4_5_PLUS,
                description="Premium quality",
                prompt_max=5_000,
                tags_max=1_000,
                vocal_gender=True,
                newer=True,
            ),
            ModelSpec(
                model=Model.SONIC_V5,
                description="Latest model with best quality",
                prompt_max=5_000,
                tags_max=1_000,
                vocal_gender=True,
                newer=True,
            ),
        )
    }
)

# Fields whose value must lie in 0..1, and the text for each (only audio_weight's is the seed's).
UNIT_RANGE: Mapping[str, str] = MappingProxyType(
    {
        "audio_weight": Message.AUDIO_WEIGHT_RANGE,
        "style_weight": OwnMessage.STYLE_WEIGHT_RANGE,
        "weirdness_constraint": OwnMessage.WEIRDNESS_CONSTRAINT_RANGE,
    }
)


def parse_model(value: str | None) -> Model | None:
    """The model named exactly ``value`` (as a request must name it), else ``None``."""
    try:
        return Model(value) if value is not None else None
    except ValueError:
        return None


def normalise_model(name: str | None) -> Model | None:
    """The model an answer means: ``chirp-v5`` (and any ``chirp-*`` twin) is ``sonic-v5``.

    ``None`` when the name is unknown: callers keep the raw text next to it.
    """
    if not name:
        return None
    text = name.strip().lower()
    if text.startswith("chirp-"):
        text = "sonic-" + text.removeprefix("chirp-")
    return parse_model(text)


@dataclass(frozen=True, kw_only=True)
class ApiPaths:
    """Where each endpoint lives. The documented paths are the defaults; UPSTREAM.md says to
    treat them as configurable."""

    create: str = "/api/v1/sonic/create"
    task: str = "/api/v1/sonic/task/{task_id}"
    upload: str = "/api/v1/sonic/upload"
    upload_extend: str = "/api/v1/sonic/upload-extend"
    upload_cover: str = "/api/v1/sonic/upload-cover"
    persona: str = "/api/v1/sonic/persona"
    bpm: str = "/api/v1/sonic/bpm"
    vox: str = "/api/v1/sonic/vox"


# --- requests -------------------------------------------------------------------------------

_STR = "str"
_BOOL = "bool"
_NUM = "num"

# The JSON type each create field must have, and the text for a wrong one.
_CREATE_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "task_type": _STR,
        "custom_mode": _BOOL,
        "mv": _STR,
        "title": _STR,
        "tags": _STR,
        "negative_tags": _STR,
        "prompt": _STR,
        "gpt_description_prompt": _STR,
        "auto_lyrics": _BOOL,
        "make_instrumental": _BOOL,
        "vocal_gender": _STR,
        "style_weight": _NUM,
        "weirdness_constraint": _NUM,
        "audio_weight": _NUM,
        "continue_clip_id": _STR,
        "continue_at": _NUM,
        "persona_id": _STR,
        "webhook_url": _STR,
        "webhook_secret": _STR,
    }
)
_WRONG_TYPE_TEXT: Mapping[str, str] = MappingProxyType(
    {
        "task_type": OwnMessage.TASK_TYPE_INVALID,
        "mv": Message.MV_INVALID,
        "vocal_gender": OwnMessage.VOCAL_GENDER_INVALID,
        "continue_at": OwnMessage.CONTINUE_AT_INVALID,
        **UNIT_RANGE,
    }
)


def _typed(name: str, value: object, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_fields(
    body: object, kinds: Mapping[str, str], wrong: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The known fields of a JSON object, type-checked; unknown fields are ignored (the service
    may add some). ``null`` counts as absent."""
    if not isinstance(body, Mapping):
        raise SonicValidationError(OwnMessage.BODY_INVALID)
    found: dict[str, Any] = {}
    for name, kind in kinds.items():
        value = body.get(name)
        if value is None:
            continue
        if not _typed(name, value, kind):
            raise SonicValidationError((wrong or {}).get(name) or field_invalid(name))
        found[name] = float(value) if kind == _NUM else value
    return found


def _json(obj: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if value is None:
            continue
        out[f.name] = str(value) if isinstance(value, StrEnum) else value
    return out


@dataclass(frozen=True, kw_only=True)
class CreateRequest:
    """A ``POST /create`` body. Unset (``None``) fields are not sent.

    ``task_type`` and ``mv`` take the enums or any string, so that a request the service would
    refuse can still be represented (and refused by :func:`validate`).
    """

    task_type: TaskType | str = TaskType.CREATE_MUSIC
    custom_mode: bool | None = None
    mv: Model | str | None = None
    title: str | None = None
    tags: str | None = None
    negative_tags: str | None = None
    prompt: str | None = None
    gpt_description_prompt: str | None = None
    auto_lyrics: bool | None = None
    make_instrumental: bool | None = None
    vocal_gender: VocalGender | str | None = None
    style_weight: float | None = None
    weirdness_constraint: float | None = None
    audio_weight: float | None = None
    continue_clip_id: str | None = None
    continue_at: float | None = None
    persona_id: str | None = None
    webhook_url: str | None = None
    # Never shown by repr (logs, tracebacks, CreateOutcomeUnknown).
    webhook_secret: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, body: object) -> Self:
        """Read a JSON body; a missing ``task_type`` means ``create_music`` (as in the seed's
        examples). Raises :class:`SonicValidationError` for a field of the wrong type."""
        return cls(**_read_fields(body, _CREATE_FIELDS, _WRONG_TYPE_TEXT))

    @property
    def model(self) -> Model | None:
        return parse_model(self.mv)


def _length_rules(request: CreateRequest) -> str | None:
    spec = MODELS.get(request.model) if request.model is not None else None
    # Without a model (only concat_music may omit mv) there is no limit to apply: concat ignores
    # prompt and tags.
    if spec is not None and request.prompt is not None and len(request.prompt) > spec.prompt_max:
        return Message.PROMPT_TOO_LONG
    gpt = request.gpt_description_prompt
    if gpt is not None and len(gpt) > GPT_DESCRIPTION_PROMPT_MAX:
        return Message.GPT_DESCRIPTION_PROMPT_TOO_LONG
    if spec is not None and request.tags is not None and len(request.tags) > spec.tags_max:
        return Message.TAGS_TOO_LONG
    return None


def _in_unit_range(value: float) -> bool:
    return not math.isnan(value) and 0.0 <= value <= 1.0


def validate(
    request: CreateRequest, *, source_is_upload: bool = False, source_from_url: bool = False
) -> str | None:
    """The message for the first rule ``request`` breaks, or ``None`` when it is valid.

    Rules run in the seed's error-table order (mv, prompt, gpt_description_prompt, tags,
    continue_clip_id, persona_id, audio_weight), then ours (:class:`OwnMessage`): task_type,
    custom_mode, continue_at, style_weight, weirdness_constraint, vocal_gender, and the upload
    rule. ``task_type`` is checked first of all since every other rule depends on it.

    ``source_is_upload``: the ``continue_clip_id`` came from upload-music, so only the
    ``*_upload_music`` types may use it (only the caller knows where a clip came from).
    ``source_from_url``: the one-stop upload endpoints, whose source is the body's ``url``.
    """
    try:
        spec = TASKS[TaskType(request.task_type)]
    except ValueError:
        return OwnMessage.TASK_TYPE_INVALID
    if (request.mv is not None or "mv" in spec.required) and request.model is None:
        return Message.MV_INVALID
    if (message := _length_rules(request)) is not None:
        return message
    if spec.needs_source_clip and not source_from_url and not request.continue_clip_id:
        return Message.CONTINUE_CLIP_ID_REQUIRED
    if "persona_id" in spec.required and not request.persona_id:
        return Message.PERSONA_ID_REQUIRED
    if request.audio_weight is not None and not _in_unit_range(request.audio_weight):
        return Message.AUDIO_WEIGHT_RANGE
    # --- our rules from here: the seed has no words for them -----------------------------
    if "custom_mode" in spec.required and request.custom_mode is None:
        return OwnMessage.CUSTOM_MODE_REQUIRED
    if "continue_at" in spec.required:
        if request.continue_at is None:
            return OwnMessage.CONTINUE_AT_REQUIRED
        if not (math.isfinite(request.continue_at) and request.continue_at >= 0):
            return OwnMessage.CONTINUE_AT_INVALID
    for name in ("style_weight", "weirdness_constraint"):
        value = getattr(request, name)
        if value is not None and not _in_unit_range(value):
            return UNIT_RANGE[name]
    if request.vocal_gender is not None and request.vocal_gender not in set(VocalGender):
        return OwnMessage.VOCAL_GENDER_INVALID
    if source_is_upload and spec.upload_variant is not None:
        return OwnMessage.UPLOAD_NEEDS_UPLOAD_TYPE
    return None


ONE_STOP_TYPES = frozenset({TaskType.EXTEND_UPLOAD_MUSIC, TaskType.COVER_UPLOAD_MUSIC})


@dataclass(frozen=True, kw_only=True)
class UploadTaskRequest:
    """A one-stop upload-extend / upload-cover body: ``url`` plus the create fields of an
    ``extend_upload_music`` / ``cover_upload_music`` task, without ``continue_clip_id`` (the
    upload is the source) and without ``task_type`` (the endpoint says it)."""

    url: str
    request: CreateRequest

    def to_json(self) -> dict[str, Any]:
        body = self.request.to_json()
        body.pop("task_type", None)
        body.pop("continue_clip_id", None)
        return {"url": self.url, **body}

    @classmethod
    def from_json(cls, body: object, *, task_type: TaskType) -> Self:
        fields_ = _read_fields(body, {"url": _STR})
        # The endpoint decides the type; a task_type in the body is ignored.
        request = replace(CreateRequest.from_json(body), task_type=task_type)
        return cls(url=fields_.get("url", ""), request=request)


def validate_upload_task(upload: UploadTaskRequest) -> str | None:
    """:func:`validate` for the one-stop endpoints, which also need a ``url``."""
    if not upload.url:
        return OwnMessage.URL_REQUIRED
    if upload.request.task_type not in ONE_STOP_TYPES:
        return OwnMessage.TASK_TYPE_INVALID
    return validate(upload.request, source_from_url=True)


@dataclass(frozen=True, kw_only=True)
class UploadRequest:
    """An upload-music body: the URL of an audio file the service fetches."""

    url: str

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, body: object) -> Self:
        return cls(url=_read_fields(body, {"url": _STR}).get("url", ""))


def validate_upload(upload: UploadRequest) -> str | None:
    return None if upload.url else OwnMessage.URL_REQUIRED


@dataclass(frozen=True, kw_only=True)
class PersonaRequest:
    """A create-persona body: a virtual singer made from an existing clip."""

    name: str
    description: str | None = None
    continue_clip_id: str

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, body: object) -> Self:
        read = _read_fields(
            body, {"name": _STR, "description": _STR, "continue_clip_id": _STR}
        )
        return cls(
            name=read.get("name", ""),
            description=read.get("description"),
            continue_clip_id=read.get("continue_clip_id", ""),
        )


def validate_persona(persona: PersonaRequest) -> str | None:
    if not persona.continue_clip_id:
        return Message.CONTINUE_CLIP_ID_REQUIRED
    if not persona.name:
        return OwnMessage.NAME_REQUIRED
    return None


@dataclass(frozen=True, kw_only=True)
class BpmRequest:
    clip_id: str

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, body: object) -> Self:
        return cls(clip_id=_read_fields(body, {"clip_id": _STR}).get("clip_id", ""))


def validate_bpm(bpm: BpmRequest) -> str | None:
    return None if bpm.clip_id else OwnMessage.CLIP_ID_REQUIRED


@dataclass(frozen=True, kw_only=True)
class VoxRequest:
    """A get-vox body: extract the vocals of a clip, optionally of a window of it (seconds)."""

    clip_id: str
    vocal_start_s: float | None = None
    vocal_end_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, body: object) -> Self:
        read = _read_fields(
            body, {"clip_id": _STR, "vocal_start_s": _NUM, "vocal_end_s": _NUM}
        )
        return cls(
            clip_id=read.get("clip_id", ""),
            vocal_start_s=read.get("vocal_start_s"),
            vocal_end_s=read.get("vocal_end_s"),
        )


def validate_vox(vox: VoxRequest) -> str | None:
    if not vox.clip_id:
        return OwnMessage.CLIP_ID_REQUIRED
    start, end = vox.vocal_start_s, vox.vocal_end_s
    for value in (start, end):
        if value is not None and not (math.isfinite(value) and value >= 0):
            return OwnMessage.VOX_RANGE_INVALID
    if start is not None and end is not None and end <= start:
        return OwnMessage.VOX_RANGE_INVALID
    return None
