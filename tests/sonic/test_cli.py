"""``sonic-receiver sandbox``: options, and one real process answering over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from receiver.sonic.cli import build_config, build_parser, main
from receiver.sonic.contract import WebhookEvent
from receiver.sonic.sandbox import EventDrop, MediaFaultKind, Speed


def _config(*argv: str) -> object:
    return build_config(build_parser().parse_args(list(argv)))


def test_options_make_the_config() -> None:
    config = build_config(
        build_parser().parse_args(
            [
                "--api-key", "a", "--api-key", "b", "--credits", "30", "--speed", "instant",
                "--seed", "9", "--drop-event", "1:song.completed", "--duplicate", "0.5",
                "--media-fault", "status_500", "--media-fault-times", "1", "--legacy-signature",
            ]
        )
    )
    assert dict(config.api_keys) == {"a": 30, "b": 30}
    assert (config.speed, config.seed, config.legacy_signature) == (Speed.INSTANT, 9, True)
    assert config.faults.drop_events == (EventDrop(task=1, event=WebhookEvent.COMPLETED),)
    assert config.faults.duplicate == 0.5
    assert config.faults.media is not None
    assert (config.faults.media.kind, config.faults.media.times) == (MediaFaultKind.STATUS_500, 1)


def test_spell_options_make_the_spellings_of_answers() -> None:
    config = build_config(
        build_parser().parse_args(["--spell", "succeeded=completed", "--spell", "failed=error"])
    )
    assert dict(config.faults.spellings) == {"succeeded": "completed", "failed": "error"}


def test_defaults_are_one_key_demo_speed() -> None:
    config = build_config(build_parser().parse_args([]))
    assert dict(config.api_keys) == {"sandbox-key": 1000}
    assert config.speed is Speed.DEMO


def test_a_whole_fault_setup_from_a_file(tmp_path: Path) -> None:
    setup = {"global": {"reorder": 1.0}, "keys": {"k": {"fail_tasks": 1.0}}}
    path = tmp_path / "faults.json"
    path.write_text(json.dumps(setup))
    config = build_config(build_parser().parse_args(["--faults", f"@{path}"]))
    assert config.faults.reorder == 1.0
    assert config.key_faults["k"].fail_tasks == 1.0


@pytest.mark.parametrize(
    "argv",
    [
        ["--duplicate", "2"],
        ["--drop-event", "song.completed"],
        ["--drop-event", "1:song.done"],
        ["--media-fault", "redirect"],
        ["--faults", "{not json"],
        ["--credits", "-1"],
        ["--spell", "done=completed"],
        ["--spell", "succeeded"],
    ],
)
def test_bad_options_stop_with_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.slow
def test_the_command_serves_until_interrupted() -> None:
    """A real ``sonic-receiver sandbox`` process answers create and poll, then stops on SIGINT."""
    command = [
        sys.executable, "-m", "receiver", "sandbox", "--port", "0", "--speed", "instant",
        "--api-key", "cli-key", "--credits", "20", "--log-format", "json",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stderr is not None
            url = ""
            deadline = time.monotonic() + 20
            while not url and time.monotonic() < deadline:
                line = process.stderr.readline()
                if not line:
                    break
                if '"sandbox_listening"' in line:
                    url = json.loads(line)["url"]
            assert url, "the sandbox did not say where it listens"
            headers = {"Authorization": "Bearer cli-key"}
            body = {"custom_mode": True, "mv": "sonic-v4"}
            with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
                task_id = http.post("/api/v1/sonic/create", json=body).json()["task_id"]
                clips = http.get(f"/api/v1/sonic/task/{task_id}").json()["data"]
                assert [c["state"] for c in clips] == ["succeeded", "succeeded"]
                assert http.post("/api/v1/sonic/create", json=body).status_code == 403
            process.send_signal(signal.SIGINT)
            assert '"sandbox_stopped"' in process.stderr.read()
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()


def test_link_fault_options_make_the_link_faults() -> None:
    config = build_config(build_parser().parse_args([
        "--expire-links", "20", "--placeholder-for", "5", "--placeholder-on-failed",
        "--media-fault", "html", "--media-fault-times", "1"]))
    links = config.faults.links
    assert (links.expire_s, links.placeholder_s, links.placeholder_failed) == (20.0, 5.0, True)
    assert config.faults.media is not None
    assert config.faults.media.kind is MediaFaultKind.HTML


def test_the_demos_sandbox_faults_keep_its_dropped_webhook_and_are_checked(
    tmp_path: Path,
) -> None:
    """``scripts/demo --sandbox-faults``: a setup in the sandbox's one shape; the sandbox gets
    it with the demo's own drop added to the global config, and a bad one is refused."""
    from receiver.demo import sandbox_faults

    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"global": {"links": {"expire_s": 2}, "media": {"kind": "html"}},
                                "keys": {"other": {"drop": 1.0}}}))
    config = build_config(build_parser().parse_args(
        ["--seed", "3", "--faults", sandbox_faults(f"@{path}", 3)]))
    assert config.faults.links.expire_s == 2.0
    assert config.faults.drop_events == (EventDrop(task=1, event=WebhookEvent.COMPLETED),)
    assert config.faults.media is not None
    assert config.faults.media.kind is MediaFaultKind.HTML
    assert config.key_faults["other"].drop == 1.0
    with pytest.raises(ValueError, match=r"global: links\.expire_s"):
        sandbox_faults('{"global": {"links": {"expire_s": -1}}}', 3)
    with pytest.raises(ValueError, match=r"unknown field\(s\) links: the fault setup is"):
        sandbox_faults('{"links": {"expire_s": 2}}', 3)
