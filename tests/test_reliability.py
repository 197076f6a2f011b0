"""Reliability under load: senders that retry, a server killed with SIGKILL in the middle and
restarted. No acknowledged delivery is lost and no handler effect happens twice."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.load import Senders, check_effects, effect_config, stored, until_jobs_done
from tests.processes import serve
from tests.support import free_port

pytestmark = pytest.mark.slow

SENDERS, TASKS_EACH = 8, 15


def test_kill_9_under_retrying_load_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    config = effect_config(tmp_path / "receiver.toml", effects)
    db, port, log = tmp_path / "r.db", free_port(), tmp_path / "log"

    async def run() -> Senders:
        senders = Senders(f"http://127.0.0.1:{port}/webhooks/sonic", SENDERS, TASKS_EACH)
        with serve(db, port, log, config=config) as proc:
            traffic = asyncio.create_task(senders.run())
            await senders.half_way.wait()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with serve(db, port, log, config=config):
            await traffic
            await until_jobs_done(db, len(senders.tasks))
        return senders

    senders = asyncio.run(run())
    assert len(senders.acked) == senders.expected, "every delivery was finally acknowledged"
    final = stored(db)
    assert senders.acked <= final.deliveries
    assert set(final.tasks.values()) == {"succeeded"}
    assert len(final.tasks) == SENDERS * TASKS_EACH
    # one job per task, despite the retries, and it ran to the end
    assert [state for *_, state in final.jobs] == ["done"] * SENDERS * TASKS_EACH
    check_effects(effects, senders.tasks)
