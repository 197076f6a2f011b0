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

With no routes configured, succeeded tasks are downloaded (:data:`DEFAULT_ROUTES`). The
tables' shape is :class:`receiver.config.RouteTable`; a route's options are kept as written
(a job stores them so), and checked against the handler's own at start-up.

Order: a planned job runs after the unfinished jobs of its task whose handlers it waits for:
those a route names in ``after``, and those whose handler provides what its own needs (their
declarations, :func:`receiver.registry.handler`); :meth:`Router.for_handlers` resolves both
once, when the router is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from receiver.config import HandlerItem, RoutesFile, RouteTable, Trigger, route_names
from receiver.conversion import convert
from receiver.jobs import JobSpec, RetryPolicy, job_key
from receiver.models import Transition
from receiver.states import Entity, State


class Declaration(Protocol):
    """What the router reads of a handler's declaration (:class:`receiver.registry.HandlerSpec`)."""

    @property
    def needs(self) -> frozenset[str]: ...

    @property
    def max_attempts(self) -> int | None: ...


class Handlers(Protocol):
    """What the router reads of the handler registry (:class:`receiver.registry.Registry`)."""

    def spec(self, name: str) -> Declaration: ...

    def providers(self, needs: Iterable[str]) -> frozenset[str]: ...

    def check(self, names: Iterable[str]) -> None: ...

TRIGGERS: Mapping[State, str] = {
    State.RUNNING: Trigger.STREAMING.value,
    State.SUCCEEDED: Trigger.SUCCEEDED.value,
    State.FAILED: Trigger.FAILED.value,
}
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class HandlerRef:
    """A route's handler: its options, its jobs' attempts, and whom its jobs wait for."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    max_attempts: int | None = None
    after: frozenset[str] = frozenset()  # handlers whose jobs of the task run first
    after_wait_s: float = 900.0


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

    @classmethod
    def for_handlers(
        cls, routes: Sequence[Route], registry: Handlers, *, policy: RetryPolicy | None = None
    ) -> Router:
        """The router of ``routes`` for the handlers of ``registry``: each reference waits, as
        well, for the handlers providing what its own needs, and takes its handler's default
        attempts when the route does not set them."""
        resolved = []
        for route in routes:
            refs = []
            for ref in route.handlers:
                spec = registry.spec(ref.name)
                refs.append(dataclasses.replace(
                    ref, after=(ref.after | registry.providers(spec.needs)) - {ref.name},
                    max_attempts=ref.max_attempts or spec.max_attempts))
            resolved.append(dataclasses.replace(route, handlers=tuple(refs)))
        return cls(resolved, policy=policy)

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
                            waits_for=tuple(sorted(ref.after)), wait_s=ref.after_wait_s,
                        )
                    )
        return specs


def router_for(config: Mapping[str, Any], registry: Handlers, *,
               policy: RetryPolicy | None = None) -> Router:
    """The router of ``config``'s routes (or the default ones) for ``registry``'s handlers, each
    of which must be registered."""
    router = Router.for_handlers(routes_from_config(config), registry, policy=policy)
    registry.check(router.handler_names)
    return router


def routes_from_config(config: Mapping[str, Any]) -> tuple[Route, ...]:
    """The ``[[routes]]`` of a parsed config file, or :data:`DEFAULT_ROUTES` when absent; raises
    :class:`receiver.conversion.ConfigError` naming the path of a bad key."""
    parsed: RoutesFile = convert({"routes": config["routes"]} if "routes" in config else {},
                                 RoutesFile)
    if parsed.routes is None:
        return DEFAULT_ROUTES
    return tuple(_route(table, name)
                 for table, name in zip(parsed.routes, route_names(parsed.routes), strict=True))


def _route(table: RouteTable, name: str) -> Route:
    return Route(
        name=name,
        on=frozenset(Trigger(t).value for t in _listed(table.on)),
        handlers=tuple(_handler_ref(item) for item in table.handlers),
        task_types=frozenset(_listed(table.task_type)),
        platforms=frozenset(_listed(table.platform)),
        tags=frozenset(tag.lower() for tag in _listed(table.tags)),
    )


def _handler_ref(item: str | HandlerItem) -> HandlerRef:
    if isinstance(item, str):
        return HandlerRef(name=item)
    return HandlerRef(name=item.name, options=item.options, max_attempts=item.max_attempts,
                      after=frozenset(item.after), after_wait_s=item.after_wait_s)


def _listed(value: T | list[T]) -> list[T]:
    """A key that takes one value or a list of them, as a list."""
    return value if isinstance(value, list) else [value]
