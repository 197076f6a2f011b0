"""Settings: read once at start-up from the environment, an optional TOML file and the command
line (in rising precedence), validated whole through the file's schema, and frozen.

Every variable is documented in the README; its key in the file's ``[receiver]`` table is in
:data:`ENV_KEYS`, and its type in :class:`receiver.config.ReceiverTable`: the file's values
are checked as written, the environment's strings converted to those types. A bad value raises
:class:`receiver.errors.SettingsError` with one line naming where it came from (the key's path
in the file, the variable or the flag); the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from receiver.config import (
    RETENTION_EVERY_S,
    RETENTION_KEEP_IDS_S,
    AdminTable,
    AlertsTable,
    CoreFile,
    Database,
    DeadlinesTable,
    Media,
    ProvidersTable,
    ReceiverTable,
    WorkerTable,
    token_weakness,
)
from receiver.conversion import Domain, convert
from receiver.errors import SettingsError
from receiver.jobs import DEFAULT_CONCURRENCY, RetryPolicy
from receiver.redact import url_secrets
from receiver.signatures import Scheme

MIB = 1024 * 1024

# Environment variable → key in the config file's [receiver] table.
ENV_KEYS: dict[str, str] = {
    "SONIC_WEBHOOK_SECRET": "webhook_secret",
    "RECEIVER_DB": "db",
    "RECEIVER_DB_SYNCHRONOUS": "db_synchronous",
    "RECEIVER_DB_LOCK_TIMEOUT_S": "db_lock_timeout_s",
    "RECEIVER_MEDIA_DIR": "media_dir",
    "RECEIVER_MEDIA": "media",
    "RECEIVER_MAX_BODY_BYTES": "max_body_bytes",
    "RECEIVER_SIGNATURE_TOLERANCE_S": "signature_tolerance_s",
    "RECEIVER_SCHEMES": "schemes",
    "RECEIVER_ADMIN_TOKEN": "admin_token",
    "RECEIVER_ADMIN_TOKEN_FILE": "admin_token_file",
    "RECEIVER_INSECURE_OPEN_ADMIN": "insecure_open_admin",
    "RECEIVER_LOG_FORMAT": "log_format",
    "RECEIVER_LOG_LEVEL": "log_level",
    "RECEIVER_LOG_LEVEL_THIRD_PARTY": "log_level_third_party",
    "RECEIVER_HEADER_TIMEOUT_S": "header_timeout_s",
    "RECEIVER_BODY_TIMEOUT_S": "body_timeout_s",
    "RECEIVER_KEEPALIVE_TIMEOUT_S": "keepalive_timeout_s",
    "RECEIVER_MAX_CONNECTIONS": "max_connections",
    "RECEIVER_HTTP_PARSER": "http_parser",
    "RECEIVER_PUBLIC_URL": "public_url",
    "RECEIVER_TRUSTED_PROXIES": "trusted_proxies",
    "RECEIVER_WORKER": "worker",
    "RECEIVER_WORKER_CONCURRENCY": "worker_concurrency",
    "RECEIVER_WEB_RESTART_LIMIT_S": "web_restart_limit_s",
    "SONIC_API_BASE_URL": "sonic_api_base_url",
    "SONIC_API_KEY": "sonic_api_key",
    "PORT": "port",
    "WEB_CONCURRENCY": "web_concurrency",
}
# Other names the environment may give a key by (the key's own variable wins when both are
# set): uvicorn's and gunicorn's name for the trusted proxies, the platforms' for the database.
ENV_ALIASES: dict[str, str] = {"FORWARDED_ALLOW_IPS": "RECEIVER_TRUSTED_PROXIES",
                               "DATABASE_URL": "RECEIVER_DB"}
# The variables read besides those: the config file's path, and where alerts go ([alerts]
# targets in the file).
CONFIG_VARIABLE = "RECEIVER_CONFIG"
ALERT_TARGETS_VARIABLE = "RECEIVER_ALERT_TARGETS"
OTHER_VARIABLES = (CONFIG_VARIABLE, ALERT_TARGETS_VARIABLE)
# [receiver] keys that are Settings fields of the same name, taken as they are.
SAME_NAME = frozenset({
    "db_synchronous", "db_lock_timeout_s", "max_body_bytes", "signature_tolerance_s",
    "insecure_open_admin", "log_format", "log_level", "log_level_third_party",
    "header_timeout_s", "body_timeout_s", "keepalive_timeout_s", "max_connections",
    "http_parser", "worker", "worker_concurrency", "web_restart_limit_s", "port",
    "web_concurrency",
})
_WORKER = WorkerTable()


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The receiver's whole configuration. Secrets are kept out of ``repr``."""

    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    db_path: Path = Path("data/receiver.db")
    # a PostgreSQL URL (RECEIVER_DB=postgresql://..., or DATABASE_URL): db_path is unused then
    db_url: str | None = field(default=None, repr=False)
    db_synchronous: str = "normal"
    # how long a write waits for the database's lock before it is answered 503
    db_lock_timeout_s: float = 5.0
    # retention: raw bodies and finished jobs older than this go; delivery ids stay keep_ids_s
    retention_s: float | None = None
    retention_keep_ids_s: float = RETENTION_KEEP_IDS_S
    retention_every_s: float = RETENTION_EVERY_S
    media_dir: Path = Path("media")
    # RECEIVER_MEDIA as an object-store URL (s3://bucket/prefix, gs://, az://); None: the
    # local folder media_dir (receiver.media).
    media_url: str | None = None
    max_body_bytes: int = MIB
    signature_tolerance_s: int = 300
    schemes: tuple[Scheme, ...] = (Scheme.MUSICAPI,)
    admin_token: str | None = field(default=None, repr=False)
    # Where the admin token came from, for the start-up line (never the token itself).
    admin_token_source: str | None = None
    # Named operators' tokens ([[admin.tokens]]), (name, token) each; the admin token above
    # is the operator named "admin".
    operator_tokens: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # A console session ends after this long without a request, and this long after login.
    session_idle_s: float = 3600.0
    session_max_s: float = 12 * 3600.0
    # Serve the admin API (/tasks, /jobs) to anyone: an explicit choice, never a default.
    insecure_open_admin: bool = False
    insecure_no_verify: bool = False
    log_format: str = "auto"
    log_level: str = "info"
    log_level_third_party: str = "warning"  # httpx, apprise, ...: see receiver.logs
    # Slow and abusive clients (receiver.connections): the request head must be complete
    # within header_timeout_s of the connection or the previous response, the body within
    # body_timeout_s; an idle keep-alive connection is closed after keepalive_timeout_s, longer
    # than the pools of common senders and proxies keep one (httpx 5 s, nginx and load balancers
    # 60 s, Go 90 s): the side that closes first must be the client, or a request it sends as
    # the server closes is lost to a reset. More than max_connections open connections: an idle
    # one is closed to make room, else new ones are closed at once.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 20.0
    keepalive_timeout_s: float = 120.0
    max_connections: int = 1000
    # httptools (C, a dependency) or h11 (pure Python, uvicorn's own): the same guards run on
    # either (receiver.connections); "h11" is the fallback if httptools misbehaves somewhere.
    http_parser: str = "httptools"
    public_url: str | None = None  # how the Sonic service reaches this receiver
    # Peers (addresses, networks, "*") whose X-Forwarded-For/-Proto/-Host are believed
    # (receiver.proxies); none by default: a forwarded header from anyone else is ignored.
    trusted_proxies: tuple[str, ...] = ()
    sonic_api_base_url: str | None = None
    sonic_api_key: str | None = field(default=None, repr=False)
    # serve: the port (PORT, --port) and how many web processes share it (WEB_CONCURRENCY,
    # --workers)
    port: int = 8000
    web_concurrency: int = 1
    # serve --workers N: how long a web process started again after the first start may keep
    # failing to start (the database away) before serve gives up
    web_restart_limit_s: float = 300.0
    worker: str = "inprocess"  # inprocess: jobs run in the web process; off: a worker process
    worker_concurrency: int = DEFAULT_CONCURRENCY  # see receiver.jobs
    worker_lease_s: float = _WORKER.lease_s
    worker_poll_s: float = _WORKER.poll_s
    worker_drain_s: float = _WORKER.drain_s
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The server polls get-music for stale tasks every reconcile_every_s (None: never).
    reconcile_every_s: float | None = None
    reconcile_stale_s: float = 600.0
    # The receiver's own alerts ([alerts]) and where they go: apprise URLs, from
    # RECEIVER_ALERT_TARGETS (comma separated) else [alerts] targets.
    alerts: AlertsTable = field(default_factory=AlertsTable)
    alert_targets: tuple[str, ...] = field(default=(), repr=False)
    # Each task type's deadline ([deadlines]).
    deadlines: DeadlinesTable = field(default_factory=DeadlinesTable)
    # The providers besides Sonic whose callbacks are taken ([providers.<name>]).
    providers: ProvidersTable = field(default_factory=ProvidersTable, repr=False)
    config_file: Path | None = None
    # The parsed config file: routes, handlers and their settings live here.
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def validated(self) -> Settings:
        """``self`` if it can run; else raises :class:`SettingsError`. Each value was checked
        by its type on the way in; what is left is the rule between them."""
        if not self.webhook_secrets and not self.insecure_no_verify:
            raise SettingsError(
                "SONIC_WEBHOOK_SECRET is not set: refusing to accept unverified webhooks "
                "(pass --insecure-no-verify to run without verification)"
            )
        return self

    @property
    def admin_open(self) -> bool:
        """Whether the admin API is served without a token (the operator opted out)."""
        return not self.operators and self.insecure_open_admin

    @property
    def operators(self) -> tuple[tuple[str, str], ...]:
        """Every (name, token) that opens the admin surface: the admin token as ``admin``,
        then the named operators' tokens."""
        own = ((ADMIN_OPERATOR, self.admin_token),) if self.admin_token else ()
        return own + self.operator_tokens

    def secrets(self) -> tuple[str, ...]:
        """Every secret value of the configuration, to be blanked in logs and errors."""
        values = [*self.webhook_secrets, self.admin_token, self.sonic_api_key,
                  _password_of(self.db_url), *(token for _, token in self.operator_tokens)]
        values += self.providers.secrets()
        values += [piece for url in self.alert_targets for piece in url_secrets(url)]
        # Notification targets and any other URL in the config file (handler options).
        values += [piece for url in _config_urls(self.config) for piece in url_secrets(url)]
        return tuple(dict.fromkeys(v for v in values if v))

    @property
    def media_location(self) -> str:
        """Where media live: the object-store URL, or the local folder's path."""
        return self.media_url or str(self.media_dir)

    @property
    def webhook_url(self) -> str | None:
        """The URL follow-up tasks are created with: this receiver's public webhook."""
        return self.callback_url("sonic")

    def callback_url(self, provider: str, secret: str | None = None) -> str | None:
        """This receiver's public webhook for ``provider`` (with ``secret``, a per-task token
        or a path secret, as its last segment); None without ``public_url``."""
        if not self.public_url:
            return None
        return f"{self.public_url}/webhooks/{provider}" + (f"/{secret}" if secret else "")


def load(
    env: Mapping[str, str] | None = None,
    *,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from ``env`` (default ``os.environ``), the TOML ``config_file`` (default
    ``$RECEIVER_CONFIG``) and ``overrides`` (command-line values, keyed like the config file;
    an error names the flag as ``flag_names`` spells it, else ``--the-key``). Each layer wins
    over the one before, key by key; ``media`` and its older name ``media_dir`` are one
    setting, so a layer that gives either wins over both of an earlier layer."""
    env = os.environ if env is None else env
    named_by = None  # a file the caller gave (--config) is named by its path alone
    if config_file is None and env.get(CONFIG_VARIABLE):
        config_file, named_by = Path(env[CONFIG_VARIABLE]), CONFIG_VARIABLE
    config = read_config(config_file, origin=named_by) if config_file else {}
    # The tables settings are made of; the whole file is checked at start-up, against the
    # handlers too (receiver.schema.load_checked).
    core: CoreFile = convert({k: v for k, v in config.items() if k in _CORE_KEYS}, CoreFile)
    flags = {k: os.fspath(v) if isinstance(v, os.PathLike) else v
             for k, v in (overrides or {}).items()}
    insecure = bool(flags.pop("insecure_no_verify", False))

    # key → (where it came from, value): the file's table, then the environment, then flags
    given: dict[str, tuple[str, Any]] = {}
    _layer(given, _given(core.receiver, lambda key: f"receiver.{key}"))
    from_env = {key: env[name] for name, key in ENV_KEYS.items() if env.get(name, "") != ""}
    env_names = dict(_ENV_NAMES)
    for alias, name in ENV_ALIASES.items():
        if env.get(name, "") == "" and env.get(alias, "") != "":
            from_env[ENV_KEYS[name]] = env[alias]
            env_names[ENV_KEYS[name]] = alias
    _layer(given, _given(
        convert(from_env, ReceiverTable, strict=False, names=env_names), env_names.get))
    named = {key: (flag_names or {}).get(key, f"--{key.replace('_', '-')}") for key in flags}
    _layer(given, _given(convert({k: v for k, v in flags.items() if v is not None},
                                 ReceiverTable, strict=False, names=named), named.get))
    if "admin_token" in given and "admin_token_file" in given:
        raise SettingsError(
            f"{given['admin_token'][0]} and {given['admin_token_file'][0]} are both set: "
            "give the admin token one way"
        )
    changes = _tables(core)
    changes["alert_targets"] = split_targets(
        env.get(ALERT_TARGETS_VARIABLE, "") or core.alerts.targets)
    changes.update(_resolve(given))
    changes.update(_admin(core.admin))
    if insecure:
        changes["insecure_no_verify"] = True
    return replace(Settings(config_file=config_file, config=config), **changes).validated()


_CORE_KEYS = frozenset({"receiver", "worker", "reconcile", "retention", "admin", "alerts",
                        "deadlines", "providers"})
ADMIN_OPERATOR = "admin"  # the operator the admin token (RECEIVER_ADMIN_TOKEN) names
# Where one apprise URL ends in a list written as one string: a comma before the next scheme
# (a comma inside a URL, as in mailto's ?to=a,b, is kept).
_NEXT_URL = re.compile(r"\s*,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def split_targets(value: str | list[str]) -> tuple[str, ...]:
    """Apprise URLs: a list, or one string of URLs separated by commas."""
    items = value if isinstance(value, list) else _NEXT_URL.split(value)
    return tuple(item.strip() for item in items if item.strip())


_ENV_NAMES = {key: name for name, key in ENV_KEYS.items()}
# A config file is a few kilobytes; one past this is not read further.
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def read_config(path: Path, *, origin: str | None = None) -> dict[str, Any]:
    """The parsed TOML file at ``path``; raises :class:`SettingsError` saying why not (after
    ``origin``, the variable that named the file, when there is one)."""
    where = f"{origin}: " if origin else ""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)  # bounded: /dev/zero is a path too
    except FileNotFoundError:
        raise SettingsError(f"{where}config file {path} does not exist") from None
    except OSError as exc:
        raise SettingsError(f"{where}config file {path} cannot be read: {exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise SettingsError(f"{where}config file {path} cannot be read: it is over "
                            f"{MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{where}config file {path} cannot be read: it is not UTF-8 "
                            f"(byte {exc.start})") from None
    except RecursionError:  # tomllib parses nested arrays and tables by recursion
        raise SettingsError(f"{where}config file {path} cannot be read: it nests too "
                            "deeply") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{where}config file {path} cannot be read: {exc}") from exc


def _given(table: ReceiverTable, origin: Callable[[str], str | None],
           ) -> dict[str, tuple[str, Any]]:
    """The keys ``table`` sets, each with its ``origin(key)``."""
    return {f.name: (str(origin(f.name)), getattr(table, f.name))
            for f in msgspec.structs.fields(table) if getattr(table, f.name) is not None}


# Keys that are one setting under two names: a layer that gives any of them replaces them all.
_ONE_SETTING = (frozenset({"media", "media_dir"}),)


def _layer(given: dict[str, tuple[str, Any]], layer: Mapping[str, tuple[str, Any]]) -> None:
    """``layer`` over ``given``: each key it sets wins, and so does each setting it names by
    another of its names (``--media-dir`` over ``RECEIVER_MEDIA``)."""
    for names in _ONE_SETTING:
        if names & layer.keys():
            for key in names - layer.keys():
                given.pop(key, None)
    given.update(layer)


def _tables(core: CoreFile) -> dict[str, Any]:
    """The Settings fields of the [worker], [reconcile] and [retention] tables."""
    worker, retention = core.worker, core.retention
    changes: dict[str, Any] = {
        "worker_lease_s": worker.lease_s, "worker_poll_s": worker.poll_s,
        "worker_drain_s": worker.drain_s,
        "retry": RetryPolicy(max_attempts=worker.max_attempts, schedule=worker.backoff,
                             jitter=worker.jitter),
        "reconcile_every_s": core.reconcile.every_s,
        "reconcile_stale_s": core.reconcile.stale_s,
        "retention_s": None if retention.older_than is None else float(retention.older_than),
        "retention_keep_ids_s": float(retention.keep_ids or RETENTION_KEEP_IDS_S),
        "retention_every_s": float(retention.every or RETENTION_EVERY_S),
        "alerts": core.alerts, "deadlines": core.deadlines, "providers": core.providers,
    }
    if worker.concurrency is not None:
        changes["worker_concurrency"] = worker.concurrency
    return changes


def _resolve(given: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
    """The Settings fields of the ``[receiver]`` keys given, already checked by their types."""
    changes = {key: value.plain() if isinstance(value, Domain) else value
               for key, (_, value) in given.items() if key in SAME_NAME}
    if "webhook_secret" in given:
        changes["webhook_secrets"] = tuple(given["webhook_secret"][1])
    if "db" in given:
        db: Database = given["db"][1]
        changes.update(db_url=db.url, **({"db_path": db.path} if db.path else {}))
    if "media_dir" in given:
        changes["media_dir"] = Path(given["media_dir"][1])
    if "media" in given:  # wins over its older name media_dir given in the same layer
        media: Media = given["media"][1]
        changes.update(media_url=media.url, **({"media_dir": media.folder} if media.folder
                                                 else {}))
    if "schemes" in given:
        changes["schemes"] = tuple(given["schemes"][1])
    if "trusted_proxies" in given:
        changes["trusted_proxies"] = tuple(given["trusted_proxies"][1])
    for key in ("public_url", "sonic_api_base_url"):
        if key in given:
            changes[key] = given[key][1].rstrip("/")
    if "sonic_api_key" in given:
        changes["sonic_api_key"] = given["sonic_api_key"][1]
    if "admin_token" in given:
        changes["admin_token"] = str(given["admin_token"][1])
    if changes.get("admin_token"):
        changes["admin_token_source"] = given["admin_token"][0]
    if "admin_token_file" in given:
        changes.update(_token_file(*given["admin_token_file"]))
    return changes


def _admin(table: AdminTable) -> dict[str, Any]:
    """The Settings fields of the ``[admin]`` table: each operator's token read (from the
    file named, for ``token_file``) and checked, and the session limits."""
    tokens: list[tuple[str, str]] = []
    for index, item in enumerate(table.tokens):
        origin = f"admin.tokens[{index}]"
        if item.token is not None:
            token = str(item.token)
        else:
            token = _token_file(f"{origin}.token_file", item.token_file)["admin_token"]
        if item.name == ADMIN_OPERATOR:
            raise SettingsError(f"{origin}.name: {ADMIN_OPERATOR!r} is the admin token's "
                                "operator (RECEIVER_ADMIN_TOKEN): choose another name")
        tokens.append((item.name, token))
    changes: dict[str, Any] = {"operator_tokens": tuple(tokens)}
    if table.session_idle is not None:
        changes["session_idle_s"] = float(table.session_idle)
    if table.session_max is not None:
        changes["session_max_s"] = float(table.session_max)
    return changes


def _config_urls(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if "://" in value else []
    if isinstance(value, Mapping):
        return [u for v in value.values() for u in _config_urls(v)]
    if isinstance(value, list | tuple):
        return [u for v in value for u in _config_urls(v)]
    return []

def _password_of(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).password
    except ValueError:
        return None

def _token_file(origin: str, value: Any) -> dict[str, Any]:
    path = Path(str(value))
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{origin}: cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # a NUL in the name; bytes not UTF-8
        raise SettingsError(f"{origin}: cannot read {str(path)!r}: {exc}") from None
    if not token:
        raise SettingsError(f"{origin}: {path} is empty")
    weakness = token_weakness(token)
    if weakness is not None:
        raise SettingsError(f"{origin}: the token in {path} {weakness}")
    return {"admin_token": token, "admin_token_source": str(path)}
