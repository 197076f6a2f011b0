"""Prose that names the project's own files and objects names ones that exist: the READMEs,
docstrings and comments of receiver/, handlers/, scripts/ and tests/, their paths
(``receiver/...py``, ``scripts/demo``) and their references (``:mod:`receiver.x```,
``:class:`receiver.x.Y```)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("receiver", "handlers", "scripts", "tests", "docs")
_PATH = re.compile(rf"(?<![\w/.-])((?:{'|'.join(TOPS)})/[\w./-]*[\w/])")
_ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|exc):`~?((?:receiver|handlers)[\w.]*)`")
_IGNORED = {".pyc"}
_PATTERN = ("NNNN", "*", "{", "<")  # a name's pattern (migrations/NNNN_name.sql), not a file


def _texts() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "scripts" / "benchmarks" / "README.md"]
    for top in ("receiver", "handlers", "scripts", "tests"):
        found += [p for p in (ROOT / top).rglob("*") if p.is_file()
                  and (p.suffix in (".py", ".sql", ".html", ".md") or p.parent.name == "scripts")]
    return sorted(set(found) - {Path(__file__).resolve()})  # this file's examples are missing


def _named_paths(text: str) -> set[str]:
    """Paths of the project a text names: with a suffix, or a script, or a folder."""
    named = set()
    for match in _PATH.finditer(text):
        path = match.group(1).rstrip(".")
        if (Path(path).suffix or path.startswith("scripts/") or path.endswith("/")) and (
                Path(path).suffix not in _IGNORED) and not any(p in path for p in _PATTERN):
            named.add(path)
    return named


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


@pytest.mark.parametrize("text", _texts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_files_a_text_names_exist(text: Path) -> None:
    content = text.read_text(errors="replace")
    missing = sorted(p for p in _named_paths(content) if not (ROOT / p).exists())
    assert missing == []


@pytest.mark.parametrize("text", [p for p in _texts() if p.suffix == ".py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_modules_and_objects_a_docstring_names_exist(text: Path) -> None:
    names = set(_ROLE.findall(text.read_text()))
    assert sorted(n for n in names if not _resolves(n)) == []


def test_a_missing_file_is_noticed() -> None:
    assert _named_paths("see `receiver/storage/store.py` and scripts/demo.") == {
        "receiver/storage/store.py", "scripts/demo"}
    assert not (ROOT / "receiver/storage/store.py").exists()
