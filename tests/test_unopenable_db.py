"""A database that cannot be opened stops ``serve`` and ``worker`` with one clear line on
stderr and exit status 2, like any other bad setting: no traceback, no exit status 3."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import free_port

pytestmark = pytest.mark.slow


def a_directory(tmp_path: Path) -> Path:
    (tmp_path / "receiver.db").mkdir()
    return tmp_path / "receiver.db"


def under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "data").write_text("a file, not a folder")
    return tmp_path / "data" / "receiver.db"


def not_a_database(tmp_path: Path) -> Path:
    (tmp_path / "receiver.db").write_bytes(b"this is not an SQLite file" * 100)
    return tmp_path / "receiver.db"


def unreachable_postgresql(tmp_path: Path) -> str:
    """A PostgreSQL URL on a port where nothing listens (no server needed)."""
    return f"postgresql://127.0.0.1:{free_port()}/receiver"


def read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "receiver.db"


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["worker"]])
@pytest.mark.parametrize("make", [a_directory, under_a_file, not_a_database, read_only_folder,
                                  unreachable_postgresql])
def test_an_unopenable_database_stops_start_up_with_one_line_and_status_2(
    tmp_path: Path, command: list[str], make: Callable[[Path], Path | str]
) -> None:
    """The one line is all: serve opens the database before uvicorn starts, so no server
    line comes before it."""
    db = make(tmp_path)
    if command[0] == "serve":
        command = ["serve", "--port", str(free_port())]
    config = tmp_path / "routes.toml"
    config.write_text("routes = []\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "SONIC_"))}
    env |= {"SONIC_WEBHOOK_SECRET": "s3cret-1", "RECEIVER_LOG_FORMAT": "json",
            "RECEIVER_CONFIG": str(config)}
    done = subprocess.run([sys.executable, "-m", "receiver", *command, "--db", str(db)],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "uvicorn" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sonic-receiver: error: cannot ")
    assert str(db) in last
