"""The handler registry: names → async callables.

Handlers load one way, built-in or not: the entry-point group ``sonic_receiver.handlers`` (the
entry point's name is the handler's name), plus ``module:function`` paths in the config file::

    [handlers.archive]
    path = "my_package.archive:handle"

Two handlers with one name, a path that does not import, or a route naming a handler that is not
registered stop start-up with a :class:`SettingsError` saying which.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from receiver.context import Event, HandlerContext
from receiver.errors import SettingsError

ENTRY_POINT_GROUP = "sonic_receiver.handlers"

Handler = Callable[[Event, HandlerContext], Awaitable[None]]
F = TypeVar("F", bound=Handler)


class Registry:
    """Handlers by name, each with where it came from (for error messages)."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str, handler: Any, *, origin: str) -> None:
        if not inspect.iscoroutinefunction(handler):
            raise SettingsError(f"handler {name!r} from {origin} is not an async function")
        if name in self._handlers:
            if self._handlers[name] is handler:
                return  # the same function found twice (one package on two paths)
            raise SettingsError(
                f"handler {name!r} is registered twice: by {self._origins[name]} and by {origin}"
            )
        self._handlers[name] = handler
        self._origins[name] = origin

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def check(self, names: Iterable[str]) -> None:
        """Raise unless every handler in ``names`` is registered."""
        for name in sorted(set(names)):
            if name not in self._handlers:
                known = ", ".join(self.names) or "none"
                raise SettingsError(f"a route names handler {name!r}, which is not registered "
                                    f"(registered: {known})")


def load_registry(config: Mapping[str, Any], *, group: str = ENTRY_POINT_GROUP) -> Registry:
    """Every handler of the entry-point ``group`` and of the config's ``[handlers]`` tables."""
    registry = Registry()
    for ep in entry_points(group=group):
        try:
            handler = ep.load()
        except Exception as exc:
            raise SettingsError(
                f"handler entry point {ep.name} = {ep.value} cannot be loaded: {exc}"
            ) from exc
        dist = ep.dist.name if ep.dist is not None else "?"
        registry.register(ep.name, handler, origin=f"entry point {ep.value} ({dist})")
    tables = config.get("handlers", {})
    if not isinstance(tables, dict):
        raise SettingsError("config: [handlers] must be a table of tables")
    for name, table in tables.items():
        path = table.get("path") if isinstance(table, dict) else None
        if not isinstance(path, str):
            raise SettingsError(f'config: [handlers.{name}] needs path = "module:function"')
        registry.register(name, import_path(path, where=f"[handlers.{name}]"),
                          origin=f"config {path}")
    return registry


def import_path(path: str, *, where: str) -> Any:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise SettingsError(f"config: {where} path {path!r} is not module:function")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"config: {where} path {path!r} cannot be imported: {exc}") from exc
    return target
