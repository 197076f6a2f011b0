"""The README as its tests read it: fenced blocks with the marker comment above each, sections,
and tables, parsed by a Markdown parser (markdown-it-py, CommonMark: an indented fence in a
list item is a block like any other).

A marker is an HTML comment on the line just above a fence, ``<!-- readme-KIND: TEXT -->``:

- ``readme-sh: NAME`` names an ``sh`` block that ``tests/test_readme_examples.py`` runs (its
  test is ``test_sh_<NAME>``); ``readme-sh: NAME; not run here: CMD (why)`` leaves out the
  line that starts with ``CMD``; ``readme-sh: not run here: why`` runs none of it.
- ``readme-toml: pyproject.toml`` is a block of another file than ``receiver.toml``;
  ``readme-toml: not started here: why`` is a ``receiver.toml`` that passes the check but
  names something of the reader's own (a token file), so ``serve`` is not started with it.
- ``readme-example: PATH`` is a Python example written out as ``PATH``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_MARKER = re.compile(r"^\s*<!-- (readme-[\w-]+): (.*?) -->\s*$")
NOT_RUN = "not run here:"


@dataclass(frozen=True)
class Block:
    """A fenced block: its language, its text (unindented), the line of its fence (1-based)
    and the marker above it (kind and text), if any."""

    info: str
    text: str
    line: int
    kind: str | None = None
    marker: str = ""

    @property
    def id(self) -> str:
        return f"{self.info or 'text'}@{self.line}"

    @property
    def name(self) -> str | None:
        """An ``sh`` block's name (what runs it), or None when it is not run here."""
        if self.kind != "readme-sh" or self.marker.startswith(NOT_RUN):
            return None
        return self.marker.split(";")[0].strip()

    @property
    def left_out(self) -> list[str]:
        """The commands of a named ``sh`` block that are not run here."""
        _, _, rest = self.marker.partition(f"; {NOT_RUN}")
        return [part.strip().split(" (")[0] for part in rest.split(";") if part.strip()]

    def commands(self) -> str:
        """The block's text without the lines of the commands it leaves out."""
        return "\n".join(line for line in self.text.splitlines()
                         if not any(line.startswith(cmd) for cmd in self.left_out))


@cache
def _tokens(text: str) -> tuple[Token, ...]:
    return tuple(MarkdownIt("commonmark").enable("table").parse(text))


def text() -> str:
    return README.read_text(encoding="utf-8")


def blocks(source: str | None = None) -> list[Block]:
    """Every fenced block of the README (or of ``source``), in order."""
    source = text() if source is None else source
    lines = source.splitlines()
    found = []
    for token in _tokens(source):
        if token.type != "fence" or token.map is None:
            continue
        start = token.map[0]
        above = _MARKER.match(lines[start - 1]) if start > 0 else None
        found.append(Block(info=token.info.strip(), text=token.content, line=start + 1,
                           kind=above[1] if above else None,
                           marker=above[2].strip() if above else ""))
    return found


def sh_block(name: str) -> Block:
    """The ``sh`` block named ``name``; fails if the README has none (or two)."""
    [found] = [b for b in blocks() if b.info == "sh" and b.name == name]
    return found


def section(title: str, source: str | None = None) -> list[Token]:
    """The tokens of the ``##`` section titled ``title`` (up to the next ``##``)."""
    tokens = _tokens(text() if source is None else source)
    inside: list[Token] = []
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h2":
            if inside:
                break
            if tokens[index + 1].content == title:
                inside.append(token)
                continue
        if inside:
            inside.append(token)
    assert inside, f"the README has no section {title!r}"
    return inside


def table(title: str) -> list[list[str]]:
    """The rows of the first table of section ``title``, each a list of its cells' Markdown
    (the header row left out)."""
    rows: list[list[str]] = []
    row: list[str] | None = None
    in_body = False
    tokens = section(title)
    for index, token in enumerate(tokens):
        if token.type == "tbody_open":
            in_body = True
        elif token.type == "tbody_close":
            break
        elif in_body and token.type == "tr_open":
            row = []
        elif in_body and token.type == "tr_close" and row is not None:
            rows.append(row)
        elif in_body and token.type == "td_open" and row is not None:
            row.append(tokens[index + 1].content)
    return rows


def paragraphs(source: str | None = None) -> list[tuple[str, str]]:
    """(section title, text) of each paragraph, list item and table cell of the README, its
    line breaks read as spaces (as Markdown reads them)."""
    found = []
    title = ""
    tokens = _tokens(text() if source is None else source)
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h2":
            title = tokens[index + 1].content
        elif token.type == "inline" and not (index and tokens[index - 1].type == "heading_open"):
            found.append((title, " ".join(token.content.split())))
    return found


def indented_code(source: str | None = None) -> list[str]:
    """The lines of the README's indented (unfenced) code blocks."""
    return [line for token in _tokens(text() if source is None else source)
            if token.type == "code_block" for line in token.content.splitlines()]


def code_names(cell: str) -> list[str]:
    """The ``code`` spans of a Markdown cell (``"`A`, `B`"`` → ``["A", "B"]``)."""
    return re.findall(r"`([^`]+)`", cell)
