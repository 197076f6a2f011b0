"""The sandbox's memory: key balances, tasks, clips, uploads and personas, in plain dicts so
that a poll of one task among 10,000 is a dictionary lookup.

A task's state is not stored but read off its :class:`Timeline` against the clock, so it moves
pending → running → succeeded | failed with no work at all for tasks nobody looks at, and a
test with a :class:`~receiver.clock.FakeClock` moves it by moving the clock. The only work at
settling time (refunding a failed task, logging it) happens in :meth:`SandboxState.settle_due`,
which every request and every webhook runner calls first.

Durations (in hundredths of a second, so the WAV length is exact):

* a new clip (create, persona) gets ``clip_seconds`` worth of new material;
* a cover is its source restyled: the source's length (when known), a tempo of its own;
* an extension holds only its new material, ``clip_seconds`` of it, continuing its source's
  beat grid from ``continue_at`` (same tempo, clicks in phase), as the service's extensions
  do: the song so far is not repeated in it;
* concat_music renders the whole song as one clip: each ancestor of the extension chain up to
  where it was extended (``continue_at`` is a position in that ancestor's own audio), then
  the last extension (:meth:`SandboxState.song_parts`). Its duration is the sum of those
  parts, and its audio is their samples, one after the other.
"""

from __future__ import annotations

import heapq
import math
import random
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from receiver.clock import Clock
from receiver.sonic.contract import (
    MODELS,
    TASKS,
    ClipState,
    CreateRequest,
    Model,
    TaskType,
)
from receiver.sonic.sandbox.config import PROVIDER_LINK_S, SandboxConfig
from receiver.sonic.sandbox.faults import Faults, chance, link_signature

log = structlog.get_logger("receiver.sonic.sandbox")


@dataclass(frozen=True, kw_only=True)
class Timeline:
    created_at: float
    running_at: float
    settled_at: float


@dataclass(frozen=True, kw_only=True)
class ClipPlan:
    """Everything a generated clip will be, fixed when its task is accepted."""

    clip_id: str
    task_id: str
    index: int
    duration_cs: int
    bpm: int
    title: str
    lyrics: str
    tags: str
    rgb: tuple[int, int, int]
    start_cs: int = 0  # where its material starts on its song's beat grid (an extension's)
    extends: tuple[str, int] | None = None  # (source clip id, continue_at) of an extension
    parts: tuple[Part, ...] = ()  # a concat's pieces of other clips, in order


Part = tuple[str, int, int]
"""``(clip_id, from_cs, length_cs)``: a stretch of one clip's own audio."""


@dataclass(frozen=True, kw_only=True)
class Upload:
    """A clip made by upload-music: the fetched bytes, served back as they came."""

    clip_id: str
    api_key: str
    url: str
    content: bytes = field(repr=False)
    content_type: str
    extension: str
    duration_cs: int | None  # known for WAV only
    bpm: int  # not measured: assigned (from the seed), and kept by its extensions
    created_at: float


@dataclass(frozen=True, kw_only=True)
class Task:
    task_id: str
    ordinal: int  # 1-based order of API-created tasks (fault selectors use it); 0 if seeded
    api_key: str
    request: CreateRequest
    model: Model | None
    timeline: Timeline
    fails: bool
    clips: tuple[ClipPlan, ...]
    base_url: str
    credits: int
    seeded: bool = False
    provider: str = "sonic"  # whose API created it (receiver.sonic.sandbox.providers)

    def state_at(self, now: float) -> ClipState:
        if now >= self.timeline.settled_at:
            return ClipState.FAILED if self.fails else ClipState.SUCCEEDED
        if now >= self.timeline.running_at:
            return ClipState.RUNNING
        return ClipState.PENDING


@dataclass(frozen=True, kw_only=True)
class PersonaRecord:
    persona_id: str
    api_key: str
    clip_id: str
    name: str
    description: str | None


Source = ClipPlan | Upload


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


class SandboxState:
    """All the sandbox knows. Single event loop, no awaits inside: no locks needed."""

    def __init__(self, config: SandboxConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.balances: dict[str, int] = dict(config.api_keys)
        self.legacy_keys: set[str] = set(config.legacy_signature_keys)
        self.faults = Faults(
            seed=config.seed, global_config=config.faults, by_key=dict(config.key_faults)
        )
        self.tasks: dict[str, Task] = {}
        self.clips: dict[str, ClipPlan] = {}
        self.uploads: dict[str, Upload] = {}
        self.personas: dict[str, PersonaRecord] = {}
        self.media_requests: Counter[str] = Counter()
        self._rng = random.Random(config.seed)
        self._ordinal = 0
        self._unsettled: list[tuple[float, int, str]] = []

    # --- ids and decisions --------------------------------------------------------------------

    def new_id(self) -> str:
        """A UUID from the seeded generator: the same run makes the same ids."""
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _between(self, bounds: tuple[float, float], kind: str, of: str) -> float:
        low, high = bounds
        return low + (high - low) * chance(self.config.seed, kind, of)

    # --- credits ------------------------------------------------------------------------------

    def charge(self, api_key: str, credits: int) -> bool:
        if self.balances.get(api_key, 0) < credits:
            return False
        self.balances[api_key] -= credits
        log.info("credits_charged", credits=credits, balance=self.balances[api_key])
        return True

    def settle_due(self) -> None:
        """Settle every task whose time has come: refund the failed ones, log each."""
        now = self.clock.now()
        while self._unsettled and self._unsettled[0][0] <= now:
            _, _, task_id = heapq.heappop(self._unsettled)
            task = self.tasks[task_id]
            if task.fails:
                self.balances[task.api_key] = self.balances.get(task.api_key, 0) + task.credits
                log.info(
                    "credits_refunded",
                    task_id=task_id,
                    credits=task.credits,
                    balance=self.balances[task.api_key],
                )
            log.info("task_settled", task_id=task_id, state=task.state_at(now))

    # --- lookups ------------------------------------------------------------------------------

    def task_for(self, task_id: str, api_key: str) -> Task | None:
        task = self.tasks.get(task_id)
        return task if task is not None and task.api_key == api_key else None

    def clip_state(self, clip_id: str) -> ClipState | None:
        if clip_id in self.uploads:
            return ClipState.SUCCEEDED
        plan = self.clips.get(clip_id)
        return self.tasks[plan.task_id].state_at(self.clock.now()) if plan else None

    def usable(self, clip_id: str) -> Source | None:
        """A clip that has audio now: an upload, or a clip of a succeeded task."""
        if (upload := self.uploads.get(clip_id)) is not None:
            return upload
        if self.clip_state(clip_id) is ClipState.SUCCEEDED:
            return self.clips[clip_id]
        return None

    def key_of_clip(self, clip_id: str) -> str | None:
        if (upload := self.uploads.get(clip_id)) is not None:
            return upload.api_key
        plan = self.clips.get(clip_id)
        return self.tasks[plan.task_id].api_key if plan else None

    # --- making things ------------------------------------------------------------------------

    def add_upload(
        self, *, api_key: str, url: str, content: bytes, content_type: str, extension: str,
        duration_cs: int | None,
    ) -> Upload:
        clip_id = self.new_id()
        upload = Upload(
            clip_id=clip_id,
            api_key=api_key,
            url=url,
            content=content,
            content_type=content_type,
            extension=extension,
            duration_cs=duration_cs,
            bpm=70 + int(chance(self.config.seed, "bpm", clip_id) * 91),
            created_at=self.clock.now(),
        )
        self.uploads[clip_id] = upload
        return upload

    def add_persona(
        self, *, api_key: str, clip_id: str, name: str, description: str | None
    ) -> PersonaRecord:
        persona = PersonaRecord(
            persona_id=self.new_id(),
            api_key=api_key,
            clip_id=clip_id,
            name=name,
            description=description,
        )
        self.personas[persona.persona_id] = persona
        return persona

    def add_task(
        self,
        *,
        api_key: str,
        request: CreateRequest,
        source: Source | None,
        base_url: str,
        seeded: bool = False,
        fails: bool | None = None,
    ) -> Task:
        """Accept a valid request (credits already charged, unless ``seeded``)."""
        task_id = self.new_id()
        task_type = TaskType(request.task_type)
        spec = TASKS[task_type]
        now = self.clock.now()
        if seeded:
            timeline = Timeline(created_at=now, running_at=now, settled_at=now)
            ordinal = 0
        else:
            self._ordinal += 1
            ordinal = self._ordinal
            timing = self.config.timing
            running = now + self._between(timing.running_after_s, "running", task_id)
            settled = max(running, now + self._between(timing.settled_after_s, "settle", task_id))
            timeline = Timeline(created_at=now, running_at=running, settled_at=settled)
        if fails is None:
            fails = self.faults.strikes(
                self.faults.for_key(api_key).fail_tasks, "fail_tasks", task_id
            )
        model = request.model or (self._model_of(source) if source is not None else None)
        clips = tuple(
            self._plan_clip(task_id, index, task_type, request, source)
            for index in range(spec.clips)
        )
        task = Task(
            task_id=task_id,
            ordinal=ordinal,
            api_key=api_key,
            request=request,
            model=model,
            timeline=timeline,
            fails=fails,
            clips=clips,
            base_url=base_url.rstrip("/"),
            credits=0 if seeded else spec.credits,
            seeded=seeded,
        )
        self.tasks[task_id] = task
        for plan in clips:
            self.clips[plan.clip_id] = plan
        if not seeded:
            heapq.heappush(self._unsettled, (timeline.settled_at, ordinal, task_id))
            log.info(
                "task_created",
                task_id=task_id,
                ordinal=ordinal,
                task_type=task_type,
                mv=request.mv,
                will_fail=fails,
                running_in_s=round(timeline.running_at - now, 3),
                settles_in_s=round(timeline.settled_at - now, 3),
            )
        return task

    def _model_of(self, source: Source) -> Model | None:
        if isinstance(source, Upload):
            return None
        return self.tasks[source.task_id].model

    def _plan_clip(
        self,
        task_id: str,
        index: int,
        task_type: TaskType,
        request: CreateRequest,
        source: Source | None,
    ) -> ClipPlan:
        clip_id = self.new_id()
        seed = self.config.seed
        new_part = round(self._between(self.config.clip_seconds, "length", clip_id) * 100)
        extends = task_type in (TaskType.EXTEND_MUSIC, TaskType.EXTEND_UPLOAD_MUSIC)
        covers = task_type in (TaskType.COVER_MUSIC, TaskType.COVER_UPLOAD_MUSIC)
        concat = task_type is TaskType.CONCAT_MUSIC
        bpm = 70 + int(chance(seed, "bpm", clip_id) * 91)
        if (extends or concat) and source is not None:
            bpm = source.bpm
        duration, start_cs = new_part, 0
        extended: tuple[str, int] | None = None
        parts: tuple[Part, ...] = ()
        if concat and source is not None:
            parts = self.song_parts(source)
            duration = sum(length for _, _, length in parts)
        elif extends and source is not None:
            at = round((request.continue_at or 0.0) * 100)
            start_cs = (source.start_cs if isinstance(source, ClipPlan) else 0) + at
            extended = (source.clip_id, at)
        elif covers and source is not None and source.duration_cs:
            duration = source.duration_cs
        source_title = source.title if isinstance(source, ClipPlan) else None
        title = request.title or source_title or _title_from(request.gpt_description_prompt)
        return ClipPlan(
            clip_id=clip_id,
            task_id=task_id,
            index=index,
            duration_cs=duration,
            bpm=bpm,
            title=title if index == 0 else f"{title} (take {index + 1})",
            lyrics=_lyrics(request, source),
            tags=request.tags or (source.tags if isinstance(source, ClipPlan) else "") or "",
            rgb=(_shade(seed, clip_id, 0), _shade(seed, clip_id, 1), _shade(seed, clip_id, 2)),
            start_cs=start_cs,
            extends=extended,
            parts=parts,
        )

    def song_parts(self, clip: Source) -> tuple[Part, ...]:
        """The whole song ``clip`` ends: what leads to it, then its own audio."""
        return (*self._lead(clip), *_own(clip))

    def _lead(self, clip: Source) -> tuple[Part, ...]:
        """What comes before ``clip``'s own audio in its song: for an extension, its source's
        song up to ``continue_at`` (a position in the source's own audio)."""
        if not isinstance(clip, ClipPlan) or clip.extends is None:
            return ()
        parent_id, at = clip.extends
        parent: Source | None = self.clips.get(parent_id) or self.uploads.get(parent_id)
        if parent is None:
            return ()
        return (*self._lead(parent), *_first(_own(parent), at))

    def seed_tasks(
        self, *, count: int, api_key: str, base_url: str, fail: bool, mv: Model
    ) -> list[str]:
        """``count`` tasks settled already, with no webhooks and no charge (benchmarks)."""
        ids: list[str] = []
        for n in range(count):
            request = CreateRequest(
                task_type=TaskType.CREATE_MUSIC,
                custom_mode=False,
                mv=mv,
                gpt_description_prompt=f"seeded task {n + 1}",
            )
            task = self.add_task(
                api_key=api_key,
                request=request,
                source=None,
                base_url=base_url,
                seeded=True,
                fails=fail,
            )
            ids.append(task.task_id)
        log.info("tasks_seeded", count=count, failed=fail)
        return ids

    # --- rendering ----------------------------------------------------------------------------

    def render(
        self, task: Task, state: ClipState, *, issued_at: float | None = None
    ) -> list[dict[str, Any]]:
        """The task's clips as get-music and webhooks show them, in ``state`` (spelled as the
        task's key's faults say), their media links issued at ``issued_at`` (default: now;
        what link faults count from)."""
        issued = self.clock.now() if issued_at is None else issued_at
        return [self._render_clip(task, plan, state, issued) for plan in task.clips]

    def link(self, task: Task, url: str, clip_id: str, issued_at: float) -> str:
        """``url`` as an answer issued at ``issued_at`` gives it: signed with its expiry when
        the key's links expire."""
        expire_s = self.faults.for_key(task.api_key).links.expire_s
        if expire_s is None:
            expire_s = PROVIDER_LINK_S.get(task.provider)
        if expire_s is None:
            return url
        expires = math.ceil(issued_at + expire_s)
        signature = link_signature(self.config.seed, clip_id, expires)
        return f"{url}?expires={expires}&signature={signature}"

    def link_refusal(self, clip_id: str, query: Mapping[str, str]) -> str | None:
        """Why a media link of ``clip_id`` with ``query`` answers 403 now, or None."""
        api_key = self.key_of_clip(clip_id)
        plan = self.clips.get(clip_id)
        provider = self.tasks[plan.task_id].provider if plan is not None else "sonic"
        if api_key is None or (self.faults.for_key(api_key).links.expire_s is None
                               and provider not in PROVIDER_LINK_S):
            return None
        expires_text = query.get("expires", "")
        numeric = expires_text.isascii() and expires_text.isdigit()
        if not numeric or query.get("signature") != link_signature(
            self.config.seed, clip_id, int(expires_text)
        ):
            return "not signed"
        if self.clock.now() >= int(expires_text):
            return "expired"
        return None

    def _render_clip(
        self, task: Task, plan: ClipPlan, state: ClipState, issued_at: float
    ) -> dict[str, Any]:
        request = task.request
        links = self.faults.for_key(task.api_key).links
        base = (self.config.public_base_url or task.base_url).rstrip("/")
        mv = str(task.model) if task.model is not None else request.mv
        # Answers name sonic-v5 "chirp-v5": clients must normalise.
        if task.model is Model.SONIC_V5:
            mv = "chirp-v5"
        clip: dict[str, Any] = {
            "clip_id": plan.clip_id,
            "state": self.faults.for_key(task.api_key).spell(state),
            "title": plan.title,
            "tags": plan.tags,
            "lyrics": plan.lyrics,
            "image_url": "",
            "audio_url": "",
            "video_url": None,
            "created_at": iso(task.timeline.created_at),
            "mv": mv,
            "gpt_description_prompt": request.gpt_description_prompt or "",
            "duration": None,
        }

        def link(url: str) -> str:
            return self.link(task, url, plan.clip_id, issued_at)

        if state in (ClipState.RUNNING, ClipState.SUCCEEDED):
            clip["image_url"] = link(f"{base}/media/image/{plan.clip_id}.png")
        if state is ClipState.RUNNING:
            clip["audio_url"] = link(f"{base}/media/stream/{plan.clip_id}.wav")
        if state is ClipState.FAILED and links.placeholder_failed:
            clip["audio_url"] = f"{base}/media/audio/None.mp3"
        if state is ClipState.SUCCEEDED:
            clip["audio_url"] = (
                f"{base}/media/audio/None.mp3"
                if links.placeholder(settled_at=task.timeline.settled_at, issued_at=issued_at)
                else link(f"{base}/media/audio/{plan.clip_id}.wav")
            )
            seconds = plan.duration_cs / 100
            # Half the clips say their duration as a decimal string ("104.88"), as the
            # service sometimes does.
            as_text = chance(self.config.seed, "duration-text", plan.clip_id) < 0.5
            clip["duration"] = f"{seconds:.2f}" if as_text else seconds
        spec = MODELS.get(task.model) if task.model is not None else None
        if spec is not None and spec.newer:
            clip["negative_tags"] = request.negative_tags or ""
            clip["style_weight"] = request.style_weight
            clip["weirdness_constraint"] = request.weirdness_constraint
        return clip


def _own(clip: Source) -> tuple[Part, ...]:
    """``clip``'s own audio as parts: a concat's parts, else the clip itself."""
    if isinstance(clip, Upload):
        return ((clip.clip_id, 0, upload_length_cs(clip)),)
    return clip.parts or ((clip.clip_id, 0, clip.duration_cs),)


def upload_length_cs(upload: Upload) -> int:
    """An upload's length; an MP3's is not measured: 30 s."""
    return upload.duration_cs if upload.duration_cs is not None else 3_000


def _first(parts: tuple[Part, ...], length_cs: int) -> tuple[Part, ...]:
    """The first ``length_cs`` of a song made of ``parts``."""
    kept: list[Part] = []
    left = length_cs
    for clip_id, start, length in parts:
        if left <= 0:
            break
        kept.append((clip_id, start, min(length, left)))
        left -= length
    return tuple(kept)


def _shade(seed: int, clip_id: str, channel: int) -> int:
    return int(chance(seed, "rgb", clip_id, channel) * 200)


def _title_from(description: str | None) -> str:
    words = (description or "").split()[:4]
    return " ".join(w.strip(",.;:!?").capitalize() for w in words) or "Untitled"


def _lyrics(request: CreateRequest, source: Source | None) -> str:
    if request.make_instrumental:
        return ""
    if request.custom_mode and request.prompt:
        return request.prompt
    if isinstance(source, ClipPlan) and request.task_type == TaskType.CONCAT_MUSIC:
        return source.lyrics
    topic = request.gpt_description_prompt or request.prompt or "a song"
    return f"[Verse]\n{topic}\n\n[Chorus]\nSing it again, sing it loud\n\n[Outro]\n{topic}"
