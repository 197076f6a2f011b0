"""Settings: read once at start-up from the environment, an optional TOML file and the command
line (in rising precedence), validated whole, and frozen.

Every variable is documented in the README. A bad value raises :class:`SettingsError` with one
line that names the variable and what it expected; the CLI prints it and exits non-zero.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from receiver.errors import SettingsError
from receiver.jobs import DEFAULT_CONCURRENCY, RetryPolicy
from receiver.redact import url_secrets
from receiver.signatures import Scheme, parse_schemes

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
    "RECEIVER_WORKER": "worker",
    "RECEIVER_WORKER_CONCURRENCY": "worker_concurrency",
    "SONIC_API_BASE_URL": "sonic_api_base_url",
    "SONIC_API_KEY": "sonic_api_key",
}
DB_SCHEMES = ("postgresql", "postgres")
WORKER_KEYS = frozenset({"concurrency", "lease_s", "poll_s", "max_attempts", "backoff",
                         "jitter", "drain_s"})
OBJECT_STORE_SCHEMES = ("s3", "gs", "az")
LOG_FORMATS = ("auto", "json", "console")
HTTP_PARSERS = ("httptools", "h11")
LOG_LEVELS = ("debug", "info", "warning", "error")


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
    retention_keep_ids_s: float = 400 * 86400.0
    retention_every_s: float = 3600.0
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
    # Serve the admin API (/tasks, /jobs) to anyone: an explicit choice, never a default.
    insecure_open_admin: bool = False
    insecure_no_verify: bool = False
    log_format: str = "auto"
    log_level: str = "info"
    log_level_third_party: str = "warning"  # httpx, apprise, ...: see receiver.logs
    # Slow and abusive clients (receiver.connections): the request head must be complete
    # within header_timeout_s of the connection or the previous response, the body within
    # body_timeout_s; an idle keep-alive connection is closed after keepalive_timeout_s; more
    # than max_connections open connections and new ones are closed at once.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 20.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 1000
    # httptools (C, a dependency) or h11 (pure Python, uvicorn's own): the same guards run on
    # either (receiver.connections); "h11" is the fallback if httptools misbehaves somewhere.
    http_parser: str = "httptools"
    public_url: str | None = None  # how the Sonic service reaches this receiver
    sonic_api_base_url: str | None = None
    sonic_api_key: str | None = field(default=None, repr=False)
    worker: str = "inprocess"  # inprocess: jobs run in the web process; off: a worker process
    worker_concurrency: int = DEFAULT_CONCURRENCY  # see receiver.jobs
    worker_lease_s: float = 60.0
    worker_poll_s: float = 0.25
    worker_drain_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The server polls get-music for stale tasks every reconcile_every_s (None: never).
    reconcile_every_s: float | None = None
    reconcile_stale_s: float = 600.0
    config_file: Path | None = None
    # The parsed config file: routes, handlers and their settings live here.
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def validated(self) -> Settings:
        """``self`` if it can run; else raises :class:`SettingsError`."""
        if not self.webhook_secrets and not self.insecure_no_verify:
            raise SettingsError(
                "SONIC_WEBHOOK_SECRET is not set: refusing to accept unverified webhooks "
                "(pass --insecure-no-verify to run without verification)"
            )
        if self.max_body_bytes <= 0:
            raise SettingsError("RECEIVER_MAX_BODY_BYTES must be a positive integer")
        if self.signature_tolerance_s <= 0:
            raise SettingsError("RECEIVER_SIGNATURE_TOLERANCE_S must be a positive integer")
        if self.db_synchronous not in ("normal", "full"):
            raise SettingsError("RECEIVER_DB_SYNCHRONOUS must be normal or full")
        if self.http_parser not in HTTP_PARSERS:
            raise SettingsError(f"RECEIVER_HTTP_PARSER must be one of {', '.join(HTTP_PARSERS)}")
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(f"RECEIVER_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"RECEIVER_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        if self.log_level_third_party not in LOG_LEVELS:
            raise SettingsError(
                f"RECEIVER_LOG_LEVEL_THIRD_PARTY must be one of {', '.join(LOG_LEVELS)}"
            )
        if self.worker not in ("inprocess", "off"):
            raise SettingsError("RECEIVER_WORKER must be inprocess or off")
        for name, url in (("RECEIVER_PUBLIC_URL", self.public_url),
                          ("SONIC_API_BASE_URL", self.sonic_api_base_url)):
            if url is not None and not url.startswith(("http://", "https://")):
                raise SettingsError(f"{name} must be an http(s) URL")
        if self.media_url is not None:
            scheme = self.media_url.partition("://")[0].lower()
            if scheme not in OBJECT_STORE_SCHEMES:
                stores = ", ".join(f"{s}://" for s in OBJECT_STORE_SCHEMES)
                raise SettingsError(f"RECEIVER_MEDIA: {scheme!r} is not a media store "
                                    f"(a path, file://, or {stores})")
        return self

    @property
    def admin_open(self) -> bool:
        """Whether the admin API is served without a token (the operator opted out)."""
        return self.admin_token is None and self.insecure_open_admin

    def secrets(self) -> tuple[str, ...]:
        """Every secret value of the configuration, to be blanked in logs and errors."""
        values = [*self.webhook_secrets, self.admin_token, self.sonic_api_key,
                  _password_of(self.db_url)]
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
        return f"{self.public_url}/webhooks/sonic" if self.public_url else None


def load(
    env: Mapping[str, str] | None = None,
    *,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from ``env`` (default ``os.environ``), the TOML ``config_file`` (default
    ``$RECEIVER_CONFIG``) and ``overrides`` (command-line values, keyed like the config file)."""
    env = os.environ if env is None else env
    if config_file is None and env.get("RECEIVER_CONFIG"):
        config_file = Path(env["RECEIVER_CONFIG"])
    config = _read_config(config_file) if config_file else {}
    table = config.get("receiver", {})
    if not isinstance(table, dict):
        raise SettingsError(f"{config_file}: [receiver] must be a table")

    raw: dict[str, tuple[str, Any]] = {}  # key → (where it came from, value)
    for key, value in table.items():
        if key not in ENV_KEYS.values():
            raise SettingsError(f"{config_file}: unknown setting [receiver].{key}")
        raw[key] = (f"{config_file}: [receiver].{key}", value)
    for name, key in ENV_KEYS.items():
        if env.get(name, "") != "":
            raw[key] = (name, env[name])
    if "db" not in raw and env.get("DATABASE_URL", "") != "":  # the platforms' convention
        raw["db"] = ("DATABASE_URL", env["DATABASE_URL"])
    flags = dict(overrides or {})
    insecure = bool(flags.pop("insecure_no_verify", False))
    for key, value in flags.items():
        if key not in ENV_KEYS.values():
            raise SettingsError(f"unknown setting {key}")
        if value is not None:
            raw[key] = (f"--{key.replace('_', '-')}", value)

    settings = Settings(config_file=config_file, config=config)
    changes: dict[str, Any] = _worker_table(config.get("worker", {}), config_file)
    changes.update(_reconcile_table(config.get("reconcile", {}), config_file))
    if "admin_token" in raw and "admin_token_file" in raw:
        raise SettingsError(
            f"{raw['admin_token'][0]} and {raw['admin_token_file'][0]} are both set: "
            "give the admin token one way"
        )
    changes.update(_retention_table(config.get("retention", {}), config_file))
    # RECEIVER_MEDIA is applied after its alias RECEIVER_MEDIA_DIR, so that it wins.
    for key, (origin, value) in sorted(raw.items(), key=lambda item: item[0] == "media"):
        changes.update(_convert(key, origin, value))
    if insecure:
        changes["insecure_no_verify"] = True
    return replace(settings, **changes).validated()


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc}") from exc


def _convert(key: str, origin: str, value: Any) -> dict[str, Any]:
    if key == "webhook_secret":
        secrets = _secrets(value)
        if not secrets:
            raise SettingsError(f"{origin} holds no secret")
        return {"webhook_secrets": secrets}
    if key == "db":
        return _database(origin, value)
    if key == "media_dir":
        if not isinstance(value, str | Path) or not str(value):
            raise SettingsError(f"{origin} must be a path")
        return {key: Path(value)}
    if key == "media":
        return _media(origin, value)
    if key == "db_lock_timeout_s":
        return {key: _positive_float(origin, _number(origin, value))}
    if key in ("max_body_bytes", "signature_tolerance_s", "worker_concurrency"):
        return {key: _positive_int(origin, value)}
    if key in ("public_url", "sonic_api_base_url"):
        return {key: str(value).rstrip("/") or None}
    if key == "sonic_api_key":
        return {key: str(value) or None}
    if key == "schemes":
        text = ",".join(value) if isinstance(value, list) else str(value)
        try:
            return {"schemes": parse_schemes(text)}
        except ValueError as exc:
            choices = "choose from musicapi, legacy, standard"
            raise SettingsError(f"{origin}: {exc} ({choices})") from None
    if key == "admin_token":
        return {"admin_token": str(value) or None, "admin_token_source": origin}
    if key == "admin_token_file":
        return _token_file(origin, value)
    if key == "insecure_open_admin":
        return {key: _flag(origin, value)}
    if key in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
        return {key: _positive_number(origin, value)}
    if key == "max_connections":
        return {key: _positive_int(origin, value)}
    return {key: str(value).lower()}  # db_synchronous, http_parser, log_*: validated()


def _media(origin: str, value: Any) -> dict[str, Any]:
    """A path or ``file://`` URL is the local folder; ``scheme://...`` an object store."""
    text = str(value).strip() if isinstance(value, str | Path) else ""
    if not text:
        raise SettingsError(f"{origin} must be a path or a URL")
    if text.startswith("file://"):
        path = text.removeprefix("file://")
        if not path.startswith("/"):
            raise SettingsError(f"{origin}: a file:// URL needs an absolute path (file:///...)")
        return {"media_dir": Path(path), "media_url": None}
    if "://" in text:
        return {"media_url": text.rstrip("/")}
    return {"media_dir": Path(text), "media_url": None}


def _database(origin: str, value: Any) -> dict[str, Any]:
    """A path or ``sqlite:///path`` for SQLite, ``postgresql://...`` for PostgreSQL; any other
    scheme is refused (it would otherwise become a folder named after it)."""
    if not isinstance(value, str | Path) or not str(value):
        raise SettingsError(f"{origin} must be a path or a postgresql:// URL")
    text = str(value)
    scheme, sep, rest = text.partition("://")
    if not sep or "/" in scheme or "\\" in scheme:
        return {"db_path": Path(text), "db_url": None}
    if scheme.lower() in DB_SCHEMES:
        return {"db_url": text}
    if scheme.lower() == "sqlite" and rest:
        return {"db_path": Path(rest[1:] if rest.startswith("/") else rest), "db_url": None}
    raise SettingsError(
        f"{origin}: unknown database scheme {scheme!r} (use a file path, sqlite:///path or "
        "postgresql://user:password@host/db)"
    )


def _number(origin: str, value: Any) -> float:
    try:
        return float(str(value).strip())
    except ValueError:
        raise SettingsError(f"{origin} must be a number, got {value!r}") from None


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(origin: str, value: Any) -> float:
    """``90d``, ``12h``, ``30m``, ``45s`` or a number of seconds."""
    text = str(value).strip().lower()
    unit = DURATION_UNITS.get(text[-1:])
    try:
        number = float(text[:-1] if unit else text)
    except ValueError:
        raise SettingsError(f"{origin} must be a duration like 90d, 12h or 30m") from None
    seconds = number * (unit or 1)
    if not seconds > 0:
        raise SettingsError(f"{origin} must be a positive duration, got {value!r}")
    return seconds


def _retention_table(table: Any, config_file: Path | None) -> dict[str, Any]:
    """``[retention] older_than = "90d", keep_ids = "400d", every = "1h"``."""
    where = f"{config_file}: [retention]"
    if not isinstance(table, dict):
        raise SettingsError(f"{where} must be a table")
    unknown = set(table) - {"older_than", "keep_ids", "every"}
    if unknown:
        raise SettingsError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    if "older_than" in table:
        changes["retention_s"] = parse_duration(f"{where}.older_than", table["older_than"])
    if "keep_ids" in table:
        changes["retention_keep_ids_s"] = parse_duration(f"{where}.keep_ids", table["keep_ids"])
    if "every" in table:
        changes["retention_every_s"] = parse_duration(f"{where}.every", table["every"])
    if changes.get("retention_s", 0) > changes.get("retention_keep_ids_s", 400 * 86400.0):
        raise SettingsError(f"{where}.keep_ids must be at least older_than")
    return changes


def _worker_table(table: Any, config_file: Path | None) -> dict[str, Any]:
    """The ``[worker]`` table: concurrency, lease_s, poll_s, drain_s, and the retry policy
    (max_attempts, backoff = [seconds...], jitter)."""
    where = f"{config_file}: [worker]"
    if not isinstance(table, dict):
        raise SettingsError(f"{where} must be a table")
    unknown = set(table) - WORKER_KEYS
    if unknown:
        raise SettingsError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    if "concurrency" in table:
        changes["worker_concurrency"] = _positive_int(f"{where}.concurrency", table["concurrency"])
    for key in ("lease_s", "poll_s", "drain_s"):
        if key in table:
            changes[f"worker_{key}"] = _positive_float(f"{where}.{key}", table[key])
    policy: dict[str, Any] = {}
    if "max_attempts" in table:
        policy["max_attempts"] = _positive_int(f"{where}.max_attempts", table["max_attempts"])
    if "backoff" in table:
        backoff = table["backoff"]
        if not isinstance(backoff, list) or not backoff:
            raise SettingsError(f"{where}.backoff must be a list of seconds")
        policy["schedule"] = tuple(_positive_float(f"{where}.backoff", b) for b in backoff)
    if "jitter" in table:
        jitter = table["jitter"]
        if not isinstance(jitter, int | float) or not 0 <= jitter < 1:
            raise SettingsError(f"{where}.jitter must be a number in [0, 1)")
        policy["jitter"] = float(jitter)
    if policy:
        changes["retry"] = RetryPolicy(**policy)
    return changes


def _reconcile_table(table: Any, config_file: Path | None) -> dict[str, Any]:
    """``[reconcile] every_s = 600, stale_s = 600``: heal missed events without a script."""
    where = f"{config_file}: [reconcile]"
    if not isinstance(table, dict):
        raise SettingsError(f"{where} must be a table")
    unknown = set(table) - {"every_s", "stale_s"}
    if unknown:
        raise SettingsError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    if "every_s" in table:
        changes["reconcile_every_s"] = _positive_float(f"{where}.every_s", table["every_s"])
    if "stale_s" in table:
        changes["reconcile_stale_s"] = _positive_float(f"{where}.stale_s", table["stale_s"])
    return changes


def _positive_float(origin: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise SettingsError(f"{origin} must be a positive number, got {value!r}")
    return float(value)


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
    if not token:
        raise SettingsError(f"{origin}: {path} is empty")
    return {"admin_token": token, "admin_token_source": str(path)}


def _flag(origin: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{origin} must be 1 or 0 (true or false), got {value!r}")


def _positive_number(origin: str, value: Any) -> float:
    try:
        number = float(str(value).strip()) if not isinstance(value, bool) else -1.0
    except ValueError:
        raise SettingsError(f"{origin} must be a positive number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise SettingsError(f"{origin} must be a positive number, got {value!r}")
    return number


def _secrets(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else str(value).split(",")
    return tuple(s.strip() for s in items if str(s).strip())


def _positive_int(origin: str, value: Any) -> int:
    try:
        number = int(str(value).strip().replace("_", ""))
    except ValueError:
        raise SettingsError(f"{origin} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise SettingsError(f"{origin} must be a positive integer, got {value!r}")
    return number
