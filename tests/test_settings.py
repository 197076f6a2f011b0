"""Settings from the environment, a config file and flags; bad ones stop start-up clearly."""

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
        "RECEIVER_ADMIN_TOKEN": "tok",
    })
    assert s.webhook_secrets == ("new", "old")
    assert (s.db_path, s.media_dir) == (Path("/tmp/x.db"), Path("/tmp/m"))
    assert (s.max_body_bytes, s.signature_tolerance_s) == (2048, 60)
    assert s.schemes == (Scheme.STANDARD, Scheme.LEGACY)
    assert s.admin_token == "tok"


def test_config_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "receiver.toml"
    config.write_text('[receiver]\nwebhook_secret = ["f1", "f2"]\ndb = "file.db"\n'
                      'max_body_bytes = 10\n')
    s = load({"RECEIVER_MAX_BODY_BYTES": "20"}, config_file=config, overrides={"db": "flag.db"})
    assert s.webhook_secrets == ("f1", "f2")
    assert (s.db_path, s.max_body_bytes) == (Path("flag.db"), 20)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SONIC_WEBHOOK_SECRET is not set"),
        ({"SONIC_WEBHOOK_SECRET": " , "}, "SONIC_WEBHOOK_SECRET holds no secret"),
        ({"SONIC_WEBHOOK_SECRET": "a", "RECEIVER_MAX_BODY_BYTES": "big"},
         "RECEIVER_MAX_BODY_BYTES must be a positive integer, got 'big'"),
        ({"SONIC_WEBHOOK_SECRET": "a", "RECEIVER_SIGNATURE_TOLERANCE_S": "-1"},
         "RECEIVER_SIGNATURE_TOLERANCE_S must be a positive integer"),
        ({"SONIC_WEBHOOK_SECRET": "a", "RECEIVER_SCHEMES": "musicapi,hmac"},
         "RECEIVER_SCHEMES: unknown signature scheme 'hmac'"),
        ({"SONIC_WEBHOOK_SECRET": "a", "RECEIVER_DB_SYNCHRONOUS": "off"},
         "RECEIVER_DB_SYNCHRONOUS must be normal or full"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(env)
    assert message in caught.value.message


def test_insecure_flag_allows_running_without_a_secret() -> None:
    assert load({}, overrides={"insecure_no_verify": True}).insecure_no_verify
    assert not load({"SONIC_WEBHOOK_SECRET": "a"},
                    overrides={"insecure_no_verify": False}).insecure_no_verify


def test_unknown_key_in_the_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[receiver]\nwebhook_secrets = "typo"\n')
    with pytest.raises(SettingsError, match=r"unknown setting \[receiver\]\.webhook_secrets"):
        load({}, config_file=config)


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
        ("[worker]\nconcurency = 2\n", "unknown keys: concurency"),
        ("[worker]\nbackoff = []\n", "backoff must be a list of seconds"),
        ("[worker]\njitter = 1.5\n", "jitter must be a number in"),
        ("[worker]\nlease_s = -1\n", "lease_s must be a positive number"),
    ],
)
def test_bad_worker_settings(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load({"SONIC_WEBHOOK_SECRET": "x"}, config_file=config)


def test_public_url_must_be_http() -> None:
    with pytest.raises(SettingsError, match="RECEIVER_PUBLIC_URL must be an http"):
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
