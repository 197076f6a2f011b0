"""Reading back what the store wrote: JSON with integers past 64 bits comes back as written
(orjson reads them as floats without an error)."""

from __future__ import annotations

import pytest

from receiver.storage.records import loads
from receiver.storage.roles import Storage
from tests.support import callback, clip, delivery

BIG = 2**70
pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, BIG, 10**30])
def test_an_integer_past_64_bits_reads_back_as_that_integer(number: int) -> None:
    text = f'{{"seed": {number}, "ok": [1, 2.5, "12345678901234567890"]}}'
    for given in (text, text.encode()):
        found = loads(given)
        assert found["seed"] == number
        assert type(found["seed"]) is int
        assert found["ok"] == [1, 2.5, "12345678901234567890"]


async def test_a_clip_whose_json_holds_a_huge_integer_keeps_it(store: Storage) -> None:
    body = callback("task-big", [clip("clip-big", "succeeded", seed=BIG)],
                    event="song.completed")
    await store.ingest.record_delivery(delivery("d-big", body))
    view = await store.admin.get_task("task-big")
    assert view is not None
    (kept,) = view.clips
    assert kept.data["seed"] == BIG
    assert type(kept.data["seed"]) is int
