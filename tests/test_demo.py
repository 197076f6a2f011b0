"""The demo beyond the README's runs of it (``tests/test_readme_examples.py``, which checks
that ``scripts/demo`` closes the loop): through another provider (``--provider sunoapi``),
``--stay`` keeps the console up, and the loop closes on PostgreSQL, again and again on one
database."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest


@pytest.mark.slow
def test_the_demo_closes_the_same_loop_through_sunoapi(tmp_path: Path) -> None:
    """``scripts/demo --provider sunoapi`` (issue 21): create → extend → concat through the
    sandbox playing sunoapi.org, every callback confirmed by polling it, its dropped
    ``complete`` made up for, the files kept and the full song as long as its parts."""
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "demo", "--dir", str(tmp_path / "demo"),
         "--timeout", "90", "--provider", "sunoapi"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "through POST /tasks through sunoapi" in out
    assert "(confirm)  <- a callback confirmed by polling the provider" in out
    assert "(webhook)" not in out  # no body took effect unconfirmed
    assert "credits spent: 32 (create_music 15 + extend_music 15 + concat_music 2)" in out
    assert "notifications received by the local sink: 3" in out
    assert "recovered by polling the provider: yes" in out
    wavs = list((tmp_path / "demo" / "media").rglob("*.wav"))
    assert len(wavs) == 5
    song = re.search(r"full song: ([\d.]+) s = .* \(([\d.]+) s\)", out)
    assert song is not None, out[-3000:]
    assert abs(float(song.group(1)) - float(song.group(2))) <= 1.0
    with sqlite3.connect(tmp_path / "demo" / "receiver.db") as conn:
        providers = {r[0] for r in conn.execute("SELECT DISTINCT provider FROM tasks")}
        outcomes = {r[0] for r in conn.execute(
            "SELECT DISTINCT outcome FROM deliveries WHERE source = 'webhook'")}
    assert providers == {"sunoapi"}
    assert outcomes == {"recorded"}  # each confirmed: none left unconfirmed


@pytest.mark.slow
def test_the_demo_stays_to_open_the_console(tmp_path: Path) -> None:
    """``--stay`` prints the console's URL and how to log in, keeps serving it (the page of the
    last song answers with the token's session), and stops cleanly on SIGTERM."""
    import signal

    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", "demo", "--dir", str(tmp_path / "demo"), "--stay",
         "--timeout", "90"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "serving until Ctrl-C" in line:
                break
        out = "".join(lines)
        found = re.search(r"console: (http://127\.0\.0\.1:\d+)(/ui/tasks/\S+)", out)
        assert found, out[-3000:]
        assert f"cat {tmp_path / 'demo' / 'admin-token'}" in out
        token = (tmp_path / "demo" / "admin-token").read_text().strip()
        with httpx.Client(base_url=found.group(1), timeout=10) as http:
            login = http.post("/ui/login", data={"token": token},
                              headers={"Origin": found.group(1)})
            assert login.status_code == 303
            page = http.get(found.group(2))
            assert page.status_code == 200
            assert "concat_music" in page.text
            assert "<audio" in page.text
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest[-3000:]


@pytest.mark.postgres
@pytest.mark.slow
def test_the_demo_closes_the_loop_on_postgresql_twice_on_one_database(
    tmp_path: Path, pg_dsn: str,
) -> None:
    """Issue 9's acceptance (RECEIVER_DB=postgresql://..., 2 serve processes and 1 worker), run
    on a database that already holds an earlier demo: each run's sandbox makes new ids, so the
    second reads back its own files, and its credits add up from its own tasks."""
    env = {**os.environ, "RECEIVER_DB": pg_dsn}

    def demo(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "receiver", "demo", "--dir", str(tmp_path / "demo"),
             "--timeout", "90", *args],
            capture_output=True, text=True, timeout=180, check=False, env=env,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    first = demo()
    out = demo("--web-processes", "2", "--separate-worker")
    for run in (first, out):
        assert "recovered by reconciliation: yes" in run
        assert "credits spent: 32 (create_music 15 + extend_music 15 + concat_music 2)" in run
        assert "cannot read back" not in run
    assert "2 web process(es), a separate worker, on PostgreSQL" in out
    assert len(list((tmp_path / "demo" / "media").rglob("*.wav"))) == 5
    assert not (tmp_path / "demo" / "receiver.db").exists()  # it ran on PostgreSQL
    worker_log = (tmp_path / "demo" / "worker.log").read_text()
    assert '"job_done"' in worker_log  # the jobs ran in the worker process
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        tasks = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()
    assert dict(rows).keys() == {"done"}
    assert tasks == (6,)  # two chains of three tasks each, none shared
