"""``sonic-receiver migrate`` and ``prune`` as an operator runs them, on real databases."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from receiver.storage.sqlite import DIALECT

pytestmark = pytest.mark.slow


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("RECEIVER_", "SONIC_")) and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "receiver", *args], env=clean | (env or {}),
                          capture_output=True, text=True, timeout=60, check=False)


def test_migrate_brings_a_new_sqlite_file_to_the_latest_schema(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    done = cli("migrate", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert f"schema up to date: sqlite:{db}" in done.stdout
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(DIALECT.migrations())


@pytest.mark.postgres
def test_migrate_on_postgresql_from_database_url(pg_dsn: str) -> None:
    done = cli("migrate", env={"DATABASE_URL": pg_dsn})
    assert done.returncode == 0, done.stderr
    assert "schema up to date: postgresql://127.0.0.1:" in done.stdout


def test_an_unknown_database_scheme_is_one_line_and_status_2(tmp_path: Path) -> None:
    done = cli("migrate", "--db", "mysql://u:p@host/db")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "sonic-receiver: error: --db: unknown database scheme 'mysql' (use a file path, "
        "sqlite:///path or postgresql://user:password@host/db)"]
    assert not Path("mysql:").exists()


def test_prune_dry_run_counts_and_deletes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    assert cli("migrate", "--db", str(db)).returncode == 0
    old = time.time() - 100 * 86400  # past the 90-day horizon, within the 400 days of ids
    with sqlite3.connect(db) as conn:  # a finished task's deliveries and job
        conn.execute("INSERT INTO tasks (task_id, state, first_seen_at, updated_at, "
                     "last_event_at) VALUES ('t', 'succeeded', ?, ?, ?)", (old, old, old))
        for delivery_id, at in (("d", old), ("ancient", 1.0)):
            conn.execute("INSERT INTO deliveries (delivery_id, source, scheme, task_id, "
                         "outcome, headers, body, received_at) VALUES (?, 'webhook', "
                         "'musicapi', 't', 'recorded', '{}', x'7b7d', ?)", (delivery_id, at))
        conn.execute("INSERT INTO jobs (task_seq, key, handler, route, options, task_id, "
                     "trigger, state, max_attempts, run_after, created_at, updated_at) VALUES "
                     "((SELECT seq FROM tasks WHERE task_id = 't'), 'k', 'h', 'r', '{}', 't', "
                     "'task.succeeded', 'done', 5, ?, ?, ?)", (old, old, old))
    expected = {"bodies": 2, "jobs": 1, "delivery_ids": 1}  # "ancient" is past the id horizon
    dry = cli("prune", "--db", str(db), "--older-than", "90d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {**expected, "dry_run": True}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM deliveries WHERE body = x'7b7d'").fetchone() \
            == (2,)
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1
    wet = cli("prune", "--db", str(db), "--older-than", "90d")
    assert json.loads(wet.stdout) == {**expected, "dry_run": False}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT delivery_id, body, pruned_at IS NOT NULL "
                            "FROM deliveries").fetchall() == [("d", b"", 1)]
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
    bad = cli("prune", "--db", str(db), "--older-than", "90d", "--keep-ids", "1d")
    assert bad.returncode == 2
    assert "--keep-ids must be at least --older-than" in bad.stderr
