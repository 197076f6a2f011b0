"""``sonic-receiver worker``: the job runner as a process of its own, on the same database."""

from __future__ import annotations

import asyncio
import signal

import structlog

from receiver.clock import SystemClock
from receiver.routing import router_for
from receiver.runtime import open_runtime
from receiver.schema import load_checked
from receiver.settings import Settings

log = structlog.get_logger("receiver.worker")


async def run_worker(settings: Settings) -> int:
    """Run jobs until SIGTERM or SIGINT; returns the exit status."""
    registry = load_checked(settings.config)  # the whole file, before the database
    router = router_for(settings.config, registry, policy=settings.retry)
    async with open_runtime(settings, clock=SystemClock(), router=router,
                            registry=registry) as runtime:
        worker = runtime.make_worker(poll_s=min(settings.worker_poll_s, 0.25), listen=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        running = asyncio.create_task(worker.run(), name="worker")
        await stop.wait()
        log.info("worker_signalled")
        await worker.stop(deadline_s=settings.worker_drain_s)
        await running
    return 0
