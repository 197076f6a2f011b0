"""The one clip reader: a clip is read here by one set of rules, whether it came in a webhook,
a get-music answer, a replay or a resend (a webhook body is the get-music shape, plus
``task_id``, ``platform`` and ``event``).

The rules of a clip's fields (a value that breaks them reads as absent, never as an error):

- ``state`` (or ``status``): the four documented states and the spellings of other
  generations of the service (:data:`STATE_SPELLINGS`), in any case, spaces around ignored;
- numbers (``duration``, ``style_weight``, ``weirdness_constraint``): a JSON number or a
  decimal string (``"104.88"``); a non-finite number, or a negative duration, is unknown;
- JSON ``null`` and ``""`` are absent; in the fields a machine writes (URLs, ``created_at``,
  ``mv``, ``error_message``) so are ``"None"`` and ``"null"``, and a URL whose last path
  segment is ``None.<ext>`` or ``null.<ext>`` (a failed clip may carry ``.../None.mp3``);
- camelCase twins (``clipId``, ``audioUrl``, ``createdAt``, ``errorMessage``,
  ``modelName``...) are read when the snake_case name gives no value: snake_case wins when both
  do;
- every field, known or not, is kept in :attr:`ClipReport.raw`.

Structure is strict: a clip that is not an object, or has no usable id, and a ``data`` that
is not a list of clips (or one clip sent bare), raise :class:`PayloadError` with the reason.

JSON is read with :func:`load` (bytes) or :func:`clean` (a value another parser or Python code
made). Either ends in a value or a :class:`PayloadError`, never in another exception, and what
it returns cannot fail later when stored or served as JSON:

- values JSON cannot carry faithfully are read as ``null``: ``NaN`` and ``Infinity``, a
  number too large for a float (``1e400``), an integer of more than :data:`MAX_INT_DIGITS`
  digits (Python's own limit would raise while parsing), a string holding a lone surrogate
  (``"\\ud800"``: refused by SQLite and by UTF-8) or a NUL (``"\\u0000"``: refused by
  PostgreSQL's text and jsonb); an object key holding one drops its entry;
- a document nested deeper than :data:`MAX_DEPTH` levels is not usable.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from receiver.errors import PayloadError
from receiver.sonic.contract import Model, normalise_model
from receiver.states import State

# CPython's default limit on int <-> str conversions: a longer integer would raise (or, with the
# limit lifted, make every later json.dumps slow), so it is read as null whatever the setting.
MAX_INT_DIGITS = 4300
# Deeper documents are not callbacks; the limit keeps json.dumps of a clip's data, and every
# walk over it, far from the recursion limit.
MAX_DEPTH = 64
_INT_LIMIT = 10**MAX_INT_DIGITS
_MAX_ID = 256
_MAX_CODE = 10**9
# The escapes that put what is not text (is_text) in a string decoded from strict UTF-8: a
# surrogate (\uD8xx-\uDFxx, lone or not: the walk tells) or a NUL (JSON text cannot hold a raw
# one, only its escape).
_UNTEXT_ESCAPE = re.compile(r"\\u(?:[dD][89abcdefABCDEF]|0000)")
_NUL_ESCAPE = b"\\u0000"
# _fast_load's check for long integers: every digit mapped to "0", every other byte to " ".
_DIGIT_MAP = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_DIGITS = b"0" * 19
_SLOW: Any = object()  # _fast_load's "read it with the careful path"
_T = TypeVar("_T")

# Spellings of clip states seen across the service's generations, beyond the four documented.
STATE_SPELLINGS = {
    "queued": State.PENDING,
    "submitted": State.PENDING,
    "streaming": State.RUNNING,
    "processing": State.RUNNING,
    "complete": State.SUCCEEDED,
    "completed": State.SUCCEEDED,
    "success": State.SUCCEEDED,
    "error": State.FAILED,
}
# Lookups by name (an enum's constructor costs about ten times a dict's get).
_STATES = {**{s.value: s for s in State}, **STATE_SPELLINGS}
_PLACEHOLDERS = frozenset({"", "none", "null"})
_ID_NAMES = ("clip_id", "clipId", "id")


@dataclass(frozen=True, kw_only=True)
class ClipReport:
    """A clip as one webhook or get-music answer reports it. ``state`` is None when the clip
    names no state we know; ``mv`` is the model as the service wrote it (:attr:`model` is
    normalised); ``raw`` is the whole clip object, unknown fields included."""

    clip_id: str
    state: State | None
    title: str | None = None
    tags: str | None = None
    negative_tags: str | None = None
    lyrics: str | None = None
    gpt_description_prompt: str | None = None
    audio_url: str | None = None
    image_url: str | None = None
    video_url: str | None = None
    duration: float | None = None  # seconds
    style_weight: float | None = None
    weirdness_constraint: float | None = None
    mv: str | None = None
    created_at: str | None = None
    error_message: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> Model | None:
        """The model, normalised (``chirp-v5`` → ``sonic-v5``); ``None`` if unknown."""
        return normalise_model(self.mv)


# ---- clips -------------------------------------------------------------------------------------


def read_clips(data: Any) -> tuple[ClipReport, ...]:
    """A document's ``data``: a list of clip objects, one clip object sent bare, or nothing
    (``null`` or absent)."""
    if data is None:
        items: list[Any] = []
    elif isinstance(data, list):
        items = data
    elif isinstance(data, dict) and any(name in data for name in _ID_NAMES):
        items = [data]
    else:
        raise PayloadError(f"data is a JSON {json_kind(data)}, not a list of clips")
    clips = tuple(read_clip(item, index) for index, item in enumerate(items))
    if len({c.clip_id for c in clips}) != len(clips):
        raise PayloadError("data lists the same clip_id twice")
    return clips


def read_clip(item: Any, index: int = 0) -> ClipReport:
    """One clip object (``data[index]`` of its document) by the module's rules."""
    if not isinstance(item, dict):
        raise PayloadError(f"data[{index}] is a JSON {json_kind(item)}, not a clip object")
    clip_id = _first(item, _ID_NAMES, parse_identifier)
    if clip_id is None:
        raise PayloadError(f"data[{index}] has no clip_id")
    # On the ingest path: one dict lookup per field when the snake_case name has a value.
    fields: dict[str, Any] = {}
    get = item.get
    for name, names, read in _FIELDS:
        value = None
        for key in names:
            given = get(key)
            if given is not None and (value := read(given)) is not None:
                break
        fields[name] = value
    return ClipReport(clip_id=clip_id, raw=item, **fields)


def _first(
    item: Mapping[str, Any], names: tuple[str, ...], read: Callable[[Any], _T | None]
) -> _T | None:
    """The first of ``names`` whose value ``read`` accepts."""
    for name in names:
        value = item.get(name)
        if value is not None and (read_value := read(value)) is not None:
            return read_value
    return None


def parse_state(value: Any) -> State | None:
    """A documented state or another generation's spelling of one, in any case."""
    if not isinstance(value, str):
        return None
    return _STATES.get(value.strip().lower())


def parse_number(value: Any) -> float | None:
    """A finite number, given as a JSON number or a decimal string such as ``"104.88"``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range, 10**400 say
            return None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def parse_duration(value: Any) -> float | None:
    """Seconds, as :func:`parse_number` reads them; a negative duration is unknown."""
    number = parse_number(value)
    return number if number is not None and number >= 0 else None


def parse_text(value: Any) -> str | None:
    """A string with something in it; anything else (``""`` included) is absent."""
    return value if isinstance(value, str) and value else None


def _word(value: Any) -> str | None:
    if not isinstance(value, str) or value.strip().lower() in _PLACEHOLDERS:
        return None
    return value


def parse_url(value: Any) -> str | None:
    """A URL, unless it is a placeholder: ``""``, ``"None"``, ``"null"``, or one whose last
    path segment is ``None.<ext>`` or ``null.<ext>``."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text in _PLACEHOLDERS:
        return None
    if "none." in text or "null." in text:  # a cheap screen before the exact rule
        path = text.split("?", 1)[0].split("#", 1)[0].rstrip()
        stem, dot, extension = path.rpartition("/")[2].partition(".")
        if stem in _PLACEHOLDERS and stem and dot and extension:
            return None
    return value


def parse_identifier(value: Any) -> str | None:
    """A task or clip id: a non-blank string (trimmed) or an integer, of at most 256
    characters."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        text = str(value)  # at most MAX_INT_DIGITS digits: see clean()
        return text if len(text) <= _MAX_ID else None
    if isinstance(value, str) and value.strip() and len(value) <= _MAX_ID and is_text(value):
        return value.strip()
    return None


def parse_code(value: Any) -> int | None:
    """A status code: an integer below a billion, or ASCII digits saying one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -_MAX_CODE < value < _MAX_CODE else None
    if isinstance(value, str):
        text = value.strip()
        # isdigit() alone accepts "²" and other digits int() refuses
        if text.isascii() and text.isdigit() and len(text) <= 9:
            return int(text)
    return None


def json_kind(value: Any) -> str:
    """The JSON type of ``value``, for messages."""
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number"
    )


# Each field of ClipReport read from a clip object: the names it may come under (snake_case
# first, then its twins) and the rule of its value.
_FIELDS: tuple[tuple[str, tuple[str, ...], Callable[[Any], Any]], ...] = (
    ("state", ("state", "status"), parse_state),
    ("title", ("title",), parse_text),
    ("tags", ("tags",), parse_text),
    ("negative_tags", ("negative_tags", "negativeTags"), parse_text),
    ("lyrics", ("lyrics",), parse_text),
    ("gpt_description_prompt", ("gpt_description_prompt", "gptDescriptionPrompt"), parse_text),
    ("audio_url", ("audio_url", "audioUrl"), parse_url),
    ("image_url", ("image_url", "imageUrl"), parse_url),
    ("video_url", ("video_url", "videoUrl"), parse_url),
    ("duration", ("duration",), parse_duration),
    ("style_weight", ("style_weight", "styleWeight"), parse_number),
    ("weirdness_constraint", ("weirdness_constraint", "weirdnessConstraint"), parse_number),
    ("mv", ("mv", "model_name", "modelName"), _word),
    ("created_at", ("created_at", "createdAt"), _word),
    ("error_message", ("error_message", "errorMessage"), _word),
)


# ---- JSON --------------------------------------------------------------------------------------


def load(body: bytes) -> Any:
    """``body`` as JSON, cleaned as the module docstring says."""
    document = _fast_load(body)
    if document is not _SLOW:
        return document
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("body is not UTF-8") from None
    return _load(text)


def clean(value: object) -> Any:
    """``value`` as :func:`load` would have read it: what JSON cannot carry faithfully (and
    any other Python object) as ``null``, tuples as lists; :class:`PayloadError` when it nests
    deeper than :data:`MAX_DEPTH` levels."""
    return _clean(value, 0, True)


def is_text(value: str) -> bool:
    """Whether ``value`` is text every store keeps: Unicode (no lone surrogate, which UTF-8
    cannot encode) without a NUL (which PostgreSQL's text and jsonb refuse)."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_UNTEXT = re.compile("[\x00\ud800-\udfff]")


def as_text(value: str) -> str:
    """``value`` with what no store keeps (see :func:`is_text`: a NUL, a lone surrogate; a
    Python string holds no other surrogate) replaced by U+FFFD: for text from elsewhere that
    is written whatever it holds, such as a handler's error."""
    return value if is_text(value) else _UNTEXT.sub("\ufffd", value)


def _fast_load(body: bytes) -> Any:
    """``body`` read by orjson when that gives what :func:`_load` would, else :data:`_SLOW`.

    orjson refuses (so the careful path decides) everything :func:`_load` must clean: invalid
    UTF-8, lone surrogates, ``NaN``/``Infinity``, floats beyond the range. Three differences
    remain, checked on the bytes: orjson reads ``\\u0000`` as a NUL (such a body takes the
    careful path), an integer of 20 or more digits becomes a float in orjson (any run of 19
    digits takes the careful path), and orjson nests far deeper than :data:`MAX_DEPTH` (a body
    with more brackets than that is walked)."""
    if _NUL_ESCAPE in body or _LONG_DIGITS in body.translate(_DIGIT_MAP):
        return _SLOW
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _SLOW
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        return _clean(document, 0, False)
    return document


def _load(text: str) -> Any:
    """``text`` as JSON, cleaned as the module docstring says."""
    try:
        document = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except ValueError:  # JSONDecodeError is a ValueError
        raise PayloadError("body is not JSON") from None
    except RecursionError:  # (orjson stops at 1,024 levels, Python's parser near 1,000)
        raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels") from None
    return _clean(document, 0, _UNTEXT_ESCAPE.search(text) is not None)


def _no_constant(name: str) -> None:
    return None  # NaN, Infinity, -Infinity: not JSON numbers


def _finite_float(text: str) -> float | None:
    number = float(text)
    return number if math.isfinite(number) else None


def _bounded_int(text: str) -> int | None:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return None
    try:
        return int(text)
    except ValueError:  # the interpreter's limit was set lower than ours
        return None


def _clean(value: Any, depth: int, surrogates: bool) -> Any:
    """``surrogates``: whether a string may hold what is not text (a surrogate or a NUL: what
    a JSON parser made cannot hold anything else to clean; a Python caller's value can)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value if not surrogates or is_text(value) else None
    if isinstance(value, int):
        return value if -_INT_LIMIT < value < _INT_LIMIT else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict | list | tuple | Mapping):
        if depth >= MAX_DEPTH:
            raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels")
        if not isinstance(value, Mapping):
            return [_clean(v, depth + 1, surrogates) for v in value]
        return {
            k: _clean(v, depth + 1, surrogates)
            for k, v in value.items()
            if isinstance(k, str) and (not surrogates or is_text(k))
        }
    return None
