"""Routes from config, and the handler registry: entry points, config paths, clear errors."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Literal

import pytest

from receiver.context import Event, HandlerContext
from receiver.conversion import ConfigError, PositiveInt, Table
from receiver.errors import SettingsError
from receiver.jobs import PermanentError
from receiver.models import Source, Transition
from receiver.registry import (
    ENTRY_POINT_GROUP,
    HandlerSpec,
    Registry,
    handler,
    load_registry,
)
from receiver.routing import DEFAULT_ROUTES, Router, TaskFacts, routes_from_config, split_tags
from receiver.schema import check
from receiver.states import Entity, State


def transition(to: State, entity: Entity = Entity.TASK) -> Transition:
    return Transition(task_id="t", entity=entity, entity_id="t", from_state=None, to_state=to,
                      delivery_id="d", source=Source.WEBHOOK, at=0.0)


FACTS = TaskFacts(task_id="t", task_type="create_music", platform="sonic",
                  tags=split_tags(["Pop, dreamy", None]))


async def sample_handler(event: Event, ctx: HandlerContext) -> None:
    return None


class DeclaredOptions(Table, kw_only=True, frozen=True):
    size: PositiveInt = 1
    mode: Literal["fast", "slow"] = "fast"


@handler(table=DeclaredOptions)
async def tabled_handler(event: Event, ctx: HandlerContext) -> None:
    return None


async def other_handler(event: Event, ctx: HandlerContext) -> None:
    return None


@handler(options=DeclaredOptions)
async def declared_handler(event: Event, ctx: HandlerContext) -> None:
    return None


def declared_registry() -> Registry:
    registry = Registry()
    registry.register("declared", declared_handler, origin="test")
    registry.register("free", sample_handler, origin="test")
    return registry


def test_without_routes_succeeded_tasks_are_downloaded() -> None:
    assert routes_from_config({}) == DEFAULT_ROUTES
    specs = Router(DEFAULT_ROUTES).plan(FACTS, [transition(State.SUCCEEDED)])
    assert [(s.handler, s.trigger) for s in specs] == [("download_audio", "task.succeeded")]
    assert Router(DEFAULT_ROUTES).plan(FACTS, [transition(State.FAILED)]) == []


def test_routes_match_on_trigger_task_type_platform_and_tags() -> None:
    routes = routes_from_config({"routes": [
        {"name": "pop", "on": "task.succeeded", "tags": ["POP"], "handlers": ["a"]},
        {"name": "jazz", "on": ["task.succeeded"], "tags": "jazz", "handlers": ["b"]},
        {"name": "ext", "on": ["task.succeeded"], "task_type": "extend_music",
         "handlers": ["c"]},
        {"name": "nuro", "on": ["task.succeeded"], "platform": ["nuro"], "handlers": ["d"]},
        {"name": "both", "on": ["task.failed", "task.succeeded"],
         "handlers": ["e", {"name": "e", "options": {"x": 1}, "max_attempts": 2}]},
        {"name": "stream", "on": ["task.streaming"], "handlers": ["f"]},
    ]})
    specs = Router(routes).plan(FACTS, [transition(State.SUCCEEDED),
                                        transition(State.SUCCEEDED, Entity.CLIP)])
    assert [(s.route, s.handler, s.key) for s in specs] == [
        ("pop", "a", "t/task.succeeded/pop/a"),
        ("both", "e", "t/task.succeeded/both/e"),
        ("both", "e", "t/task.succeeded/both/e#1"),
    ]
    assert specs[2].options == {"x": 1}
    assert specs[2].max_attempts == 2
    streaming = Router(routes).plan(FACTS, [transition(State.RUNNING)])
    assert [s.handler for s in streaming] == ["f"]


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ({"x": 1}, "routes: expected a list (a table each), got a table"),
        ([{"on": ["task.done"], "handlers": ["a"]}],
         "routes[0].on[0]: unknown trigger 'task.done' (choose from task.failed, "
         "task.streaming, task.succeeded)"),
        ([{"on": [], "handlers": ["a"]}], "routes[0].on: expected one of task.failed, "
         "task.streaming, task.succeeded or a non-empty list of triggers, got []"),
        ([{"on": "task.failed"}], "routes[0].handlers: is required"),
        ([{"on": "task.failed", "handlers": []}],
         "routes[0].handlers: expected a non-empty list of handlers, got []"),
        ([{"on": "task.failed", "handlers": ["a"], "when": 1}], "routes[0].when: unknown key"),
        ([{"on": "task.failed", "handlers": [{"name": "a", "max_attempts": 0}]}],
         "routes[0].handlers[0].max_attempts: expected a positive integer, got 0"),
        ([{"on": "task.failed", "handlers": [{"options": {}}]}],
         "routes[0].handlers[0].name: is required"),
        ([{"name": "x", "on": "task.failed", "handlers": ["a"]},
          {"name": "x", "on": "task.failed", "handlers": ["a"]}],
         "routes[1].name: two routes are named 'x'"),
    ],
)
def test_bad_routes_stop_start_up_with_the_path(routes: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        routes_from_config({"routes": routes})
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("handlers", "message"),
    [
        ([{"name": "declared", "options": {"sizee": 2}}],
         "routes[0].handlers[0].options.sizee: unknown option"),
        ([{"name": "declared", "options": {"size": "2"}}],
         "routes[0].handlers[0].options.size: expected a positive integer, got '2'"),
        (["declard"], "routes[0].handlers[0]: unknown handler 'declard' (choose from "
                      "declared, free)"),
        ([{"name": "fre"}], "routes[0].handlers[0].name: unknown handler 'fre' (choose from "
                            "declared, free)"),
        (["free", {"name": "declared", "options": {"mode": "loud"}}],
         "routes[0].handlers[1].options.mode: unknown value 'loud' (choose from fast, slow)"),
    ],
)
def test_handler_options_are_checked_against_the_handler_declaration(
    handlers: list[object], message: str,
) -> None:
    route = {"on": "task.succeeded", "handlers": handlers}
    with pytest.raises(ConfigError) as caught:
        check({"routes": [route]}, declared_registry())
    assert caught.value.message == message


def test_declared_options_reach_the_handler_typed_and_undeclared_ones_as_written() -> None:
    registry = declared_registry()
    assert registry.spec("declared").options is DeclaredOptions
    assert registry.get("declared") is declared_handler  # the decorator returns the function
    parsed = registry.spec("declared").options_from({"size": 3})
    assert parsed == DeclaredOptions(size=3)
    assert registry.spec("free").options_from({"anything": [1]}) == {"anything": [1]}
    with pytest.raises(PermanentError, match=r"^options\.size: expected a positive integer"):
        registry.spec("declared").options_from({"size": 0})
    routes = [{"on": "task.succeeded", "handlers": [
        "free", {"name": "declared", "options": {"size": 3}},
        {"name": "free", "options": {"x": 1}}]}]
    check({"routes": routes}, registry)  # passes: free takes any table


def test_a_declaration_must_be_a_struct() -> None:
    with pytest.raises(TypeError, match=r"must be a msgspec\.Struct subclass"):
        handler(options=dict)  # type: ignore[arg-type]
    assert registry_spec_of_plain_function().options is None


def registry_spec_of_plain_function() -> HandlerSpec:
    registry = Registry()
    registry.register("plain", sample_handler, origin="test")
    return registry.spec("plain")


def test_a_handler_table_is_checked_and_cannot_take_a_core_name() -> None:
    registry = Registry()
    registry.register("tabled", tabled_handler, origin="test")
    check({"tabled": {"size": 2}}, registry)
    with pytest.raises(ConfigError, match=r"^tabled\.sise: unknown key$"):
        check({"tabled": {"sise": 2}}, registry)
    assert registry.spec("tabled").table_from("tabled", {}) == DeclaredOptions()
    with pytest.raises(PermanentError, match=r"^tabled\.size: expected a positive integer"):
        registry.spec("tabled").table_from("tabled", {"tabled": {"size": -1}})
    clash = Registry()
    clash.register("worker", tabled_handler, origin="test")
    with pytest.raises(SettingsError, match=r"\[worker\] is the receiver's own"):
        check({}, clash)


def test_registry_refuses_duplicates_unknown_names_and_sync_functions() -> None:
    registry = Registry()
    registry.register("a", sample_handler, origin="one")
    registry.register("a", sample_handler, origin="the same function again")  # harmless
    with pytest.raises(SettingsError, match="registered twice: by one and by two"):
        registry.register("a", other_handler, origin="two")
    with pytest.raises(SettingsError, match="not an async function"):
        registry.register("b", print, origin="x")
    with pytest.raises(SettingsError, match="names handler 'missing', which is not registered"):
        registry.check(["a", "missing"])


def test_config_paths_register_handlers_by_name() -> None:
    config = {"handlers": {"mine": {"path": "tests.test_routing:sample_handler"}}}
    registry = load_registry(config, group="no.such.group")
    assert registry.get("mine") is sample_handler
    with pytest.raises(SettingsError, match=r"^handlers\.x\.path: 'tests\.nope:handle' cannot "
                                            "be imported"):
        load_registry({"handlers": {"x": {"path": "tests.nope:handle"}}}, group="none")
    with pytest.raises(SettingsError, match=r"^handlers\.x\.path: is required$"):
        load_registry({"handlers": {"x": {}}}, group="none")
    with pytest.raises(SettingsError, match=r"^handlers\.x\.path: expected a \"module:function\" "
                                            "path, got 'nocolon'$"):
        load_registry({"handlers": {"x": {"path": "nocolon"}}}, group="none")
    with pytest.raises(SettingsError, match=r"^handlers\.x\.pth: unknown key$"):
        load_registry({"handlers": {"x": {"path": "a:b", "pth": 1}}}, group="none")


def _wheel(folder: Path) -> Path:
    """A wheel of a one-module plugin package, written by hand (no build backend needed)."""
    name, version = "sonic_receiver_test_plugin", "1.0"
    dist_info = f"{name}-{version}.dist-info"
    files = {
        "sonic_test_plugin.py": textwrap.dedent('''
            CALLS = []

            async def shout(event, ctx):
                CALLS.append(event.task_id)
        '''),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                               "Tag: py3-none-any\n",
        f"{dist_info}/entry_points.txt": (
            f"[{ENTRY_POINT_GROUP}]\nshout = sonic_test_plugin:shout\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.mark.slow
def test_a_handler_from_a_separately_installed_package_is_found_by_entry_point(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(_wheel(tmp_path))],
        check=True, timeout=120,
    )
    probe = textwrap.dedent('''
        import asyncio, sys
        from receiver.registry import load_registry
        registry = load_registry({})
        handler = registry.get("shout")
        assert handler is not None, registry.names
        import sonic_test_plugin
        asyncio.run(handler(type("E", (), {"task_id": "t-9"})(), None))
        print(sonic_test_plugin.CALLS)
    ''')
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['t-9']"


@handler(provides=["files"])
async def keeper(event: Event, ctx: HandlerContext) -> None:
    return None


@handler(needs=["files"], max_attempts=8)
async def teller(event: Event, ctx: HandlerContext) -> None:
    return None


def ordered_registry() -> Registry:
    registry = Registry()
    for name, function in (("keep", keeper), ("tell", teller), ("other", sample_handler)):
        registry.register(name, function, origin="test")
    return registry


def test_a_job_waits_for_the_handlers_providing_what_it_needs_and_those_its_route_names() -> None:
    """The order is declared, never coded: the router resolves it once, from the handlers'
    declarations and the routes' ``after``."""
    config = {"routes": [
        {"name": "keep", "on": "task.succeeded", "handlers": ["keep", "other"]},
        {"name": "tell", "on": "task.succeeded", "handlers": [
            {"name": "tell", "after": ["other"], "after_wait_s": 60}]},
    ]}
    check(config, ordered_registry())
    router = Router.for_handlers(routes_from_config(config), ordered_registry())
    specs = {s.handler: s for s in router.plan(FACTS, [transition(State.SUCCEEDED)])}
    assert (specs["tell"].waits_for, specs["tell"].wait_s) == (("keep", "other"), 60.0)
    assert specs["keep"].waits_for == specs["other"].waits_for == ()
    assert specs["tell"].max_attempts == 8  # the handler's declared default
    assert specs["keep"].max_attempts == 5  # the worker policy's


def test_after_names_registered_handlers_only() -> None:
    config = {"routes": [{"on": "task.succeeded", "handlers": [
        {"name": "tell", "after": ["kepp"]}]}]}
    with pytest.raises(ConfigError, match=r"^routes\[0\]\.handlers\[0\]\.after\[0\]: "):
        check(config, ordered_registry())
