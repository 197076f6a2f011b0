"""follow_up: create Sonic tasks when a task reaches a state, by rules in the config file.

Route it on the triggers its rules use::

    [[routes]]
    on = ["task.succeeded", "task.failed"]
    handlers = ["follow_up"]            # options = { rules = ["extend"] } to run only some

    [follow_up]
    max_depth = 3          # a chain stops here (a task this receiver did not create is depth 0)
    budget_credits = 100   # what all follow-ups under one root task may cost (seed's prices)

    [[follow_up.rules]]
    name = "extend"                 # unique; part of each child's idempotency key
    on = "task.succeeded"           # or "task.failed"
    task_type = "create_music"      # the parent's type as this receiver recorded it (optional)
    action = "extend"               # extend | cover | concat | resubmit | bpm | vox
    clip = "first"                  # "first" succeeded clip (default), an index, or "all"
    continue_at = -10               # extend: seconds; negative counts back from the clip's end
    request = { mv = "sonic-v4-5", custom_mode = true, prompt = "[Verse] ..." }
    times = 2                       # resubmit: how often a failed request is sent again

Every child is recorded (parent, rule, depth, credits) before the create call, and gets this
receiver's public webhook URL (``RECEIVER_PUBLIC_URL``) and first webhook secret; the request is
validated by the contract before it is sent. A child is never created twice for one trigger:
when an earlier attempt was cut off after recording the child but before learning the answer,
the child is marked ``unknown`` and the job dies with that reason rather than risk a second
charge (see ``scripts/replay``). bpm and vox keep their answers as results of the task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver.context import Event, HandlerContext
from receiver.errors import SettingsError
from receiver.jobs import PermanentError
from receiver.models import ChildState, ChildTask, Clip
from receiver.sonic.client import SonicClient
from receiver.sonic.contract import TASKS, CreateRequest, TaskType, normalise_model
from receiver.sonic.errors import (
    CreateOutcomeUnknown,
    SonicRequestError,
    SonicUnavailable,
    SonicValidationError,
)
from receiver.states import State

ACTIONS = ("extend", "cover", "concat", "resubmit", "bpm", "vox")
TRIGGERS = ("task.succeeded", "task.failed")
DEFAULT_MODEL = "sonic-v4-5"


@dataclass(frozen=True, kw_only=True)
class Rule:
    name: str
    on: str
    action: str
    task_types: frozenset[str] = frozenset()
    clip: str | int = "first"
    continue_at: float | None = None
    request: Mapping[str, Any] = field(default_factory=dict)
    times: int = 1


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_depth: int = 3
    budget_credits: int = 100


def load_rules(config: Mapping[str, Any]) -> tuple[Limits, tuple[Rule, ...]]:
    """The ``[follow_up]`` table; raises :class:`SettingsError` saying what is wrong."""
    table = config.get("follow_up", {})
    if not isinstance(table, dict):
        raise SettingsError("config: [follow_up] must be a table")
    limits = Limits(
        max_depth=_int(table.get("max_depth", 3), "[follow_up] max_depth", minimum=1),
        budget_credits=_int(table.get("budget_credits", 100), "[follow_up] budget_credits",
                            minimum=0),
    )
    raw = table.get("rules", [])
    if not isinstance(raw, list):
        raise SettingsError("config: follow_up.rules must be an array of tables")
    rules = tuple(_rule(item, i) for i, item in enumerate(raw))
    if len({r.name for r in rules}) != len(rules):
        raise SettingsError("config: two follow_up rules have the same name")
    return limits, rules


def _rule(item: Any, index: int) -> Rule:
    where = f"[[follow_up.rules]] #{index}"
    if not isinstance(item, dict):
        raise SettingsError(f"config: {where} must be a table")
    unknown = set(item) - {"name", "on", "task_type", "action", "clip", "continue_at",
                           "request", "times"}
    if unknown:
        raise SettingsError(f"config: {where} has unknown keys: {', '.join(sorted(unknown))}")
    action = item.get("action")
    if action not in ACTIONS:
        raise SettingsError(f"config: {where} action must be one of {', '.join(ACTIONS)}")
    on = item.get("on", "task.failed" if action == "resubmit" else "task.succeeded")
    if on not in TRIGGERS:
        raise SettingsError(f"config: {where} on must be one of {', '.join(TRIGGERS)}")
    task_type = item.get("task_type", [])
    types = frozenset([task_type] if isinstance(task_type, str) else task_type)
    clip = item.get("clip", "first")
    if not (clip in ("first", "all") or (isinstance(clip, int) and clip >= 0)):
        raise SettingsError(f'config: {where} clip must be "first", "all" or an index')
    continue_at = item.get("continue_at")
    if continue_at is not None and not isinstance(continue_at, int | float):
        raise SettingsError(f"config: {where} continue_at must be a number of seconds")
    request = item.get("request", {})
    if not isinstance(request, dict):
        raise SettingsError(f"config: {where} request must be a table")
    return Rule(
        name=str(item.get("name") or f"{action}-{index}"), on=on, action=action,
        task_types=types, clip=clip,
        continue_at=float(continue_at) if continue_at is not None else None,
        request=request, times=_int(item.get("times", 1), f"{where} times", minimum=1),
    )


def _int(value: Any, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingsError(f"config: {where} must be an integer >= {minimum}")
    return value


async def handle(event: Event, ctx: HandlerContext) -> None:
    """Run every follow-up rule that matches this transition."""
    limits, rules = load_rules(ctx.config)
    wanted = ctx.options.get("rules")
    view = await ctx.task()
    for rule in rules:
        if rule.on != event.trigger or (wanted is not None and rule.name not in wanted):
            continue
        if rule.task_types and view.task.task_type not in rule.task_types:
            continue
        if rule.action in ("bpm", "vox"):
            await _analyse(ctx, rule, view.clips)
        elif rule.action == "resubmit":
            await _resubmit(ctx, rule, limits)
        else:
            for clip in _pick(rule, view.clips):
                suffix = f"/{clip.clip_id}" if rule.clip == "all" else ""
                await _create(ctx, rule, limits, _request_for(rule, clip), suffix=suffix)


def _pick(rule: Rule, clips: Sequence[Clip]) -> list[Clip]:
    done = [c for c in clips if c.state is State.SUCCEEDED]
    if rule.clip == "all":
        return done
    if rule.clip == "first":
        return done[:1]
    assert isinstance(rule.clip, int)
    return done[rule.clip : rule.clip + 1]


def _request_for(rule: Rule, clip: Clip) -> CreateRequest:
    fields = dict(rule.request)
    if rule.action == "concat":
        return CreateRequest(task_type=TaskType.CONCAT_MUSIC, continue_clip_id=clip.clip_id)
    model = normalise_model(clip.mv)
    fields.setdefault("mv", model.value if model else DEFAULT_MODEL)
    fields.setdefault("custom_mode", True)
    if clip.tags:
        fields.setdefault("tags", clip.tags)
    if clip.title:
        fields.setdefault("title", clip.title)
    if rule.action == "cover":
        return _build(fields, task_type=TaskType.COVER_MUSIC, continue_clip_id=clip.clip_id)
    at = rule.continue_at if rule.continue_at is not None else 0.0
    if at < 0 or rule.continue_at is None:
        if clip.duration is None:
            raise PermanentError(f"clip {clip.clip_id} has no duration to extend from its end")
        at = clip.duration + at
    at = round(max(0.0, at if clip.duration is None else min(at, clip.duration)), 2)
    return _build(fields, task_type=TaskType.EXTEND_MUSIC, continue_clip_id=clip.clip_id,
                  continue_at=at)


def _build(fields: Mapping[str, Any], **fixed: Any) -> CreateRequest:
    try:
        return CreateRequest.from_json({**fields, **fixed})
    except SonicValidationError as exc:
        raise PermanentError(f"follow-up request is invalid: {exc.message}") from exc


async def _create(
    ctx: HandlerContext, rule: Rule, limits: Limits, request: CreateRequest, *, suffix: str = ""
) -> None:
    sonic = _client(ctx)
    task_type = str(request.task_type)
    cost = TASKS[TaskType(task_type)].credits
    log = ctx.log.bind(rule=rule.name, task_type=task_type)
    root, depth = await ctx.lineage()
    if depth + 1 > limits.max_depth:
        log.info("follow_up_skipped", reason="max_depth", depth=depth + 1)
        return
    # The secret is added at send time only: the stored request must not hold it.
    stored = request.to_json()
    child, fresh = await ctx.claim_child(rule=rule.name, task_type=task_type, credits=cost,
                                         request=stored, suffix=suffix)
    if not fresh:
        if child.state is ChildState.CREATED:
            log.info("follow_up_exists", child_task_id=child.child_task_id)
            return
        if child.state in (ChildState.REQUESTED, ChildState.UNKNOWN):
            # An attempt was cut off after recording the child and before the answer: the
            # service may have created it. Resending could charge twice.
            await ctx.child_failed(child, "an earlier attempt may have created it", unknown=True)
            raise PermanentError(
                f"follow-up {rule.name}: an earlier attempt may have created the task; "
                "not resending (reconcile by hand)"
            )
        # FAILED: refused, or nothing was sent; ask again.
    spent = await ctx.store.credits_under(root) - (cost if fresh else 0)
    if spent + cost > limits.budget_credits:
        await ctx.child_failed(child, f"over the credit budget ({spent}+{cost} > "
                                      f"{limits.budget_credits})")
        log.info("follow_up_skipped", reason="budget", spent=spent, cost=cost)
        return
    send = _with_webhook(ctx, request)
    try:
        created = await sonic.create(send)
    except CreateOutcomeUnknown as exc:
        await ctx.child_failed(child, exc.message, unknown=True)
        raise PermanentError(f"follow-up {rule.name}: outcome unknown: {exc.message}") from exc
    except SonicUnavailable as exc:
        await ctx.child_failed(child, f"not sent: {exc.message}")
        raise  # nothing reached the service: the worker retries with backoff
    except SonicRequestError as exc:
        await ctx.child_failed(child, exc.message)
        raise PermanentError(f"follow-up {rule.name} refused: {exc.message}") from exc
    await ctx.child_created(child, created.task_id)
    log.info("follow_up_created", child_task_id=created.task_id, credits=cost)


def _with_webhook(ctx: HandlerContext, request: CreateRequest) -> CreateRequest:
    url = ctx.settings.webhook_url
    if url is None:
        raise PermanentError("RECEIVER_PUBLIC_URL is not set: follow-up tasks need a webhook URL")
    secret = ctx.settings.webhook_secrets[0] if ctx.settings.webhook_secrets else None
    return CreateRequest.from_json({**request.to_json(), "webhook_url": url,
                                    "webhook_secret": secret})


async def _resubmit(ctx: HandlerContext, rule: Rule, limits: Limits) -> None:
    """Send a failed task's request again, up to ``times`` in a row."""
    own = await ctx.store.child_of(ctx.job.task_id)
    if own is None:
        ctx.log.info("follow_up_skipped", rule=rule.name, reason="request unknown")
        return
    count = 0
    cursor: ChildTask | None = own
    while cursor is not None and cursor.rule == rule.name:
        count += 1
        cursor = await ctx.store.child_of(cursor.parent_task_id)
    if count >= rule.times:
        ctx.log.info("follow_up_skipped", rule=rule.name, reason="times", resubmitted=count)
        return
    request = dict(own.request)
    request.pop("webhook_url", None)
    request.pop("webhook_secret", None)
    await _create(ctx, rule, limits, _build(request))


async def _analyse(ctx: HandlerContext, rule: Rule, clips: Sequence[Clip]) -> None:
    """get-bpm or get-vox for the chosen clips; an answer already kept is not asked again."""
    sonic = _client(ctx)
    kept = {(r.clip_id, r.kind) for r in await ctx.results()}
    for clip in _pick(rule, clips):
        if (clip.clip_id, rule.action) in kept:
            continue
        try:
            if rule.action == "bpm":
                bpm = await sonic.get_bpm(clip.clip_id)
                data: dict[str, Any] = {"avg_bpm": bpm.avg_bpm, "max_bpm": bpm.max_bpm,
                                        "min_bpm": bpm.min_bpm}
            else:
                vox = await sonic.get_vox(clip.clip_id)
                data = dict(vox.data)
        except SonicRequestError as exc:
            raise PermanentError(f"{rule.action} for {clip.clip_id}: {exc.message}") from exc
        await ctx.record_result(clip_id=clip.clip_id, kind=rule.action, data=data)
        ctx.log.info("follow_up_result", rule=rule.name, clip_id=clip.clip_id, kind=rule.action)


def _client(ctx: HandlerContext) -> SonicClient:
    if ctx.sonic is None:
        raise PermanentError("no Sonic client: set SONIC_API_BASE_URL and SONIC_API_KEY")
    return ctx.sonic
