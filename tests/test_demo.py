"""The README's main command: the demo closes the whole loop and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest


@pytest.mark.slow
def test_the_demo_closes_the_loop_and_recovers_the_dropped_webhook(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "demo", "--dir", str(tmp_path / "demo"),
         "--timeout", "90"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "<- recovered by reconciliation" in out
    assert "credits spent: 32" in out
    assert "notifications received by the local sink: 3" in out
    assert "recovered by reconciliation: yes" in out
    wavs = list((tmp_path / "demo" / "media").rglob("*.wav"))
    assert len(wavs) == 5  # two clips of the song, two of the extension, one full song
    assert not list((tmp_path / "demo" / "media").rglob("*.part"))


@pytest.mark.slow
def test_the_demo_closes_the_loop_on_postgresql_with_two_web_processes_and_a_worker(
    tmp_path: Path, pg_dsn: str,
) -> None:
    """Issue 9's acceptance: RECEIVER_DB=postgresql://..., 2 serve processes and 1 worker."""
    env = {**os.environ, "RECEIVER_DB": pg_dsn}
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "demo", "--dir", str(tmp_path / "demo"),
         "--timeout", "90", "--web-processes", "2", "--separate-worker"],
        capture_output=True, text=True, timeout=180, check=False, env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "2 web process(es), a separate worker, on PostgreSQL" in out
    assert "recovered by reconciliation: yes" in out
    assert "credits spent: 32" in out
    assert len(list((tmp_path / "demo" / "media").rglob("*.wav"))) == 5
    assert not (tmp_path / "demo" / "receiver.db").exists()  # it ran on PostgreSQL
    worker_log = (tmp_path / "demo" / "worker.log").read_text()
    assert '"job_done"' in worker_log  # the jobs ran in the worker process
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    assert dict(rows).keys() == {"done"}
