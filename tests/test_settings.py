"""Settings from the environment, a config file and flags, through the file's schema; bad ones
stop start-up with the path of the key or the name of the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from receiver.errors import SettingsError
from receiver.settings import MIB, load
from receiver.signatures import Scheme


def test_defaults_need_only_a_secret() -> None:
    s = load({"SONIC_WEBHOOK_SECRET": "zq-secret-9"})
    assert s.webhook_secrets == ("zq-secret-9",)
    assert s.db_path == Path("data/receiver.db")
    assert (s.max_body_bytes, s.signature_tolerance_s, s.schemes) == (
        MIB, 300, (Scheme.MUSICAPI,))
    assert "zq-secret-9" not in repr(s)  # secrets stay out of repr


def test_every_variable_is_read() -> None:
    s = load({
        "SONIC_WEBHOOK_SECRET": " new , old ,",
        "RECEIVER_DB": "/tmp/x.db",
        "RECEIVER_MEDIA_DIR": "/tmp/m",
        "RECEIVER_MAX_BODY_BYTES": "2048",
        "RECEIVER_SIGNATURE_TOLERANCE_S": "60",
        "RECEIVER_SCHEMES": "standard,legacy",
        "RECEIVER_ADMIN_TOKEN": "tok-9f8e7d6c5b4a39281706f5e4",
    })
    assert s.webhook_secrets == ("new", "old")
    assert (s.db_path, s.media_dir) == (Path("/tmp/x.db"), Path("/tmp/m"))
    assert (s.max_body_bytes, s.signature_tolerance_s) == (2048, 60)
    assert s.schemes == (Scheme.STANDARD, Scheme.LEGACY)
    assert s.admin_token == "tok-9f8e7d6c5b4a39281706f5e4"


def test_config_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "receiver.toml"
    config.write_text('[receiver]\nwebhook_secret = ["f1", "f2"]\ndb = "file.db"\n'
                      'max_body_bytes = 10\nlog_level = "debug"\n'
                      '[worker]\nconcurrency = 3\n')
    s = load({"RECEIVER_MAX_BODY_BYTES": "20", "RECEIVER_WORKER_CONCURRENCY": "5"},
             config_file=config, overrides={"db": "flag.db"})
    assert s.webhook_secrets == ("f1", "f2")
    assert (s.db_path, s.max_body_bytes, s.log_level) == (Path("flag.db"), 20, "debug")
    assert s.worker_concurrency == 5  # the variable wins over [worker] concurrency
    assert load({"SONIC_WEBHOOK_SECRET": "x"}, config_file=config).worker_concurrency == 3


def test_environment_strings_convert_to_the_settings_types() -> None:
    s = load({"SONIC_WEBHOOK_SECRET": "x", "RECEIVER_INSECURE_OPEN_ADMIN": "yes",
              "RECEIVER_DB_LOCK_TIMEOUT_S": "2.5", "RECEIVER_LOG_LEVEL": "WARNING",
              "RECEIVER_DB": "sqlite:////var/r.db", "RECEIVER_MEDIA": "s3://songs/demo/"})
    assert s.insecure_open_admin is True
    assert (s.db_lock_timeout_s, s.log_level) == (2.5, "warning")
    assert (s.db_path, s.db_url) == (Path("/var/r.db"), None)
    assert (s.media_url, s.media_location) == ("s3://songs/demo", "s3://songs/demo")
    pg = load({"SONIC_WEBHOOK_SECRET": "x", "DATABASE_URL": "postgresql://u:pw@h/db"})
    assert pg.db_url == "postgresql://u:pw@h/db"
    assert "pw" in pg.secrets()
    local = load({"SONIC_WEBHOOK_SECRET": "x", "RECEIVER_MEDIA": "file:///srv/media",
                  "RECEIVER_MEDIA_DIR": "/elsewhere"})
    assert (local.media_dir, local.media_url) == (Path("/srv/media"), None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SONIC_WEBHOOK_SECRET is not set: refusing to accept unverified webhooks (pass "
             "--insecure-no-verify to run without verification)"),
        ({"SONIC_WEBHOOK_SECRET": " , "}, "SONIC_WEBHOOK_SECRET: holds no secret"),
        ({"SONIC_WEBHOOK_SECRET": "a", "RECEIVER_MAX_BODY_BYTES": "big"},
         "RECEIVER_MAX_BODY_BYTES: expected a positive integer, got 'big'"),
        ({"SONIC_WEBHOOK_SECRET": "a", "RECEIVER_SIGNATURE_TOLERANCE_S": "-1"},
         "RECEIVER_SIGNATURE_TOLERANCE_S: expected a positive integer, got '-1'"),
        ({"SONIC_WEBHOOK_SECRET": "a", "RECEIVER_SCHEMES": "musicapi,hmac"},
         "RECEIVER_SCHEMES: unknown signature scheme 'hmac' (choose from musicapi, standard, "
         "legacy)"),
        ({"SONIC_WEBHOOK_SECRET": "a", "RECEIVER_DB_SYNCHRONOUS": "off"},
         "RECEIVER_DB_SYNCHRONOUS: unknown value 'off' (choose from normal, full)"),
        ({"SONIC_WEBHOOK_SECRET": "a", "RECEIVER_DB": "mysql://h/db"},
         "RECEIVER_DB: unknown database scheme 'mysql' (use a file path, sqlite:///path or "
         "postgresql://user:password@host/db)"),
        ({"SONIC_WEBHOOK_SECRET": "a", "RECEIVER_MEDIA": "ftp://h/m"},
         "RECEIVER_MEDIA: 'ftp' is not a media store (a path, file://, or s3://, gs://, az://)"),
        ({"SONIC_WEBHOOK_SECRET": "a", "RECEIVER_MEDIA": "file://relative"},
         "RECEIVER_MEDIA: a file:// URL needs an absolute path (file:///...)"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(env)
    assert caught.value.message == message


def test_insecure_flag_allows_running_without_a_secret() -> None:
    assert load({}, overrides={"insecure_no_verify": True}).insecure_no_verify
    assert not load({"SONIC_WEBHOOK_SECRET": "a"},
                    overrides={"insecure_no_verify": False}).insecure_no_verify


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[receiver]\nwebhook_secrets = "typo"\n', "receiver.webhook_secrets: unknown key"),
        ('[receiver]\nmax_body_bytes = "10"\n',  # the file is typed: no strings for numbers
         "receiver.max_body_bytes: expected a positive integer, got '10'"),
        ("[receiver]\ninsecure_open_admin = 2\n",
         "receiver.insecure_open_admin: must be 1 or 0 (true or false), got 2"),
        ('receiver = "x"\n', "receiver: expected a table, got 'x'"),
        ('[retention]\nolder_than = "3x"\n',
         "retention.older_than: expected a duration like 90d, 12h or 30m, got '3x'"),
        ('[retention]\nolder_than = "90d"\nkeep_ids = "30d"\n',
         "retention.keep_ids: must be at least older_than"),
        ("[reconcile]\nevery = 60\n", "reconcile.every: unknown key"),
    ],
)
def test_bad_keys_in_the_config_file_are_named_by_path(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(SettingsError) as caught:
        load({"SONIC_WEBHOOK_SECRET": "x"}, config_file=config)
    assert caught.value.message == message


def test_retention_table_takes_durations(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[retention]\nolder_than = "90d"\nevery = "30m"\n'
                      '[reconcile]\nevery_s = 60\n')
    s = load({"SONIC_WEBHOOK_SECRET": "x"}, config_file=config)
    assert (s.retention_s, s.retention_keep_ids_s, s.retention_every_s) == (
        90 * 86400.0, 400 * 86400.0, 1800.0)
    assert (s.reconcile_every_s, s.reconcile_stale_s) == (60.0, 600.0)


def test_cli_refuses_to_start_without_a_secret_in_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "serve", "--db", str(tmp_path / "r.db")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sonic-receiver: error: SONIC_WEBHOOK_SECRET is not set")
    assert not (tmp_path / "r.db").exists()


def test_worker_table_and_public_url(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[worker]\nconcurrency = 2\nlease_s = 30\nmax_attempts = 7\n'
                      'backoff = [1, 2.5]\njitter = 0\n')
    s = load({"SONIC_WEBHOOK_SECRET": "x", "RECEIVER_PUBLIC_URL": "https://me.example/",
              "RECEIVER_WORKER": "off"}, config_file=config)
    assert (s.worker_concurrency, s.worker_lease_s, s.worker) == (2, 30.0, "off")
    assert (s.retry.max_attempts, tuple(s.retry.schedule), s.retry.jitter) == (7, (1.0, 2.5), 0.0)
    assert s.public_url == "https://me.example"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[worker]\nconcurency = 2\n", "worker.concurency: unknown key"),
        ('[worker]\nconcurrency = "x"\n',
         "worker.concurrency: expected a positive integer, got 'x'"),
        ("[worker]\nbackoff = []\n", "worker.backoff: expected a non-empty list of seconds, "
                                      "got []"),
        ("[worker]\nbackoff = [1, -2]\n", "worker.backoff[1]: expected a positive number, "
                                           "got -2"),
        ("[worker]\njitter = 1.5\n", "worker.jitter: expected a number in [0, 1), got 1.5"),
        ("[worker]\nlease_s = -1\n", "worker.lease_s: expected a positive number, got -1"),
    ],
)
def test_bad_worker_settings(tmp_path: Path, text: str, message: str) -> None:
    """An ill-typed or out-of-range worker setting stops loading with one message naming it."""
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(SettingsError) as caught:
        load({"SONIC_WEBHOOK_SECRET": "x"}, config_file=config)
    assert caught.value.message == message


def test_public_url_must_be_http() -> None:
    with pytest.raises(SettingsError, match=r"^RECEIVER_PUBLIC_URL: expected an http"):
        load({"SONIC_WEBHOOK_SECRET": "x", "RECEIVER_PUBLIC_URL": "me.example"})


def test_debug_logging_never_shows_aiosqlite_parameters() -> None:
    import logging

    import structlog

    from receiver import logs

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure(fmt="json", level="debug")
        assert root.level == logging.DEBUG
        assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.reset_defaults()  # other tests expect structlog as it comes
        logging.getLogger("aiosqlite").setLevel(logging.NOTSET)


def test_a_flag_wins_over_the_environment_for_media_under_either_name(tmp_path: Path) -> None:
    """``media`` and its older name ``media_dir`` are one setting: whichever the later layer
    (file, environment, flags) gives wins, and within one layer ``media`` does."""
    secret = {"SONIC_WEBHOOK_SECRET": "x"}
    s = load({**secret, "RECEIVER_MEDIA": "s3://songs/demo"}, overrides={"media_dir": "/srv/m"})
    assert (s.media_url, s.media_dir) == (None, Path("/srv/m"))
    s = load({**secret, "RECEIVER_MEDIA_DIR": "/srv/m"}, overrides={"media": "s3://songs/x"})
    assert s.media_url == "s3://songs/x"
    config = tmp_path / "c.toml"
    config.write_text('[receiver]\nmedia = "s3://songs/file"\n')
    s = load({**secret, "RECEIVER_MEDIA_DIR": "/srv/env"}, config_file=config)
    assert (s.media_url, s.media_dir) == (None, Path("/srv/env"))
    s = load({**secret, "RECEIVER_MEDIA_DIR": "/srv/env", "RECEIVER_MEDIA": "s3://songs/env"})
    assert s.media_url == "s3://songs/env"


def test_database_url_is_the_environment_over_the_file(tmp_path: Path) -> None:
    """The platforms' ``DATABASE_URL`` is another name of ``RECEIVER_DB``: it wins over the
    file's ``db``, and ``RECEIVER_DB`` over it."""
    config = tmp_path / "c.toml"
    config.write_text('[receiver]\ndb = "file.db"\n')
    pg = "postgresql://u:pw@db.example/r"
    s = load({"SONIC_WEBHOOK_SECRET": "x", "DATABASE_URL": pg}, config_file=config)
    assert s.db_url == pg
    s = load({"SONIC_WEBHOOK_SECRET": "x", "DATABASE_URL": pg, "RECEIVER_DB": "env.db"},
             config_file=config)
    assert (s.db_url, s.db_path) == (None, Path("env.db"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "args", "line"),
    [
        ({"PORT": "abc"}, ["serve"], "PORT: expected a port number from 0 to 65535 (0: any "
                                     "free one), got 'abc'"),
        ({"PORT": "70000"}, ["migrate"], "PORT: expected a port number"),
        ({"WEB_CONCURRENCY": "abc"}, ["serve"], "WEB_CONCURRENCY: expected a positive integer, "
                                                "got 'abc'"),
        ({"WEB_CONCURRENCY": "0"}, ["serve"], "WEB_CONCURRENCY: expected a positive integer, "
                                              "got '0'"),
        ({}, ["serve", "--workers", "0"], "--workers: expected a positive integer, got '0'"),
        ({}, ["serve", "--port", "x"], "--port: expected a port number"),
        ({}, ["worker", "--concurrency", "0"], "--concurrency: expected a positive integer, "
                                               "got '0'"),
    ],
)
def test_port_workers_and_concurrency_stop_start_up_in_one_line(
    tmp_path: Path, env: dict[str, str], args: list[str], line: str,
) -> None:
    """Like any setting, whoever gives them (the platform's ``PORT`` and ``WEB_CONCURRENCY``,
    or the flag, named as typed), and before anything is opened."""
    done = subprocess.run(
        [sys.executable, "-m", "receiver", *args, "--db", str(tmp_path / "r.db")],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SONIC_WEBHOOK_SECRET": "x",
             **env}, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    [shown] = done.stderr.strip().splitlines()
    assert shown.startswith(f"sonic-receiver: error: {line}")
    assert not (tmp_path / "r.db").exists()


def test_help_works_whatever_port_says(tmp_path: Path) -> None:
    """``--help`` reads no setting: a bad ``PORT`` is serve's error, not the parser's."""
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "serve", "--help"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PORT": "abc",
             "WEB_CONCURRENCY": "abc"}, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "$PORT" in done.stdout
