"""``sonic-receiver demo`` (``scripts/demo``): the whole loop on one machine, in under a minute.

It starts the sandbox (playing the Sonic API) and the receiver on embedded defaults (SQLite and
a media folder under ``data/demo/``), creates a song through ``POST /tasks`` with follow-up
rules (extend it, then concat the extension into the full song), and shows each transition as
it happens. The sandbox drops the song's ``song.completed`` webhook; the receiver's own
reconciliation (``[reconcile]``) polls get-music and recovers it. Downloads, notifications (to a
local JSON sink) and follow-ups all run. It ends with a summary and exit status 0, or 1 if the
loop did not close within the timeout.

The same loop runs as a deployment would: ``--db postgresql://...`` (or ``RECEIVER_DB`` set to
such a URL) on a PostgreSQL database, ``--web-processes N`` web processes
(``serve --workers N``) and ``--separate-worker`` (the jobs in ``sonic-receiver worker``).

``--provider sunoapi`` (or ``kie``, ``apibox``) closes the same loop through that provider
(:mod:`receiver.providers`), as the sandbox plays it: the song and its follow-ups are created
through its API with a per-task token in the callback URL, its staged callbacks (``text``,
``first``, ``complete``) come unauthenticated (kie.ai's signed over the task and the time, not
the body), and each takes effect only once the receiver's confirming poll of the provider
agrees, shown as ``(confirm)``. Its dropped ``complete`` is made up for by those polls.

``--sandbox-faults JSON|@FILE`` gives the sandbox more to do wrong (a fault setup, as
``PUT /_sandbox/faults`` takes it; the dropped ``song.completed`` is added to its ``global``
config), e.g. links that expire before late webhooks arrive, and a CDN that first answers with
an HTML page::

    scripts/demo --sandbox-faults '{"global": {"links": {"expire_s": 2}, "delay_s": 3,
                                               "media": {"kind": "html", "times": 1}}}'

Each run's sandbox has a seed of its own, so its task and clip ids are new: a database that
holds an earlier demo (``--db``) is used as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from receiver.server import running
from receiver.sonic.sandbox.faults import SETUP, Faults

API_KEY = "demo-key"
CONTINUE_AT = -8  # the extension continues the song 8 s before its end
CREDITS = 100
SONG = {
    "task_type": "create_music",
    "mv": "sonic-v4-5",
    "custom_mode": True,
    "title": "Starry Night",
    "tags": "pop, dreamy",
    "prompt": "[Verse]\nStars they shine above me\nMoonlight softly glows\n\n"
    "[Chorus]\nStarry night, starry night\nLet your light ignite",
}
CONFIG = """\
[network]
allow_networks = ["127.0.0.0/8"]   # the sandbox's media is on loopback

[reconcile]
every_s = 2
stale_s = 3

[[routes]]
name = "keep"
on = ["task.succeeded"]
handlers = [{{ name = "download_audio", options = {{ image = true }} }}]

[[routes]]
name = "chain"
on = ["task.succeeded", "task.failed"]
handlers = ["follow_up"]

[[routes]]
name = "tell"
on = ["task.succeeded", "task.failed"]

[[routes.handlers]]
name = "notify"
options = {{ targets = ["json://127.0.0.1:{sink}/notify"], wait_for_files_s = 15 }}

[follow_up]
max_depth = 2
budget_credits = 60

[[follow_up.rules]]
name = "extend"
task_type = "create_music"
action = "extend"
continue_at = {continue_at}
request = {{ prompt = "[Bridge]\\nFollow the light home\\n[Outro]\\nGoodnight" }}

[[follow_up.rules]]
name = "concat"
task_type = "extend_music"
action = "concat"
"""


DROPPED = {"task": 1, "event": "song.completed"}  # the song's: reconciliation recovers it
# The providers the demo's loop runs through: Sonic's API, or one of sunoapi.org's shape
# (the ones with extend and concat calls in the sandbox and the receiver's clients).
PROVIDERS = ("sonic", "sunoapi", "kie", "apibox")
KIE_HMAC_KEY = "demo-kie-hmac-key"
PROVIDER_TABLE = """
[providers.{name}]
api_key = "{key}"
base_url = "{sandbox}/{name}"
concat_path = "/api/v1/generate/concat"   # the sandbox's: the provider documents none
{extra}"""


def provider_table(name: str, sandbox_url: str) -> str:
    """The receiver's ``[providers.<name>]`` table for the sandbox playing ``name``."""
    extra = f'hmac_key = "{KIE_HMAC_KEY}"\n' if name == "kie" else ""
    return PROVIDER_TABLE.format(name=name, key=API_KEY, sandbox=sandbox_url, extra=extra)


def sandbox_faults(text: str | None, seed: int) -> str:
    """The sandbox's ``--faults`` for the demo: ``text`` (a fault setup as JSON, or ``@file``,
    in the shape ``GET /_sandbox/faults`` answers) with the demo's dropped webhook added to its
    global config; raises ValueError when it is not one."""
    if text and text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    given = json.loads(text) if text else {}
    if not isinstance(given, dict):
        raise ValueError(f"--sandbox-faults must be a JSON object: {SETUP}")
    base = given.get("global") or {}
    if not isinstance(base, dict):
        raise ValueError("--sandbox-faults: global must be a fault config (a JSON object)")
    setup = {**given, "global": {**base, "drop_events": [*(base.get("drop_events") or []),
                                                         DROPPED]}}
    Faults(seed=seed).load(setup)  # FaultConfigError (a ValueError) says which field
    return json.dumps(setup)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def say(start: float, text: str) -> None:
    print(f"[{time.monotonic() - start:5.1f}s] {text}", flush=True)


@dataclass
class Progress:
    """What the demo has shown so far."""

    seen: set[tuple[str, str, str]] = field(default_factory=set)
    jobs: dict[int, str] = field(default_factory=dict)
    views: dict[str, dict[str, Any]] = field(default_factory=dict)


async def spawn(args: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    out = await asyncio.to_thread(log.open, "ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "receiver", *args, env=env, stdout=out, stderr=out,
            start_new_session=True,
        )
    finally:
        out.close()


async def wait_healthy(http: httpx.AsyncClient, url: str, proc: asyncio.subprocess.Process,
                       log: Path) -> None:
    """Wait for ``url`` to answer 200; fail with the tail of ``log`` if it never does."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            break
        try:
            if (await http.get(url, timeout=1)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    tail = await asyncio.to_thread(log.read_text)
    raise RuntimeError(f"{url} did not come up; see {log}:\n{tail[-2000:]}")


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def notification_sink(port: int, received: list[dict[str, Any]]) -> AsyncIterator[str]:
    async def hook(request: Request) -> JSONResponse:
        received.append(await request.json())
        return JSONResponse({"ok": True})

    async with running(Starlette(routes=[Route("/notify", hook, methods=["POST"])]),
                       port=port) as url:
        yield url


def make_admin_token(workdir: Path) -> Path:
    """The receiver's admin token, made for this run in a file only its owner can read: the
    demo calls the admin API (POST /tasks, GET /tasks/...) with it."""
    path = workdir / "admin-token"
    path.touch(mode=0o600)
    path.write_text(secrets.token_urlsafe(32) + "\n")
    return path


def prepare(workdir: Path, sink_port: int) -> None:
    """An empty working folder with the receiver's config."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / "receiver.toml").write_text(CONFIG.format(sink=sink_port,
                                                          continue_at=CONTINUE_AT))


@dataclass(frozen=True)
class Deployment:
    """How the receiver runs: on which database, in how many web processes, and whether its
    jobs run in a worker process of their own (``RECEIVER_WORKER=off`` for the web ones)."""

    db: str | None = None  # a postgresql:// URL; None: receiver.db in the working folder
    web_processes: int = 1
    separate_worker: bool = False


def console_hint(receiver_url: str, token_file: Path, task_id: str) -> str:
    """How to open the operator's console on what the demo made."""
    return (
        f"\nconsole: {receiver_url}/ui/tasks/{task_id}  (the last song of the chain)\n"
        f"  log in with the admin token: cat {token_file}\n"
        f"  overview {receiver_url}/ui · API {receiver_url}/openapi.json · "
        f"metrics {receiver_url}/metrics (Bearer token)"
    )


async def serve_until_stopped() -> None:
    """``--stay``: keep the receiver and the sandbox up until Ctrl-C or SIGTERM."""
    print("serving until Ctrl-C (--stay)", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    try:
        await stopped.wait()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def run(workdir: Path, limit_s: float, sink_port: int, *, seed: int, stay: bool = False,
              deployment: Deployment = Deployment(), faults: str | None = None,
              provider: str = "sonic") -> int:
    """The loop, once, with a sandbox seeded with ``seed`` (its ids depend on it); ``faults``
    is the sandbox's ``--faults`` (:func:`sandbox_faults`), None for the demo's own;
    ``provider`` the API it runs through (:data:`PROVIDERS`)."""
    start = time.monotonic()
    sandbox_port, receiver_port = free_port(), free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "SONIC_"))}
    token_file = make_admin_token(workdir)
    admin = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    receiver_env = {
        **base_env,
        "SONIC_WEBHOOK_SECRET": secrets.token_urlsafe(24),
        "RECEIVER_DB": deployment.db or str(workdir / "receiver.db"),
        "RECEIVER_MEDIA_DIR": str(workdir / "media"),
        # RECEIVER_MEDIA=s3://bucket/prefix (with the AWS_* variables) keeps the songs there
        **({"RECEIVER_MEDIA": os.environ["RECEIVER_MEDIA"]}
           if os.environ.get("RECEIVER_MEDIA") else {}),
        "RECEIVER_PUBLIC_URL": receiver_url,
        "RECEIVER_CONFIG": str(workdir / "receiver.toml"),
        "RECEIVER_ADMIN_TOKEN_FILE": str(token_file),
        "RECEIVER_LOG_FORMAT": "json",
        "SONIC_API_BASE_URL": sandbox_url,
        "SONIC_API_KEY": API_KEY,
    }
    if deployment.separate_worker:
        receiver_env["RECEIVER_WORKER"] = "off"
    if provider != "sonic":
        with (workdir / "receiver.toml").open("a", encoding="utf-8") as config:
            config.write(provider_table(provider, sandbox_url))
    played = ["--kie-hmac-key", KIE_HMAC_KEY] if provider == "kie" else []
    notes: list[dict[str, Any]] = []
    print(f"sonic-receiver demo: everything lives in {workdir}/ (logs: *.log)", flush=True)
    sandbox = await spawn(
        ["sandbox", "--port", str(sandbox_port), "--api-key", API_KEY, "--credits",
         str(CREDITS), "--speed", "demo", "--seed", str(seed), "--faults",
         faults or sandbox_faults(None, seed),
         "--log-format", "json", *played],
        base_env, workdir / "sandbox.log")
    receiver = await spawn(["serve", "--port", str(receiver_port),
                            "--workers", str(deployment.web_processes)],
                           receiver_env, workdir / "receiver.log")
    worker = (await spawn(["worker"], receiver_env, workdir / "worker.log")
              if deployment.separate_worker else None)
    try:
        async with notification_sink(sink_port, notes), httpx.AsyncClient(timeout=10) as http:
            await wait_healthy(http, f"{sandbox_url}/_sandbox/health", sandbox,
                               workdir / "sandbox.log")
            await wait_healthy(http, f"{receiver_url}/healthz", receiver,
                               workdir / "receiver.log")
            dropping = "song.completed" if provider == "sonic" else "complete callback"
            say(start, f"sandbox on {sandbox_url} (it will drop the song's {dropping}), "
                       f"receiver on {receiver_url}")
            if deployment != Deployment():
                say(start, f"receiver: {deployment.web_processes} web process(es)"
                           f"{', a separate worker' if worker else ''}"
                           f"{', on PostgreSQL' if deployment.db else ''}")
            song = SONG if provider == "sonic" else {**SONG, "provider": provider}
            created = await http.post(f"{receiver_url}/tasks", json=song, headers=admin)
            if created.status_code != 201:
                say(start, f"create failed: {created.status_code} {created.text}")
                return 1
            root = created.json()["task_id"]
            through = "" if provider == "sonic" else f" through {provider}"
            say(start, f"created {_short(root)} (create_music) through POST /tasks{through}")
            progress = Progress()
            ok = await watch(http, receiver_url, root, progress, start, limit_s, admin)
            keys = (await http.get(f"{sandbox_url}/_sandbox/keys")).json()["keys"]
            dropped = (await http.get(f"{sandbox_url}/_sandbox/deliveries",
                                      params={"outcome": "dropped"})).json()["deliveries"]
            recovered = _recovered(progress, root, provider)
            heard = await measure(http, receiver_url, progress, admin)
            parts = await charged(http, sandbox_url, progress)
            summarise(progress, workdir, CREDITS - int(keys[API_KEY]["credits"]), notes,
                      dropped, recovered, heard, parts, provider=provider)
            closed = bool(ok and recovered and dropped)
            say(start, "the loop closed: done" if closed
                else "the loop did not close in time: see the logs")
            last = list(progress.views)[-1] if progress.views else root
            if stay:
                print(console_hint(receiver_url, token_file, last), flush=True)
                await serve_until_stopped()
            else:  # the servers stop as this returns: their URLs would open nothing
                print("\nto look around in the console afterwards, run scripts/demo --stay "
                      "(it keeps the receiver and the sandbox up until Ctrl-C)", flush=True)
            return 0 if closed else 1
    finally:
        if worker is not None:
            await stop(worker)
        await stop(receiver)
        await stop(sandbox)


async def watch(http: httpx.AsyncClient, url: str, root: str, progress: Progress,
                start: float, limit_s: float, admin: dict[str, str]) -> bool:
    """Print transitions and jobs as they happen until the chain root → extend → concat has
    succeeded and every job is finished."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        chain = [root]
        complete = True
        for depth in range(3):
            view = (await http.get(f"{url}/tasks/{chain[-1]}", headers=admin)).json()
            if "task" not in view:
                complete = False
                break
            progress.views[chain[-1]] = view
            show(view, progress, start)
            finished = view["task"]["state"] == "succeeded" and all(
                j["state"] in ("done", "dead") for j in view["jobs"])
            complete = complete and finished
            created = [c for c in view["children"] if c["child_task_id"]]
            if depth < 2:
                if not created:
                    complete = False
                    break
                chain.append(created[0]["child_task_id"])
        if complete and len(chain) == 3:
            return True
        await asyncio.sleep(0.3)
    return False


def show(view: dict[str, Any], progress: Progress, start: float) -> None:
    task = view["task"]
    kind = task.get("task_type") or "?"
    for t in view["transitions"]:
        if t["entity"] != "task":
            continue
        key = (task["task_id"], t["to"], t["delivery_id"])
        if key in progress.seen:
            continue
        progress.seen.add(key)
        note = {"poll": "  <- recovered by reconciliation",
                "confirm": "  <- a callback confirmed by polling the provider"}.get(
                    t["source"], "")
        say(start, f"task {_short(task['task_id'])} {kind:<13} -> {t['to']:<9} "
                   f"({t['source']}){note}")
    for job in view["jobs"]:
        if job["state"] in ("done", "dead") and progress.jobs.get(job["id"]) != job["state"]:
            progress.jobs[job["id"]] = job["state"]
            error = f": {job['last_error']}" if job["state"] == "dead" else ""
            say(start, f"job  {job['handler']:<14} on {_short(task['task_id'])} "
                       f"{job['state']}{error}")


def _recovered(progress: Progress, root: str, provider: str = "sonic") -> bool:
    """Whether the song succeeded by a poll of the provider (its completion was dropped):
    reconciliation's, or for a provider whose bodies are confirmed, a confirming poll."""
    view = progress.views.get(root, {})
    sources = ("poll",) if provider == "sonic" else ("poll", "confirm")
    return any(t["source"] in sources and t["to"] == "succeeded"
               for t in view.get("transitions", []) if t["entity"] == "task")


async def measure(
    http: httpx.AsyncClient, url: str, progress: Progress, admin: dict[str, str]
) -> dict[str, float]:
    """How long each kept audio file really plays, by clip id: read back through the
    receiver's own file route (a local file, or a presigned redirect to the object store;
    httpx drops the admin token when a redirect leaves the receiver)."""
    heard: dict[str, float] = {}
    for view in progress.views.values():
        for f in view["files"]:
            if f["kind"] != "audio" or f["content_type"] != "audio/wav":
                continue
            got = await http.get(f"{url}/files/{view['task']['task_id']}/{f['clip_id']}/audio",
                                 follow_redirects=True, headers=admin)
            if got.status_code != 200:
                print(f"  cannot read back {f['clip_id']}: {got.status_code}", flush=True)
            else:
                with contextlib.suppress(wave.Error, EOFError), wave.open(
                        io.BytesIO(got.content)) as audio:
                    heard[f["clip_id"]] = audio.getnframes() / audio.getframerate()
    return heard


async def charged(http: httpx.AsyncClient, sandbox_url: str,
                  progress: Progress) -> list[tuple[str, int]]:
    """What each task of the chain cost, as the sandbox charged it (a failed task's credits
    are refunded): (task type, credits) in the chain's order."""
    parts: list[tuple[str, int]] = []
    for task_id in progress.views:
        task = (await http.get(f"{sandbox_url}/_sandbox/tasks/{task_id}")).json()
        parts.append((str(task.get("task_type", "?")),
                      0 if task.get("state") == "failed" else int(task.get("credits", 0))))
    return parts


def summarise(progress: Progress, workdir: Path, spent: int, notes: list[dict[str, Any]],
              dropped: list[dict[str, Any]], recovered: bool,
              heard: dict[str, float] | None = None,
              parts: list[tuple[str, int]] | None = None, *, provider: str = "sonic") -> None:
    heard = heard or {}
    print("\nsummary", flush=True)
    print(f"  {'task':<10} {'type':<13} {'clip':<10} {'kind':<6} {'bytes':>9} {'seconds':>8} "
          f"{'heard':>8}")
    durations: dict[str, float | None] = {}
    kept: list[tuple[str, int]] = []
    for view in progress.views.values():
        for c in view["clips"]:
            durations[c["clip_id"]] = _seconds(c["duration"])
        for f in view["files"]:
            kept.append((f["path"], f["size"]))
            if f["kind"] == "sidecar":
                continue
            seconds = durations.get(f["clip_id"])
            played = heard.get(f["clip_id"]) if f["kind"] == "audio" else None
            print(f"  {_short(view['task']['task_id']):<10} "
                  f"{view['task'].get('task_type') or '?':<13} {_short(f['clip_id']):<10} "
                  f"{f['kind']:<6} {f['size']:>9} "
                  f"{'' if seconds is None else f'{seconds:.2f}':>8} "
                  f"{'' if played is None else f'{played:.2f}':>8}")
    _full_song(progress, durations, heard)
    media = os.environ.get("RECEIVER_MEDIA") or str(workdir / "media")
    print(f"  kept in {media} (<task id>/<clip id>.<ext>, with a .json sidecar each):")
    for where, size in kept:
        print(f"    {size:>9}  {where}")
    states: dict[str, int] = {}
    for state in progress.jobs.values():
        states[state] = states.get(state, 0) + 1
    print(f"  {credits_line(spent, parts or [])}")
    by_state = ", ".join(f"{n} {s}" for s, n in states.items())
    print(f"  jobs run: {sum(states.values())} ({by_state})")
    print(f"  notifications received by the local sink: {len(notes)}")
    if provider != "sonic":
        print(f"  provider: {provider}; every task's state came from polling it, each "
              "callback confirmed (or contradicted) by a poll")
    by = "reconciliation" if provider == "sonic" else "polling the provider"
    for d in dropped:
        print(f"  webhook dropped by the sandbox: {d['event']} of {_short(d['task_id'])}; "
              f"recovered by {by}: {'yes' if recovered else 'NO'}")


def credits_line(spent: int, parts: list[tuple[str, int]]) -> str:
    """The credits the key lost, and the tasks they went to; when those do not add up to it
    (a task the demo did not see), it says so rather than print a sum that is wrong."""
    line = f"credits spent: {spent}"
    if parts:
        line += " (" + " + ".join(f"{kind} {credits}" for kind, credits in parts) + ")"
    accounted = sum(credits for _, credits in parts)
    if accounted != spent:
        line += f"; the chain's tasks account for {accounted} of them"
    return line


def _full_song(progress: Progress, durations: dict[str, float | None],
               heard: dict[str, float]) -> None:
    """The concat against its parts: the song up to continue_at, then the extension."""
    chain = list(progress.views.values())
    if len(chain) != 3 or not all(v["clips"] for v in chain):
        return
    source, extension, whole = (v["clips"][0]["clip_id"] for v in chain)
    source_s, extension_s = durations.get(source), durations.get(extension)
    song_s = heard.get(whole)  # measured from the kept bytes, never the API's claim
    if source_s is None or extension_s is None:
        return
    if song_s is None:
        print("  full song: its audio could not be read back through GET /files")
        return
    up_to = source_s + CONTINUE_AT if CONTINUE_AT < 0 else CONTINUE_AT
    print(f"  full song: {song_s:.2f} s = the song up to continue_at {up_to:.2f} s "
          f"+ the extension {extension_s:.2f} s ({up_to + extension_s:.2f} s)")


def _seconds(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _short(task_id: str) -> str:
    return task_id[:8]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sonic-receiver demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("data/demo"),
                        help="working folder, emptied first (default data/demo)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    from_env = os.environ.get("RECEIVER_DB", "")
    parser.add_argument("--db", default=from_env if from_env.startswith("postgres") else None,
                        metavar="URL",
                        help="a PostgreSQL database (postgresql://...; default $RECEIVER_DB "
                        "when it is one) instead of receiver.db in --dir; it may hold earlier "
                        "demos (each run's ids are new)")
    parser.add_argument("--web-processes", type=int, default=1, metavar="N",
                        help="serve --workers N (default 1)")
    parser.add_argument("--separate-worker", action="store_true",
                        help="run the jobs in a `sonic-receiver worker` process of their own")
    parser.add_argument("--stay", action="store_true",
                        help="keep serving after the loop closes, to look around in the "
                             "console (/ui), until Ctrl-C")
    parser.add_argument("--sandbox-faults", metavar="JSON|@FILE",
                        help="more faults for the sandbox, as PUT /_sandbox/faults takes "
                             "them (e.g. '{\"global\": {\"links\": {\"expire_s\": 2}, "
                             "\"delay_s\": 3}}')")
    parser.add_argument("--provider", choices=PROVIDERS, default="sonic",
                        help="the API the loop runs through, as the sandbox plays it "
                        "(default sonic)")
    args = parser.parse_args(argv)
    seed = secrets.randbelow(2**31)  # new ids each run, whatever the database already holds
    try:
        faults = sandbox_faults(args.sandbox_faults, seed)
    except (ValueError, OSError) as exc:
        print(f"sonic-receiver demo: --sandbox-faults: {exc}", file=sys.stderr)
        return 2
    deployment = Deployment(db=args.db, web_processes=args.web_processes,
                            separate_worker=args.separate_worker)
    sink_port = free_port()
    prepare(args.dir, sink_port)
    try:
        return asyncio.run(run(args.dir, args.timeout, sink_port, seed=seed, stay=args.stay,
                               deployment=deployment, faults=faults, provider=args.provider))
    except RuntimeError as exc:
        print(f"sonic-receiver demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
