"""The README's handler example and its test, run as a plugin author would: written out as
files of their own package, and the test run by pytest in a project of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = re.compile(r"^<!-- readme-example: (\S+) -->\n```python\n(.*?)^```$", re.M | re.S)


def examples() -> dict[str, str]:
    """``{file name: code}`` of the README's marked examples."""
    return dict(EXAMPLE.findall((ROOT / "README.md").read_text()))


def test_the_readme_has_the_handler_example_and_its_test() -> None:
    assert set(examples()) >= {"my_package/archive.py", "test_archive.py"}


@pytest.mark.slow
def test_the_readme_handler_example_passes_its_own_test(tmp_path: Path) -> None:
    for name, code in examples().items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
    (tmp_path / "my_package" / "__init__.py").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_archive.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


TOML = re.compile(r"^```toml\n(.*?)^```$", re.M | re.S)


def test_the_readme_config_examples_pass_the_checks_serve_runs() -> None:
    """Each ``receiver.toml`` example passes the whole file's check (the handler example's
    files aside: they name a package written by the plugin test above), and its alert targets
    the apprise check ``serve`` runs at start."""
    from receiver.alerts import check_targets
    from receiver.schema import load_checked
    from receiver.settings import split_targets

    blocks = [tomllib.loads(b) for b in TOML.findall((ROOT / "README.md").read_text())]
    configs = [b for b in blocks if "project" not in b and "handlers" not in b]
    assert any("alerts" in c for c in configs)
    for config in configs:
        load_checked(config)
        targets = config.get("alerts", {}).get("targets")
        if targets:
            check_targets(split_targets(targets))
