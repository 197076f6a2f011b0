"""The whole config file, checked against the handlers installed: what every command runs
before anything else (:func:`load_checked`), what ``sonic-receiver config check`` runs for a
deploy pipeline, and its JSON Schema (``sonic-receiver config schema``).

The file's tables are :mod:`receiver.config`'s; the handlers and their declarations are the
registry's (:mod:`receiver.registry`). :func:`file_type` composes both into one Struct: in a
route, each handler item is a union tagged by ``name`` with one member per registered handler,
whose ``options`` are that handler's declared Struct (any table for one that declares none),
and each declared handler table is a table of the file. :func:`check` converts a whole parsed
file in one pass; any failure is a :class:`receiver.conversion.ConfigError` whose message names
the path of the bad key (``routes[0].handlers[0].options.imgae: unknown option``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

import msgspec

from receiver.config import CORE_TABLES, CoreFile, HandlerItemBase, RouteTable
from receiver.conversion import ConfigError, Text, convert, schema_hook
from receiver.errors import SettingsError
from receiver.registry import ENTRY_POINT_GROUP, Registry, load_registry

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def load_checked(config: Mapping[str, Any], *, group: str = ENTRY_POINT_GROUP) -> Registry:
    """The registry of ``config``, once the whole file is checked against its handlers: what
    every command runs at start, before anything else."""
    registry = load_registry(config, group=group)
    check(config, registry)
    return registry


def file_type(registry: Registry) -> type[CoreFile]:
    """The whole file's Struct for the handlers of ``registry``: each route's handler items
    checked against the handler they name, and each declared handler table as a table."""
    items: list[Any] = []
    bare: list[str] = []  # handlers that may be named alone, without options
    # a route's `after` names registered handlers only
    names: Any = Literal.__getitem__(tuple(registry.names)) if registry.names else Text
    after: Any = list[names]
    extra: list[tuple[str, Any, Any]] = []
    for name in registry.names:
        spec = registry.spec(name)
        options: Any = spec.options if spec.options is not None else dict[str, Any]
        optional = spec.options is None or not _required(spec.options)
        default = msgspec.field(default_factory=options) if optional else msgspec.NODEFAULT
        items.append(msgspec.defstruct(
            f"handler.{name}", [("options", options, default), ("after", after, [])],
            bases=(HandlerItemBase,), tag_field="name", tag=name, kw_only=True,
            module=__name__))
        if optional:
            bare.append(name)
        if spec.table is not None:
            if name in CORE_TABLES:
                raise SettingsError(f"handler {name!r} declares a table, but [{name}] is the "
                                    "receiver's own")
            extra.append((name, spec.table, _default_of(spec.table)))
    members: list[Any] = [Literal[tuple(bare)]] if bare else []
    item: Any = Union[tuple(members + items)] if members or items else Text  # noqa: UP007
    route = msgspec.defstruct("Route", [("handlers", Annotated[list[item], msgspec.Meta(
        min_length=1, description="a non-empty list of handlers")])], bases=(RouteTable,),
        kw_only=True, module=__name__)
    file: Any = msgspec.defstruct(
        "ReceiverConfig", [("routes", list[route] | None, None), *extra],  # type: ignore[valid-type]
        bases=(CoreFile,), kw_only=True, module=__name__)
    return file  # type: ignore[no-any-return]


def check(raw: Mapping[str, Any], registry: Registry) -> CoreFile:
    """The whole parsed file, checked against the schema of ``registry``'s handlers; raises
    :class:`ConfigError` naming the first bad key, or :class:`SettingsError` for a route that
    names a handler that is not registered (and no handler is)."""
    parsed: CoreFile = convert(raw, file_type(registry))
    if not registry.names and parsed.routes:
        raise ConfigError("routes[0].handlers[0]", "unknown handler (none is registered)")
    return parsed


def idle_tables(config: Mapping[str, Any], registry: Registry) -> list[str]:
    """The handlers' own tables the file sets (``[follow_up]``, ``[notify]``) whose handler no
    route runs: such a table does nothing on its own, which start-up and ``config check`` say
    (a route must list the handler). ``config`` is already checked."""
    from receiver.routing import routes_from_config

    routed = {ref.name for route in routes_from_config(config) for ref in route.handlers}
    return [name for name in registry.names
            if name in config and registry.spec(name).table is not None and name not in routed]


def schema(registry: Registry) -> dict[str, Any]:
    """The JSON Schema (2020-12) of the whole file for the handlers of ``registry``."""
    document = msgspec.json.schema(file_type(registry), schema_hook=schema_hook)
    return {"$schema": JSON_SCHEMA_DIALECT, "title": "receiver.toml",
            "description": "The sonic-receiver config file (sonic-receiver config schema)",
            **document}


def _required(type_: type) -> bool:
    return any(field.required for field in msgspec.structs.fields(type_))


def _default_of(type_: type) -> Any:
    return msgspec.NODEFAULT if _required(type_) else msgspec.field(default_factory=type_)


