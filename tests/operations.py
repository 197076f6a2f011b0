"""Operations (:class:`receiver.storage.connector.Operation`) that tests send to a shared
writer (:mod:`receiver.storage.writer`): importable by the writer's process, as its own are."""

from __future__ import annotations

import time
from dataclasses import dataclass

from receiver.storage.connector import Operation, Tx


@dataclass(frozen=True)
class Probe(Operation):
    """A row in ``probes``, then ``hold_s`` asleep inside the transaction (a writer killed
    meanwhile dies with its batch uncommitted)."""

    name: str
    at: float
    hold_s: float = 0.0

    async def __call__(self, tx: Tx) -> int:
        written = await tx.run("probe_write", {"name": self.name, "at": self.at})
        if self.hold_s:
            # Not a wait: the writer holds its transaction open, to be found (and killed)
            # mid-transaction; the unit runs on the writer's thread and must not suspend.
            time.sleep(self.hold_s)  # noqa: ASYNC251
        return written


@dataclass(frozen=True)
class Broken(Operation):
    """An operation with a bug."""

    async def __call__(self, tx: Tx) -> None:
        raise KeyError("planted")


@dataclass(frozen=True)
class Huge(Operation):
    """A field msgpack cannot carry (past 64 bits): the operation goes pickled."""

    value: int

    async def __call__(self, tx: Tx) -> int:
        return self.value + 1
