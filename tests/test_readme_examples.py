"""The README, true to the letter: every example in it is run or checked here.

- The handler example and its test run as a plugin author would run them.
- Every ``toml`` block of a ``receiver.toml`` passes the whole file's check and its JSON
  Schema, and ``serve`` starts with it; the ``pyproject.toml`` one registers the example.
- Every ``sh`` block is run by a ``test_sh_<name>`` here, against the sandbox, with a timeout,
  in a copy of the project (its own ``data/``, the same ``.venv``), or its marker says why not.
- Every setting has a row in the settings table and every row a setting; each is given a valid
  and an invalid value through the command line, and its documented default is its default.
- The lines the README shows a command printing are the lines it prints; each figure names the
  benchmark it comes from and its date.

The README's markers are described in :mod:`tests.readme`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from receiver import cli
from receiver.alerts import check_targets
from receiver.demo import SONG
from receiver.registry import ENTRY_POINT_GROUP
from receiver.schema import idle_tables, load_checked, schema
from receiver.settings import ENV_ALIASES, ENV_KEYS, OTHER_VARIABLES, Settings, load
from tests import readme
from tests.processes import log_events, wait_healthy
from tests.support import free_port
from tests.waiting import wait_until_blocking

ROOT = readme.ROOT
SH_TIMEOUT_S = 300  # one block: a demo on this shared machine takes 20 to 90 s


# ---- the handler example ------------------------------------------------------------------


def examples() -> dict[str, str]:
    """``{file name: code}`` of the README's Python examples."""
    return {b.marker: b.text for b in readme.blocks() if b.kind == "readme-example"}


def test_the_readme_has_the_handler_example_and_its_test() -> None:
    assert set(examples()) >= {"my_package/archive.py", "test_archive.py"}


@pytest.fixture
def example_package(tmp_path: Path) -> Iterator[Path]:
    """A folder holding the README's example files (``my_package/archive.py``...), as a plugin
    author's project would; its modules are forgotten afterwards."""
    folder = tmp_path / "plugin"
    for name, code in examples().items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
    (folder / "my_package" / "__init__.py").write_text("")
    yield folder
    for module in [m for m in sys.modules if m == "my_package" or m.startswith("my_package.")]:
        del sys.modules[module]


@pytest.mark.slow
def test_the_readme_handler_example_passes_its_own_test(example_package: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_archive.py"],
        cwd=example_package, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(example_package)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


# ---- toml blocks --------------------------------------------------------------------------


def configs() -> list[readme.Block]:
    """The README's ``receiver.toml`` examples: every ``toml`` block but another file's."""
    return [b for b in readme.blocks()
            if b.info == "toml" and not (b.kind == "readme-toml" and b.marker.endswith(".toml"))]


def startable() -> list[readme.Block]:
    return [b for b in configs() if b.kind != "readme-toml"]


def test_every_toml_block_is_a_receiver_toml_or_says_what_it_is() -> None:
    """A ``toml`` block is a ``receiver.toml`` example unless its marker names another file;
    one that serve is not started with says why."""
    for block in readme.blocks():
        if block.info == "toml" and block.kind is not None:
            assert block.kind == "readme-toml", block.id
            assert block.marker == "pyproject.toml" or (
                block.marker.startswith("not started here: ")
                and len(block.marker) > len("not started here: ") + 10), block.id
    assert len(configs()) >= 8


@pytest.mark.parametrize("block", configs(), ids=lambda b: b.id)
def test_each_config_example_passes_the_checks_serve_runs(
    block: readme.Block, example_package: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole file checked against the installed handlers (and the example's, importable as
    the README says: on ``PYTHONPATH``), its alert targets as apprise reads them, its JSON
    Schema (``config schema``), and no handler table left without a route that runs it."""
    monkeypatch.syspath_prepend(str(example_package))
    config = tomllib.loads(block.text)
    registry = load_checked(config)
    targets = config.get("alerts", {}).get("targets")
    if targets:
        check_targets(targets)
    validator = jsonschema.Draft202012Validator(schema(registry))
    assert [e.message for e in validator.iter_errors(config)] == []
    assert idle_tables(config, registry) == []


def test_the_pyproject_example_registers_the_example_handler() -> None:
    [block] = [b for b in readme.blocks() if b.marker == "pyproject.toml"]
    entry_points = tomllib.loads(block.text)["project"]["entry-points"]
    assert list(entry_points) == [ENTRY_POINT_GROUP]
    [(name, target)] = entry_points[ENTRY_POINT_GROUP].items()
    module, _, function = target.partition(":")
    assert f"{module.replace('.', '/')}.py" in examples()
    assert f"async def {function}(" in examples()[f"{module.replace('.', '/')}.py"]
    paths = [tomllib.loads(b.text)["handlers"] for b in configs() if "[handlers." in b.text]
    assert paths == [{name: {"path": target}}]  # the config's way names the same handler


def receiver_env(**extra: str) -> dict[str, str]:
    """The environment of a new user's shell: this one without the receiver's own variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RECEIVER_", "SONIC_")) and k not in ("PORT", "WEB_CONCURRENCY",
                                                                        "DATABASE_URL")}
    return {**env, **extra}


@pytest.mark.slow
@pytest.mark.parametrize("block", startable(), ids=lambda b: b.id)
def test_serve_starts_with_each_complete_config_example(
    block: readme.Block, tmp_path: Path, example_package: Path,
) -> None:
    """``serve --config`` with the example as the whole file answers ``/healthz`` and logs no
    warning about it."""
    (tmp_path / "receiver.toml").write_text(block.text)
    port, log = free_port(), tmp_path / "serve.log"
    env = receiver_env(SONIC_WEBHOOK_SECRET="s3cret", RECEIVER_LOG_FORMAT="json",
                       RECEIVER_ADMIN_TOKEN=secrets.token_urlsafe(32),
                       PYTHONPATH=str(example_package))
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--port", str(port), "--config",
             "receiver.toml"], cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        wait_healthy(port, proc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert log_events([log], "receiver_started")
    assert [e for e in log_events([log], "handler_table_unused")] == []


@pytest.mark.slow
def test_a_path_handler_needs_its_package_on_pythonpath(
    tmp_path: Path, example_package: Path,
) -> None:
    """What the README says of ``[handlers.archive]``: without the package importable the
    check stops with one line naming it; with it on ``PYTHONPATH`` the file passes."""
    [block] = [b for b in configs() if "[handlers." in b.text]
    (tmp_path / "receiver.toml").write_text(block.text)

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "receiver", "config", "check", "receiver.toml"],
            cwd=tmp_path, env=receiver_env(**env), capture_output=True, text=True,
            timeout=60, check=False)

    without, with_path = check(), check(PYTHONPATH=str(example_package))
    assert without.returncode == 2
    [line] = without.stderr.strip().splitlines()
    assert line.startswith("sonic-receiver: error: handlers.archive")
    assert "my_package" in line
    assert with_path.returncode == 0, with_path.stderr
    assert "OK" in with_path.stdout


def test_the_error_lines_shown_are_the_ones_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's ``sonic-receiver: error: ...`` examples, printed by ``config check`` for
    the mistakes they name (an option ``imgae``, a trigger ``task.succeded``)."""
    shown = [line.strip() for line in readme.indented_code()
             if line.strip().startswith("sonic-receiver: error:")]
    assert len(shown) == 2
    mistakes = [
        '[[routes]]\non = ["task.succeeded"]\n'
        'handlers = [{ name = "download_audio", options = { imgae = true } }]\n',
        '[[routes]]\non = ["task.succeded"]\nhandlers = ["download_audio"]\n',
    ]
    for name in list(os.environ):
        if name.startswith(("RECEIVER_", "SONIC_")):
            monkeypatch.delenv(name)
    printed = []
    for index, text in enumerate(mistakes):
        (tmp_path / f"{index}.toml").write_text(text)
        assert cli.main(["config", "check", str(tmp_path / f"{index}.toml")]) == 2
        printed.append(capsys.readouterr().err.strip())
    assert printed == shown


# ---- the alerts: their table, deadlines and failure categories ----------------------------


def test_the_alert_rules_table_is_the_rules_defaults() -> None:
    """Each row of *Alerts*' table is a rule of ``[alerts]``; each ``key = value`` it quotes is a
    key of that rule with that default (a table value is an example of the key's shape, which
    the check takes), and the window and cooldown are the rule's."""
    from receiver.config import AlertsTable

    alerts = AlertsTable()
    rows = readme.table("Alerts")
    assert {readme.code_names(row[0])[0] for row in rows} == {
        name for name in AlertsTable.__struct_fields__ if name not in ("enabled", "targets",
                                                                        "every")}
    for row in rows:
        [rule] = readme.code_names(row[0])
        defaults = getattr(alerts, rule)
        for snippet in [c for c in readme.code_names(row[1]) if " = " in c]:
            [(key, value)] = tomllib.loads(snippet).items()
            load_checked({"alerts": {rule: {key: value}}})
            if not isinstance(value, dict):
                assert _seconds(getattr(defaults, key)) == _seconds(value), f"{rule}.{key}"
        for column, key in ((2, "window"), (3, "cooldown")):
            if row[column] != "—":
                [written] = readme.code_names(row[column])
                assert _seconds(getattr(defaults, key)) == _seconds(written), f"{rule}.{key}"


def _seconds(value: object) -> object:
    """A duration as seconds (``"1h"`` → 3600.0); another value as it is."""
    from receiver.conversion import Duration

    if isinstance(value, str) and re.fullmatch(r"\d+[smhd]", value):
        return float(Duration.parse(value))
    return float(value) if isinstance(value, int | float) else value


def test_the_deadlines_paragraph_is_the_defaults() -> None:
    """*Deadlines*: the types' deadlines it names, ``default`` and ``every`` are the defaults;
    the key it shows as an example is one ``[deadlines]`` takes."""
    from receiver.config import DEFAULT_DEADLINES, DeadlinesTable

    [text] = [t for title, t in readme.paragraphs()
              if title == "Alerts" and t.startswith("**Deadlines.**")]
    minutes = {"create_music": 10, "extend_music": 10, "cover_music": 10, "persona_music": 10,
               "concat_music": 5, "extend_upload_music": 15, "cover_upload_music": 15}
    assert re.search(r"`create_music`, `extend_music`, `cover_music`, `persona_music` 10 "
                     r"minutes, `concat_music` 5, the upload tasks 15", text)
    assert {k: v / 60 for k, v in DEFAULT_DEADLINES.items()} == minutes
    snippets = dict(tomllib.loads(c).popitem() for c in readme.code_names(text) if " = " in c)
    load_checked({"deadlines": snippets})
    table = DeadlinesTable()
    assert (_seconds(snippets["default"]), _seconds(snippets["every"])) == (
        float(table.default), float(table.every))
    assert "concat_music" in snippets  # the example of a type's own key


def test_the_failure_categories_are_the_codes() -> None:
    from receiver.failures import FailureCategory

    [text] = [t for title, t in readme.paragraphs()
              if title == "Alerts" and t.startswith("**Why tasks fail.**")]
    named = text.split(" is read into one of ")[1].split(", kept with the task")[0]
    assert set(readme.code_names(named)) == set(FailureCategory)


# ---- sh blocks ----------------------------------------------------------------------------


def sh_blocks() -> list[readme.Block]:
    return [b for b in readme.blocks() if b.info == "sh"]


def test_every_sh_block_is_run_here_or_says_why_not() -> None:
    """Each ``sh`` block has a marker: a name, whose ``test_sh_<name>`` below runs it, or
    ``not run here:`` and why; each command left out of a run block says why too."""
    named = set()
    for block in sh_blocks():
        assert block.kind == "readme-sh", f"{block.id} has no <!-- readme-sh: ... --> marker"
        if block.name is None:
            assert len(block.marker) > len(readme.NOT_RUN) + 10, block.id  # the why
            continue
        named.add(block.name)
        assert f"test_sh_{block.name.replace('-', '_')}" in globals(), block.id
        for left_out in block.marker.split(f"; {readme.NOT_RUN}")[1:]:
            assert re.search(r"\(.{10,}\)", left_out), f"{block.id}: say why {left_out!r}"
    runners = {name.removeprefix("test_sh_").replace("_", "-") for name in globals()
               if name.startswith("test_sh_")}
    assert runners == named  # a runner whose block went away fails too


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project as a new user's clone would run it: ``scripts/`` and
    ``pyproject.toml`` copied, the same ``.venv`` (made by ``scripts/bootstrap``, which the
    scripts then find up to date), and ``data/`` of its own."""
    venv = ROOT / ".venv"
    stamp = venv / ".installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != want:
        pytest.fail(".venv is not up to date with pyproject.toml: run scripts/bootstrap "
                    "(scripts/test does) before these tests")
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copytree(ROOT / "scripts", copy / "scripts",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    (copy / ".venv").symlink_to(venv)
    return copy


@dataclass
class Shell:
    """A block's commands running in bash (``-e``, ``pipefail``: a failing command fails the
    block), in a session of its own so that what it leaves in the background is stopped too."""

    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        else:  # what the block started in the background (moto)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)


def start(commands: str, cwd: Path, env: dict[str, str], log: Path) -> Shell:
    with log.open("ab") as out:
        proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", commands], cwd=cwd,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Shell(proc, log)


def run(commands: str, cwd: Path, env: dict[str, str], log: Path) -> str:
    """Run ``commands`` to the end (within :data:`SH_TIMEOUT_S`); their output, which the
    assertion shows when they fail."""
    shell = start(commands, cwd, env, log)
    try:
        code = shell.proc.wait(timeout=SH_TIMEOUT_S)
    finally:
        shell.stop()
    output = log.read_text()
    assert code == 0, output[-4000:]
    return output


def demo_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if not line.startswith(("bootstrap:", "WARN"))]


@pytest.mark.slow
def test_sh_two_commands(project: Path, tmp_path: Path) -> None:
    """``scripts/demo``: the loop closes, the dropped webhook is recovered by reconciliation,
    and it ends with the files (sizes and durations), the credits spent, the jobs run and the
    notifications received, and exits 0."""
    out = run(readme.sh_block("two-commands").commands(), project, receiver_env(),
              tmp_path / "demo.log")
    assert "(poll)  <- recovered by reconciliation" in out
    assert "credits spent: 32 (create_music 15 + extend_music 15 + concat_music 2)" in out
    assert "jobs run: 9 (9 done)" in out
    assert "notifications received by the local sink: 3" in out
    assert "recovered by reconciliation: yes" in out
    media = project / "data" / "demo" / "media"
    assert len(list(media.rglob("*.wav"))) == 5  # two clips of the song, two of the extension,
    assert not list(media.rglob("*.part"))       # one full song
    assert "cannot read back" not in out  # every WAV was measured through GET /files
    # the servers are gone once it exits: it points to --stay, not to URLs that open nothing
    assert "run scripts/demo --stay" in out
    assert "/ui" not in out
    # the full song lasts as long as the source up to continue_at plus the extension
    song = re.search(r"full song: ([\d.]+) s = .* \(([\d.]+) s\)", out)
    assert song is not None, out[-3000:]
    assert abs(float(song.group(1)) - float(song.group(2))) <= 1.0


@pytest.mark.slow
@pytest.mark.s3
def test_sh_demo_s3(project: Path, tmp_path: Path) -> None:
    """The demo with its songs in S3 (moto), as written but on a free port instead of 5000:
    the summary lists every object with its size, and the full song's duration."""
    block = readme.sh_block("demo-s3").commands()
    assert block.count("5000") == 4  # moto, its comment, the bucket, the endpoint
    out = run(block.replace("5000", str(free_port())), project, receiver_env(),
              tmp_path / "demo-s3.log")
    objects = re.findall(r"^\s+(\d+)\s+(s3://songs/demo/\S+/\S+\.(\w+))$", out, re.M)
    assert sum(1 for _, _, ext in objects if ext == "wav") == 5, out[-3000:]
    assert all(int(size) > 0 for size, _, _ in objects)
    assert re.search(r"full song: [\d.]+ s = the song up to continue_at", out)
    assert "the loop closed: done" in out


@pytest.mark.slow
def test_sh_demo_faults(project: Path, tmp_path: Path) -> None:
    """The demo with links that expire before late webhooks come and a CDN that first answers
    with an HTML page: the downloads refresh their links from get-music, the loop closes."""
    out = run(readme.sh_block("demo-faults").commands(), project, receiver_env(),
              tmp_path / "demo-faults.log")
    assert "the loop closed: done" in out
    assert "recovered by reconciliation: yes" in out
    receiver_log = (project / "data" / "demo" / "receiver.log")
    assert log_events([receiver_log], "links_refreshed")


def sandbox(port: int, key: str, log: Path) -> subprocess.Popen[bytes]:
    """``sonic-receiver sandbox`` with ``key`` and credits, instant."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver", "sandbox", "--port", str(port), "--api-key", key,
             "--credits", "100", "--speed", "instant"],
            env=receiver_env(), stdout=out, stderr=out)

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/_sandbox/health").status_code == 200
        except httpx.TransportError:
            return False

    wait_until_blocking(up, within=60, what="the sandbox to answer")
    return proc


@pytest.mark.slow
def test_sh_for_real(project: Path, tmp_path: Path) -> None:
    """"Running it for real", with what is yours made local: the Sonic API is the sandbox, the
    token file one of the test's, the address loopback and a free port; ``receiver.toml`` is
    the README's first routes example. The rest runs as written (``...`` is a valid secret and
    key). Then the admin API answers with the token, and ``POST /tasks`` reaches the API."""
    block = readme.sh_block("for-real").commands()
    port, api_port = free_port(), free_port()
    token_file = tmp_path / "receiver-admin"
    token_file.write_text(secrets.token_urlsafe(32))
    local = {"SONIC_API_BASE_URL=...": f"SONIC_API_BASE_URL=http://127.0.0.1:{api_port}",
             "/run/secrets/receiver-admin": str(token_file),
             "--host 0.0.0.0 --port 8000": f"--host 127.0.0.1 --port {port}"}
    for mine, here in local.items():
        assert block.count(mine) == 1, mine
        block = block.replace(mine, here)
    [routes] = [b for b in configs() if '[reconcile]' in b.text]
    (project / "receiver.toml").write_text(routes.text)
    api = sandbox(api_port, "...", tmp_path / "sandbox.log")
    shell = start(block, project, receiver_env(), tmp_path / "serve.log")
    try:
        wait_healthy(port, shell.proc, shell.log)
        token = token_file.read_text()
        [announced] = log_events([shell.log], "admin_api")
        assert announced["how"] == (
            f"admin API: http://127.0.0.1:{port}/tasks (Authorization: Bearer <token from "
            f"{token_file}>), e.g. curl -H \"Authorization: Bearer $(cat {token_file})\" "
            f"http://127.0.0.1:{port}/jobs")
        base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/jobs").status_code == 401
        assert httpx.get(f"{base}/jobs", headers=auth).status_code == 200
        created = httpx.post(f"{base}/tasks", headers=auth, timeout=30, json=SONG)
        assert created.status_code == 201, created.text
    finally:
        shell.stop()
        api.terminate()
        api.wait(timeout=60)


@pytest.mark.slow
def test_sh_signed_delivery(project: Path, tmp_path: Path) -> None:
    """``scripts/serve`` (on a free ``PORT``), then the signed test delivery as written but
    for the port: recorded, then a duplicate when sent again, and the task as the README's
    comments say. ``scripts/serve`` says where its secret and token are, and the ``admin
    API:`` line is the README's."""
    port = free_port()
    server = start("scripts/serve", project, receiver_env(PORT=str(port)), tmp_path / "serve.log")
    try:
        wait_healthy(port, server.proc, server.log)
        said = server.log.read_text()
        assert "serve: webhook secret from data/webhook-secret" in said
        assert ('serve: admin token in data/admin-token (curl -H "Authorization: Bearer '
                f'$(cat data/admin-token)" localhost:{port}/jobs)') in said
        [line] = [b.text.strip() for b in readme.blocks() if b.text.startswith("admin API:")]
        [announced] = log_events([server.log], "admin_api")
        assert announced["how"] == line.replace(":8000/", f":{port}/")
        block = readme.sh_block("signed-delivery").commands()
        assert block.count("localhost:8000") == 2
        block = block.replace("localhost:8000", f"localhost:{port}")
        answers = [list(_json_values(run(block, project, receiver_env(), tmp_path / f"{n}.log")))
                   for n in range(2)]
    finally:
        server.stop()
    comments = [line.removeprefix("# ") for line in readme.sh_block("signed-delivery").text
                .splitlines() if line.startswith("# ")]
    assert json.loads(comments[0]) == answers[0][0]
    assert comments[1].startswith("the same again: ")
    assert '"status":"duplicate"' in comments[1]
    assert answers[1][0] == {**answers[0][0], "status": "duplicate"}
    shown = {"task", *comments[2].removeprefix("the task, ").split(", ")}
    for _, task in answers:
        assert shown <= set(task)
        assert task["task"]["state"] == "succeeded"


def _json_values(text: str) -> Iterator[Any]:
    """The JSON values ``curl -s`` printed one after another (no newline between them)."""
    decoder, at = json.JSONDecoder(), 0
    text = text.strip()
    while at < len(text):
        value, at = decoder.raw_decode(text, at)
        yield value
        while at < len(text) and text[at].isspace():
            at += 1


def test_the_replay_synopsis_names_only_real_options() -> None:
    """The replay block is a synopsis, not run: each option it shows is one of the command's."""
    from receiver.replay import build_parser

    [block] = [b for b in sh_blocks() if "synopsis" in b.marker]
    [commands] = [a for a in build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction)]
    for line in block.text.splitlines():
        script, command, *rest = line.split()
        assert (ROOT / script).exists()
        assert os.access(ROOT / script, os.X_OK)
        parser = commands.choices[command]
        shown = set(re.findall(r"--[\w-]+", " ".join(rest)))
        assert shown <= set(parser._option_string_actions), line


# ---- the settings table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A setting given a ``valid`` value (``seen`` reads its effect from the settings) and an
    ``invalid`` one (refused with one line starting with ``error``)."""

    valid: str
    expected: object
    invalid: str
    error: str
    seen: Callable[[Settings], object]


TOKEN = "Xq3vLp9sWm2bRt7yKd4nHf8c"  # 24 characters, 20 different ones: a token start-up takes
CASES: dict[str, Case] = {
    "SONIC_WEBHOOK_SECRET": Case("new, old", ("new", "old"), " , ",
                                 "SONIC_WEBHOOK_SECRET: holds no secret",
                                 lambda s: s.webhook_secrets),
    "RECEIVER_DB": Case("postgresql://u:p@db.example/r", "postgresql://u:p@db.example/r",
                        "mysql://db.example/r", "RECEIVER_DB: unknown database scheme 'mysql'",
                        lambda s: s.db_url or s.db_path),
    "DATABASE_URL": Case("postgresql://u:p@db.example/r", "postgresql://u:p@db.example/r",
                         "mysql://db.example/r", "DATABASE_URL: unknown database scheme",
                         lambda s: s.db_url),
    "RECEIVER_DB_SYNCHRONOUS": Case("full", "full", "off", "RECEIVER_DB_SYNCHRONOUS: unknown",
                                    lambda s: s.db_synchronous),
    "RECEIVER_DB_LOCK_TIMEOUT_S": Case("2.5", 2.5, "-1", "RECEIVER_DB_LOCK_TIMEOUT_S: expected",
                                       lambda s: s.db_lock_timeout_s),
    "RECEIVER_MEDIA": Case("s3://songs/demo", "s3://songs/demo", "ftp://h/m",
                           "RECEIVER_MEDIA: 'ftp' is not a media store",
                           lambda s: s.media_url or s.media_dir),
    "RECEIVER_MEDIA_DIR": Case("/srv/media", Path("/srv/media"), "s3://songs",
                               "RECEIVER_MEDIA_DIR: 's3://songs' is a URL, not a folder",
                               lambda s: s.media_dir),
    "RECEIVER_MAX_BODY_BYTES": Case("2048", 2048, "big", "RECEIVER_MAX_BODY_BYTES: expected a "
                                    "positive integer, got 'big'", lambda s: s.max_body_bytes),
    "RECEIVER_SIGNATURE_TOLERANCE_S": Case("60", 60, "-1", "RECEIVER_SIGNATURE_TOLERANCE_S: "
                                           "expected", lambda s: s.signature_tolerance_s),
    "RECEIVER_SCHEMES": Case("standard,legacy", ("standard", "legacy"), "hmac",
                             "RECEIVER_SCHEMES: unknown signature scheme 'hmac'",
                             lambda s: s.schemes),
    "RECEIVER_ADMIN_TOKEN": Case(TOKEN, TOKEN, "changeme-changeme-changeme",
                                 "RECEIVER_ADMIN_TOKEN: looks like a placeholder",
                                 lambda s: s.admin_token),
    "RECEIVER_ADMIN_TOKEN_FILE": Case("@token", TOKEN, "/nonexistent/token",
                                      "RECEIVER_ADMIN_TOKEN_FILE: cannot read",
                                      lambda s: s.admin_token),
    "RECEIVER_INSECURE_OPEN_ADMIN": Case("1", True, "maybe",
                                         "RECEIVER_INSECURE_OPEN_ADMIN: must be 1 or 0",
                                         lambda s: s.insecure_open_admin),
    "RECEIVER_CONFIG": Case("@config", "@config", "/nonexistent/receiver.toml",
                            "RECEIVER_CONFIG: config file /nonexistent/receiver.toml does not",
                            lambda s: s.config_file),
    "RECEIVER_PUBLIC_URL": Case("https://r.example/", "https://r.example", "r.example",
                                "RECEIVER_PUBLIC_URL: expected an http(s) URL",
                                lambda s: s.public_url),
    "RECEIVER_TRUSTED_PROXIES": Case("10.0.0.0/8, fd00::/8", ("10.0.0.0/8", "fd00::/8"),
                                     "proxy.example", "RECEIVER_TRUSTED_PROXIES: 'proxy.example'",
                                     lambda s: s.trusted_proxies),
    "FORWARDED_ALLOW_IPS": Case("10.0.0.5", ("10.0.0.5/32",), "proxy.example",
                                "FORWARDED_ALLOW_IPS: 'proxy.example'",
                                lambda s: s.trusted_proxies),
    "RECEIVER_WORKER": Case("off", "off", "thread", "RECEIVER_WORKER: unknown value 'thread'",
                            lambda s: s.worker),
    "RECEIVER_WORKER_CONCURRENCY": Case("4", 4, "0", "RECEIVER_WORKER_CONCURRENCY: expected a "
                                        "positive integer", lambda s: s.worker_concurrency),
    "RECEIVER_WEB_RESTART_LIMIT_S": Case("60", 60.0, "soon", "RECEIVER_WEB_RESTART_LIMIT_S: "
                                         "expected", lambda s: s.web_restart_limit_s),
    "SONIC_API_BASE_URL": Case("https://api.example/", "https://api.example", "api.example",
                               "SONIC_API_BASE_URL: expected an http(s) URL",
                               lambda s: s.sonic_api_base_url),
    "SONIC_API_KEY": Case("k-123", "k-123", "two words",
                          "SONIC_API_KEY: expected a key without spaces",
                          lambda s: s.sonic_api_key),
    "RECEIVER_ALERT_TARGETS": Case("json://127.0.0.1:9/a, ntfy://ntfy.example/t",
                                   ("json://127.0.0.1:9/a", "ntfy://ntfy.example/t"),
                                   "nope://x", "RECEIVER_ALERT_TARGETS / [alerts] targets:",
                                   lambda s: s.alert_targets),
    "RECEIVER_LOG_FORMAT": Case("json", "json", "xml", "RECEIVER_LOG_FORMAT: unknown value",
                                lambda s: s.log_format),
    "RECEIVER_LOG_LEVEL": Case("DEBUG", "debug", "loud", "RECEIVER_LOG_LEVEL: unknown value",
                               lambda s: s.log_level),
    "RECEIVER_LOG_LEVEL_THIRD_PARTY": Case("error", "error", "loud",
                                           "RECEIVER_LOG_LEVEL_THIRD_PARTY: unknown value",
                                           lambda s: s.log_level_third_party),
    "RECEIVER_HEADER_TIMEOUT_S": Case("2.5", 2.5, "0", "RECEIVER_HEADER_TIMEOUT_S: expected",
                                      lambda s: s.header_timeout_s),
    "RECEIVER_BODY_TIMEOUT_S": Case("5", 5.0, "x", "RECEIVER_BODY_TIMEOUT_S: expected",
                                    lambda s: s.body_timeout_s),
    "RECEIVER_KEEPALIVE_TIMEOUT_S": Case("1", 1.0, "-5", "RECEIVER_KEEPALIVE_TIMEOUT_S: expected",
                                         lambda s: s.keepalive_timeout_s),
    "RECEIVER_MAX_CONNECTIONS": Case("50", 50, "0", "RECEIVER_MAX_CONNECTIONS: expected",
                                     lambda s: s.max_connections),
    "RECEIVER_HTTP_PARSER": Case("H11", "h11", "llhttp", "RECEIVER_HTTP_PARSER: unknown value",
                                 lambda s: s.http_parser),
    "PORT": Case("8080", 8080, "abc", "PORT: expected a port number", lambda s: s.port),
    "WEB_CONCURRENCY": Case("2", 2, "0", "WEB_CONCURRENCY: expected a positive integer, got '0'",
                            lambda s: s.web_concurrency),
}


def table_rows() -> dict[str, list[str]]:
    """The settings table, by variable: a row naming two (`A`, `B`) is a row of each."""
    return {name: row for row in readme.table("Configuration")
            for name in readme.code_names(row[0])}


def test_every_setting_has_a_row_and_every_row_a_setting() -> None:
    """The variables the settings read (:data:`receiver.settings.ENV_KEYS`, their other names
    and the rest) are the table's, and each has its valid and invalid values below."""
    read = set(ENV_KEYS) | set(ENV_ALIASES) | set(OTHER_VARIABLES)
    assert set(table_rows()) == read
    assert set(CASES) == read


def test_each_file_key_is_named_as_the_readme_says() -> None:
    """The ``[receiver]`` key of a variable is its name in lower case without ``RECEIVER_``,
    but ``webhook_secret`` for ``SONIC_WEBHOOK_SECRET``; the table has no other keys."""
    from receiver.config import ReceiverTable

    for variable, key in ENV_KEYS.items():
        assert key == ("webhook_secret" if variable == "SONIC_WEBHOOK_SECRET"
                       else variable.lower().removeprefix("receiver_")), variable
    assert set(ReceiverTable.__struct_fields__) == set(ENV_KEYS.values())


def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """A new user's environment with the webhook secret, a config file and ``name=value``
    (``@token``, ``@config``: a file holding a token, a config file)."""
    for variable in list(os.environ):
        if variable.startswith(("RECEIVER_", "SONIC_")) or variable in (
                "PORT", "WEB_CONCURRENCY", "DATABASE_URL", "FORWARDED_ALLOW_IPS"):
            monkeypatch.delenv(variable)
    config = tmp_path / "receiver.toml"
    config.write_text("routes = []\n")
    (tmp_path / "token").write_text(TOKEN + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECEIVER_CONFIG", str(config))
    if name != "SONIC_WEBHOOK_SECRET":
        monkeypatch.setenv("SONIC_WEBHOOK_SECRET", "s3cret")
    monkeypatch.setenv(name, {"@token": str(tmp_path / "token"),
                              "@config": str(config)}.get(value, value))


@pytest.mark.parametrize("name", sorted(table_rows()))
def test_each_setting_takes_a_valid_value_and_refuses_an_invalid_one(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the command line, as start-up reads it: a valid value passes ``config check``
    and has its effect; an invalid one stops it with one line naming the variable, status 2."""
    case = CASES[name]
    _environment(tmp_path, monkeypatch, name, case.valid)
    assert cli.main(["config", "check"]) == 0, capsys.readouterr().err
    expected = tmp_path / "receiver.toml" if case.expected == "@config" else case.expected
    assert _plain(case.seen(load())) == _plain(expected)
    capsys.readouterr()
    _environment(tmp_path, monkeypatch, name, case.invalid)
    assert cli.main(["config", "check"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"sonic-receiver: error: {case.error}"), line


@pytest.mark.parametrize("name", sorted(table_rows()))
def test_each_documented_default_is_the_default(name: str) -> None:
    """The table's default column, against the settings of an environment that sets nothing
    but the webhook secret (which has no default: without it, start-up stops)."""
    default = table_rows()[name][1]
    if name == "SONIC_WEBHOOK_SECRET":
        assert default == "— (required)"
        with pytest.raises(Exception, match="SONIC_WEBHOOK_SECRET is not set"):
            load({})
        return
    seen = _plain(CASES[name].seen(load({"SONIC_WEBHOOK_SECRET": "s3cret"})))
    if default == "unset":
        assert seen in (None, ""), name
    else:
        [written] = readme.code_names(default)
        assert seen == _plain(written.removeprefix("./")), name


def _plain(value: object) -> object:
    """A setting's value as the table writes it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return None if value is None else str(value)


# ---- figures ------------------------------------------------------------------------------

_FIGURE = re.compile(r"\d[\d,.]*\s?(?:ms|µs|/s)\b")
_DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
BENCHMARKS = ("ingest", "dispatch", "download", "reconcile", "media")


def test_each_figure_names_its_benchmark_and_its_date() -> None:
    """In *Performance*, each measured part (``**ingest**``...) is a benchmark whose run a
    paragraph names (``scripts/bench``, the benchmark, a date); elsewhere, a paragraph that
    quotes a time or a rate sends the reader there, or names its run itself."""
    found = readme.paragraphs()
    performance = [text for title, text in found if title == "Performance"]
    parts = {p for text in performance for p in re.findall(r"^\*\*(\w+)\*\*", text)}
    assert parts, "no measured part in Performance"
    for part in parts:
        assert part in BENCHMARKS, part
        assert any("scripts/bench" in text and part in text and _DATE.search(text)
                   for text in performance), f"{part}: which run, on which day?"
    for title, text in found:
        if title != "Performance" and _FIGURE.search(text):
            assert "*Performance*" in text or ("scripts/bench" in text and _DATE.search(text)), \
                f"{title}: {text[:200]}"
