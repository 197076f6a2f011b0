"""The README's main command: the demo closes the whole loop and exits 0."""

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
    assert "cannot read back" not in out  # every WAV was measured through GET /files
    # the servers are gone once it exits: it points to --stay, not to URLs that open nothing
    assert "run scripts/demo --stay" in out
    assert "/ui" not in out
    # the full song lasts as long as the source up to continue_at plus the extension
    song = re.search(r"full song: ([\d.]+) s = .* \(([\d.]+) s\)", out)
    assert song is not None, out[-3000:]
    assert abs(float(song.group(1)) - float(song.group(2))) <= 1.0


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
    assert "credits spent: 32" in out
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
    import re
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
