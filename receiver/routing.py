"""Routes: which handlers run when a task reaches a state.

A route matches a task transition (``task.streaming``, ``task.succeeded``, ``task.failed``),
optionally narrowed by task type, platform and tags (any one tag in common, compared without
case), and lists the handlers to run with their options. Routes come from the ``[[routes]]``
tables of the config file::

    [[routes]]
    name = "songs"
    on = ["task.succeeded"]
    task_type = ["create_music", "extend_music"]
    tags = ["pop"]
    handlers = ["download_audio", { name = "notify", options = { targets = ["json://..."] } }]

With no routes configured, succeeded tasks are downloaded (:data:`DEFAULT_ROUTES`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver.errors import SettingsError
from receiver.jobs import JobSpec, RetryPolicy, job_key
from receiver.models import Transition
from receiver.states import Entity, State

TRIGGERS: Mapping[State, str] = {
    State.RUNNING: "task.streaming",
    State.SUCCEEDED: "task.succeeded",
    State.FAILED: "task.failed",
}
KNOWN_TRIGGERS = frozenset(TRIGGERS.values())


@dataclass(frozen=True, kw_only=True)
class HandlerRef:
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    max_attempts: int | None = None


@dataclass(frozen=True, kw_only=True)
class Route:
    name: str
    on: frozenset[str]
    handlers: tuple[HandlerRef, ...]
    task_types: frozenset[str] = frozenset()
    platforms: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()

    def matches(self, trigger: str, task: TaskFacts) -> bool:
        if trigger not in self.on:
            return False
        if self.task_types and task.task_type not in self.task_types:
            return False
        if self.platforms and task.platform not in self.platforms:
            return False
        return not self.tags or bool(self.tags & task.tags)


@dataclass(frozen=True, kw_only=True)
class TaskFacts:
    """What routes can match on, as known in the recording transaction."""

    task_id: str
    task_type: str | None
    platform: str | None
    tags: frozenset[str]


def split_tags(values: Iterable[str | None]) -> frozenset[str]:
    """``["pop, dreamy", "Pop"]`` → ``{"pop", "dreamy"}``."""
    return frozenset(
        part.strip().lower() for value in values if value for part in value.split(",")
        if part.strip()
    )


DEFAULT_ROUTES: tuple[Route, ...] = (
    Route(
        name="default",
        on=frozenset({"task.succeeded"}),
        handlers=(HandlerRef(name="download_audio"),),
    ),
)


class Router:
    """Plans the jobs a recording transaction must write."""

    def __init__(self, routes: Sequence[Route], *, policy: RetryPolicy | None = None) -> None:
        self.routes = tuple(routes)
        self.policy = policy or RetryPolicy()
        # Whether any route narrows by task type, platform or tags: only then must a recording
        # read the task's facts before planning (they change no other answer).
        self.reads_facts = any(r.task_types or r.platforms or r.tags for r in self.routes)

    @property
    def handler_names(self) -> frozenset[str]:
        return frozenset(ref.name for route in self.routes for ref in route.handlers)


    def plan(self, task: TaskFacts, transitions: Iterable[Transition]) -> list[JobSpec]:
        specs: list[JobSpec] = []
        for transition in transitions:
            if transition.entity is not Entity.TASK:
                continue
            trigger = TRIGGERS.get(transition.to_state)
            if trigger is None:
                continue
            for route in self.routes:
                if not route.matches(trigger, task):
                    continue
                for index, ref in enumerate(route.handlers):
                    specs.append(
                        JobSpec(
                            key=job_key(task.task_id, trigger, route.name, ref.name, index),
                            handler=ref.name,
                            route=route.name,
                            options=ref.options,
                            task_id=task.task_id,
                            trigger=trigger,
                            delivery_id=transition.delivery_id,
                            max_attempts=ref.max_attempts or self.policy.max_attempts,
                        )
                    )
        return specs


def routes_from_config(config: Mapping[str, Any]) -> tuple[Route, ...]:
    """The ``[[routes]]`` of a parsed config file, or :data:`DEFAULT_ROUTES` when absent."""
    raw = config.get("routes")
    if raw is None:
        return DEFAULT_ROUTES
    if not isinstance(raw, list):
        raise SettingsError("config: routes must be an array of tables ([[routes]])")
    routes = tuple(_route(item, index) for index, item in enumerate(raw))
    names = [r.name for r in routes]
    if len(set(names)) != len(names):
        raise SettingsError("config: two routes have the same name")
    return routes


def _route(item: Any, index: int) -> Route:
    where = f"config: routes[{index}]"
    if not isinstance(item, dict):
        raise SettingsError(f"{where} must be a table")
    unknown = set(item) - {"name", "on", "task_type", "platform", "tags", "handlers"}
    if unknown:
        raise SettingsError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    name = str(item.get("name") or f"route-{index}")
    on = _strings(item.get("on"), f"{where}.on")
    if not on:
        raise SettingsError(f"{where}.on must name at least one trigger")
    bad = on - KNOWN_TRIGGERS
    if bad:
        raise SettingsError(
            f"{where}.on: unknown trigger {sorted(bad)[0]!r} "
            f"(choose from {', '.join(sorted(KNOWN_TRIGGERS))})"
        )
    handlers = item.get("handlers")
    if not isinstance(handlers, list) or not handlers:
        raise SettingsError(f"{where}.handlers must list at least one handler")
    return Route(
        name=name,
        on=on,
        handlers=tuple(_handler_ref(h, f"{where}.handlers[{i}]") for i, h in enumerate(handlers)),
        task_types=_strings(item.get("task_type"), f"{where}.task_type"),
        platforms=_strings(item.get("platform"), f"{where}.platform"),
        tags=frozenset(t.lower() for t in _strings(item.get("tags"), f"{where}.tags")),
    )


def _handler_ref(item: Any, where: str) -> HandlerRef:
    if isinstance(item, str) and item:
        return HandlerRef(name=item)
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise SettingsError(f"{where} must be a handler name or a table with a name")
    options = item.get("options", {})
    if not isinstance(options, dict):
        raise SettingsError(f"{where}.options must be a table")
    attempts = item.get("max_attempts")
    if attempts is not None and (not isinstance(attempts, int) or attempts < 1):
        raise SettingsError(f"{where}.max_attempts must be a positive integer")
    return HandlerRef(name=item["name"], options=options, max_attempts=attempts)


def _strings(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise SettingsError(f"{where} must be a string or a list of strings")
