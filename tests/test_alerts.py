"""The receiver's own alerts (issue 19), on both backends: each rule fires once, is sent again
once per cooldown while it holds, resolves once it clears, is not sent again by a process that
starts afterwards, and is evaluated by one process of several. Messages go through apprise's
``json://`` to a real HTTP peer on loopback (:func:`tests.peers.json_sink`); the clock is a
:class:`FakeClock` shared by the processes, so that windows and cooldowns pass at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from receiver.alerts import HOLD_ROUNDS, RULES, Alerting, decide
from receiver.clock import FakeClock
from receiver.config import AlertsTable
from receiver.conversion import convert
from receiver.failures import FailureCategory, classify
from receiver.models import Alert, Source
from receiver.routing import HandlerRef, Route, Router
from receiver.storage.roles import Storage, sqlite_storage
from tests.backends import StoreOpener
from tests.peers import Sink, json_sink
from tests.support import COMPLETED, callback, clip, delivery

pytestmark = pytest.mark.anyio

WINDOW, COOLDOWN, EVERY = 600.0, 60.0, 15.0
ROUTER = Router([Route(name="r", on=frozenset({"task.succeeded"}),
                       handlers=(HandlerRef(name="keep"),))])


def alerts_table(**rules: dict[str, Any]) -> AlertsTable:
    """Every rule with a window longer than its cooldown (a held alert repeats within it)."""
    raw: dict[str, Any] = {"every": EVERY}
    for name in RULES:
        raw[name] = {"window": WINDOW, "cooldown": COOLDOWN, **rules.get(name, {})}
    table: AlertsTable = convert(raw, AlertsTable)
    return table


@dataclass
class World:
    """One database, a shared fake clock, a JSON peer taking the messages, and processes."""

    open_store: StoreOpener
    stores: contextlib.AsyncExitStack
    clock: FakeClock
    sink: Sink
    tmp_path: Path
    table: AlertsTable = field(default_factory=alerts_table)
    keepers: frozenset[str] = frozenset()
    targets: tuple[str, ...] = ()
    first: Storage | None = None

    async def store(self) -> Storage:
        """Another connection to the database (as another process holds)."""
        opened = await self.stores.enter_async_context(self.open_store(clock=self.clock))
        self.first = self.first or opened
        return opened

    async def process(self, owner: str) -> Alerting:
        store = await self.store()
        return Alerting(table=self.table, targets=self.targets or (self.sink.url("alerts"),),
                        watch=store.watch, admin=store.admin, clock=self.clock, owner=owner,
                        db_path=self.tmp_path / "receiver.db", keepers=self.keepers)

    @property
    def storage(self) -> Storage:
        assert self.first is not None
        return self.first

    def messages(self) -> list[dict[str, Any]]:
        return self.sink.delivered("alerts")

    def titles(self) -> list[str]:
        return [m["title"] for m in self.messages()]


@contextlib.asynccontextmanager
async def world(backend_store: StoreOpener, tmp_path: Path) -> AsyncIterator[World]:
    async with json_sink() as sink, contextlib.AsyncExitStack() as stores:
        w = World(open_store=backend_store, stores=stores, clock=FakeClock(1_800_000_000.0),
                  sink=sink, tmp_path=tmp_path)
        await w.store()
        yield w


# ---- how each rule is made to hold, and to clear ---------------------------------------------


async def refused(w: World, alerting: Alerting) -> None:
    for _ in range(12):
        alerting.refusals.add("refused", "musicapi:signature_mismatch", at=w.clock.now())


async def polled(w: World, alerting: Alerting) -> None:
    # get-music told of a task's end that no callback brought
    polled = dataclasses.replace(delivery("poll-1", COMPLETED, at=w.clock.now()),
                                 source=Source.POLL)
    await w.storage.ingest.record_delivery(polled)


async def failing(w: World, alerting: Alerting) -> None:
    for n in range(9):
        body = callback(f"f-{n}", [clip(f"f-{n}-c", "failed", error_message=(
            "Your lyrics violate our content policy" if n < 6 else "Insufficient credits"))],
            code=400)
        await w.storage.ingest.record_delivery(delivery(f"f-{n}", body, at=w.clock.now(),
                                                        event="song.failed"))
    for n in range(3):
        body = callback(f"s-{n}", [clip(f"s-{n}-c", "succeeded", audio_url="http://cdn/x.mp3")])
        await w.storage.ingest.record_delivery(delivery(f"s-{n}", body, at=w.clock.now()))


async def dead(w: World, alerting: Alerting, error: str = "boom\nat line 2") -> None:
    await w.storage.ingest.record_delivery(delivery("d-1", COMPLETED, at=w.clock.now()),
                                           router=ROUTER)
    [job] = await w.storage.jobs.claim_jobs(owner="w", limit=1, now=w.clock.now(), lease_s=60)
    assert await w.storage.jobs.kill_job(job.id, owner="w", error=error, now=w.clock.now())


async def quarantined(w: World, alerting: Alerting) -> None:
    await w.storage.ingest.record_delivery(delivery("q-<b>1</b>\x1b[31m", b"not json",
                                                    at=w.clock.now()))


async def at_risk(w: World, alerting: Alerting) -> None:
    # the task succeeded 0.6 of the time its files are kept (1000 s) ago; not downloaded yet
    await w.storage.ingest.record_delivery(delivery("r-1", COMPLETED, at=w.clock.now() - 600),
                                           router=ROUTER)


async def download_done(w: World) -> None:
    [job] = await w.storage.jobs.claim_jobs(owner="w", limit=1, now=w.clock.now(), lease_s=60)
    assert await w.storage.jobs.finish_job(job.id, owner="w", now=w.clock.now())


async def disk_low(w: World, alerting: Alerting) -> None:
    alerting.table = msgspec.structs.replace(
        alerting.table, storage=msgspec.structs.replace(alerting.table.storage,
                                                        min_free_mb=2**40))


async def window_passes(w: World) -> None:
    w.clock.advance(WINDOW + EVERY)


@dataclass(frozen=True)
class Scenario:
    rule: str
    hold: Callable[[World, Alerting], Awaitable[None]]
    clear: Callable[[World], Awaitable[None]] = window_passes
    subject: str = ""
    says: str = ""  # a phrase the firing message has
    keepers: frozenset[str] = frozenset()
    table: dict[str, dict[str, Any]] = field(default_factory=dict)


SCENARIOS = [
    Scenario("signatures_failing", refused, says="12 deliveries refused"),
    Scenario("callbacks_stopped", polled, says="Polling found 1 transition of 1 task"),
    Scenario("tasks_failing", failing, says="moderation 6, credits 3"),
    Scenario("jobs_dead", dead, subject="keep", says="1 job of keep gave up"),
    Scenario("deliveries_quarantined", quarantined, says="1 delivery quarantined"),
    Scenario("downloads_at_risk", at_risk, clear=download_done, keepers=frozenset({"keep"}),
             says="1 task succeeded but its files are not kept yet",
             table={"downloads_at_risk": {"kept_for": 1000}}),
    Scenario("storage", disk_low, subject="database_space", says="free under the database"),
]


async def restored(w: World, alerting: Alerting) -> None:
    alerting.table = w.table


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.rule for s in SCENARIOS])
async def test_a_rule_fires_once_repeats_per_cooldown_resolves_and_survives_a_restart(
    scenario: Scenario, backend_store: StoreOpener, tmp_path: Path,
) -> None:
    async with world(backend_store, tmp_path) as w:
        w.table, w.keepers = alerts_table(**scenario.table), scenario.keepers
        first = await w.process("web-1")
        assert await first.round() == []  # nothing holds yet
        await scenario.hold(w, first)
        await first.round()
        await first.round()  # held, within the cooldown: nothing more is sent
        assert len(w.messages()) == 1
        [fired] = w.messages()
        assert fired["type"] == "failure"
        assert scenario.rule.replace("_", " ").split()[0] in fired["title"]
        assert scenario.says in fired["message"], fired["message"]
        assert "What to do:" in fired["message"]

        w.clock.advance(COOLDOWN + 1)
        await first.round()
        assert len(w.titles()) == 2
        assert "still:" in w.titles()[1]

        # a restart: the process stops (giving its turn back), another one starts; what was
        # sent is not sent again
        await first.stop()
        again = await w.process("web-1-restarted")
        if scenario.rule == "storage":
            await disk_low(w, again)
        w.clock.advance(EVERY)
        await again.round()
        assert len(w.titles()) == 2

        if scenario.rule == "storage":
            await restored(w, again)
        else:
            await scenario.clear(w)
        w.clock.advance(EVERY)
        await again.round()
        await again.round()
        assert len(w.titles()) == 3, w.titles()
        resolved = w.messages()[2]
        assert resolved["title"].startswith("[sonic-receiver] resolved:")
        assert resolved["type"] == "success"

        [alert] = await w.storage.watch.alerts()
        assert (alert.rule, alert.subject, alert.repeats) == (scenario.rule, scenario.subject, 1)
        assert alert.resolved_at is not None
        assert await w.storage.watch.due_messages() == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.rule for s in SCENARIOS])
async def test_several_processes_evaluate_in_turn_and_send_each_message_once(
    scenario: Scenario, backend_store: StoreOpener, tmp_path: Path,
) -> None:
    async with world(backend_store, tmp_path) as w:
        w.table, w.keepers = alerts_table(**scenario.table), scenario.keepers
        processes = [await w.process(f"web-{n}") for n in range(3)]
        if scenario.rule in ("signatures_failing", "storage"):
            for p in processes:  # what each process sees for itself: refusals, its disk
                await scenario.hold(w, p)
        else:
            await scenario.hold(w, processes[0])
        # every process adds its counts each round; one of them evaluates
        for _ in range(3):
            await asyncio.gather(*(p.round() for p in processes))
            w.clock.advance(EVERY)
        assert len(w.titles()) == 1, w.titles()
        assert scenario.says.replace("12 ", "36 ") in w.messages()[0]["message"]
        assert len(await w.storage.watch.alerts(active=True)) == 1


async def test_a_process_that_died_holding_the_turn_is_replaced_after_the_hold(
    backend_store: StoreOpener, tmp_path: Path,
) -> None:
    async with world(backend_store, tmp_path) as w:
        died, other = await w.process("web-1"), await w.process("web-2")
        await died.round()  # web-1 evaluates, then dies without giving the turn back
        await refused(w, other)
        w.clock.advance(EVERY)
        await other.round()
        assert w.messages() == []  # web-1's turn still holds
        w.clock.advance(max(EVERY * HOLD_ROUNDS, 30.0))
        await other.round()
        assert w.titles() == ["[sonic-receiver] webhook signatures failing"]


async def test_a_message_no_target_takes_is_kept_and_sent_once_the_target_is_back(
    backend_store: StoreOpener, tmp_path: Path,
) -> None:
    async with world(backend_store, tmp_path) as w:
        w.sink.status["alerts"] = 503
        p = await w.process("web-1")
        await refused(w, p)
        await p.round()
        assert w.messages() == []
        assert w.sink.attempts("alerts") >= 1
        [due] = await w.storage.watch.due_messages()
        assert due.attempts == 1
        assert (due.last_error or "").startswith("#0 json: not delivered")
        w.sink.status["alerts"] = 200
        w.clock.advance(EVERY)
        await p.round()
        w.clock.advance(EVERY)
        await p.round()
        assert len(w.titles()) == 1
        assert await w.storage.watch.due_messages() == []


async def test_with_two_targets_one_that_failed_is_tried_again_alone(
    backend_store: StoreOpener, tmp_path: Path,
) -> None:
    async with world(backend_store, tmp_path) as w:
        w.targets = (w.sink.url("alerts"), w.sink.url("other"))
        w.sink.status["other"] = 500
        p = await w.process("web-1")
        await refused(w, p)
        await p.round()
        w.sink.status["other"] = 200
        w.clock.advance(EVERY)
        await p.round()
        assert (len(w.sink.delivered("alerts")), len(w.sink.delivered("other"))) == (1, 1)


async def test_a_rule_turned_off_resolves_its_alert_without_a_message(
    backend_store: StoreOpener, tmp_path: Path,
) -> None:
    async with world(backend_store, tmp_path) as w:
        p = await w.process("web-1")
        await refused(w, p)
        await p.round()
        p.table = alerts_table(signatures_failing={"enabled": False})
        w.clock.advance(EVERY)
        await p.round()
        assert len(w.titles()) == 1
        assert await w.storage.watch.alerts(active=True) == []


async def test_alerts_texts_name_no_secret_and_show_no_control_characters(
    backend_store: StoreOpener, tmp_path: Path,
) -> None:
    async with world(backend_store, tmp_path) as w:
        p = await w.process("web-1")
        await quarantined(w, p)
        await dead(w, p)
        await p.round()
        texts = {m["title"]: m["message"] for m in w.messages()}
        assert "boom at line 2" in texts["[sonic-receiver] jobs dead (keep)"]
        kept_raw = texts["[sonic-receiver] deliveries quarantined"]
        assert "q-\u2039b\u203a1\u2039/b\u203a [31m: " in kept_raw
        for text in texts.values():
            assert "\x1b" not in text
            assert "whsec" not in text
            assert w.sink.base.removeprefix("http://") not in text
        [quarantine] = [a for a in await w.storage.watch.alerts()
                        if a.rule == "deliveries_quarantined"]
        assert quarantine.link == "/ui/delivery?id=q-%3Cb%3E1%3C%2Fb%3E%1B%5B31m"
        assert "\n" not in quarantine.text


async def test_the_database_away_is_told_by_the_process_that_evaluated_last(
    tmp_path: Path,
) -> None:
    """SQLite only: its lock, held by another connection, is the outage a test can make."""
    async with json_sink() as sink:
        clock = FakeClock(1_800_000_000.0)
        db = tmp_path / "receiver.db"
        async with sqlite_storage(db, clock=clock, lock_timeout_s=0.05) as store:
            table = alerts_table(storage={"unreachable_after": 60})
            p = Alerting(table=table, targets=(sink.url("alerts"),), watch=store.watch,
                         admin=store.admin, clock=clock, owner="web-1")
            await p.round()
            with contextlib.closing(sqlite3.connect(db)) as other:
                other.execute("BEGIN EXCLUSIVE")
                await p.round()  # away, not yet for unreachable_after
                assert sink.delivered("alerts") == []
                clock.advance(61)
                await p.round()
                clock.advance(EVERY)
                await p.round()  # told once per cooldown
                other.execute("ROLLBACK")
            titles = [m["title"] for m in sink.delivered("alerts")]
            assert titles == ["[sonic-receiver] storage (database unreachable)"]
            clock.advance(EVERY)
            await p.round()
            titles = [m["title"] for m in sink.delivered("alerts")]
            assert titles[1] == "[sonic-receiver] resolved: storage (database unreachable)"
            [kept] = await store.watch.alerts()
            assert (kept.rule, kept.subject, kept.resolved_at) == ("storage", "database",
                                                                   clock.now())


async def test_a_process_that_did_not_evaluate_last_does_not_tell_of_an_outage(
    tmp_path: Path,
) -> None:
    async with json_sink() as sink:
        clock = FakeClock(1_800_000_000.0)
        db = tmp_path / "receiver.db"
        async with sqlite_storage(db, clock=clock, lock_timeout_s=0.05) as one, \
                sqlite_storage(db, clock=clock, lock_timeout_s=0.05) as two:
            table = alerts_table(storage={"unreachable_after": 60})
            first, second = (
                Alerting(table=table, targets=(sink.url("alerts"),), watch=s.watch,
                         admin=s.admin, clock=clock, owner=owner)
                for s, owner in ((one, "web-1"), (two, "web-2")))
            await first.round()
            await second.round()  # the turn is web-1's
            with contextlib.closing(sqlite3.connect(db)) as other:
                other.execute("BEGIN EXCLUSIVE")
                for _ in range(3):
                    await asyncio.gather(first.round(), second.round())
                    clock.advance(61)
                other.execute("ROLLBACK")
            told = sink.delivered("alerts")
            assert told
            assert all("from web-1:" in m["message"] for m in told), told


async def test_what_came_from_outside_is_inert_in_a_chat_message(
    backend_store: StoreOpener, tmp_path: Path,
) -> None:
    """A dead job's error carries a URL, Slack's link markup and a mention from a callback:
    the alert shows them, but as text no chat service turns into a link or a ping."""
    async with world(backend_store, tmp_path) as w:
        p = await w.process("web-1")
        await dead(w, p, error="GET https://evil.example/login <https://evil.example|click> "
                               "@everyone `code`")
        await p.round()
        [message] = w.messages()
        text = message["message"]
        assert "https[:]//evil.example/login" in text
        assert "\u2039https[:]//evil.example\u00a6click\u203a" in text
        assert "@\u200beveryone" in text
        for raw in ("https://evil", "<https", "@everyone", "`code`"):
            assert raw not in text


async def test_retention_takes_the_sent_messages_and_keeps_the_alerts(
    backend_store: StoreOpener, tmp_path: Path,
) -> None:
    async with world(backend_store, tmp_path) as w:
        w.sink.status["alerts"] = 503  # the first alert's message stays due
        p = await w.process("web-1")
        await refused(w, p)
        await p.round()
        w.sink.status["alerts"] = 200
        await dead(w, p)
        w.clock.advance(EVERY)
        await p.round()  # both sent now
        w.sink.status["alerts"] = 503
        await quarantined(w, p)
        w.clock.advance(EVERY)
        await p.round()  # a third, not sent
        assert await w.storage.watch.outbox_size() == (1, 2)
        w.clock.advance(3 * 3600.0)
        await w.storage.admin.prune(older_than_s=3600.0, keep_ids_s=7200.0)
        assert await w.storage.watch.outbox_size() == (1, 0)
        [left] = await w.storage.watch.due_messages()  # the unsent one stays due
        assert "quarantined" in left.title
        assert len(await w.storage.watch.alerts()) == 3


# ---- deciding, without a store -------------------------------------------------------------------


def open_alert(rule: str, *, fired_at: float, notified_at: float, subject: str = "") -> Alert:
    return Alert(id=1, rule=rule, subject=subject, text="t", advice="a", link=None,
                 fired_at=fired_at, seen_at=notified_at, notified_at=notified_at, repeats=0)


def test_an_alert_of_a_rule_that_could_not_be_evaluated_stays_as_it_is() -> None:
    opened = [open_alert("jobs_dead", fired_at=0, notified_at=0, subject="h")]
    changes = decide(opened, [], evaluated=["storage"], now=10_000,
                     cooldowns=dict.fromkeys(RULES, 60.0))
    assert changes == []


# ---- why tasks fail --------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "message", "category"), [
    (400, "Your prompt violates our content policy", FailureCategory.MODERATION),
    (None, "lyrics flagged as inappropriate", FailureCategory.MODERATION),
    (400, "The uploaded audio matches existing copyrighted content", FailureCategory.COPYRIGHT),
    (403, "The remaining credits are not enough", FailureCategory.CREDITS),
    (403, None, FailureCategory.CREDITS),
    (504, "Gateway Time-out", FailureCategory.TIMEOUT),
    (None, "generation timed out", FailureCategory.TIMEOUT),
    (400, "mv field is invalid", FailureCategory.INVALID_REQUEST),
    (400, "prompt length exceeded", FailureCategory.INVALID_REQUEST),
    (400, "continue_clip_id is required", FailureCategory.INVALID_REQUEST),
    (500, "generation failed", FailureCategory.UPSTREAM),
    (502, "", FailureCategory.UPSTREAM),
    (None, "failed", FailureCategory.UNKNOWN),
    (200, "success", FailureCategory.UNKNOWN),
])
def test_a_failure_is_put_in_its_category(code: int | None, message: str | None,
                                          category: FailureCategory) -> None:
    assert classify(code, message) is category


async def test_a_failed_task_keeps_its_category(store: Storage) -> None:
    body = callback("t-9", [clip("c", "failed", error_message="Insufficient credits")], code=403)
    await store.ingest.record_delivery(delivery("d-9", body, event="song.failed"))
    view = await store.admin.get_task("t-9")
    assert view is not None
    assert (view.task.error, view.task.failure_category) == ("Insufficient credits", "credits")
