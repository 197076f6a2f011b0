"""The handler registry: names → async callables, each with its declared options and table.

Handlers load one way, built-in or not: the entry-point group ``sonic_receiver.handlers`` (the
entry point's name is the handler's name), plus ``module:function`` paths in the config file::

    [handlers.archive]
    path = "my_package.archive:handle"

A handler declares with :func:`handler` the Struct its route options must fit, optionally a
table of its own (``[<handler name>]`` in the config file), what it ``provides`` to and
``needs`` from the other handlers of a task (its jobs run after those of the handlers that
provide what it needs), and its jobs' default number of attempts; one that declares nothing
takes any options, as a plain mapping (:func:`receiver.schema.load_checked` checks the whole
file against the declarations before anything starts). Two handlers with one name or a path
that does not import stop start-up with a :class:`SettingsError` saying which.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import msgspec

from receiver.config import HandlerPath
from receiver.confirmation import CORE_HANDLERS
from receiver.conversion import ConfigError, convert
from receiver.errors import SettingsError
from receiver.jobs import PermanentError

if TYPE_CHECKING:
    from receiver.context import Event, HandlerContext

ENTRY_POINT_GROUP = "sonic_receiver.handlers"
CORE = "receiver."  # the prefix of the receiver's own jobs' handlers (receiver.confirm)

Handler: TypeAlias = "Callable[[Event, HandlerContext], Awaitable[None]]"
F = TypeVar("F", bound=Callable[..., Awaitable[None]])
_SPEC = "__sonic_receiver_handler__"


@dataclass(frozen=True, kw_only=True)
class HandlerSpec:
    """What a handler declared: the Struct its options must fit (None: any table, given as a
    mapping), the Struct of its own table in the config file (None: it has none), what it
    provides to and needs from the other handlers of a task, and its jobs' default number of
    attempts (None: the ``[worker]`` policy's)."""

    options: type[msgspec.Struct] | None = None
    table: type[msgspec.Struct] | None = None
    provides: frozenset[str] = frozenset()
    needs: frozenset[str] = frozenset()
    max_attempts: int | None = None

    def options_from(self, raw: Mapping[str, Any]) -> Any:
        """A job's stored options as the handler takes them; :class:`UnfitOptions` when they
        no longer fit (the job was written under another config)."""
        if self.options is None:
            return raw
        try:
            return convert(raw, self.options, path="options")
        except ConfigError as exc:
            raise UnfitOptions(exc.message) from None

    def table_from(self, name: str, config: Mapping[str, Any]) -> Any:
        """The handler's table ``[name]`` of the parsed ``config``, or None if it has none."""
        if self.table is None:
            return None
        try:
            return convert(config.get(name, {}), self.table, path=name)
        except ConfigError as exc:
            raise UnfitOptions(exc.message) from None


UNDECLARED = HandlerSpec()


class UnfitOptions(PermanentError):
    """A job's options (or its handler's table) do not fit the handler's declaration: a job
    written under another config. No retry could help: the job ends with the reason."""


def handler(
    *, options: type[msgspec.Struct] | None = None, table: type[msgspec.Struct] | None = None,
    provides: Iterable[str] = (), needs: Iterable[str] = (), max_attempts: int | None = None,
) -> Callable[[F], F]:
    """Declare a handler's options Struct and, optionally, the Struct of its own table, what it
    provides to and needs from the other handlers of a task, and its jobs' default number of
    attempts::

        @handler(options=DownloadOptions, provides=["files"])
        async def handle(event: Event, ctx: HandlerContext) -> None:
            options: DownloadOptions = ctx.options

    The function is returned as it is, with the declaration attached for the registry. Route
    options and the table are checked at start-up; ``ctx.options`` and ``ctx.table`` are then
    instances of these Structs. A job of a handler that ``needs`` something runs after the
    unfinished jobs of the same task whose handlers ``provide`` it (up to the route's
    ``after_wait_s``).
    """
    for kind, declared in (("options", options), ("table", table)):
        if declared is not None and not (isinstance(declared, type)
                                         and issubclass(declared, msgspec.Struct)):
            raise TypeError(f"handler {kind} must be a msgspec.Struct subclass, not {declared!r}")
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("a handler's max_attempts must be at least 1")
    spec = HandlerSpec(options=options, table=table, provides=frozenset(provides),
                       needs=frozenset(needs), max_attempts=max_attempts)

    def declare(function: F) -> F:
        setattr(function, _SPEC, spec)
        return function

    return declare


def spec_of(function: object) -> HandlerSpec:
    """What ``function`` declared with :func:`handler`, or :data:`UNDECLARED`."""
    spec = getattr(function, _SPEC, UNDECLARED)
    return spec if isinstance(spec, HandlerSpec) else UNDECLARED


class Registry:
    """Handlers by name, each with its declaration and where it came from (for errors)."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str, handler: Any, *, origin: str) -> None:
        if name.startswith(CORE):
            raise SettingsError(f"handler {name!r} from {origin}: names starting with "
                                f"{CORE!r} are the receiver's own jobs'")
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
        """The handler ``name``: a registered one, or one of the receiver's own jobs
        (:data:`receiver.confirmation.CORE_HANDLERS`), which no route names."""
        found = self._handlers.get(name)
        if found is None and name.startswith(CORE):
            return CORE_HANDLERS.get(name)
        return found

    def spec(self, name: str) -> HandlerSpec:
        """What the handler ``name`` declared (:data:`UNDECLARED` for an unknown name)."""
        return spec_of(self._handlers.get(name))

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def providers(self, needs: Iterable[str]) -> frozenset[str]:
        """The handlers that provide any of ``needs``."""
        wanted = frozenset(needs)
        return frozenset(name for name in self._handlers if self.spec(name).provides & wanted)

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
            loaded = ep.load()
        except Exception as exc:
            raise SettingsError(
                f"handler entry point {ep.name} = {ep.value} cannot be loaded: {exc}"
            ) from exc
        dist = ep.dist.name if ep.dist is not None else "?"
        registry.register(ep.name, loaded, origin=f"entry point {ep.value} ({dist})")
    tables: dict[str, Any] = convert(config.get("handlers", {}), dict[str, Any], path="handlers")
    for name, table in tables.items():
        path: str = convert(table, HandlerPath, path=f"handlers.{name}").path
        registry.register(name, import_path(path, where=f"handlers.{name}.path"),
                          origin=f"config {path}")
    return registry


def import_path(path: str, *, where: str) -> Any:
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    # Importing runs the module: any failure of it (a SyntaxError, its own RuntimeError) is
    # the config's to name, as an entry point's is.
    except Exception as exc:
        raise SettingsError(f"{where}: {path!r} cannot be imported: "
                            f"{type(exc).__name__}: {exc}") from exc
    return target
