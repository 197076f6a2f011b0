"""Fuzzing of every provider's endpoint (``/webhooks/<provider>[/<secret>]``, issue 21): the
promises :mod:`scripts.fuzzing` checks at Sonic's hold at each.

Each case is one request to the real app (in-process, on a real SQLite file) at one enabled
provider's path: a body in that provider's shape (sunoapi.org's ``{code, msg, data:
{callbackType, task_id, data: [clips]}}``, snake or camelCase; PiAPI's task; AIMLAPI's
generation) whose every field may hold any value, or :mod:`scripts.fuzzing`'s garbage;
authenticated as the provider authenticates (the path secret, with kie.ai's signature over
the task id and time; PiAPI's secret header; Standard Webhooks), or not (no secret, a wrong
one, a forged signature, signature-looking noise). Afterwards: nothing answered 5xx or let an
exception out; every authenticated delivery is in the database (``unconfirmed`` where the
provider authenticates no body, else recorded; quarantined when unusable) and nothing else is;
every task reads back.

``scripts/fuzz --providers -n 20000`` runs the long mode; ``tests/test_fuzz.py`` a short one.
"""

from __future__ import annotations

import sqlite3
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from anyio.from_thread import start_blocking_portal

from receiver.app import create_app
from receiver.config import ProvidersTable
from receiver.conversion import convert
from receiver.providers.kie import signed_task_id
from receiver.settings import Settings
from receiver.signatures import sign_kie, sign_standard
from scripts.fuzzing import LIKELY, MAX_BODY, RandomCases, Report, _client, _post, dump

PROVIDERS = ("sunoapi", "kie", "apibox", "piapi", "aimlapi")
CONFIRMING = ("sunoapi", "kie", "apibox")  # no body authenticated: recorded unconfirmed
PATH_SECRET = "fuzz-path-secret-0123456789abcdef"  # noqa: S105 -- in-process traffic only
HMAC_KEY = "fuzz-kie-hmac-key-0123456789"
PIAPI_SECRET = "fuzz-piapi-secret-0123456789"  # noqa: S105
AIMLAPI_SECRET = "whsec_ZnV6ei1haW1sYXBpLXNlY3JldC0wMTIzNDU2Nzg5"  # noqa: S105
STAGES = ["text", "first", "second", "complete", "error", "failed", "", "TEXT", "success"]
CODES = [200, 400, 408, 413, 500, 501, 531, 429, 455, -1, 10**20]
SUNO_FIELDS = ["id", "audio_url", "source_audio_url", "stream_audio_url",
               "source_stream_audio_url", "image_url", "source_image_url", "prompt",
               "model_name", "title", "tags", "createTime", "duration", "audioUrl",
               "streamAudioUrl", "imageUrl", "modelName", "sourceAudioUrl"]
URLS = ["http://cdn/a.mp3", "https://cdn/b.mp3?x=1", "", " ", "null", "None", "pending",
        "http://127.0.0.1:9/x", "javascript:alert(1)", "file:///etc/passwd", "//cdn/c.mp3"]
PIAPI_STATUSES = ["pending", "processing", "completed", "failed", "staged", "Completed", ""]
# headers that authenticate each provider's callbacks: noise beside a real one leaves them be
AUTH_HEADERS = {"sunoapi": frozenset(), "apibox": frozenset(),
                "kie": frozenset({b"x-webhook-signature", b"x-webhook-timestamp"}),
                "piapi": frozenset({b"x-webhook-secret"}),
                "aimlapi": frozenset({b"webhook-id", b"webhook-signature", b"webhook-timestamp"})}
NOISE = [b"x-webhook-signature", b"x-webhook-timestamp", b"webhook-signature", b"webhook-id",
         b"x-webhook-secret", b"x-webhook-id", b"authorization", b"x-trace"]
AIML_STATUSES = ["queued", "generating", "completed", "error", "failed", "done", ""]


@dataclass(frozen=True)
class ProviderCase:
    provider: str
    body: bytes
    authentic: bool
    path: str
    headers: tuple[tuple[bytes, bytes], ...]


class ProviderCases(RandomCases):
    """Cases at random for the providers' endpoints (bodies of their shapes, or any)."""

    def __init__(self, seed_value: int) -> None:
        super().__init__(seed_value)
        self.task_ids = [f"pt-{i}" for i in range(40)]

    def pick(self, likely: list[Any]) -> Any:
        return self.rng.choice(likely) if self.rng.random() < 0.7 else self.field()

    def task_id(self) -> Any:
        return self.rng.choice(self.task_ids) if self.rng.random() < 0.8 else self.field()

    def suno(self) -> dict[str, Any]:
        rng = self.rng
        camel = rng.random() < 0.3
        clips = []
        for i in range(rng.randrange(4)):
            clip: dict[str, Any] = {"id": f"pc-{rng.randrange(80)}-{i}"}
            for name in SUNO_FIELDS[1:]:
                if rng.random() < 0.4:
                    clip[name] = (self.pick(URLS) if "url" in name.lower()
                                  else self.pick([198.4, "120", None, -1, 1e400])
                                  if name == "duration" else self.field())
            clips.append(clip)
        data: dict[str, Any] = {"callbackType": self.pick(STAGES),
                                ("taskId" if camel else "task_id"): self.task_id()}
        if rng.random() < 0.85:
            data["data"] = clips if rng.random() < 0.85 else self.value()
        document: dict[str, Any] = {"code": self.pick(CODES), "msg": self.field(),
                                    "data": data if rng.random() < 0.9 else self.value()}
        return {k: v for k, v in document.items() if rng.random() < 0.95}

    def piapi(self) -> dict[str, Any]:
        rng = self.rng
        clips = {f"pc-{rng.randrange(80)}-{i}": {
            "id": f"pc-{i}", "status": self.pick(["streaming", "complete", "error"]),
            "audio_url": self.pick(URLS), "image_url": self.pick(URLS),
            "metadata": {"duration": self.pick([120.5, None, "x"]),
                         "tags": self.field(), "prompt": self.field()}}
            for i in range(rng.randrange(4))}
        output: Any = {"clips": clips if rng.random() < 0.7 else list(clips.values())}
        task = {"task_id": self.task_id(), "model": "music-s", "task_type": self.field(),
                "status": self.pick(PIAPI_STATUSES), "input": self.value(),
                "output": output if rng.random() < 0.9 else self.value(),
                "error": {"code": self.pick([0, 10000, 501, None]), "message": self.field()}}
        return {"timestamp": self.pick([1_700_000_000, "x"]), "data": task}

    def aimlapi(self) -> dict[str, Any]:
        rng = self.rng
        generation: dict[str, Any] = {"id": self.task_id(), "status": self.pick(AIML_STATUSES)}
        if rng.random() < 0.6:
            generation["audio_file"] = ({"url": self.pick(URLS), "content_type": self.field()}
                                        if rng.random() < 0.8 else self.value())
        if rng.random() < 0.3:
            generation["error"] = self.value()
        if rng.random() < 0.5:
            return {"type": self.pick(["generation.completed", "generation.error"]),
                    "data": generation}
        return generation

    def provider_body(self, provider: str) -> bytes:
        rng = self.rng
        if rng.random() < 0.25:  # Sonic's garbage: bytes, truncated JSON, any value
            return self.body()
        document = (self.suno() if provider in CONFIRMING else
                    self.piapi() if provider == "piapi" else self.aimlapi())
        raw = dump(document, ascii_only=rng.random() < 0.9).encode("utf-8", "surrogatepass")
        if rng.random() < 0.05 and raw:
            return raw[: rng.randrange(len(raw))]
        return raw

    def case(self) -> ProviderCase:  # type: ignore[override]
        rng = self.rng
        provider = rng.choice(PROVIDERS)
        body = self.provider_body(provider)
        authentic = rng.randrange(10) > 1  # four cases in five
        now = int(time.time())
        path = f"/webhooks/{provider}"
        headers: list[tuple[bytes, bytes]] = []
        if provider in CONFIRMING:
            if authentic:
                path += "/" + PATH_SECRET
                if provider == "kie":
                    task_id = signed_task_id(body)
                    # a body naming no task cannot be signed by kie.ai: sent unsigned, refused
                    authentic = task_id is not None
                    if task_id is not None:
                        headers += _encoded(sign_kie(HMAC_KEY, task_id, now))
            else:
                path += rng.choice(["", "/", "/" + PATH_SECRET[:-1], "/" + PATH_SECRET + "x",
                                    "/" + quote(self.text().encode("utf-8", "surrogatepass")),
                                    "/" + PATH_SECRET + "/extra"])
                if provider == "kie" and rng.random() < 0.5:  # a signature, but no secret
                    headers += _encoded(sign_kie(HMAC_KEY, "pt-1", now))
        elif provider == "piapi":
            secret = PIAPI_SECRET if authentic else rng.choice(
                ["", PIAPI_SECRET + "x", PIAPI_SECRET[:-1], self.text(surrogates=False)])
            if authentic or rng.random() < 0.7:
                headers.append((b"x-webhook-secret", secret.encode()))
        else:
            msg_id = f"msg-{rng.randrange(2**40)}" if rng.random() < 0.9 else "msg-repeat"
            secret = AIMLAPI_SECRET if authentic else "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFB"
            if authentic or rng.random() < 0.6:
                headers += _encoded(sign_standard(secret, msg_id, body, now))
        if not authentic or rng.random() < 0.2:  # noise beside (or instead of) the real thing
            real = AUTH_HEADERS[provider] if authentic else frozenset()
            names = [name for name in NOISE if name not in real]
            headers += [(rng.choice(names), self.header_value())
                        for _ in range(rng.randrange(3))]
        return ProviderCase(provider=provider, body=body, authentic=authentic, path=path,
                            headers=tuple(headers))


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def provider_settings(directory: Path) -> Settings:
    tables: ProvidersTable = convert({
        "sunoapi": {"path_secret": PATH_SECRET}, "apibox": {"path_secret": PATH_SECRET},
        "kie": {"path_secret": PATH_SECRET, "hmac_key": HMAC_KEY},
        "piapi": {"webhook_secret": PIAPI_SECRET},
        "aimlapi": {"webhook_secret": AIMLAPI_SECRET},
    }, ProvidersTable, path="providers")
    return Settings(webhook_secrets=("fuzz-secret",), db_path=directory / "fuzz.db",
                    media_dir=directory / "media", config={"routes": []}, worker="off",
                    providers=tables).validated()


def run_providers(n: int, *, directory: Path, seed_value: int = 0, reads: int = 500
                  ) -> Report:
    """Send ``n`` cases over the providers' endpoints of one app, then check its file."""
    report = Report()
    answered: dict[str, tuple[str, str]] = {}  # delivery id → (first answer, provider)
    tasks: set[str] = set()
    started = time.perf_counter()
    app = create_app(provider_settings(directory))
    generator = ProviderCases(seed_value)
    with start_blocking_portal(backend="asyncio") as portal, \
            portal.wrap_async_context_manager(_client(app)) as http:
        for _ in range(n):
            _one(generator.case(), portal, http, report, answered, tasks)
        for task_id in sorted(tasks)[:reads]:
            report.reads += 1
            response = portal.call(http.get, "/tasks/" + quote(task_id, safe=""))
            if response.status_code >= 500:
                report.read_5xx += 1
                report.note(f"GET /tasks/{task_id!r} answered {response.status_code}")
    _check(directory / "fuzz.db", answered, report)
    report.seconds = time.perf_counter() - started
    return report


def _one(case: ProviderCase, portal: Any, http: httpx.AsyncClient, report: Report,
         answered: dict[str, tuple[str, str]], tasks: set[str]) -> None:
    report.cases += 1
    try:
        response = portal.call(_post, http, case.path, case.body, list(case.headers))
    except Exception as exc:  # the app let one escape: the worst finding
        report.escaped += 1
        report.escaped_kinds[f"{type(exc).__name__}: {str(exc)[:70]}"] += 1
        report.note(f"escaped {type(exc).__name__}: {traceback.format_exc(limit=3)}"
                    f" for {case!r:.300}")
        return
    report.statuses[response.status_code] += 1
    if response.status_code >= 500:
        report.note(f"{response.status_code} {response.text[:200]} for {case!r:.300}")
    if not case.authentic:
        if response.status_code not in (401, 404, 405, 413):
            report.stored_unverified += 1
            report.note(f"unauthenticated answered {response.status_code}: "
                        f"{response.text[:200]} for {case!r:.300}")
        return
    if response.status_code == 413 and len(case.body) > MAX_BODY:
        return
    if response.status_code not in (200, 422):
        report.verified_wrong_status += 1
        report.note(f"authentic answered {response.status_code}: {response.text[:200]}"
                    f" for {case!r:.300}")
        return
    answer = response.json()
    status = answer["status"]
    report.outcomes[f"{case.provider}:{status}"] += 1
    expected = "unconfirmed" if case.provider in CONFIRMING else "recorded"
    if status not in ("quarantined", "duplicate", expected):
        report.wrong_outcome += 1
        report.note(f"{case.provider} answered {status} for {case!r:.300}")
    answered.setdefault(answer["delivery_id"], (status, case.provider))
    if status != "quarantined" and answer.get("task_id"):
        tasks.add(answer["task_id"])


def _check(db: Path, answered: dict[str, tuple[str, str]], report: Report) -> None:
    with sqlite3.connect(db) as conn:
        stored = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT delivery_id, outcome, provider FROM deliveries")}
    for delivery_id, (status, provider) in answered.items():
        found = stored.get(delivery_id)
        if found is None:
            report.missing += 1
            report.note(f"answered {status} but not stored: {delivery_id!r}")
            continue
        outcome, kept_provider = found
        allowed = ({"quarantined"} if status == "quarantined" else
                   {"recorded", "unconfirmed"} if status == "duplicate" else {status})
        if outcome not in allowed or kept_provider != provider:
            report.wrong_outcome += 1
            report.note(f"answered {status} by {provider}, stored {outcome} by "
                        f"{kept_provider}: {delivery_id!r}")
    report.stored_unverified += len(set(stored) - set(answered))


__all__ = ["LIKELY", "PROVIDERS", "ProviderCases", "run_providers"]
