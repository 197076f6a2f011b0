"""The config file checked whole before anything starts: every command stops at once with one
line naming the bad key's path; ``config check`` says the same for a deploy pipeline; ``config
schema`` is a JSON Schema that misspelt files do not fit (the README's examples, which fit it, are
checked in ``tests/test_readme_examples.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.processes import ROOT

GOOD = """\
[receiver]
webhook_secret = "s3cret"
max_body_bytes = 2097152

[[routes]]
name = "keep"
on = ["task.succeeded"]
handlers = [{ name = "download_audio", options = { image = true } }]

[[routes]]
name = "tell"
on = ["task.succeeded", "task.failed"]
handlers = [
  "follow_up",
  { name = "notify", options = { targets = ["json://127.0.0.1:9/hook"] } },
  { name = "forward", options = { url = "https://app.example/hook", secret_env = "FWD" } },
]

[worker]
concurrency = 4
backoff = [1, 5]

[retention]
older_than = "90d"

[notify]
title_template = "Done: ${title}"
"""
# (what is wrong, the file, the one line): each a mistake the schema must catch by its path
BAD = [
    ("misspelt handler option",
     GOOD.replace("options = { image = true }", "options = { imgae = true }"),
     "routes[0].handlers[0].options.imgae: unknown option"),
    ("misspelt route event",
     GOOD.replace('on = ["task.succeeded"]', 'on = ["task.succeded"]'),
     "routes[0].on[0]: unknown trigger 'task.succeded' (choose from task.failed, "
     "task.streaming, task.succeeded)"),
    ("option of the wrong type",
     GOOD.replace("options = { image = true }", 'options = { image = "yes" }'),
     "routes[0].handlers[0].options.image: expected true or false, got 'yes'"),
    ("unknown worker key",
     GOOD.replace("concurrency = 4", "concurency = 4"),
     "worker.concurency: unknown key"),
    ("ill-typed worker value",
     GOOD.replace("concurrency = 4", 'concurrency = "x"'),
     "worker.concurrency: expected a positive integer, got 'x'"),
    ("misspelt handler name",
     GOOD.replace('"follow_up"', '"folow_up"'),
     "routes[1].handlers[0]: unknown handler 'folow_up' (choose from download_audio, "
     "follow_up, forward, notify)"),
    ("misspelt handler table",
     GOOD.replace("[notify]", "[notfy]"),
     "notfy: unknown table"),
]


def run(*args: str, cwd: Path, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """``sonic-receiver ARGS`` as a deployment runs it, in ``cwd``."""
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "receiver", *args], cwd=cwd,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=60, check=False)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def file_schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    done = run("config", "schema", cwd=tmp_path_factory.mktemp("schema"))
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(document)
    return document


def errors(document: dict[str, Any], text: str) -> list[str]:
    """What ``jsonschema`` finds wrong with the TOML ``text`` (nothing: valid)."""
    validator = jsonschema.Draft202012Validator(document)
    return [e.message for e in validator.iter_errors(tomllib.loads(text))]


@pytest.mark.slow
@pytest.mark.parametrize(("what", "text", "line"), BAD, ids=[b[0] for b in BAD])
def test_serve_stops_at_once_with_one_line_naming_the_key(
    tmp_path: Path, what: str, text: str, line: str,
) -> None:
    """Before the database is opened: the file is checked whole, in seconds."""
    (tmp_path / "bad.toml").write_text(text)
    started = time.monotonic()
    done = run("serve", "--config", "bad.toml", "--db", "r.db", cwd=tmp_path)
    assert one_error_line(done) == f"sonic-receiver: error: {line}"
    assert time.monotonic() - started < 10
    assert not (tmp_path / "r.db").exists()
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("what", "text", "line"), BAD, ids=[b[0] for b in BAD])
def test_config_check_says_the_same(tmp_path: Path, what: str, text: str, line: str) -> None:
    (tmp_path / "bad.toml").write_text(text)
    done = run("config", "check", "bad.toml", cwd=tmp_path)
    assert one_error_line(done) == f"sonic-receiver: error: {line}"


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["worker"], ["migrate"], ["prune", "--older-than", "1d"], ["replay", "redispatch"],
])
def test_every_command_checks_the_file_first(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "bad.toml").write_text(BAD[0][1])
    done = run(*command, "--config", "bad.toml", "--db", "r.db", cwd=tmp_path)
    prefix = "sonic-receiver replay" if command[0] == "replay" else "sonic-receiver"
    assert one_error_line(done) == f"{prefix}: error: {BAD[0][2]}"
    assert not (tmp_path / "r.db").exists()


# (what is odd, the file's bytes, other files beside it, the one line): never a traceback
HOSTILE: list[tuple[str, bytes, dict[str, bytes], str]] = [
    ("not UTF-8", b"\xff\xfe[receiver]\n", {}, "config file bad.toml cannot be read: it is not "
     "UTF-8 (byte 0)"),
    ("nested past the parser's recursion", b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", {},
     "config file bad.toml cannot be read: it nests too deeply"),
    ("a NUL in the database's path", b'[receiver]\ndb = "a\\u0000b"\n', {},
     "receiver.db: expected a path or a postgresql:// URL, got 'a\\x00b': it holds a NUL"),
    ("a NUL in the media's path", b'[receiver]\nmedia = "m\\u0000"\n', {},
     "receiver.media: expected a path, file:///path, or s3://..., gs://..., az://..., got "
     "'m\\x00': it holds a NUL"),
    ("a NUL in a token file's name", b'[receiver]\nadmin_token_file = "t\\u0000"\n', {},
     "receiver.admin_token_file: cannot read 't\\x00': embedded null byte"),
    ("a token file not UTF-8", b'[receiver]\nadmin_token_file = "token"\n', {"token": b"\xff"},
     "receiver.admin_token_file: cannot read 'token': 'utf-8' codec can't decode byte 0xff in "
     "position 0: invalid start byte"),
    ("a handler module that fails on import", b'[handlers.x]\npath = "boom:handle"\n',
     {"boom.py": b"raise RuntimeError('boom')\n"},
     "handlers.x.path: 'boom:handle' cannot be imported: RuntimeError: boom"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("what", "data", "beside", "line"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_an_odd_file_is_refused_with_one_line(
    tmp_path: Path, what: str, data: bytes, beside: dict[str, bytes], line: str,
) -> None:
    (tmp_path / "bad.toml").write_bytes(data)
    for name, content in beside.items():
        (tmp_path / name).write_bytes(content)
    done = run("config", "check", "bad.toml", cwd=tmp_path,
               env={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    assert one_error_line(done) == f"sonic-receiver: error: {line}"


@pytest.mark.slow
def test_a_config_file_that_never_ends_is_not_read_to_its_end(tmp_path: Path) -> None:
    done = run("config", "check", "/dev/zero", cwd=tmp_path)
    assert one_error_line(done) == ("sonic-receiver: error: config file /dev/zero cannot be "
                                    "read: it is over 4194304 bytes")


@pytest.mark.slow
def test_prune_reads_its_durations_like_the_retention_table(tmp_path: Path) -> None:
    (tmp_path / "receiver.toml").write_text("")
    done = run("prune", "--older-than", "3x", "--config", "receiver.toml", "--db", "r.db",
               cwd=tmp_path)
    assert one_error_line(done) == ("sonic-receiver: error: --older-than: expected a duration "
                                    "like 90d, 12h or 30m, got '3x'")


@pytest.mark.slow
def test_config_check_passes_a_good_file_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "receiver.toml").write_text(GOOD)
    done = run("config", "check", cwd=tmp_path, env={"RECEIVER_CONFIG": "receiver.toml"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("sonic-receiver: receiver.toml: OK (2 routes; handlers: "
                                   "download_audio, follow_up, forward, notify)")
    assert done.stderr == ""
    assert not (tmp_path / "data").exists()  # nothing opened


@pytest.mark.slow
def test_config_check_names_a_bad_variable_too(tmp_path: Path) -> None:
    (tmp_path / "receiver.toml").write_text(GOOD)
    done = run("config", "check", "receiver.toml", cwd=tmp_path,
               env={"RECEIVER_WORKER_CONCURRENCY": "many"})
    assert one_error_line(done) == ("sonic-receiver: error: RECEIVER_WORKER_CONCURRENCY: "
                                    "expected a positive integer, got 'many'")
    missing = run("config", "check", cwd=tmp_path)
    assert one_error_line(missing) == ("sonic-receiver: error: no config file: give FILE or "
                                       "set RECEIVER_CONFIG")


@pytest.mark.slow
def test_the_schema_takes_the_good_file_and_refuses_each_mistake(
    file_schema: dict[str, Any],
) -> None:
    assert errors(file_schema, GOOD) == []
    for what, text, _ in BAD:
        assert errors(file_schema, text), what


@pytest.mark.slow
def test_the_schema_checks_each_handlers_options_by_its_name(
    file_schema: dict[str, Any],
) -> None:
    """An option valid for one handler is refused under another's name; an undeclared
    handler (a config path) takes any table."""
    route = '[[routes]]\non = "task.failed"\nhandlers = [{{ name = "{}", options = {{ {} }} }}]\n'
    assert errors(file_schema, route.format("notify", 'format = "html"')) == []
    assert errors(file_schema, route.format("download_audio", 'format = "html"'))
    assert errors(file_schema, route.format("download_audio", "max_bytes = 0"))
    assert errors(file_schema, route.format("forward", "")), "forward needs its url"
    assert errors(file_schema, '[[routes]]\non = "task.failed"\nhandlers = ["forward"]\n')
    assert errors(file_schema, '[follow_up]\nmax_depth = 0\n')
    assert errors(file_schema, '[retention]\nolder_than = "3 weeks"\n')


def test_a_handler_table_no_route_runs_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``[follow_up]`` alone does nothing (no route lists ``follow_up``): ``config check``
    passes it and says so; once a route lists the handler, nothing is said."""
    from receiver import cli

    for name in [n for n in os.environ if n.startswith(("RECEIVER_", "SONIC_"))]:
        monkeypatch.delenv(name)
    table = '[follow_up]\nmax_depth = 2\n\n[[follow_up.rules]]\nname = "extend"\n' \
            'task_type = "create_music"\naction = "extend"\n'
    alone, routed = tmp_path / "alone.toml", tmp_path / "routed.toml"
    alone.write_text(table)
    routed.write_text('[[routes]]\non = ["task.succeeded"]\nhandlers = ["follow_up"]\n\n' + table)
    assert cli.main(["config", "check", str(alone)]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[1] == (f"sonic-receiver: {alone}: note: [follow_up] is set but no route lists "
                       "follow_up: list it in a route's handlers, or it does nothing")
    assert cli.main(["config", "check", str(routed)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
