"""Replay against the sandbox over loopback: reconcile recovers dropped webhooks (and a dry run
changes nothing, a second run changes nothing), redispatch requeues, resend moves deliveries."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from receiver.app import create_app
from receiver.clock import SystemClock
from receiver.context import Event, HandlerContext
from receiver.jobs import JobState, PermanentError
from receiver.models import JobFilter, Outcome
from receiver.recovery import poll_delivery, reconcile, redispatch, replayed, resend
from receiver.registry import Registry
from receiver.runtime import Runtime
from receiver.server import running
from receiver.signatures import Scheme
from receiver.sonic.sandbox import SandboxConfig, Speed
from receiver.storage.roles import sqlite_storage
from receiver.testing import deliver, handler_runtime
from tests.processes import ROOT
from tests.sonic.support import KEY, SandboxHandle, serve_sandbox
from tests.support import (
    SECRET,
    app_client,
    callback,
    clip,
    http_client,
    post_signed,
    settings_for,
    signed_headers,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

RAN: list[str] = []


async def count(event: Event, ctx: HandlerContext) -> None:
    RAN.append(event.key)


ROUTES = [{"on": ["task.succeeded", "task.failed"], "handlers": ["count"]}]


@dataclass
class Setup:
    sandbox: SandboxHandle
    runtime: Runtime
    url: str

    async def create(self, n: int = 1) -> list[str]:
        ids = []
        for _ in range(n):
            created = await self.sandbox.client().create_music(
                mv="sonic-v4-5", custom_mode=True, prompt="[Verse] la",
                webhook_url=f"{self.url}/webhooks/sonic", webhook_secret=SECRET)
            ids.append(created.task_id)
        return ids

    async def state(self, task_id: str) -> str | None:
        view = await self.runtime.storage.admin.get_task(task_id)
        return view.task.state.value if view else None


@asynccontextmanager
async def setup(tmp_path: Path, faults: dict[str, Any]) -> AsyncIterator[Setup]:
    RAN.clear()
    registry = Registry()
    registry.register("count", count, origin="test")
    config = SandboxConfig(api_keys={KEY: 10_000}, speed=Speed.INSTANT, seed=11)
    async with serve_sandbox(config) as sandbox:
        await sandbox.set_faults(faults)
        app = create_app(settings_for(tmp_path, config={"routes": ROUTES}), registry=registry,
                         sonic=sandbox.client())
        async with running(app) as url:
            yield Setup(sandbox=sandbox, runtime=app.state.runtime, url=url)


async def settled_at_sandbox(s: Setup, task_ids: list[str]) -> None:
    async def done() -> bool:
        for task_id in task_ids:
            rows = await s.sandbox.deliveries(task_id=task_id)
            if len({(r["event"]) for r in rows}) < 2:  # both events sent or dropped
                return False
        return True

    await wait_until(done, within=20, what="the sandbox to send or drop every webhook")


async def test_reconcile_recovers_dropped_webhooks_dry_run_first_then_once(
    tmp_path: Path,
) -> None:
    drops = {"drop_events": [{"task": 1, "event": "song.completed"},
                             {"task": 2, "event": "song.streaming"},
                             {"task": 2, "event": "song.completed"}]}
    async with setup(tmp_path, drops) as s:
        dropped_one, dropped_all, full = await s.create(3)
        await settled_at_sandbox(s, [dropped_one, dropped_all, full])
        assert await s.state(dropped_one) == "running"  # the completion never came
        assert await s.state(dropped_all) is None  # nothing came
        assert await s.state(full) == "succeeded"
        rt = s.runtime
        assert rt.sonic is not None
        stale = await rt.storage.admin.tasks_to_reconcile(stale_before=time.time() + 1)
        assert stale == [dropped_one]  # the unknown task must be named by id
        ids = [dropped_one, dropped_all, full]
        before = await rt.storage.admin.counts()

        dry = await reconcile(ids, store=rt.storage.ingest, sonic=rt.sonic, router=rt.router,
                              clock=rt.clock, dry_run=True)
        assert await rt.storage.admin.counts() == before  # a dry run changes nothing
        assert dry.counts["recorded"] == 3
        assert dry.counts["jobs"] == 2

        wet = await reconcile(ids, store=rt.storage.ingest, sonic=rt.sonic, router=rt.router,
                              clock=rt.clock)
        assert (wet.counts["recorded"], wet.counts["jobs"], wet.exit_code) == (3, 2, 0)
        assert [await s.state(t) for t in ids] == ["succeeded"] * 3
        await wait_until(lambda: len(RAN) == 3, within=10, what="handlers to run")

        after = await rt.storage.admin.counts()
        again = await reconcile(ids, store=rt.storage.ingest, sonic=rt.sonic, router=rt.router,
                                clock=rt.clock)
        assert again.counts == {"duplicate": 3, "transitions": 0, "jobs": 0, "polled": 3}
        assert await rt.storage.admin.counts() == after  # the second run changes nothing
        assert sorted(RAN) == sorted(set(RAN))  # each handler ran once per task

        # the recovered task ends exactly as the fully delivered one did
        for task_id in (dropped_one, dropped_all):
            view = await rt.storage.admin.get_task(task_id)
            assert view is not None
            assert [c.state.value for c in view.clips] == ["succeeded", "succeeded"]
            assert all(c.audio_url for c in view.clips)
            assert view.transitions[-1].source.value == "poll"


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [("completed", "succeeded"), ("complete", "succeeded"), ("success", "succeeded"),
     ("error", "failed")],
)
async def test_reconcile_reads_every_spelling_of_a_terminal_state_the_webhook_reads(
    tmp_path: Path, spelling: str, expected: str
) -> None:
    """Only a poll tells (every callback dropped): its spelling gives the right states."""
    faults = {"drop": 1.0, "fail_tasks": 1.0 if expected == "failed" else 0.0,
              "spellings": {expected: spelling}}
    async with setup(tmp_path, faults) as s:
        (task_id,) = await s.create()
        await settled_at_sandbox(s, [task_id])
        answer = await s.sandbox.music(task_id)
        assert [c["state"] for c in answer["data"]] == [spelling, spelling]
        assert await s.state(task_id) is None  # nothing came by webhook
        rt = s.runtime
        assert rt.sonic is not None

        summary = await reconcile([task_id], store=rt.storage.ingest, sonic=rt.sonic,
                                  router=rt.router, clock=rt.clock)
        assert (summary.counts.get("recorded"), summary.exit_code) == (1, 0), summary
        view = await rt.storage.admin.get_task(task_id)
        assert view is not None
        assert view.task.state.value == expected
        assert [c.state.value for c in view.clips] == [expected, expected]
        assert [t.source.value for t in view.transitions] == ["poll"] * 3  # task, two clips
        again = await reconcile([task_id], store=rt.storage.ingest, sonic=rt.sonic,
                                router=rt.router, clock=rt.clock)
        assert again.counts["duplicate"] == 1  # an unchanged answer is the same delivery

        # the stored poll delivery, read again, is the callback the poll recorded
        (raw,) = await rt.storage.admin.raw_deliveries(task_id=task_id)
        polled = poll_delivery(task_id, await rt.sonic.get_music(task_id), received_at=0.0)
        assert raw.stored.delivery_id == polled.delivery_id
        assert raw.body == polled.body
        assert polled.callback is not None
        assert replayed(raw).callback == polled.callback


async def test_unknown_task_ids_are_counted_not_fatal(tmp_path: Path) -> None:
    async with setup(tmp_path, {}) as s:
        rt = s.runtime
        assert rt.sonic is not None
        summary = await reconcile(["no-such-task"], store=rt.storage.ingest, sonic=rt.sonic,
                                  router=rt.router, clock=rt.clock)
    assert summary.counts == {"not_found": 1, "polled": 1}


async def test_redispatch_requeues_dead_jobs_and_dry_run_does_not(tmp_path: Path) -> None:
    fail = True

    async def flaky(event: Event, ctx: HandlerContext) -> None:
        if fail:
            raise PermanentError("not yet")

    async with handler_runtime(tmp_path, handlers={"flaky": flaky},
                               routes=[{"on": "task.succeeded", "handlers": ["flaky"]}]) as rt:
        assert rt.worker is not None
        await deliver(rt, callback("t-1", [clip("a", "succeeded")]))
        await rt.worker.run_once()
        assert [j.state for j in await rt.storage.admin.list_jobs()] == [JobState.DEAD]
        dry = await redispatch(store=rt.storage.admin, ingest=rt.storage.ingest,
                               router=rt.router, clock=rt.clock,
                               where=JobFilter(handler="flaky"), dry_run=True)
        assert (dry.selected, dry.counts) == (1, {"dead_jobs": 1})
        assert [j.state for j in await rt.storage.admin.list_jobs()] == [JobState.DEAD]
        none = await redispatch(store=rt.storage.admin, ingest=rt.storage.ingest,
                               router=rt.router, clock=rt.clock,
                                where=JobFilter(handler="other"))
        assert none.selected == 0
        fail = False
        done = await redispatch(store=rt.storage.admin, ingest=rt.storage.ingest,
                               router=rt.router, clock=rt.clock,
                                where=JobFilter())
        assert done.counts["requeued"] == 1
        await rt.worker.run_once()
        assert [j.state for j in await rt.storage.admin.list_jobs()] == [JobState.DONE]
        # the jobs of a time range of deliveries run again (done ones included)
        rerun = await redispatch(store=rt.storage.admin, ingest=rt.storage.ingest,
                               router=rt.router, clock=rt.clock,
                                 where=JobFilter(), deliveries_since=0.0)
        assert rerun.counts == {"done_jobs": 1, "requeued": 1}


async def test_redispatch_quarantined_records_a_delivery_once_its_task_is_known(
    tmp_path: Path,
) -> None:
    async with handler_runtime(tmp_path, handlers={}, routes=[]) as rt:
        orphan = callback(None, [clip("c1", "succeeded")])
        first = await deliver(rt, orphan, delivery_id="late")
        assert first.outcome is Outcome.QUARANTINED
        still = await redispatch(store=rt.storage.admin, ingest=rt.storage.ingest,
                               router=rt.router, clock=rt.clock,
                                 where=JobFilter(), quarantined=True)
        assert still.counts == {"quarantined": 1, "transitions": 0, "jobs": 0}
        # the task becomes known (another delivery names it with this clip)
        await deliver(rt, callback("t-9", [clip("c1", "running")]), delivery_id="early")
        dry = await redispatch(store=rt.storage.admin, ingest=rt.storage.ingest,
                               router=rt.router, clock=rt.clock,
                               where=JobFilter(), quarantined=True, dry_run=True)
        assert dry.counts["recorded"] == 1
        assert (await rt.storage.admin.raw_deliveries(outcome=Outcome.QUARANTINED))
        fixed = await redispatch(store=rt.storage.admin, ingest=rt.storage.ingest,
                               router=rt.router, clock=rt.clock,
                                 where=JobFilter(), quarantined=True)
        assert fixed.counts["recorded"] == 1
        view = await rt.storage.admin.get_task("t-9")
        assert view is not None
        assert view.task.state.value == "succeeded"
        assert not await rt.storage.admin.raw_deliveries(outcome=Outcome.QUARANTINED)


async def test_resend_moves_stored_deliveries_to_another_receiver_once(tmp_path: Path) -> None:
    source = create_app(settings_for(tmp_path / "a"))
    target = create_app(settings_for(tmp_path / "b", webhook_secrets=("new-secret",)))
    async with app_client(source) as client:
        for n in range(3):
            body = callback(f"t-{n}", [clip(f"c{n}", "succeeded")])
            await post_signed(client, body, delivery_id=f"d-{n}", event="song.completed")
        await post_signed(client, b"[]", delivery_id="q-1")  # quarantined: resent too
        store = source.state.runtime.storage
        async with running(target) as url, http_client() as http:
            raws = await store.admin.raw_deliveries()
            kwargs: dict[str, Any] = dict(http=http, url=f"{url}/webhooks/sonic",
                                          secret="new-secret", scheme=Scheme.MUSICAPI,
                                          clock=SystemClock())
            dry = await resend(raws, **kwargs, dry_run=True)
            assert dry.counts == {"would_send": 4}
            first = await resend(raws, **kwargs)
            again = await resend(raws, **kwargs)
            view = (await http.get(f"{url}/tasks/t-2")).json()
    assert first.counts == {"status_200": 3, "status_422": 1}
    assert again.counts == {"status_200": 3, "status_422": 1}  # duplicates, same answers
    assert view["task"]["state"] == "succeeded"
    assert view["transitions"][0]["delivery_id"] == "d-2"  # the original id travelled


async def test_resend_fails_what_a_target_redirects_holds_or_refuses(tmp_path: Path) -> None:
    """Only a 2xx (or a 422: kept aside) is a delivery resent; a redirect is not followed (the
    signed body goes where --to says only) and a target that never answers is cut off."""
    release = anyio.Event()
    hits: list[str] = []

    async def target(request: Request) -> Response:
        hits.append(request.url.path)
        if request.url.path == "/moved":
            return RedirectResponse("https://elsewhere.example/hook?token=s3cret", 307)
        if request.url.path == "/refused":
            return Response("no", status_code=400)
        await release.wait()  # /held: the status line never comes
        return Response("late")

    source = create_app(settings_for(tmp_path / "a"))
    async with app_client(source) as client:
        await post_signed(client, callback("t-1", [clip("c1", "succeeded")]), delivery_id="d-1")
        raws = await source.state.runtime.storage.admin.raw_deliveries()
    app = Starlette(routes=[Route("/{path:path}", target, methods=["POST"])])
    async with running(app) as url, http_client() as http:
        try:
            sent = {path: await resend(raws, http=http, url=f"{url}/{path}", secret="s",
                                       scheme=Scheme.MUSICAPI, clock=SystemClock(),
                                       timeout_s=0.5)
                    for path in ("moved", "refused", "held")}
        finally:
            release.set()
    assert hits == ["/moved", "/refused", "/held"]  # each once: the redirect not followed
    assert [s.exit_code for s in sent.values()] == [1, 1, 1]
    reasons = {path: s.failures[0]["error"] for path, s in sent.items()}
    assert reasons["moved"].startswith("HTTP 307 to 'https://elsewhere.example/hook?")
    assert "s3cret" not in reasons["moved"]
    assert reasons["refused"] == "HTTP 400"
    assert reasons["held"] == "no answer within 0.5s"


@pytest.mark.slow
async def test_replay_command_line_reconciles_with_a_json_summary(tmp_path: Path) -> None:
    config = SandboxConfig(api_keys={KEY: 100}, speed=Speed.INSTANT, seed=2)
    async with serve_sandbox(config) as sandbox:
        await sandbox.set_faults({"drop": 1.0})  # every webhook lost
        created = await sandbox.client().create_music(
            mv="sonic-v4-5", custom_mode=True, prompt="x",
            webhook_url="http://127.0.0.1:9/webhooks/sonic", webhook_secret=SECRET)
        db = tmp_path / "receiver.db"
        env = {**os.environ, "RECEIVER_DB": str(db), "SONIC_API_BASE_URL": sandbox.url,
               "SONIC_API_KEY": KEY, "RECEIVER_LOG_FORMAT": "json",
               "RECEIVER_CONFIG": str(tmp_path / "c.toml")}
        (tmp_path / "c.toml").write_text("routes = []\n")
        app = create_app(settings_for(tmp_path))  # creates the database file
        async with app_client(app):
            pass

        def replay(*args: str) -> tuple[int, dict[str, Any]]:
            done = subprocess.run([sys.executable, "-m", "receiver", "replay", *args],
                                  env=env, capture_output=True, text=True, timeout=60,
                                  check=False)
            return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])

        code, dry = await anyio.to_thread.run_sync(
            lambda: replay("reconcile", "--dry-run", created.task_id))
        code2, wet = await anyio.to_thread.run_sync(
            lambda: replay("reconcile", created.task_id))
        code3, again = await anyio.to_thread.run_sync(
            lambda: replay("reconcile", created.task_id))
        bad = await anyio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "receiver", "replay", "reconcile", "--stale", "soon"],
            env=env, capture_output=True, text=True, timeout=60, check=False))
    assert (code, dry["dry_run"], dry["counts"]["recorded"]) == (0, True, 1)
    assert (code2, wet["counts"]["recorded"], wet["counts"]["transitions"]) == (0, 1, 3)
    assert (code3, again["counts"]["duplicate"]) == (0, 1)
    assert bad.returncode == 2
    assert "not a duration" in bad.stderr


# ---- odd get-music answers and interruption (issue 8, items 1 and 6) ---------------------------

ODD_ANSWERS: dict[str, bytes] = {
    "surrogates": b'{"code": 200, "data": [{"clip_id": "c1", "state": "succeeded", '
                  b'"title": "\\ud800", "audio_url": "\\udfff", "\\ud800": 1}]}',
    "non_finite": b'{"code": 200, "data": [{"clip_id": "c2", "state": "running", '
                  b'"duration": NaN, "x": [Infinity, 1e999]}]}',
    "huge_duration": b'{"code": 200, "data": [{"clip_id": "c3", "state": "running", '
                     b'"duration": 1' + b"0" * 400 + b"}]}",
    "huge_int": b'{"code": 200, "n": ' + b"9" * 5000 + b', "data": []}',
    "nested_900": b'{"code": 200, "data": [], "x": ' + b"[" * 900 + b"]" * 900 + b"}",
    "deeper_than_json": b'{"code": 200, "x": ' + b"[" * 100_000,
    "string_code": b'{"code": "\\u00b2", "data": [{"clip_id": "c4", "state": "pending"}]}',
}


async def test_reconcile_records_or_fails_each_odd_answer_and_never_crashes(
    tmp_path: Path,
) -> None:
    from receiver.sonic.client import SonicClient

    async def answer(request: Request) -> Response:
        name = next(n for n in ODD_ANSWERS if n in request.url.path)
        return Response(ODD_ANSWERS[name], media_type="application/json")

    upstream = Starlette(routes=[Route("/{path:path}", answer)])
    async with (
        running(upstream) as url,
        http_client() as http,
        sqlite_storage(tmp_path / "receiver.db") as store,
    ):
        sonic = SonicClient(url, "key", http=http)
        summary = await reconcile(list(ODD_ANSWERS), store=store.ingest, sonic=sonic, router=None,
                                  clock=SystemClock(), rate_per_s=1000.0)
        assert summary.counts["polled"] == len(ODD_ANSWERS)
        outcomes = {o: summary.counts.get(o, 0) for o in ("recorded", "quarantined", "failed")}
        assert sum(outcomes.values()) == len(ODD_ANSWERS), summary
        # What the webhook accepts is recorded (the odd values read as null), by the same
        # reader; what it refuses (nesting past the limit, text that is not JSON) is a failed
        # poll, counted, and the task is polled again next round.
        failed = {f["item"] for f in summary.failures}
        assert failed == {"nested_900", "deeper_than_json"}, summary
        for name in ODD_ANSWERS.keys() - failed:
            view = await store.admin.get_task(name)
            assert view is not None, name
            for c in view.clips:
                json.dumps(dict(c.data), allow_nan=False, ensure_ascii=False).encode()
                assert (c.title, c.duration) == (None, None)
        for raw in await store.admin.raw_deliveries():  # stored bodies are JSON without NaN
            json.loads(raw.body, parse_constant=_not_json)


def _not_json(name: str) -> None:
    raise AssertionError(f"{name} in a stored body")


@pytest.mark.slow
async def test_replay_interrupted_exits_130_with_a_json_line(tmp_path: Path) -> None:
    import signal
    import socket

    db = tmp_path / "receiver.db"
    app = create_app(settings_for(tmp_path))  # creates the database file
    async with app_client(app):
        pass
    (tmp_path / "c.toml").write_text("routes = []\n")
    with socket.socket() as silent:  # accepts the poll, never answers it
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        env = {**os.environ, "RECEIVER_DB": str(db), "SONIC_API_BASE_URL": f"http://127.0.0.1:{port}",
               "SONIC_API_KEY": KEY, "RECEIVER_LOG_FORMAT": "json",
               "RECEIVER_CONFIG": str(tmp_path / "c.toml")}
        process = _start([sys.executable, "-m", "receiver", "replay", "reconcile", "t-1"], env)
        try:
            silent.settimeout(30)
            connection, _ = await anyio.to_thread.run_sync(silent.accept)
            process.send_signal(signal.SIGINT)  # mid-poll, as a ^C would
            out, _err = await anyio.to_thread.run_sync(lambda: process.communicate(timeout=30))
            connection.close()
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130
    assert json.loads(out.strip().splitlines()[-1]) == {"command": "reconcile",
                                                         "interrupted": True}


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


async def test_resend_keeps_an_id_of_any_bytes_and_signs_it_as_the_target_checks(
    tmp_path: Path,
) -> None:
    source = create_app(settings_for(tmp_path / "a"))
    target = create_app(settings_for(tmp_path / "b", webhook_secrets=("new-secret",),
                                     schemes=(Scheme.STANDARD,)))
    body = callback("t-1", [clip("c1", "succeeded")])
    ids = {"utf8": "caf\u00e9 a\u00f1o".encode(), "latin1": b"caf\xe9"}
    async with app_client(source) as client:
        for name, raw_id in ids.items():
            headers = [*((k.encode(), v.encode()) for k, v in signed_headers(body).items()),
                       (b"x-webhook-id", raw_id)]
            sent = await client.post("/webhooks/sonic", content=body, headers=headers)
            assert sent.status_code == 200, name
        raws = await source.state.runtime.storage.admin.raw_deliveries()
        async with running(target) as url, http_client() as http:
            summary = await resend(raws, http=http, url=f"{url}/webhooks/sonic",
                                   secret="new-secret", scheme=Scheme.STANDARD,
                                   clock=SystemClock())
    assert summary.counts == {"status_200": 2}, summary
    async with sqlite_storage(tmp_path / "b" / "receiver.db") as target_store:
        kept = await target_store.admin.raw_deliveries()
    # the same ids as the first receiver keeps them: the bytes that came, read as latin-1
    assert {r.stored.delivery_id for r in kept} == {i.decode("latin-1") for i in ids.values()}


def test_a_poll_answer_json_cannot_write_is_kept_aside_with_the_reason() -> None:
    from receiver.sonic.responses import Music

    deep: list[Any] = []
    for _ in range(100_000):  # only a Python caller can build this; json.dumps gives up
        deep = [deep]
    music = Music(code=200, message=None, clips=(), raw={"code": 200, "x": deep})
    delivery = poll_delivery("t-1", music, received_at=1.0)
    assert delivery.callback is None
    assert delivery.error == "get-music answer cannot be kept: RecursionError"
    assert json.loads(delivery.body) == {"task_id": "t-1",
                                         "unserialisable_answer": "RecursionError"}
    assert delivery.delivery_id.startswith("poll:")


# ---- times: one reader for the command line and the HTTP API (issue 23, item 8) ------------

NOW = 1_796_650_000.0


@pytest.mark.parametrize(("text", "expected"), [
    ("2h", NOW - 7200), ("2h ago", NOW - 7200), ("2H AGO", NOW - 7200), ("90 ago", NOW - 90),
    ("1.5d", NOW - 1.5 * 86400), (" 10m ", NOW - 600),
    ("1796640000", 1796640000.0), ("1796640000.5", 1796640000.5),
    ("2026-12-07", 1796601600.0), ("2026-12-07T13:00", 1796648400.0),
    ("2026-12-07T13:00:00Z", 1796648400.0), ("2026-12-07T14:00+01:00", 1796648400.0),
])
def test_a_time_is_read_one_way(text: str, expected: float) -> None:
    """A duration ago (its unit, or ``ago``), ISO 8601 (UTC unless it says), or unix seconds,
    on the command line as over HTTP."""
    from receiver.conversion import parse_time
    from receiver.replay import parse_time as on_the_command_line

    assert parse_time(text, now=NOW) == expected
    assert on_the_command_line(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2 hours", "ago", "nan", "inf", "", "2h later"])
def test_other_times_are_refused_naming_the_forms(text: str) -> None:
    from receiver.conversion import TIME_FORMS
    from receiver.replay import parse_time

    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(TIME_FORMS)):
        parse_time(text, now=NOW)


def test_replay_help_names_the_forms_of_a_time_it_takes() -> None:
    from receiver.conversion import TIME_FORMS
    from receiver.replay import build_parser

    [commands] = [a for a in build_parser()._actions if a.dest == "command"]
    assert commands.choices is not None
    for parser in dict(commands.choices).values():
        assert isinstance(parser, argparse.ArgumentParser)
        assert " ".join(TIME_FORMS.split()) in " ".join(parser.format_help().split())


# ---- odd command lines: a usage error (exit 2, one line), never a traceback or a silent no-op

ODD_COMMAND_LINES: list[tuple[list[str], str]] = [
    (["reconcile", "--rate", "0", "t"], "--rate: expected a positive number, got '0'"),
    (["reconcile", "--rate", "nan", "t"], "--rate: expected a positive number, got 'nan'"),
    (["reconcile", "--concurrency", "0", "t"], "--concurrency: expected a positive integer"),
    (["resend", "--to", "http://x", "--secret", "s", "--concurrency", "-1"],
     "--concurrency: expected a positive integer"),
    (["reconcile", "--since", "1h", "--until", "2h"], "--until is before --since"),
    (["redispatch", "--since", "2026-01-02", "--until", "2026-01-01"],
     "--until is before --since"),
    (["reconcile", "--file", "missing.txt"], "--file missing.txt: No such file or directory"),
    (["reconcile", "--file", "latin1.txt"], "--file latin1.txt: not UTF-8 (byte 1)"),
    (["reconcile", "--file", "nul.txt"],
     "the task id of line 2 of nul.txt holds a control character or a NUL: 'a\\x00b'"),
]


@pytest.fixture(scope="module")
def replay_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A folder with a migrated database, the files the odd command lines name, and the
    environment ``sonic-receiver replay`` runs in there."""
    folder = tmp_path_factory.mktemp("replay")
    (folder / "latin1.txt").write_bytes(b"t\xe9\n")
    (folder / "nul.txt").write_bytes(b"t-1\na\x00b\n")
    (folder / "c.toml").write_text("routes = []\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(folder), "PYTHONPATH": str(ROOT),
           "RECEIVER_DB": str(folder / "r.db"), "RECEIVER_CONFIG": str(folder / "c.toml"),
           "SONIC_WEBHOOK_SECRET": SECRET, "SONIC_API_BASE_URL": "http://127.0.0.1:9",
           "SONIC_API_KEY": "k"}
    done = subprocess.run([sys.executable, "-m", "receiver", "migrate"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return folder, env


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "message"), ODD_COMMAND_LINES,
                         ids=[" ".join(a) for a, _ in ODD_COMMAND_LINES])
def test_odd_command_lines_are_usage_errors(
    replay_folder: tuple[Path, dict[str, str]], argv: list[str], message: str,
) -> None:
    folder, env = replay_folder
    done = subprocess.run([sys.executable, "-m", "receiver", "replay", *argv], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
