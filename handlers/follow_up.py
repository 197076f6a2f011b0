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

The table is :class:`FollowUpTable` and the route's options :class:`FollowUpOptions`, both
checked with the rest of the file at start-up. Every child is recorded (parent, rule, depth,
credits) before the create call, and gets this receiver's public webhook URL
(``RECEIVER_PUBLIC_URL``) and first webhook secret; the request is validated by the contract
before it is sent. A child is never created twice for one trigger:
when an earlier attempt was cut off after recording the child but before learning the answer,
the child is marked ``unknown`` and the job dies with that reason rather than risk a second
charge (see ``scripts/replay``). bpm and vox keep their answers as results of the task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from receiver.plugin import (
    TASKS,
    ChildState,
    ChildTask,
    Clip,
    Context,
    CreateOutcomeUnknown,
    CreateRequest,
    Event,
    FieldError,
    NonNegativeInt,
    Options,
    PermanentError,
    PositiveInt,
    SonicRequestError,
    SonicUnavailable,
    SonicValidationError,
    State,
    TaskApi,
    TaskType,
    Text,
    handler,
    normalise_model,
)

DEFAULT_MODEL = "sonic-v4-5"


Action = Literal["extend", "cover", "concat", "resubmit", "bpm", "vox"]
On = Literal["task.succeeded", "task.failed"]


class RuleTable(Options, kw_only=True, frozen=True):
    """One ``[[follow_up.rules]]`` table."""

    action: Action
    name: Text | None = None  # <action>-<index> when left out
    on: On | None = None  # task.failed for resubmit, else task.succeeded
    task_type: str | list[str] = msgspec.field(default_factory=list)
    clip: Literal["first", "all"] | NonNegativeInt = "first"
    continue_at: float | None = None
    request: dict[str, Any] = msgspec.field(default_factory=dict)
    times: PositiveInt = 1


@dataclass(frozen=True, kw_only=True)
class Rule:
    """A rule as the handler applies it: its name and trigger settled."""

    name: str
    on: str
    action: str
    task_types: frozenset[str] = frozenset()
    clip: str | int = "first"
    continue_at: float | None = None
    request: Mapping[str, Any] = field(default_factory=dict)
    times: int = 1


class FollowUpTable(Options, kw_only=True, frozen=True):
    """``[follow_up]``: the limits of every chain, and the rules."""

    max_depth: PositiveInt = 3  # a chain stops here
    budget_credits: NonNegativeInt = 100  # what all follow-ups under one root task may cost
    rules: list[RuleTable] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for index, rule in enumerate(self.plan()):
            if rule.name in seen:
                raise FieldError(f"rules[{index}].name", f"two rules are named {rule.name!r}")
            seen.add(rule.name)

    def plan(self) -> tuple[Rule, ...]:
        """The rules, each with its name and trigger settled."""
        return tuple(
            Rule(name=rule.name or f"{rule.action}-{index}",
                 on=rule.on or ("task.failed" if rule.action == "resubmit" else "task.succeeded"),
                 action=rule.action,
                 task_types=frozenset([rule.task_type] if isinstance(rule.task_type, str)
                                      else rule.task_type),
                 clip=rule.clip, continue_at=rule.continue_at, request=rule.request,
                 times=rule.times)
            for index, rule in enumerate(self.rules)
        )


class FollowUpOptions(Options, kw_only=True, frozen=True):
    """A route's options: ``rules`` names the rules to run (all when left out)."""

    rules: list[Text] | None = None


@handler(options=FollowUpOptions, table=FollowUpTable)
async def handle(event: Event, ctx: Context) -> None:
    """Run every follow-up rule that matches this transition."""
    limits: FollowUpTable = ctx.table
    rules = limits.plan()
    wanted = ctx.options.rules
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
    ctx: Context, rule: Rule, limits: FollowUpTable, request: CreateRequest, *,
    suffix: str = ""
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
    taken = await _known_as(ctx, child, created.task_id, root)
    if taken is not None:
        # The service may well have charged for a task, but not under this id: recording it
        # would make a known task its own descendant (a chain that loops). Never resent.
        reason = (f"the service answered task id {created.task_id!r}, which cannot be the new "
                  f"task: it is {taken}")
        await ctx.child_failed(child, reason, unknown=True)
        raise PermanentError(f"follow-up {rule.name}: {reason} (reconcile by hand)")
    await ctx.child_created(child, created.task_id)
    log.info("follow_up_created", child_task_id=created.task_id, credits=cost)


async def _known_as(ctx: Context, child: ChildTask, task_id: str, root: str) -> str | None:
    """What ``task_id``, answered for a create, already is in the chain, if anything: this
    task, the chain's root, or another follow-up."""
    if task_id == ctx.job.task_id:
        return "the task this follow-up is for"
    if task_id == root:
        return "the root of this chain"
    other = await ctx.store.child_of(task_id)
    if other is not None and other.trigger_key != child.trigger_key:
        return f"the follow-up {other.trigger_key}"
    return None


def _with_webhook(ctx: Context, request: CreateRequest) -> CreateRequest:
    url = ctx.settings.webhook_url
    if url is None:
        raise PermanentError("RECEIVER_PUBLIC_URL is not set: follow-up tasks need a webhook URL")
    secret = ctx.settings.webhook_secrets[0] if ctx.settings.webhook_secrets else None
    return CreateRequest.from_json({**request.to_json(), "webhook_url": url,
                                    "webhook_secret": secret})


async def _resubmit(ctx: Context, rule: Rule, limits: FollowUpTable) -> None:
    """Send a failed task's request again, up to ``times`` in a row."""
    own = await ctx.store.child_of(ctx.job.task_id)
    if own is None:
        ctx.log.info("follow_up_skipped", rule=rule.name, reason="request unknown")
        return
    count = 0
    cursor: ChildTask | None = own
    seen: set[str] = set()  # a chain recorded with a loop in it still ends
    while cursor is not None and cursor.rule == rule.name and cursor.trigger_key not in seen:
        seen.add(cursor.trigger_key)
        count += 1
        cursor = await ctx.store.child_of(cursor.parent_task_id)
    if count >= rule.times:
        ctx.log.info("follow_up_skipped", rule=rule.name, reason="times", resubmitted=count)
        return
    request = dict(own.request)
    request.pop("webhook_url", None)
    request.pop("webhook_secret", None)
    await _create(ctx, rule, limits, _build(request))


async def _analyse(ctx: Context, rule: Rule, clips: Sequence[Clip]) -> None:
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


def _client(ctx: Context) -> TaskApi:
    if ctx.sonic is None:
        raise PermanentError("no Sonic client: set SONIC_API_BASE_URL and SONIC_API_KEY")
    return ctx.sonic
