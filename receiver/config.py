"""The config file's shape, written once as typed msgspec Structs, and the check of a whole file.

``receiver.toml`` is one document: the receiver's own tables (``[receiver]``, ``[worker]``,
``[reconcile]``, ``[retention]``, ``[network]``), ``[[routes]]``, ``[handlers.<name>]`` paths,
and the table of each handler that declares one (``[notify]``, ``[follow_up]``). Every table is
a frozen, keyword-only :class:`Table` that refuses unknown keys. A value that needs parsing (a
duration, a database or media location, a network, secrets) is a :class:`Domain` type, parsed
once on the way in. In a route, each handler item is a union tagged by ``name`` with one member
per registered handler, whose ``options`` are that handler's declared Struct (any table for a
handler that declares none; see :mod:`receiver.registry`).

:func:`check` converts a whole parsed file in one pass; any failure is a :class:`ConfigError`
whose message names the path of the bad key (``routes[0].handlers[0].options.imgae: unknown
option``). :func:`schema` is the same shape as JSON Schema. Nothing here reads a file, opens a
database or imports a handler.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, Union

import msgspec
import msgspec.inspect as mi

from receiver.errors import SettingsError
from receiver.signatures import Scheme, parse_schemes

if TYPE_CHECKING:
    from typing import Self

    from receiver.registry import Registry

T = TypeVar("T")
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class ConfigError(SettingsError):
    """A value of the configuration does not fit its schema; ``path`` names where."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class FieldError(ValueError):
    """Raised by a ``__post_init__`` to blame one field (``field`` may be a path below the
    Struct: ``routes[1].name``) rather than the whole table."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class Table(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A table of the config file, or a handler's options: unknown keys refused, values frozen
    once checked. msgspec inherits those two, not ``kw_only``: a subclass says
    ``class MyOptions(Table, kw_only=True, frozen=True)`` (frozen repeated for type checkers)."""


# ---- values with constraints: the description is also the error's and the JSON Schema's ----

_FINITE = sys.float_info.max
PositiveInt = Annotated[int, msgspec.Meta(gt=0, description="a positive integer")]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0, description="an integer >= 0")]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0, le=_FINITE, description="a positive number")]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=_FINITE,
                                        description="a number of seconds >= 0")]
Fraction = Annotated[float, msgspec.Meta(ge=0, lt=1, description="a number in [0, 1)")]
Text = Annotated[str, msgspec.Meta(min_length=1, description="a non-empty string")]
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]",
                                      description="an http(s) URL")]


class Domain:
    """A value parsed from its text by :meth:`parse` on the way in (msgspec's ``dec_hook``).

    A subclass says what it accepts in ``description`` (error messages) and ``json_schema``;
    :meth:`parse` raises ``ValueError`` with a message that shows the bad value.
    """

    description: ClassVar[str] = "a value"
    json_schema: ClassVar[dict[str, Any]] = {}

    @classmethod
    def parse(cls, value: object) -> Self:
        raise NotImplementedError

    def plain(self) -> object:
        """The value as a plain Python value (``str``, ``bool``, ``float``...)."""
        return self


class Flag(int, Domain):
    """A yes-or-no setting: true or false, or (from the environment) 1/0, yes/no, on/off."""

    description = "1 or 0 (true or false)"
    json_schema: ClassVar[dict[str, Any]] = {
        "description": "true or false", "anyOf": [{"type": "boolean"}, {"enum": [1, 0]}],
    }
    words: ClassVar[dict[str, bool]] = {
        "1": True, "true": True, "yes": True, "on": True,
        "0": False, "false": False, "no": False, "off": False,
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        if isinstance(value, bool):
            return cls(value)
        meaning = cls.words.get(str(value).strip().lower()) if isinstance(value, str | int) \
            else None
        if meaning is None:
            raise ValueError(f"must be {cls.description}, got {shown(value)}")
        return cls(meaning)

    def plain(self) -> bool:
        return bool(self)


class Choice(str, Domain):
    """One of a few words, in any case (``H11`` is ``h11``): a subclass lists ``choices``."""

    choices: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls) -> None:
        cls.description = "one of " + ", ".join(cls.choices)
        cls.json_schema = {"enum": list(cls.choices)}

    @classmethod
    def parse(cls, value: object) -> Self:
        text = value.strip().lower() if isinstance(value, str) else None
        if text not in cls.choices:
            raise ValueError(f"unknown value {shown(value)} (choose from "
                             f"{', '.join(cls.choices)})")
        return cls(text)

    def plain(self) -> str:
        return str(self)


class LogFormat(Choice):
    choices = ("auto", "json", "console")


class LogLevel(Choice):
    choices = ("debug", "info", "warning", "error")


class HttpParser(Choice):
    choices = ("httptools", "h11")


class Synchronous(Choice):
    choices = ("normal", "full")


class WorkerMode(Choice):
    choices = ("inprocess", "off")


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdSMHD]?)\s*$")


class Duration(float, Domain):
    """Seconds, written ``90d``, ``12h``, ``30m``, ``45s`` or as a number."""

    description = "a duration like 90d, 12h or 30m"
    json_schema: ClassVar[dict[str, Any]] = {
        "description": "a duration: 90d, 12h, 30m, 45s, or a number of seconds",
        "anyOf": [{"type": "number", "exclusiveMinimum": 0},
                  {"type": "string", "pattern": _DURATION.pattern}],
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        match = _DURATION.match(str(value)) if isinstance(value, str | int | float) else None
        if isinstance(value, bool) or match is None:
            raise ValueError(f"expected {cls.description}, got {shown(value)}")
        seconds = float(match[1]) * DURATION_UNITS[match[2].lower()]
        if not seconds > 0:
            raise ValueError(f"expected a positive duration, got {shown(value)}")
        return cls(seconds)


class Secrets(tuple[str, ...], Domain):
    """One secret or several: a list, or a comma-separated string (a rotation)."""

    description = "a secret, a list of secrets, or secrets separated by commas"
    json_schema: ClassVar[dict[str, Any]] = {
        "description": description,
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        items = value if isinstance(value, list) else str(value).split(",")
        if not all(isinstance(item, str) for item in items):
            raise ValueError(f"expected {cls.description}")
        secrets = cls(item.strip() for item in items if item.strip())
        if not secrets:
            raise ValueError("holds no secret")
        return secrets


class Schemes(tuple[Scheme, ...], Domain):
    """Signature schemes: a list, or names separated by commas."""

    choices = tuple(s.value for s in Scheme if s is not Scheme.NONE)
    description = f"signature schemes, from {', '.join(choices)}"
    json_schema: ClassVar[dict[str, Any]] = {
        "description": description,
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"enum": list(choices)}}],
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        try:
            return cls(parse_schemes(text))
        except ValueError as exc:
            raise ValueError(f"{exc} (choose from {', '.join(cls.choices)})") from None


DB_SCHEMES = ("postgresql", "postgres")


class Database(str, Domain):
    """A SQLite file (a path, or ``sqlite:///path``) or a ``postgresql://`` URL."""

    description = "a path or a postgresql:// URL"
    json_schema: ClassVar[dict[str, Any]] = {
        "description": "a SQLite file (a path or sqlite:///path) or postgresql://user:pass@host/db",
        "type": "string", "minLength": 1,
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        text = str(value) if isinstance(value, str | Path) else ""
        if not text:
            raise ValueError(f"expected {cls.description}, got {shown(value)}")
        scheme, sep, rest = text.partition("://")
        if sep and "/" not in scheme and "\\" not in scheme and not (
            scheme.lower() in DB_SCHEMES or (scheme.lower() == "sqlite" and rest)
        ):
            raise ValueError(f"unknown database scheme {scheme!r} (use a file path, "
                             "sqlite:///path or postgresql://user:password@host/db)")
        return cls(text)

    @property
    def url(self) -> str | None:
        """The PostgreSQL URL, or None for a SQLite file."""
        return str(self) if self.partition("://")[0].lower() in DB_SCHEMES else None

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None for PostgreSQL."""
        if self.url is not None:
            return None
        scheme, sep, rest = self.partition("://")
        if sep and scheme.lower() == "sqlite":
            return Path(rest[1:] if rest.startswith("/") else rest)
        return Path(self)


OBJECT_STORE_SCHEMES = ("s3", "gs", "az")


class Media(str, Domain):
    """Where media live: a path or ``file:///abs/path`` (a local folder), or an object store
    (``s3://bucket/prefix``, ``gs://``, ``az://``)."""

    description = "a path, file:///path, or " + ", ".join(f"{s}://..." for s in
                                                           OBJECT_STORE_SCHEMES)
    json_schema: ClassVar[dict[str, Any]] = {
        "description": description, "type": "string", "minLength": 1,
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        text = str(value).strip() if isinstance(value, str | Path) else ""
        if not text:
            raise ValueError(f"expected {cls.description}, got {shown(value)}")
        scheme, sep, rest = text.partition("://")
        if sep and scheme.lower() == "file" and not rest.startswith("/"):
            raise ValueError("a file:// URL needs an absolute path (file:///...)")
        if sep and scheme.lower() not in ("file", *OBJECT_STORE_SCHEMES):
            stores = ", ".join(f"{s}://" for s in OBJECT_STORE_SCHEMES)
            raise ValueError(f"{scheme.lower()!r} is not a media store (a path, file://, "
                             f"or {stores})")
        return cls(text)

    @property
    def url(self) -> str | None:
        """The object store's URL, or None for a local folder."""
        scheme, sep, _ = self.partition("://")
        return self.rstrip("/") if sep and scheme.lower() != "file" else None

    @property
    def folder(self) -> Path | None:
        """The local folder, or None for an object store."""
        if self.url is not None:
            return None
        return Path(self.removeprefix("file://"))


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Network(str, Domain):
    """An IPv4 or IPv6 network (``127.0.0.0/8``, ``fd00::/8``; one address is a /32 or /128)."""

    description = "a network such as 127.0.0.0/8"
    json_schema: ClassVar[dict[str, Any]] = {"description": description, "type": "string"}

    @classmethod
    def parse(cls, value: object) -> Self:
        try:
            network = ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError as exc:
            raise ValueError(f"{shown(value)} is not a network ({exc})") from None
        return cls(network)

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self, strict=False)


def _decode(type_: type, value: object) -> object:
    if isinstance(type_, type) and issubclass(type_, Domain):
        return type_.parse(value)
    raise NotImplementedError(f"{type_} is not a config type")


def _schema_of(type_: type) -> dict[str, Any]:
    if isinstance(type_, type) and issubclass(type_, Domain):
        return dict(type_.json_schema)
    raise NotImplementedError(f"{type_} is not a config type")


# ---- the receiver's own tables ----------------------------------------------------------------

class ReceiverTable(Table, kw_only=True, frozen=True):
    """``[receiver]``: the settings the environment may also give (the same keys as
    :data:`receiver.settings.ENV_KEYS`; the environment wins, flags win over both). A key left
    out is None: the setting keeps its default."""

    webhook_secret: Secrets | None = None
    db: Database | None = None
    db_synchronous: Synchronous | None = None
    db_lock_timeout_s: PositiveFloat | None = None
    media_dir: Text | None = None
    media: Media | None = None
    max_body_bytes: PositiveInt | None = None
    signature_tolerance_s: PositiveInt | None = None
    schemes: Schemes | None = None
    admin_token: str | None = None
    admin_token_file: Text | None = None
    insecure_open_admin: Flag | None = None
    log_format: LogFormat | None = None
    log_level: LogLevel | None = None
    log_level_third_party: LogLevel | None = None
    header_timeout_s: PositiveFloat | None = None
    body_timeout_s: PositiveFloat | None = None
    keepalive_timeout_s: PositiveFloat | None = None
    max_connections: PositiveInt | None = None
    http_parser: HttpParser | None = None
    public_url: HttpUrl | None = None
    worker: WorkerMode | None = None
    worker_concurrency: PositiveInt | None = None
    sonic_api_base_url: HttpUrl | None = None
    sonic_api_key: str | None = None


class WorkerTable(Table, kw_only=True, frozen=True):
    """``[worker]``: the job runner and its retry policy. ``concurrency`` yields to
    ``RECEIVER_WORKER_CONCURRENCY`` (or ``[receiver] worker_concurrency``) when that is set."""

    concurrency: PositiveInt | None = None
    lease_s: PositiveFloat = 60.0
    poll_s: PositiveFloat = 0.25
    drain_s: PositiveFloat = 30.0
    max_attempts: PositiveInt = 5
    backoff: Annotated[tuple[PositiveFloat, ...], msgspec.Meta(
        min_length=1, description="a non-empty list of seconds")] = (2.0, 10.0, 60.0, 300.0)
    jitter: Fraction = 0.2


class ReconcileTable(Table, kw_only=True, frozen=True):
    """``[reconcile]``: the server polls get-music for tasks stale for ``stale_s``, every
    ``every_s`` (never when left out)."""

    every_s: PositiveFloat | None = None
    stale_s: PositiveFloat = 600.0


RETENTION_KEEP_IDS_S = 400 * 86400.0
RETENTION_EVERY_S = 3600.0


class RetentionTable(Table, kw_only=True, frozen=True):
    """``[retention]``: raw bodies and finished jobs older than ``older_than`` go (never when
    left out); delivery ids stay ``keep_ids`` (400d); the sweep runs ``every`` (1h)."""

    older_than: Duration | None = None
    keep_ids: Duration | None = None
    every: Duration | None = None

    def __post_init__(self) -> None:
        keep = RETENTION_KEEP_IDS_S if self.keep_ids is None else self.keep_ids
        if self.older_than is not None and keep < self.older_than:
            raise FieldError("keep_ids", "must be at least older_than")


class NetworkTable(Table, kw_only=True, frozen=True):
    """``[network]``: addresses downloads (and ``forward``) may reach besides public ones."""

    allow_networks: tuple[Network, ...] = ()
    allow_hosts: tuple[Text, ...] = ()


class HandlerPath(Table, kw_only=True, frozen=True):
    """``[handlers.<name>]``: a handler registered from a ``module:function`` path."""

    path: Annotated[str, msgspec.Meta(pattern=r"^[\w.]+:[\w.]+$",
                                      description='a "module:function" path')]


# ---- routes ----------------------------------------------------------------------------------


class Trigger(enum.StrEnum):
    """A task transition a route can run handlers on."""

    STREAMING = "task.streaming"
    SUCCEEDED = "task.succeeded"
    FAILED = "task.failed"


Names = str | list[str]


class HandlerItemBase(Table, kw_only=True, frozen=True):
    """What every handler item of a route has besides its name and options."""

    kind: ClassVar[str] = "handler"  # how errors name an unknown tag of these items
    max_attempts: PositiveInt | None = None


class HandlerItem(HandlerItemBase, kw_only=True, frozen=True):
    """A route's handler as written, its options not checked against the handler's own."""

    name: Text
    options: dict[str, Any] = {}


class RouteTable(Table, kw_only=True, frozen=True):
    """One ``[[routes]]`` table: which handlers run on which transitions."""

    on: Trigger | Annotated[list[Trigger], msgspec.Meta(
        min_length=1, description="a non-empty list of triggers")]
    handlers: Annotated[list[Text | HandlerItem], msgspec.Meta(
        min_length=1, description="a non-empty list of handlers")]
    name: Text | None = None  # route-<index> when left out
    task_type: Names = []
    platform: Names = []
    tags: Names = []


def route_names(routes: Sequence[RouteTable]) -> list[str]:
    """Each route's name, ``route-<index>`` for one without."""
    return [route.name or f"route-{index}" for index, route in enumerate(routes)]


class RoutesFile(Table, kw_only=True, frozen=True):
    """The ``[[routes]]`` of a file, alone (the router's view; :func:`check` sees the rest).
    None: no routes were written (the default routes apply)."""

    routes: list[RouteTable] | None = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for index, name in enumerate(route_names(self.routes or [])):
            if name in seen:
                raise FieldError(f"routes[{index}].name", f"two routes are named {name!r}")
            seen.add(name)


class CoreFile(RoutesFile, kw_only=True, frozen=True):
    """The tables of the file that belong to the receiver itself."""

    receiver: ReceiverTable = msgspec.field(default_factory=ReceiverTable)
    worker: WorkerTable = msgspec.field(default_factory=WorkerTable)
    reconcile: ReconcileTable = msgspec.field(default_factory=ReconcileTable)
    retention: RetentionTable = msgspec.field(default_factory=RetentionTable)
    network: NetworkTable = msgspec.field(default_factory=NetworkTable)
    handlers: dict[str, HandlerPath] = {}


CORE_TABLES = frozenset(field.encode_name for field in msgspec.structs.fields(CoreFile))


def file_type(registry: Registry) -> type[CoreFile]:
    """The whole file's Struct for the handlers of ``registry``: each route's handler items
    checked against the handler they name, and each declared handler table as a table."""
    items: list[Any] = []
    bare: list[str] = []  # handlers that may be named alone, without options
    extra: list[tuple[str, Any, Any]] = []
    for name in registry.names:
        spec = registry.spec(name)
        options: Any = spec.options if spec.options is not None else dict[str, Any]
        optional = spec.options is None or not _required(spec.options)
        default = msgspec.field(default_factory=options) if optional else msgspec.NODEFAULT
        items.append(msgspec.defstruct(
            f"handler.{name}", [("options", options, default)], bases=(HandlerItemBase,),
            tag_field="name", tag=name, kw_only=True, module=__name__))
        if optional:
            bare.append(name)
        if spec.table is not None:
            if name in CORE_TABLES:
                raise SettingsError(f"handler {name!r} declares a table, but [{name}] is the "
                                    "receiver's own")
            extra.append((name, spec.table, _default_of(spec.table)))
    members: list[Any] = [Literal[tuple(bare)]] if bare else []
    item: Any = Union[tuple(members + items)] if members or items else Text  # noqa: UP007
    route = msgspec.defstruct("Route", [("handlers", Annotated[list[item], msgspec.Meta(
        min_length=1, description="a non-empty list of handlers")])], bases=(RouteTable,),
        kw_only=True, module=__name__)
    file: Any = msgspec.defstruct(
        "ReceiverConfig", [("routes", list[route] | None, None), *extra],  # type: ignore[valid-type]
        bases=(CoreFile,), kw_only=True, module=__name__)
    return file  # type: ignore[no-any-return]


def check(raw: Mapping[str, Any], registry: Registry) -> CoreFile:
    """The whole parsed file, checked against the schema of ``registry``'s handlers; raises
    :class:`ConfigError` naming the first bad key, or :class:`SettingsError` for a route that
    names a handler that is not registered (and no handler is)."""
    parsed: CoreFile = convert(raw, file_type(registry))
    if not registry.names and parsed.routes:
        raise ConfigError("routes[0].handlers[0]", "unknown handler (none is registered)")
    return parsed


def schema(registry: Registry) -> dict[str, Any]:
    """The JSON Schema (2020-12) of the whole file for the handlers of ``registry``."""
    document = msgspec.json.schema(file_type(registry), schema_hook=_schema_of)
    return {"$schema": JSON_SCHEMA_DIALECT, "title": "receiver.toml",
            "description": "The sonic-receiver config file (sonic-receiver config schema)",
            **document}


def convert(raw: object, type_: Any, *, path: str = "", strict: bool = True,
            names: Mapping[str, str] | None = None) -> Any:
    """``raw`` as ``type_`` (``strict=False``: strings convert to numbers and booleans, for
    the environment); raises :class:`ConfigError` with the path of the first bad value below
    ``path``, or below ``names[key]`` for a top-level key renamed there (an environment
    variable, a flag)."""
    try:
        return msgspec.convert(raw, type_, strict=strict, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        raise _explain(exc, raw, type_, path, names or {}) from None


def _required(type_: type) -> bool:
    return any(field.required for field in msgspec.structs.fields(type_))


def _default_of(type_: type) -> Any:
    return msgspec.NODEFAULT if _required(type_) else msgspec.field(default_factory=type_)


# ---- errors: msgspec's message and location, said with the path and the value ----------------

_MESSAGE = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<where>[^`]*)`)?$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
Segment = str | int


def _explain(exc: msgspec.ValidationError, raw: object, type_: Any, prefix: str,
             names: Mapping[str, str]) -> ConfigError:
    match = _MESSAGE.match(str(exc))
    what = match["what"] if match else str(exc)
    segments = _segments(match["where"] or "" if match else "")
    info = mi.type_info(type_)
    found, value = _walk(info, raw, segments)
    reason = what
    if unknown := re.match(r"Object contains unknown field `(.*)`$", what):
        in_options = "options" in (*segments, *prefix.split("."))
        at_top = not segments and not prefix
        reason = ("unknown option" if in_options else
                  "unknown table" if at_top and isinstance(value, Mapping)
                  and isinstance(value.get(unknown[1]), Mapping) else "unknown key")
        segments.append(unknown[1])
    elif missing := re.match(r"Object missing required field `(.*)`$", what):
        reason = "is required"
        segments.append(missing[1])
    elif what.startswith("Invalid enum value"):
        reason = _unknown_value(found, value)
    elif what.startswith("Invalid value"):  # a tag naming no member of a tagged union
        parent, _ = _walk(info, raw, segments[:-1])
        reason = _unknown_value(parent, value)
    elif what.startswith("Expected") and found is not None:
        reason = f"expected {describe(found)}, got {shown(value)}"
    elif isinstance(exc.__cause__, FieldError):
        segments += _segments("." + exc.__cause__.field)
    return ConfigError(_path(prefix, segments, names), reason)


def _segments(where: str) -> list[Segment]:
    return [key if key else (int(index) if index.isdigit() else "...")
            for key, index in _SEGMENT.findall(where)]


def _path(prefix: str, segments: Sequence[Segment], names: Mapping[str, str]) -> str:
    if segments and isinstance(segments[0], str) and segments[0] in names:
        prefix, segments = names[segments[0]], segments[1:]
    text = prefix
    for segment in segments:
        if isinstance(segment, int) or segment == "...":
            text += f"[{segment}]"
        else:
            text += f".{segment}" if text else segment
    return text


def _walk(info: mi.Type, raw: object, segments: Sequence[Segment]) -> tuple[mi.Type | None,
                                                                             object]:
    """The type and the raw value at ``segments`` below ``info`` and ``raw``."""
    current: mi.Type | None = info
    for segment in segments:
        current = _unwrap(current, raw, segment)
        if isinstance(segment, int):
            raw = raw[segment] if isinstance(raw, list) and segment < len(raw) else None
            if isinstance(current, mi.ListType | mi.VarTupleType | mi.SetType
                          | mi.FrozenSetType):
                current = current.item_type
            elif isinstance(current, mi.TupleType) and segment < len(current.item_types):
                current = current.item_types[segment]
            else:
                current = None
        else:
            raw = raw.get(segment) if isinstance(raw, Mapping) else None
            if isinstance(current, mi.StructType):
                current = next((f.type for f in current.fields if f.encode_name == segment),
                               None)
            elif isinstance(current, mi.DictType):
                current = current.value_type
            else:
                current = None
    return current, raw


def _unwrap(info: mi.Type | None, raw: object, segment: Segment) -> mi.Type | None:
    """``info`` without its constraints, and the member of a union that ``segment`` (and
    ``raw``, for a tagged union) leads into."""
    if isinstance(info, mi.Metadata):
        return _unwrap(info.type, raw, segment)
    if not isinstance(info, mi.UnionType):
        return info
    members = [m.type if isinstance(m, mi.Metadata) else m for m in info.types]
    if isinstance(segment, int):
        return next((m for m in members if isinstance(
            m, mi.ListType | mi.VarTupleType | mi.TupleType | mi.SetType | mi.FrozenSetType)),
            None)
    tables = [m for m in members if isinstance(m, mi.StructType | mi.DictType)]
    for member in tables:
        if (isinstance(member, mi.StructType) and member.tag_field is not None
                and isinstance(raw, Mapping) and raw.get(member.tag_field) == member.tag):
            return member
    untagged = [m for m in tables if not (isinstance(m, mi.StructType) and m.tag_field)]
    return untagged[0] if untagged else None


def _unknown_value(info: mi.Type | None, value: object) -> str:
    """``unknown trigger 'x' (choose from ...)``, from the choices ``info`` allows."""
    if isinstance(info, mi.Metadata):
        info = info.type
    members = info.types if isinstance(info, mi.UnionType) else (info,)
    noun, choices, tagged, others = "value", set[str](), set[str](), list[str]()
    for member in members:
        if isinstance(member, mi.EnumType):
            noun = member.cls.__name__.lower()
            choices |= {str(m.value) for m in member.cls}
        elif isinstance(member, mi.LiteralType):
            choices |= {str(v) for v in member.values}
        elif isinstance(member, mi.StructType) and member.tag is not None:
            noun = getattr(member.cls, "kind", noun)
            tagged.add(str(member.tag))
        elif member is not None and not isinstance(member, mi.NoneType):
            others.append(describe(member))
    if value in tagged - choices:  # a handler whose options have required keys, named alone
        return f'{noun} {value!r} needs its options (write {{ name = "{value}", options = ' \
               "{ ... } })"
    listed = ", ".join([*sorted(choices | tagged), *(f"or {o}" for o in others)]) or "none"
    return f"unknown {noun} {shown(value)} (choose from {listed})"


def describe(info: mi.Type) -> str:
    """What a value of ``info`` must be, in words (``a positive integer``)."""
    if isinstance(info, mi.Metadata):
        described = (info.extra_json_schema or {}).get("description")
        return str(described) if described else describe(info.type)
    if isinstance(info, mi.UnionType):
        return " or ".join(describe(m) for m in info.types if not isinstance(m, mi.NoneType))
    if isinstance(info, mi.IntType | mi.FloatType):
        noun = "integer" if isinstance(info, mi.IntType) else "number"
        if info.gt == 0 or (info.ge == 1 and noun == "integer"):
            return f"a positive {noun}"
        bounds = [f"{op} {bound}" for op, bound in
                  ((">", info.gt), (">=", info.ge), ("<", info.lt), ("<=", info.le))
                  if bound is not None]
        return " ".join([f"{'an' if noun == 'integer' else 'a'} {noun}", " and ".join(bounds)]
                        ).strip()
    if isinstance(info, mi.BoolType):
        return "true or false"
    if isinstance(info, mi.StrType):
        return f"a string matching {info.pattern}" if info.pattern else "a string"
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(map(str, info.values))
    if isinstance(info, mi.EnumType):
        return "one of " + ", ".join(sorted(str(m.value) for m in info.cls))
    if isinstance(info, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return f"a list ({describe(info.item_type)} each)"
    if isinstance(info, mi.StructType | mi.DictType):
        return "a table"
    if isinstance(info, mi.CustomType) and issubclass(info.cls, Domain):
        return info.cls.description
    return "something else"


def shown(value: object) -> str:
    """``value`` as an error message shows it: TOML's spelling, never very long."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

