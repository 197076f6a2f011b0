"""Signed fuzzing of the webhook endpoint: validly signed garbage must be kept, never a 5xx.

Each case is one request to the real app (in-process over ``httpx.ASGITransport``, on a real
SQLite file, or with ``--db URL`` an empty PostgreSQL database): a body that is random bytes,
truncated JSON, or a callback-shaped JSON object whose every field may hold any JSON value,
with lone surrogates (escaped, or as invalid UTF-8), integers past Python's digit limit,
``NaN``/``Infinity``/``1e400``, and nesting from shallow to far past the recursion limit;
signed in a random enabled scheme (a non-ASCII ``webhook-id`` included), or not signed at all.
Afterwards every verified delivery must be in the database, recorded or quarantined, and every
recorded task must read back.

``scripts/fuzz -n 100000`` runs the long mode and prints the counts; ``tests/test_fuzz.py``
runs a few thousand cases of the same generator in CI. ``--providers`` fuzzes the other
providers' endpoints instead (:mod:`scripts.provider_fuzzing`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sqlite3
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from receiver import logs
from receiver.app import create_app
from receiver.settings import Settings
from receiver.signatures import Scheme, sign

SECRET = "fuzz-secret"  # noqa: S105 -- signs in-process test traffic only
SCHEMES = (Scheme.MUSICAPI, Scheme.STANDARD, Scheme.LEGACY)
PATH = "/webhooks/sonic"
MAX_BODY = Settings.max_body_bytes
REPEAT = "\x00repeat:"  # a delivery id to be replaced by one answered earlier


class Raw(str):
    """JSON text put into a body as it is: what ``json.dumps`` cannot or will not write."""


# Numbers Python reads badly: past the int digit limit, past the float range, not numbers.
RAW_NUMBERS = [
    "1" * 4301, "-" + "9" * 5000, "1" + "0" * 400, "1e400", "-1e999", "1E+308", "NaN",
    "Infinity", "-Infinity", "-0", "0." + "0" * 400 + "1", "4" * 4300,
]
SURROGATES = ["\ud800", "\udfff", "a\udc00b", "\udbff\udbff", "\ud83c", "\ud83c\udfb5"]
CLIP_FIELDS = ["clip_id", "id", "state", "status", "title", "tags", "lyrics", "audio_url",
               "image_url", "video_url", "duration", "mv", "created_at", "error_message",
               "clipId", "audioUrl", "createdAt", "errorMessage", "modelName", "style_weight"]
TOP_FIELDS = ["task_id", "event", "platform", "code", "message", "data"]
LIKELY = ["song.completed", "song.failed", "streaming", "succeeded", "failed", "running",
          "complete", "200", " 7 ", "104.88", "\u00b2", "\u0663", "", " ", "t-1", "c-1",
          "http://cdn/a.mp3", "nan", "inf", "1e400", "9" * 5000, "completed", "success",
          "error", "None", "null", "http://cdn/None.mp3"]


def _deep(levels: int, kind: str) -> Raw:
    if kind == "[":
        return Raw("[" * levels + "]" * levels)
    return Raw('{"a":' * levels + "1" + "}" * levels)


any_text = st.text(st.characters(exclude_categories=()), max_size=12)  # surrogates too
strings = any_text | st.sampled_from(LIKELY) | st.sampled_from(SURROGATES)
scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats() | strings | st.sampled_from(RAW_NUMBERS).map(Raw)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings, inner, max_size=4),
    max_leaves=10,
)
nests = st.builds(_deep, st.sampled_from([2, 40, 63, 64, 65, 200, 990, 1200, 5000, 50_000]),
                  st.sampled_from(["[", "{"]))
# Nesting in one field in twenty: any deeper than the limit makes the whole body unusable.
values = st.integers(0, 19).flatmap(lambda i: nests if i == 0 else json_values)
clips = st.fixed_dictionaries(
    {}, optional={name: values | st.sampled_from(LIKELY) | any_text for name in CLIP_FIELDS})
callbacks = st.fixed_dictionaries(
    {},
    optional={
        "task_id": values | st.sampled_from(["t-1", "t-2", "t-3"]),
        "event": values | st.sampled_from(["song.streaming", "song.completed", "song.failed"]),
        "platform": values,
        "code": values,
        "message": values,
        "data": st.lists(clips, max_size=3) | clips | values,
    },
)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A usable callback with a few fields replaced by anything: what reaches the store."""
    states = st.sampled_from(["pending", "running", "succeeded", "failed", "complete"])
    count = draw(st.integers(0, 3))
    data = [{"clip_id": f"c-{draw(st.integers(0, 60))}-{i}", "state": draw(states),
             **draw(st.fixed_dictionaries({}, optional={f: values for f in CLIP_FIELDS[2:]}))}
            for i in range(count)]
    document: dict[str, Any] = {"code": 200, "task_id": f"t-{draw(st.integers(0, 300))}",
                                "data": data}
    document.update(draw(st.fixed_dictionaries(
        {}, optional={"event": values | st.sampled_from(["song.completed", "song.failed"]),
                      "platform": values, "code": values, "message": values})))
    return document


def dump(value: Any, *, ascii_only: bool) -> str:
    """``value`` as JSON text, :class:`Raw` parts verbatim, NaN and Infinity as Python writes
    them; without ``ascii_only``, a lone surrogate stays a character (invalid once encoded)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only)
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only=ascii_only) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(
            f"{json.dumps(k, ensure_ascii=ascii_only)}:{dump(v, ascii_only=ascii_only)}"
            for k, v in value.items()) + "}"
    return json.dumps(value)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["near_valid"] * 5 + ["callback"] * 3
                                + ["value", "bytes", "truncated", "raw_utf8"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    document: Any = draw({"near_valid": near_valid(), "value": values}.get(kind, callbacks))
    text = dump(document, ascii_only=kind != "raw_utf8")
    raw = text.encode("utf-8", "surrogatepass")
    if kind == "truncated" and raw:
        return raw[: draw(st.integers(0, len(raw) - 1))]
    return raw


@dataclass(frozen=True)
class Case:
    body: bytes
    scheme: Scheme | None  # None: not signed
    delivery_id: str | None  # X-Webhook-Id; None: only what the scheme sends, or nothing
    msg_id: str
    event: str | None
    query: str
    noise: tuple[tuple[bytes, bytes], ...]

    def headers(self, now: int) -> list[tuple[bytes, bytes]]:
        sent: list[tuple[bytes, bytes]] = list(self.noise)
        if self.scheme is not None:
            signed = sign(self.scheme, SECRET, self.body, timestamp=now, msg_id=self.msg_id)
            sent += [(k.encode(), v.encode("utf-8", "surrogatepass")) for k, v in signed.items()]
        if self.delivery_id is not None:
            sent.append((b"x-webhook-id", self.delivery_id.encode("utf-8", "surrogatepass")))
        if self.event is not None:
            sent.append((b"x-webhook-event", self.event.encode("utf-8", "surrogatepass")))
        return sent


_header_names = st.sampled_from(
    [b"x-webhook-signature", b"x-webhook-timestamp", b"x-signature", b"webhook-id",
     b"webhook-signature", b"webhook-timestamp", b"idempotency-key", b"x-webhook-event"])
_signed_noise = st.sampled_from([b"idempotency-key", b"x-webhook-event", b"x-trace",
                                 b"content-type", b"authorization"])
_header_values = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    signed = draw(st.integers(0, 9)) > 0  # nine cases in ten are signed
    scheme = draw(st.sampled_from(SCHEMES)) if signed else None
    id_kind = draw(st.sampled_from(["fresh", "fresh", "fresh", "repeat", "none", "odd"]))
    delivery_id = {
        "fresh": f"fz-{draw(st.integers(0, 2**62))}",
        "repeat": REPEAT + str(draw(st.integers(0, 49))),  # an earlier id, chosen when sent
        "none": None,
        "odd": draw(any_text),
    }[id_kind]
    # any text a sender can sign (no lone surrogate), sent as its UTF-8 bytes
    msg_id = draw(st.sampled_from(["msg_1", "m\u00e9ss\u00e2ge", "\N{MUSICAL NOTE}"])
                  | st.text(min_size=1, max_size=12))
    noise: tuple[tuple[bytes, bytes], ...] = ()
    if not signed:  # headers of every kind, signature ones included: must be refused
        noise = tuple(draw(st.lists(st.tuples(_header_names, _header_values), max_size=4)))
    elif draw(st.integers(0, 4)) == 0:  # beside a valid signature: headers it does not cover
        noise = tuple(draw(st.lists(st.tuples(_signed_noise, _header_values), max_size=3)))
    query = draw(st.sampled_from(["", "", "?task_id=q-1", "?task_id="]) | any_text.map(
        lambda t: "?task_id=" + quote(t.encode("utf-8", "surrogatepass"))))
    return Case(body=draw(bodies()), scheme=scheme, delivery_id=delivery_id, msg_id=msg_id,
                event=draw(st.none() | st.sampled_from(["song.completed", "failed"]) | any_text),
                query=query, noise=noise)


class RandomCases:
    """The same cases as the hypothesis strategies above, drawn with :mod:`random`: about ten
    times cheaper to make, for the long mode (hypothesis spends most of a case generating it).
    """

    NEST_LEVELS = (2, 40, 63, 64, 65, 200, 990, 1200, 5000, 50_000)

    def __init__(self, seed_value: int) -> None:
        self.rng = random.Random(seed_value)

    def text(self, max_size: int = 12, *, surrogates: bool = True) -> str:
        rng = self.rng
        if rng.random() < 0.3:
            return rng.choice(LIKELY + (SURROGATES if surrogates else []))
        top = 0x110000 if rng.random() < 0.5 else 0x250
        chars = [chr(rng.randrange(top)) for _ in range(rng.randrange(max_size + 1))]
        text = "".join(chars)
        return text if surrogates else text.encode("utf-8", "replace").decode("utf-8")

    def scalar(self) -> Any:
        rng = self.rng
        kind = rng.randrange(8)
        if kind == 0:
            return rng.choice([None, True, False])
        if kind == 1:
            return rng.randrange(-(2**63), 2**63)
        if kind == 2:
            return rng.randrange(-(10**30), 10**30)
        if kind == 3:
            return rng.choice([rng.uniform(-1e308, 1e308), rng.random(), math.nan, math.inf,
                               -math.inf, -0.0, 5e-324])
        if kind == 4:
            return Raw(rng.choice(RAW_NUMBERS))
        return self.text()

    def json_value(self, leaves: list[int]) -> Any:
        rng = self.rng
        if leaves[0] <= 0 or rng.random() < 0.6:
            leaves[0] -= 1
            return self.scalar()
        size = rng.randrange(5)
        if rng.random() < 0.5:
            return [self.json_value(leaves) for _ in range(size)]
        return {self.text(): self.json_value(leaves) for _ in range(size)}

    def value(self) -> Any:
        if self.rng.randrange(20) == 0:
            return _deep(self.rng.choice(self.NEST_LEVELS), self.rng.choice("[{"))
        return self.json_value([10])

    def field(self, likely: Sequence[str] = LIKELY) -> Any:
        kind = self.rng.randrange(3)
        return self.value() if kind == 0 else self.rng.choice(likely) if kind == 1 else \
            self.text()

    def clip(self) -> dict[str, Any]:
        return {name: self.field() for name in CLIP_FIELDS if self.rng.random() < 0.5}

    def callback(self) -> dict[str, Any]:
        rng = self.rng
        document: dict[str, Any] = {}
        for name in TOP_FIELDS:
            if rng.random() < 0.5:
                continue
            if name == "data":
                kind = rng.randrange(3)
                document[name] = ([self.clip() for _ in range(rng.randrange(4))] if kind == 0
                                  else self.clip() if kind == 1 else self.value())
            elif name == "task_id":
                document[name] = self.field(["t-1", "t-2", "t-3"])
            else:
                document[name] = self.value()
        return document

    def near_valid(self) -> dict[str, Any]:
        rng = self.rng
        states = ["pending", "running", "succeeded", "failed", "complete"]
        data = [{"clip_id": f"c-{rng.randrange(61)}-{i}", "state": rng.choice(states),
                 **{f: self.value() for f in CLIP_FIELDS[2:] if rng.random() < 0.5}}
                for i in range(rng.randrange(4))]
        document: dict[str, Any] = {"code": 200, "task_id": f"t-{rng.randrange(301)}",
                                    "data": data}
        for name in ("event", "platform", "code", "message"):
            if rng.random() < 0.5:
                document[name] = (self.value() if rng.random() < 0.7 else
                                  rng.choice(["song.completed", "song.failed"]))
        return document

    def body(self) -> bytes:
        rng = self.rng
        kind = rng.choice(["near_valid"] * 5 + ["callback"] * 3
                          + ["value", "bytes", "truncated", "raw_utf8"])
        if kind == "bytes":
            return rng.randbytes(rng.randrange(201))
        document = (self.near_valid() if kind == "near_valid" else self.value()
                    if kind == "value" else self.callback())
        raw = dump(document, ascii_only=kind != "raw_utf8").encode("utf-8", "surrogatepass")
        if kind == "truncated" and raw:
            return raw[: rng.randrange(len(raw))]
        return raw

    def header_value(self) -> bytes:
        raw = self.rng.randbytes(self.rng.randrange(41))
        return raw.replace(b"\r", b"").replace(b"\n", b"")

    def case(self) -> Case:
        rng = self.rng
        signed = rng.randrange(10) > 0
        scheme = rng.choice(SCHEMES) if signed else None
        id_kind = rng.choice(["fresh", "fresh", "fresh", "repeat", "none", "odd"])
        delivery_id = {
            "fresh": f"fz-{rng.randrange(2**62)}", "repeat": REPEAT + str(rng.randrange(50)),
            "none": None, "odd": self.text(),
        }[id_kind]
        msg_id = self.text(surrogates=False)[:200] or "msg_blank"  # ids over 4 KiB are refused
        names = [b"x-webhook-signature", b"x-webhook-timestamp", b"x-signature", b"webhook-id",
                 b"webhook-signature", b"webhook-timestamp", b"idempotency-key",
                 b"x-webhook-event"]
        noise: tuple[tuple[bytes, bytes], ...] = ()
        if not signed:
            noise = tuple((rng.choice(names), self.header_value())
                          for _ in range(rng.randrange(5)))
        elif rng.randrange(5) == 0:
            noise = tuple((rng.choice([*names[6:], b"x-trace", b"authorization"]),
                           self.header_value()) for _ in range(rng.randrange(4)))
        query = rng.choice(["", "", "?task_id=q-1", "?task_id=",
                            "?task_id=" + quote(self.text().encode("utf-8", "surrogatepass"))])
        event = rng.choice([None, "song.completed", "failed", self.text()])
        return Case(body=self.body(), scheme=scheme, delivery_id=delivery_id, msg_id=msg_id,
                    event=event, query=query, noise=noise)


@dataclass
class Report:
    """What a run saw; :attr:`ok` when nothing broke the promise."""

    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    escaped: int = 0
    escaped_kinds: Counter[str] = field(default_factory=Counter)
    verified_wrong_status: int = 0
    missing: int = 0  # verified deliveries answered but not in the database
    wrong_outcome: int = 0
    stored_unverified: int = 0
    reads: int = 0
    read_5xx: int = 0
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def ok(self) -> bool:
        return not (self.server_errors or self.escaped or self.verified_wrong_status
                    or self.missing or self.wrong_outcome or self.stored_unverified
                    or self.read_5xx)

    def note(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)

    def summary(self) -> dict[str, Any]:
        return {
            "cases": self.cases, "seconds": round(self.seconds, 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "outcomes": dict(sorted(self.outcomes.items())),
            "5xx": self.server_errors, "escaped_exceptions": self.escaped,
            "escaped_kinds": dict(self.escaped_kinds.most_common()),
            "verified_not_200_or_422": self.verified_wrong_status,
            "verified_missing_from_db": self.missing, "wrong_outcome_in_db": self.wrong_outcome,
            "unverified_stored": self.stored_unverified,
            "task_reads": self.reads, "task_reads_5xx": self.read_5xx,
            "ok": self.ok, "examples": self.examples,
        }


def fuzz_settings(directory: Path, db_url: str | None = None) -> Settings:
    return Settings(
        webhook_secrets=(SECRET,), schemes=SCHEMES, db_path=directory / "fuzz.db",
        db_url=db_url, media_dir=directory / "media", config={"routes": []}, worker="off",
    ).validated()


def run(
    n: int, *, directory: Path, seed_value: int = 0, reads: int = 2000,
    generator: str = "hypothesis", db_url: str | None = None,
) -> Report:
    """Send ``n`` cases to one app on a SQLite file in ``directory`` (or on the empty
    PostgreSQL database ``db_url``), then check the database.
    ``generator`` is ``hypothesis`` (the strategies) or ``random`` (:class:`RandomCases`)."""
    report = Report()
    answered: dict[str, str] = {}  # verified delivery id -> the status it was answered with
    tasks: set[str] = set()
    started = time.perf_counter()
    app = create_app(fuzz_settings(directory, db_url))
    with start_blocking_portal(backend="asyncio") as portal:
        client = portal.wrap_async_context_manager(_client(app))
        with client as http:
            _send_all(n, seed_value, generator, portal, http, report, answered, tasks)
            for task_id in sorted(tasks)[:reads]:
                report.reads += 1
                try:
                    response = portal.call(http.get, "/tasks/" + quote(task_id, safe=""))
                except Exception as exc:
                    report.read_5xx += 1
                    report.note(f"GET /tasks/{task_id!r} raised {type(exc).__name__}: {exc}")
                    continue
                if response.status_code >= 500:
                    report.read_5xx += 1
                    report.note(f"GET /tasks/{task_id!r} answered {response.status_code}")
    _check_database(db_url or directory / "fuzz.db", answered, report)
    report.seconds = time.perf_counter() - started
    return report


CHUNK = 1000  # cases per hypothesis run: its engine keeps every case it made, so keep it small


def _send_all(
    n: int, seed_value: int, generator: str, portal: BlockingPortal, http: httpx.AsyncClient,
    report: Report, answered: dict[str, str], tasks: set[str],
) -> None:
    ids = ["fz-repeat-0"]

    def one(case: Case) -> None:
        report.cases += 1
        if case.delivery_id is not None and case.delivery_id.startswith(REPEAT):
            index = int(case.delivery_id.removeprefix(REPEAT))
            case = dataclasses.replace(case, delivery_id=ids[index % len(ids)])
        path, headers = PATH + case.query, case.headers(int(time.time()))
        try:
            response = portal.call(_post, http, path, case.body, headers)
        except Exception as exc:  # the app let one escape: the worst finding
            report.escaped += 1
            report.escaped_kinds[f"{type(exc).__name__}: {str(exc)[:70]}"] += 1
            report.note(f"escaped {type(exc).__name__}: {traceback.format_exc(limit=3)}"
                        f" for {case!r:.300}")
            return
        report.statuses[response.status_code] += 1
        if response.status_code >= 500:
            report.note(f"{response.status_code} {response.text[:200]} for {case!r:.300}")
        if case.scheme is None:
            return
        if response.status_code == 413 and len(case.body) > MAX_BODY:
            return  # refused before verification, by size: rightly not stored
        if response.status_code not in (200, 422):
            report.verified_wrong_status += 1
            report.note(f"verified answered {response.status_code}: {response.text[:200]}"
                        f" for {case!r:.300}")
            return
        answer = response.json()
        report.outcomes[answer["status"]] += 1
        answered[answer["delivery_id"]] = answer["status"]
        if answer["status"] != "quarantined" and answer.get("task_id"):
            tasks.add(answer["task_id"])
        if len(ids) < 50:
            ids.append(answer["delivery_id"])

    if generator == "random":
        cases_at_random = RandomCases(seed_value)
        for _ in range(n):
            one(cases_at_random.case())
        return
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        chunk = seed(seed_value * 1_000_003 + start)(
            settings(max_examples=size, deadline=None, database=None, phases=[Phase.generate],
                     suppress_health_check=list(HealthCheck))(given(case=cases())(one)))
        chunk()


async def _post(
    http: httpx.AsyncClient, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> httpx.Response:
    return await http.post(path, content=body, headers=headers)


def _client(app: Any) -> Any:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def running() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as http:
                yield http

    return running()


def stored_outcomes(db: Path | str) -> dict[str, str]:
    """Every delivery id in the database ``db`` (a SQLite file or a PostgreSQL URL), with its
    outcome."""
    query = "SELECT delivery_id, outcome FROM deliveries"
    if isinstance(db, str):
        import psycopg

        with psycopg.connect(db) as pg:
            return dict(pg.execute(query).fetchall())
    with sqlite3.connect(db) as conn:
        return dict(conn.execute(query).fetchall())


def _holds_deliveries(url: str) -> bool:
    import psycopg

    with psycopg.connect(url) as pg:
        table = pg.execute("SELECT to_regclass('deliveries') IS NOT NULL").fetchone()
        if not (table and table[0]):
            return False
        rows = pg.execute("SELECT EXISTS (SELECT 1 FROM deliveries)").fetchone()
        return bool(rows and rows[0])


def _check_database(db: Path | str, answered: dict[str, str], report: Report) -> None:
    stored = stored_outcomes(db)
    for delivery_id, status in answered.items():
        # a duplicate answers for a delivery recorded before; a quarantined one stays so
        expected = "quarantined" if status == "quarantined" else "recorded"
        outcome = stored.get(delivery_id)
        if outcome is None:
            report.missing += 1
            report.note(f"answered {status} but not stored: {delivery_id!r}")
        elif outcome != expected:
            report.wrong_outcome += 1
            report.note(f"answered {status}, stored {outcome}: {delivery_id!r}")
    report.stored_unverified = len(set(stored) - set(answered))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000, help="cases to send (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--keep", type=Path, help="keep the database in this folder")
    parser.add_argument("--generator", choices=["random", "hypothesis"], default="random",
                        help="random: fast (default); hypothesis: the suite's strategies")
    parser.add_argument("--db", metavar="URL",
                        help="an empty PostgreSQL database to fuzz instead of a SQLite file")
    parser.add_argument("--providers", action="store_true",
                        help="fuzz the other providers' endpoints (scripts/provider_fuzzing.py)")
    args = parser.parse_args(argv)
    if args.db and args.providers:
        parser.error("--db fuzzes the Sonic endpoint: not with --providers")
    if args.db and _holds_deliveries(args.db):
        parser.error("--db: the database already holds deliveries (give an empty one)")
    # A quarantine is a warning: tens of thousands of them are noise. Errors still show.
    logs.configure(fmt="json", level="error")
    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        directory = args.keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        if args.providers:
            from scripts.provider_fuzzing import run_providers

            report = run_providers(args.n, directory=directory, seed_value=args.seed)
        else:
            report = run(args.n, directory=directory, seed_value=args.seed,
                         generator=args.generator, db_url=args.db)
    command = (f"scripts/fuzz -n {args.n} --seed {args.seed} --providers" if args.providers
               else f"scripts/fuzz -n {args.n} --seed {args.seed} --generator {args.generator}"
               + (" --db URL" if args.db else ""))
    print(json.dumps({"command": command,
                      **report.summary()}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
