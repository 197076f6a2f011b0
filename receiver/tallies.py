"""Counts a process keeps in memory until they are added to the store: refused deliveries,
which are never stored (a 401 writes nothing), but which the signatures-failing alert must
see from every process. :meth:`Tally.add` is a dict update on the request's path;
:meth:`Tally.take` hands the counts to the alerts' round, which adds them to the store and
gives them back (:meth:`Tally.give_back`) when it cannot. Memory is bounded: counts older
than :data:`KEEP_S` are dropped, with the number dropped logged.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from receiver.storage.watch import bucket_of

log = structlog.get_logger("receiver.tallies")

KEEP_S = 86400.0  # what the store could not take for this long is of no use to a rule
Key = tuple[str, int, str]  # name, second (unix), label


class Tally:
    """Counts by name, second and label, in this process."""

    def __init__(self) -> None:
        self._counts: dict[Key, int] = {}

    def add(self, name: str, label: str, *, at: float) -> None:
        key = (name, bucket_of(at), label)
        self._counts[key] = self._counts.get(key, 0) + 1

    def take(self) -> dict[Key, int]:
        """Every count kept, now no longer kept here."""
        counts, self._counts = self._counts, {}
        return counts

    def give_back(self, counts: Mapping[Key, int], *, now: float) -> None:
        """Keep ``counts`` again (the store could not take them), dropping the too old."""
        dropped = 0
        for key, n in counts.items():
            if key[1] < now - KEEP_S:
                dropped += n
            else:
                self._counts[key] = self._counts.get(key, 0) + n
        if dropped:
            log.warning("tallies_dropped", count=dropped, older_than_s=KEEP_S)

    def __len__(self) -> int:
        return sum(self._counts.values())
