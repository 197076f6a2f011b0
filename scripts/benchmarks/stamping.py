"""An ingest role that notes when each delivery committed, for the dispatch benchmark: stamps
are ``time.time()`` (one clock for every process on the machine), appended as
``<delivery id> <seconds>`` lines to a file (:func:`scripts.benchmarks.probes.read_stamps`
reads them)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO

from receiver.models import Delivery, RecordResult
from receiver.routing import Router
from receiver.storage.database import Database
from receiver.storage.ingest import Ingest


class StampingIngest(Ingest):
    """The real ingest role (any backend), noting the moment each :meth:`record_delivery`
    returned (the transaction committed)."""

    def __init__(self, db: Database, stamps: Path) -> None:
        super().__init__(db)
        self._stamps: IO[str] = stamps.open("a", buffering=1)

    async def record_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        result = await super().record_delivery(delivery, router=router)
        self._stamps.write(f"{delivery.delivery_id} {time.time()!r}\n")
        return result

    def close(self) -> None:
        self._stamps.close()
