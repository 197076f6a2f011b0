"""The config file's shape, written once as typed msgspec Structs.

``receiver.toml`` is one document: the receiver's own tables (``[receiver]``, ``[worker]``,
``[reconcile]``, ``[retention]``, ``[network]``, ``[admin]``, ``[alerts]``, ``[deadlines]``,
``[providers.<name>]``),
``[[routes]]``, ``[handlers.<name>]`` paths, and the table of each handler that declares one
(``[notify]``, ``[follow_up]``). Every table is a :class:`receiver.conversion.Table`; the
receiver's values that need parsing (database and media locations, networks, secrets, tokens,
proxies, signature schemes, choices) are :class:`receiver.conversion.Domain` types defined
here. In a route, each handler item is a union tagged by ``name`` with one member per
registered handler, whose ``options`` are that handler's declared Struct: :mod:`receiver.schema`
composes the whole file for the handlers installed and checks it. Nothing here reads a file,
opens a database or imports a handler.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, cast

import msgspec

from receiver.conversion import (
    Choice,
    Domain,
    Duration,
    FieldError,
    Flag,
    Fraction,
    HttpUrl,
    Port,
    PositiveFloat,
    PositiveInt,
    Seconds,
    Table,
    Text,
    shown,
)
from receiver.signatures import PRECEDENCE, Scheme, parse_schemes

if TYPE_CHECKING:
    from typing import Self


# ---- the receiver's values ---------------------------------------------------------------------


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

    choices = tuple(s.value for s in PRECEDENCE)
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


def _pathlike(value: object, description: str, *, strip: bool = True) -> str:
    """``value`` as a non-empty path or URL's text; a NUL, which no file name or URL can
    hold (the system refuses it), refused here with the rest."""
    text = str(value) if isinstance(value, str | Path) else ""
    text = text.strip() if strip else text
    if not text:
        raise ValueError(f"expected {description}, got {shown(value)}")
    if "\x00" in text:
        raise ValueError(f"expected {description}, got {shown(value)}: it holds a NUL")
    return text


class Database(str, Domain):
    """A SQLite file (a path, or ``sqlite:///path``) or a ``postgresql://`` URL."""

    description = "a path or a postgresql:// URL"
    json_schema: ClassVar[dict[str, Any]] = {
        "description": "a SQLite file (a path or sqlite:///path) or postgresql://user:pass@host/db",
        "type": "string",
        "minLength": 1,
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        text = _pathlike(value, cls.description, strip=False)
        scheme, sep, rest = text.partition("://")
        if (
            sep
            and "/" not in scheme
            and "\\" not in scheme
            and not (scheme.lower() in DB_SCHEMES or (scheme.lower() == "sqlite" and rest))
        ):
            raise ValueError(
                f"unknown database scheme {scheme!r} (use a file path, "
                "sqlite:///path or postgresql://user:password@host/db)"
            )
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

    description = "a path, file:///path, or " + ", ".join(
        f"{s}://..." for s in OBJECT_STORE_SCHEMES
    )
    json_schema: ClassVar[dict[str, Any]] = {
        "description": description,
        "type": "string",
        "minLength": 1,
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        text = _pathlike(value, cls.description)
        scheme, sep, rest = text.partition("://")
        if sep and scheme.lower() == "file" and not rest.startswith("/"):
            raise ValueError("a file:// URL needs an absolute path (file:///...)")
        if sep and scheme.lower() not in ("file", *OBJECT_STORE_SCHEMES):
            stores = ", ".join(f"{s}://" for s in OBJECT_STORE_SCHEMES)
            raise ValueError(
                f"{scheme.lower()!r} is not a media store (a path, file://, or {stores})"
            )
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


class Folder(str, Domain):
    """A local folder: a path, never a URL (an object store is ``media``, ``RECEIVER_MEDIA``)."""

    description = "a folder's path"
    json_schema: ClassVar[dict[str, Any]] = {"description": description, "type": "string",
                                             "minLength": 1}

    @classmethod
    def parse(cls, value: object) -> Self:
        text = _pathlike(value, cls.description)
        if "://" in text:
            raise ValueError(f"{shown(value)} is a URL, not a folder (an object store or a "
                             "file:// URL is media, RECEIVER_MEDIA)")
        return cls(text)


# An API key goes into a header as it is: no spaces, no line breaks.
ApiKey = Annotated[str, msgspec.Meta(pattern=r"^[^\s]+$", description="a key without spaces")]
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


MIN_TOKEN_LENGTH = 24
MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"  # noqa: S105
# What an example or a template leaves in a token: refused however long it is.
_PLACEHOLDER = re.compile(
    r"change[-_ ]?me|replace[-_ ]?me|placeholder|example|your[-_ ]?(admin[-_ ]?)?(token|secret)"
    r"|<[^>]*>|\$\{|xxxx|dummy|not[-_ ]?secret|insecure|password|redacted|todo|fixme",
    re.IGNORECASE)
_DISTINCT_CHARACTERS = 8  # fewer than this ("aaaa...", "abab...") is not a random token


def token_weakness(token: str) -> str | None:
    """Why ``token`` is too weak to guard the admin surface (never showing it), or None."""
    if len(token) < MIN_TOKEN_LENGTH:
        why = f"is too short ({len(token)} characters; at least {MIN_TOKEN_LENGTH})"
    elif _PLACEHOLDER.search(token):
        why = "looks like a placeholder"
    elif len(set(token)) < _DISTINCT_CHARACTERS:
        why = f"repeats too few characters ({len(set(token))} different ones)"
    else:
        return None
    return f"{why}: make a random one with {MAKE_TOKEN}"


class AdminToken(str, Domain):
    """An operator's token: at least 24 characters, not a placeholder. The value is a secret:
    an error says what is wrong with it, never the value."""

    description = f"a random token of at least {MIN_TOKEN_LENGTH} characters"
    json_schema: ClassVar[dict[str, Any]] = {
        "description": description, "type": "string", "minLength": MIN_TOKEN_LENGTH,
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        if not isinstance(value, str):
            raise ValueError(f"expected {cls.description}")
        token = value.strip()
        weakness = token_weakness(token)
        if weakness is not None:
            raise ValueError(weakness)
        return cls(token)

    def plain(self) -> str:
        return str(self)


class TrustedProxies(tuple[str, ...], Domain):
    """The proxies whose ``X-Forwarded-*`` headers are believed: addresses or networks
    (``10.0.0.0/8``, ``fd00::/8``), a list or separated by commas; ``*`` for any peer."""

    description = "addresses or networks (10.0.0.0/8), separated by commas, or *"
    json_schema: ClassVar[dict[str, Any]] = {
        "description": description,
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        items = value if isinstance(value, list) else str(value).split(",")
        found: list[str] = []
        for item in items:
            text = str(item).strip()
            if not text:
                continue
            if text == "*":
                found.append("*")
                continue
            try:
                found.append(str(ipaddress.ip_network(text, strict=False)))
            except ValueError:
                raise ValueError(f"{shown(text)} is not an address, a network or *") from None
        if not found:
            raise ValueError("names no proxy (give addresses, networks or *)")
        return cls(dict.fromkeys(found))


# ---- the receiver's own tables ----------------------------------------------------------------


class ReceiverTable(Table, kw_only=True, frozen=True):
    """``[receiver]``: the settings the environment may also give (the same keys as
    :data:`receiver.settings.ENV_KEYS`; the environment wins, flags win over both). A key left
    out is None: the setting keeps its default."""

    webhook_secret: Secrets | None = None
    db: Database | None = None
    db_synchronous: Synchronous | None = None
    db_lock_timeout_s: PositiveFloat | None = None
    media_dir: Folder | None = None
    media: Media | None = None
    max_body_bytes: PositiveInt | None = None
    signature_tolerance_s: PositiveInt | None = None
    schemes: Schemes | None = None
    admin_token: AdminToken | None = None
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
    trusted_proxies: TrustedProxies | None = None
    worker: WorkerMode | None = None
    worker_concurrency: PositiveInt | None = None
    web_restart_limit_s: PositiveFloat | None = None
    sonic_api_base_url: HttpUrl | None = None
    sonic_api_key: ApiKey | None = None
    port: Port | None = None
    web_concurrency: PositiveInt | None = None


class WorkerTable(Table, kw_only=True, frozen=True):
    """``[worker]``: the job runner and its retry policy. ``concurrency`` yields to
    ``RECEIVER_WORKER_CONCURRENCY`` (or ``[receiver] worker_concurrency``) when that is set."""

    concurrency: PositiveInt | None = None
    lease_s: PositiveFloat = 60.0
    poll_s: PositiveFloat = 0.25
    drain_s: PositiveFloat = 30.0
    max_attempts: PositiveInt = 5
    backoff: Annotated[
        tuple[PositiveFloat, ...],
        msgspec.Meta(min_length=1, description="a non-empty list of seconds"),
    ] = (2.0, 10.0, 60.0, 300.0)
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


class OperatorToken(Table, kw_only=True, frozen=True):
    """One ``[[admin.tokens]]`` item: an operator's own token (``token``, or ``token_file``
    holding it), so that the audit log names who did what."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[\w.@-]{1,64}$",
                                      description="a name of letters, digits, . _ @ -")]
    token: AdminToken | None = None
    token_file: Text | None = None

    def __post_init__(self) -> None:
        if (self.token is None) == (self.token_file is None):
            raise FieldError("token", "give token or token_file (one of them)")


class AdminTable(Table, kw_only=True, frozen=True):
    """``[admin]``: named operator tokens (besides ``RECEIVER_ADMIN_TOKEN``, named
    ``admin``), and how long a console session lasts: it ends after ``session_idle`` without
    a request, and ``session_max`` after the login whatever happens."""

    tokens: list[OperatorToken] = msgspec.field(default_factory=list)
    session_idle: Duration | None = None
    session_max: Duration | None = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for index, item in enumerate(self.tokens):
            if item.name in seen:
                raise FieldError(f"tokens[{index}].name", f"two tokens are named {item.name!r}")
            seen.add(item.name)


MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
# Defaults of Domain-typed fields, as the plain values they are (what the JSON schema shows).
ON = cast(Flag, True)


def span(seconds: float) -> Duration:
    return cast(Duration, seconds)



class RuleTable(Table, kw_only=True, frozen=True):
    """What every alert rule has: whether it runs, how far back it looks (``window``), and how
    long a firing alert stays quiet before it is sent again while it holds (``cooldown``)."""

    enabled: Flag = ON
    window: Duration = span(15 * MINUTE)
    cooldown: Duration = span(HOUR)


class SignaturesFailingRule(RuleTable, kw_only=True, frozen=True):
    """``[alerts.signatures_failing]``: at least ``threshold`` deliveries refused (bad
    signature or timestamp) within ``window``."""

    window: Duration = span(5 * MINUTE)
    threshold: PositiveInt = 10


class CallbacksStoppedRule(RuleTable, kw_only=True, frozen=True):
    """``[alerts.callbacks_stopped]``: a poll found task transitions that no callback brought
    (``threshold`` within ``window``), a task is overdue, or no delivery came for ``quiet``
    while a task older than that is open."""

    window: Duration = span(30 * MINUTE)
    threshold: PositiveInt = 1
    quiet: Duration = span(30 * MINUTE)


class TasksFailingRule(RuleTable, kw_only=True, frozen=True):
    """``[alerts.tasks_failing]``: more than ``share`` of the tasks that ended within
    ``window`` failed, once at least ``min_tasks`` ended."""

    window: Duration = span(HOUR)
    share: Fraction = 0.25
    min_tasks: PositiveInt = 10


class JobsDeadRule(RuleTable, kw_only=True, frozen=True):
    """``[alerts.jobs_dead]``: a job gave up within ``window`` (one alert per handler)."""


class DeliveriesQuarantinedRule(RuleTable, kw_only=True, frozen=True):
    """``[alerts.deliveries_quarantined]``: a verified delivery could not be used, within
    ``window``."""


class DownloadsAtRiskRule(RuleTable, kw_only=True, frozen=True):
    """``[alerts.downloads_at_risk]``: a task succeeded more than ``at_risk`` of the time its
    provider keeps files (``kept_for``, or ``kept_for_by_platform.<platform>``) ago, and its
    files are not kept yet. (One link may expire much sooner: ``download_audio`` asks
    get-music for fresh ones, its ``link_lifetime_s``; the files themselves go later.)"""

    kept_for: Duration = span(DAY)
    kept_for_by_platform: dict[Text, Duration] = msgspec.field(default_factory=dict)
    at_risk: Fraction = 0.5


class StorageRule(RuleTable, kw_only=True, frozen=True):
    """``[alerts.storage]``: less than ``min_free_mb`` free under the database or the media
    folder, a SQLite write-ahead log above ``max_wal_mb``, or the database unreachable from
    the evaluating process for ``unreachable_after``."""

    min_free_mb: PositiveInt = 1024
    max_wal_mb: PositiveInt = 1024
    unreachable_after: Duration = span(MINUTE)


class AlertsTable(Table, kw_only=True, frozen=True):
    """``[alerts]``: the receiver's own alerts, evaluated every ``every`` by one process, sent
    to ``targets`` (apprise URLs; ``RECEIVER_ALERT_TARGETS`` wins), each rule a table."""

    enabled: Flag = ON
    targets: Text | list[Text] = msgspec.field(default_factory=list)
    every: Duration = span(15.0)
    signatures_failing: SignaturesFailingRule = msgspec.field(default_factory=SignaturesFailingRule)
    callbacks_stopped: CallbacksStoppedRule = msgspec.field(default_factory=CallbacksStoppedRule)
    tasks_failing: TasksFailingRule = msgspec.field(default_factory=TasksFailingRule)
    jobs_dead: JobsDeadRule = msgspec.field(default_factory=JobsDeadRule)
    deliveries_quarantined: DeliveriesQuarantinedRule = msgspec.field(
        default_factory=DeliveriesQuarantinedRule
    )
    downloads_at_risk: DownloadsAtRiskRule = msgspec.field(default_factory=DownloadsAtRiskRule)
    storage: StorageRule = msgspec.field(default_factory=StorageRule)


# How long each task type may take from its creation to a terminal state: three times the
# slowest of the sandbox's realistic timings (3 min) and of the provider's usual 1-3 min for a
# generation, rounded up; uploads fetch audio first, concat only joins clips.
DEFAULT_DEADLINES: dict[str, float] = {
    "create_music": 10 * MINUTE,
    "extend_music": 10 * MINUTE,
    "cover_music": 10 * MINUTE,
    "persona_music": 10 * MINUTE,
    "concat_music": 5 * MINUTE,
    "extend_upload_music": 15 * MINUTE,
    "cover_upload_music": 15 * MINUTE,
}


class DeadlinesTable(Table, kw_only=True, frozen=True):
    """``[deadlines]``: a task still not terminal this long after its creation (its type's key,
    else ``default``) is reconciled at once, and marked overdue if it is still not; checked
    every ``every``. A type left out keeps :data:`DEFAULT_DEADLINES`."""

    enabled: Flag = ON
    every: Duration = span(10.0)
    default: Duration = span(15 * MINUTE)
    create_music: Duration | None = None
    extend_music: Duration | None = None
    cover_music: Duration | None = None
    persona_music: Duration | None = None
    concat_music: Duration | None = None
    extend_upload_music: Duration | None = None
    cover_upload_music: Duration | None = None

    def deadline_s(self, task_type: str | None) -> float:
        """The deadline of a task of ``task_type`` (None: unknown), in seconds."""
        if task_type in DEFAULT_DEADLINES:
            given = getattr(self, task_type)
            return float(given if given is not None else DEFAULT_DEADLINES[task_type])
        return float(self.default)

    @property
    def shortest_s(self) -> float:
        """The shortest deadline of any task: no task is overdue before it."""
        return min(self.deadline_s(t) for t in (*DEFAULT_DEADLINES, None))


# ---- providers ---------------------------------------------------------------------------------


class ProviderTable(Table, kw_only=True, frozen=True):
    """What every ``[providers.<name>]`` table has (:mod:`receiver.providers`): the provider
    takes callbacks at ``/webhooks/<name>`` while ``enabled``; ``api_key`` lets the receiver
    create its tasks (``POST /tasks``) and poll them (reconcile, confirmation); ``base_url``
    is its API (left out: the documented one); ``path_secret`` is a static secret path
    segment (``/webhooks/<name>/<secret>``) for tasks created elsewhere, where the provider
    authenticates nothing itself; ``confirm``: record a callback whose body nothing
    authenticates as unconfirmed, effective once a poll agrees (left out: the provider's
    default, yes wherever the body is not authenticated)."""

    enabled: Flag = ON
    api_key: Text | None = None
    base_url: HttpUrl | None = None
    path_secret: Secrets | None = None
    confirm: Flag | None = None


class SunoapiTable(ProviderTable, kw_only=True, frozen=True):
    """``[providers.sunoapi]`` (and the tables of the providers of its shape): ``concat_path``
    is the path of a concat endpoint, which the provider's docs do not name (left out:
    concat is refused)."""

    concat_path: Annotated[str, msgspec.Meta(pattern=r"^/[^\s?#]*$",
                                             description="a path starting with /")] | None = None


class KieTable(SunoapiTable, kw_only=True, frozen=True):
    """``[providers.kie]``: ``hmac_key`` is the account's webhookHmacKey; with it, every
    callback must carry its ``X-Webhook-Signature`` (over the task id and the time, not the
    body)."""

    hmac_key: Secrets | None = None


class ApiboxTable(SunoapiTable, kw_only=True, frozen=True):
    """``[providers.apibox]``: sunoapi.org's shape, failures called ``failed``."""


class PiapiTable(ProviderTable, kw_only=True, frozen=True):
    """``[providers.piapi]``: ``webhook_secret`` is sent with every task created here and
    must come back, in plain text, in each callback's ``x-webhook-secret`` (any of several:
    a rotation). ``model`` is the model tasks are created with."""

    webhook_secret: Secrets | None = None
    model: Text = "music-s"

    def __post_init__(self) -> None:
        if self.enabled and self.webhook_secret is None:
            raise FieldError("webhook_secret", "is required: PiAPI callbacks are checked by it")


class AimlapiTable(ProviderTable, kw_only=True, frozen=True):
    """``[providers.aimlapi]``: ``webhook_secret`` is the workspace's ``whsec_`` signing
    secret (Standard Webhooks; several: a rotation); ``model`` the model tasks are created
    with."""

    webhook_secret: Secrets | None = None
    model: Text = "suno/v4.5"

    def __post_init__(self) -> None:
        if self.enabled and self.webhook_secret is None:
            raise FieldError("webhook_secret", "is required: AIMLAPI callbacks are signed with it")


class ProvidersTable(Table, kw_only=True, frozen=True):
    """``[providers]``: the hosted APIs besides Sonic whose callbacks this receiver takes,
    each enabled by its table. Sonic is always served (``[receiver]`` configures it)."""

    sunoapi: SunoapiTable | None = None
    kie: KieTable | None = None
    apibox: ApiboxTable | None = None
    piapi: PiapiTable | None = None
    aimlapi: AimlapiTable | None = None

    def tables(self) -> dict[str, ProviderTable]:
        """The providers' tables that are written and enabled, by name."""
        return {f.encode_name: table for f in msgspec.structs.fields(self)
                if (table := getattr(self, f.name)) is not None and table.enabled}

    def secrets(self) -> list[str]:
        """Every secret value the tables hold (keys, path secrets, signing secrets)."""
        found: list[str] = []
        for table in self.tables().values():
            found += [table.api_key or "", *(table.path_secret or ())]
            found += [*(getattr(table, "hmac_key", None) or ()),
                      *(getattr(table, "webhook_secret", None) or ())]
        return [value for value in found if value]


class HandlerPath(Table, kw_only=True, frozen=True):
    """``[handlers.<name>]``: a handler registered from a ``module:function`` path."""

    path: Annotated[
        str, msgspec.Meta(pattern=r"^[\w.]+:[\w.]+$", description='a "module:function" path')
    ]


# ---- routes ----------------------------------------------------------------------------------


class Trigger(enum.StrEnum):
    """A task transition a route can run handlers on."""

    STREAMING = "task.streaming"
    SUCCEEDED = "task.succeeded"
    FAILED = "task.failed"


Names = str | list[str]


class HandlerItemBase(Table, kw_only=True, frozen=True):
    """What every handler item of a route has besides its name and options: its jobs' attempts
    (else the handler's declared default, else ``[worker] max_attempts``), and the handlers
    whose jobs of the same task it runs after (besides those providing what it needs), waiting
    for them at most ``after_wait_s`` from the job's creation."""

    kind: ClassVar[str] = "handler"  # how errors name an unknown tag of these items
    max_attempts: PositiveInt | None = None
    after: list[Text] = msgspec.field(default_factory=list)
    after_wait_s: Seconds = 900.0


class HandlerItem(HandlerItemBase, kw_only=True, frozen=True):
    """A route's handler as written, its options not checked against the handler's own."""

    name: Text
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class RouteTable(Table, kw_only=True, frozen=True):
    """One ``[[routes]]`` table: which handlers run on which transitions."""

    on: (
        Trigger
        | Annotated[
            list[Trigger], msgspec.Meta(min_length=1, description="a non-empty list of triggers")
        ]
    )
    handlers: Annotated[
        list[Text | HandlerItem],
        msgspec.Meta(min_length=1, description="a non-empty list of handlers"),
    ]
    name: Text | None = None  # route-<index> when left out
    task_type: Names = msgspec.field(default_factory=list)
    platform: Names = msgspec.field(default_factory=list)
    tags: Names = msgspec.field(default_factory=list)


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
    admin: AdminTable = msgspec.field(default_factory=AdminTable)
    alerts: AlertsTable = msgspec.field(default_factory=AlertsTable)
    deadlines: DeadlinesTable = msgspec.field(default_factory=DeadlinesTable)
    providers: ProvidersTable = msgspec.field(default_factory=ProvidersTable)
    handlers: dict[str, HandlerPath] = msgspec.field(default_factory=dict)


CORE_TABLES = frozenset(field.encode_name for field in msgspec.structs.fields(CoreFile))
