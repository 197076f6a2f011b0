"""psycopg 3 against asyncpg on the PostgreSQL write path (issue 20): ``.venv/bin/python -m
scripts.benchmarks.drivers`` (not one of ``scripts/bench``'s timed suites; needs asyncpg,
which the project does not depend on).

On a throwaway cluster as deployed (fsync, full-page writes, synchronous_commit on), a fresh
database for each variant, migrated by the real store, records the same deliveries of the
load generator's shape (a new task, two clips, three transitions, one job each) through the
real store, C callers at once (its group commit makes the batches), with the writer:

- ``psycopg json``: the store as it is (pipeline mode; ``[postgresql_batch]`` statements over
  one JSON text);
- ``psycopg arrays``, ``psycopg binary``: the same statements reading one array a column
  (psycopg adapts the lists, sent as text or in binary);
- ``asyncpg json``, ``asyncpg arrays``: :class:`AsyncpgConnector`, the same waves and
  statements on one asyncpg connection.

Every database must hold the same rows afterwards (less the numbers the database assigns).
The variants take turns, in a rotated order each round; medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import asyncpg

from receiver.models import Delivery, Source
from receiver.payloads import try_parse
from receiver.routing import HandlerRef, Route, Router
from receiver.signatures import sign_musicapi
from receiver.storage import postgres
from receiver.storage.connector import Unit
from receiver.storage.postgres import BATCHED, _Ask, _Batched, _columns, _split, _StepTx
from receiver.storage.roles import Storage
from receiver.storage.sql import _PARAM, Dialect
from receiver.webhook import kept_headers
from scripts.benchmarks.ingest import Postgres, postgres_or_none
from scripts.benchmarks.loadgen import template
from scripts.benchmarks.processes import HostLoad, Meter
from scripts.benchmarks.roundtrips import _Counted

ROUTER = Router([Route(name="bench", on=frozenset({"task.succeeded"}),
                       handlers=(HandlerRef(name="bench_noop"),))])
TABLES = {"deliveries": "delivery_id", "tasks": "task_id", "clips": "clip_id",
          "transitions": "delivery_id, entity_id, to_state", "jobs": "task_id, key"}
ASSIGNED = {"id", "seq", "task_seq"}  # numbered by the database: not compared
_RECORDSET = re.compile(r"json_to_recordset\(CAST\(:rows AS JSON\)\)\s+AS b \(([^)]*)\)")


def deliveries(count: int) -> list[Delivery]:
    """``count`` new deliveries of the load generator's shape, signed and parsed as served."""
    out = []
    for _ in range(count):
        task, clip = str(uuid.uuid4()), str(uuid.uuid4())
        body = template().replace("TASK", task).replace("CLIP", clip).encode()
        headers = sign_musicapi("bench-secret", body, int(time.time()))
        headers.update({"x-webhook-id": str(uuid.uuid4()), "content-type": "application/json",
                        "host": "127.0.0.1", "content-length": str(len(body))})
        callback, error = try_parse(body, event_header=None, task_id_hint=None)
        out.append(Delivery(
            delivery_id=headers["x-webhook-id"], source=Source.WEBHOOK, scheme="musicapi",
            event=callback.event.value if callback and callback.event else None,
            headers=kept_headers(headers), body=body, received_at=time.time(),
            callback=callback, error=error, task_id_hint=None))
    return out


# ---- the store, on either writer ------------------------------------------------------------

async def through_store(dsn: str, items: Sequence[Delivery], callers: int, variant: str,
                        counter: _Counted, timer: Timer) -> tuple[list[int], int]:
    """Record ``items`` through the store, ``callers`` at once, on the psycopg writer or an
    :class:`AsyncpgConnector` (``variant``: driver and form); the sizes of the batches its
    group commit made, and the round trips."""
    from tests.backends import storage_at

    driver, form = variant.split()
    store = storage_at(dsn) if driver == "psycopg" else Storage.over(AsyncpgConnector(dsn, form))
    queue = iter(items)
    sizes: list[int] = []
    async with store:
        connector = store.ingest.db.connector
        write = connector.write

        async def counted(units: Any) -> None:
            sizes.append(len(units))
            await write(units)

        connector.write = counted

        async def caller() -> None:
            for item in queue:
                await store.ingest.record_delivery(item, router=ROUTER)

        counter.syncs = 0
        with store_over_arrays(store, form) if driver == "psycopg" and form != "json" else \
                contextlib.nullcontext():
            timer.start()
            await asyncio.gather(*(caller() for _ in range(callers)))
            timer.stop()
    return sizes, counter.syncs if driver == "psycopg" else connector.trips


# ---- asyncpg: the same statements in the same waves ------------------------------------------

def _numbered(text: str) -> tuple[str, list[str]]:
    """``:name`` parameters as ``$n``; the names in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _PARAM.sub(number, text), names


def _over_arrays(text: str, *, style: str = "numbered") -> tuple[str, list[tuple[str, str]]]:
    """A ``[postgresql_batch]`` statement (``:name`` style) reading ``unnest`` of one array a
    column instead of one JSON text (bytes as ``bytea``, not base64); its ``(column, type)``
    in ``$n`` order. ``style``: ``$n`` (asyncpg), ``%(column)s`` or ``%(column)b`` (psycopg,
    text or binary)."""
    columns: list[tuple[str, str]] = []
    text = text.replace("decode(body, 'base64')", "body")
    if style != "numbered":
        text = text.replace("%", "%%")

    def unnest(match: re.Match[str]) -> str:
        names = []
        arrays = []
        for part in match.group(1).split(","):
            name, kind = part.strip().split(" ", 1)
            kind = "BYTEA" if name == "body" else kind
            if (name, kind) not in columns:
                columns.append((name, kind))
            names.append(name)
            mark = (f"${columns.index((name, kind)) + 1}" if style == "numbered"
                    else f"%({name}){'b' if style == 'binary' else 's'}")
            arrays.append(f"CAST({mark} AS {kind}[])")
        return f"unnest({', '.join(arrays)}) AS b ({', '.join(names)})"

    return _RECORDSET.sub(unnest, text), columns


def _named() -> Dialect:
    """PostgreSQL's statements with ``:name`` parameters (to number, or to name for psycopg)."""
    return Dialect(name="postgresql", types=postgres.DIALECT.types,
                   macros=postgres.DIALECT.macros)


@contextlib.contextmanager
def store_over_arrays(store: Any, style: str) -> Iterator[None]:
    """The store's writer sending each batch statement's rows as one array a column (psycopg
    adapting the lists), instead of one JSON text, for the length of the block."""
    connector = store.ingest.db.connector
    kept = connector._batch_sql, postgres._columns
    connector._batch_sql = {name: _over_arrays(text, style=style)[0]
                            for name, text in _named().variants(postgres.BATCH).items()}
    postgres._columns = lambda rows: {k: [row.get(k) for row in rows] for k in rows[0]}
    try:
        yield
    finally:
        connector._batch_sql, postgres._columns = kept


def _distinct(indexes: list[int], asks: Mapping[int, _Ask], batched: _Batched
              ) -> tuple[list[int], list[int]]:
    """The store's ``_distinct``, but a statement with no unique parameters (``task_before``)
    is shared by all: the store runs that one once a unit, pipelined in one round trip, which
    asyncpg, with no pipeline, would pay a round trip each."""
    routes: set[Any] = set()
    keys: set[tuple[Any, ...]] = set()
    together, alone = [], []
    for index in sorted(indexes):
        params = asks[index].params
        route = params[0][batched.route] if batched.route else None
        mine = ({tuple(row[name] for name in batched.unique) for row in params}
                if batched.unique else set())
        if route in routes or not keys.isdisjoint(mine) or (
                batched.unique and len(mine) < len(params)):
            alone.append(index)
            continue
        routes.add(route)
        keys |= mine
        together.append(index)
    return together, alone


class AsyncpgConnector:
    """The store's writer over one asyncpg connection (writes only: no reads, no listening):
    a batch of units is recorded as the psycopg writer records it: the batch's task locks, a
    savepoint, the units run together in waves (one statement per name a wave, its
    ``[postgresql_batch]`` form), the savepoint released, a notify, the commit. Without
    pipelining, every statement is a round trip (``trips``); statements without parameters
    go together in one simple query. On the event loop: no thread."""

    dialect = postgres.DIALECT

    def __init__(self, url: str, form: str) -> None:
        dialect = _named()
        self.url, self.form, self.trips = url, form, 0
        self.sql = {name: _numbered(text) for name, text in dialect.statements().items()}
        self.batch: dict[str, tuple[str, list[Any]]] = {}
        for name, text in dialect.variants(postgres.BATCH).items():
            self.batch[name] = (_numbered(text)[0], []) if form == "json" else \
                _over_arrays(text)  # type: ignore[assignment]
        self.conn: asyncpg.Connection | None = None

    def describe(self) -> str:
        return f"asyncpg {self.url}"

    async def open(self) -> None:  # migrated already, by the psycopg store
        self.conn = await asyncpg.connect(self.url, server_settings={
            "application_name": postgres.WRITER_NAME, "lock_timeout": "5000ms"})

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def write(self, units: Sequence[Unit]) -> None:
        tasks = sorted({task for unit in units for task in unit.locks})
        await self._call("execute", "BEGIN", [])
        if len(units) > 1 and tasks:  # as the store: the batch's task locks, outside its savepoint
            await self._call("execute", self.batch["lock_task"][0], self._batch_args(
                "lock_task", [{"task_id": t} for t in tasks]))
        if len(units) > 1:
            await self._call("execute", "SAVEPOINT batch", [])
        try:
            for wave in postgres._waves(units):
                txs = [_StepTx() for _ in wave]
                results = await self._together(txs, [unit.work(tx) for unit, tx in zip(
                    wave, txs, strict=True)])
                for unit, tx, result in zip(wave, txs, results, strict=True):
                    unit.result, unit.wrote_jobs = result, tx.jobs
            end = ["RELEASE SAVEPOINT batch"] if len(units) > 1 else []
            if any(unit.wrote_jobs for unit in units):
                end.append(f"SELECT pg_notify('{postgres.CHANNEL}', '')")
            await self._call("execute", "; ".join([*end, "COMMIT"]), [])
        except BaseException:  # the benchmark's batches do not fail: no unit-by-unit retry
            assert self.conn is not None
            await self.conn.execute("ROLLBACK")
            raise

    async def read(self, work: Any) -> Any:
        raise NotImplementedError("the benchmark only writes")

    async def wait_for_jobs(self, wait_s: float) -> None:
        raise NotImplementedError("the benchmark only writes")

    async def check_space(self) -> None:
        pass

    async def _call(self, how: str, sql: str, args: Sequence[Any]) -> Any:
        self.trips += 1
        return await getattr(self.conn, how)(sql, *args)  # one round trip

    def _batch_args(self, name: str, rows: list[Mapping[str, Any]]) -> list[Any]:
        if self.form == "json":
            return [_columns(rows)["rows"]]
        return [[row.get(column) for row in rows] for column, _ in self.batch[name][1]]

    async def _together(self, txs: list[_StepTx], coroutines: list[Any]) -> list[Any]:
        """As the store's ``_Together``: each unit runs until it waits for an answer; then the
        writes queued and the statements waited on run, one a name for all units."""
        results: list[Any] = [None] * len(coroutines)
        asks: dict[int, _Ask] = {}

        def advance(index: int, answer: Any) -> None:
            try:
                ask = coroutines[index].send(answer)
            except StopIteration as done:
                results[index] = done.value
                return
            asks[index] = ask

        for index in range(len(coroutines)):
            advance(index, None)
        while True:
            txs_sends = [tx.sends for tx in txs if tx.sends]
            for tx in txs:
                tx.sends = []
            await self._write_sends(txs_sends)
            if not asks:
                break
            current = dict(asks)
            asks.clear()
            for index, answer in (await self._answer(current)).items():
                advance(index, answer)
        return results

    async def _write_sends(self, sends: list[list[tuple[str, list[Any]]]]) -> None:
        queues = [list(s) for s in sends]
        while queues:
            name = queues[0][0][0]
            rows: list[Any] = []
            for queue in queues:
                while queue and queue[0][0] == name:
                    rows.extend(queue.pop(0)[1])
            queues = [queue for queue in queues if queue]
            if self.sql[name][0]:
                await self._write(name, rows)

    async def _write(self, name: str, rows: list[Any]) -> None:
        batched = BATCHED.get(name) if name in self.batch else None
        if batched is None or len(rows) == 1:
            await self._many(name, rows)
            return
        first, later = _split(rows, batched.unique)
        await self._call("execute", self.batch[name][0], self._batch_args(name, first))
        if later:
            await self._many(name, later)

    async def _many(self, name: str, rows: list[Any]) -> int:
        sql, names = self.sql[name]
        count = 0
        for row in rows:
            status = await self._call("execute", sql, [row.get(n) for n in names])
            count += int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0
        return count

    async def _answer(self, asks: dict[int, _Ask]) -> dict[int, Any]:
        answers: dict[int, Any] = {}
        by_name: dict[str, list[int]] = {}
        for index, ask in asks.items():
            by_name.setdefault(ask.q, []).append(index)
        for name, indexes in by_name.items():
            batched = BATCHED.get(name) if name in self.batch else None
            alone = indexes
            if batched is not None and batched.route is not None and len(indexes) > 1:
                together, alone = _distinct(indexes, asks, batched)
                if len(together) > 1:
                    rows = [row for index in together for row in asks[index].params]
                    found: dict[Any, list[Any]] = {}
                    for row in await self._call("fetch", self.batch[name][0],
                                                self._batch_args(name, rows)):
                        found.setdefault(row["unit_key"], []).append(row)
                    for index in together:
                        mine = found.get(asks[index].params[0][batched.route], [])
                        answers[index] = mine if asks[index].rows else len(mine)
                else:
                    alone = together + alone
            for index in sorted(alone):
                ask = asks[index]
                if ask.rows:
                    sql, names = self.sql[name]
                    answers[index] = await self._call(
                        "fetch", sql, [ask.params[0].get(n) for n in names])
                else:
                    answers[index] = await self._many(name, ask.params)
        return answers


# ---- the runs ---------------------------------------------------------------------------------

class Timer:
    """Between :meth:`start` and :meth:`stop` (connections made, the store open before): this
    process's CPU, the CPU of the server processes serving the database's connections (the
    writer's), of all the cluster's (with the WAL writer, checkpointer, autovacuum, which also
    work for the other databases' earlier runs), the wall clock and the host's load."""

    def __init__(self, pg: Postgres, database: str) -> None:
        self.pg, self.name = pg, database
        self.cluster = Meter(pg.pids)
        self.backends = Meter(list)
        self.host = HostLoad()
        self.cpu = self.db_cpu = self.backend_cpu = self.seconds = 0.0

    def _backends(self) -> list[int]:
        import psycopg

        with psycopg.connect(self.pg.admin_dsn, autocommit=True) as conn:
            return [int(row[0]) for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                "AND backend_type = 'client backend'", (self.name,))]

    def start(self) -> None:
        pids = self._backends()
        self.backends = Meter(lambda: pids)
        self.cluster.start()
        self.backends.start()
        self.host.start()
        self.cpu, self.seconds = time.process_time(), time.monotonic()

    def stop(self) -> None:
        self.cpu = time.process_time() - self.cpu
        self.seconds = time.monotonic() - self.seconds
        self.db_cpu, _ = self.cluster.stop()
        self.backend_cpu, _ = self.backends.stop()
        self.host.stop(self.seconds)


def measure(pg: Postgres, database: str, run: Any) -> dict[str, Any]:
    timer = Timer(pg, database)
    sizes, trips = asyncio.run(run(timer))
    count = sum(sizes)
    return {"rate": count / timer.seconds, "cpu": timer.cpu / count * 1000,
            "backend": timer.backend_cpu / count * 1000, "db": timer.db_cpu / count * 1000,
            "trips": trips / len(sizes), "batch": count / len(sizes),
            "host": timer.host.busy_cores, "sizes": sizes}


def compare(dsn_a: str, dsn_b: str) -> list[str]:
    """Differences between the two databases' recorded rows (empty: the same)."""
    import psycopg

    found = []
    with psycopg.connect(dsn_a) as a, psycopg.connect(dsn_b) as b:
        for table, order in TABLES.items():
            rows = []
            for conn in (a, b):
                cursor = conn.execute(f"SELECT * FROM {table} ORDER BY {order}")  # noqa: S608
                names = [d.name for d in cursor.description or ()]
                rows.append([{k: v for k, v in zip(names, row, strict=True)
                              if k not in ASSIGNED} for row in cursor.fetchall()])
            if len(rows[0]) != len(rows[1]):
                found.append(f"{table}: {len(rows[0])} rows against {len(rows[1])}")
            elif rows[0] != rows[1]:
                bad = sum(x != y for x, y in zip(rows[0], rows[1], strict=True))
                found.append(f"{table}: {bad} of {len(rows[0])} rows differ")
            else:
                print(f"  {table}: {len(rows[0])} rows, the same in both")
    return found


VARIANTS = ("psycopg json", "psycopg arrays", "psycopg binary", "asyncpg json", "asyncpg arrays")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="deliveries a run")
    parser.add_argument("--sizes", default="8,32", help="callers / batch sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"which, of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = args.variants.split(",")
    counter = _Counted()
    counter.install()
    notes: list[str] = []
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    sizes = [int(s) for s in args.sizes.split(",")]
    with postgres_or_none(notes) as pg:
        if pg is None:
            raise SystemExit("\n".join(notes))
        from tests.backends import storage_at

        async def migrate(url: str) -> None:
            async with storage_at(url):
                pass

        tag = uuid.uuid4().hex[:8]
        names = {v: f"drivers_{v.replace(' ', '_')}_{tag}" for v in variants}
        dsn = {v: pg.create(name) for v, name in names.items()}
        for url in dsn.values():
            asyncio.run(migrate(url))

        def one(variant: str, size: int, items: list[Delivery]) -> dict[str, Any]:
            return measure(pg, names[variant], lambda timer: through_store(
                dsn[variant], items, size, variant, counter, timer))

        for size in sizes:  # a warm-up (not counted)
            items = deliveries(args.count // 4)
            for variant in variants:
                one(variant, size, items)
        for round_ in range(args.rounds):
            for size in sizes:
                items = deliveries(args.count)
                shift = round_ % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    got = one(variant, size, items)
                    results.setdefault((variant, size), []).append(got)
                    print(f"round {round_ + 1} c={size} {variant}: {got['rate']:,.0f}/s, "
                          f"{got['cpu']:.3f} + {got['backend']:.3f} ({got['db']:.3f}) ms, "
                          f"{got['trips']:.1f} trips, batch {got['batch']:.1f}, "
                          f"host {got['host']:.2f}", flush=True)
        differences = []
        for variant in variants[1:]:
            print(f"{variants[0]} against {variant}:")
            differences += compare(dsn[variants[0]], dsn[variant])
    print(f"\n{args.count} deliveries a run, {args.rounds} rounds, medians; CPU in ms a "
          "delivery\n")
    print("| batch | driver, form | deliveries/s | client CPU | writer's backend CPU | client + "
          "backend | all server processes' CPU | round trips a batch | host busy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for variant in variants:
            runs = results[(variant, size)]

            def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            print(f"| {size} (mean {med('batch'):.1f}) | {variant} | {med('rate'):,.0f} | "
                  f"{med('cpu'):.3f} | {med('backend'):.3f} | "
                  f"{statistics.median(r['cpu'] + r['backend'] for r in runs):.3f} | "
                  f"{med('db'):.3f} | {med('trips'):.1f} | {med('host'):.2f} |")
    if differences:
        raise SystemExit("the databases differ: " + "; ".join(differences))


if __name__ == "__main__":
    main()
