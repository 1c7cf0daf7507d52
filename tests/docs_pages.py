"""Walking README.md and docs/ as GitHub renders them: prose and fenced code apart,
headings' anchors, relative links; shared by tests/unit/test_docs.py and test_docs_cli.py."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^(`{3,}|~{3,})")
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(`+)(?P<code>.+?)\1")




def prose(text: str) -> Iterator[str]:
    """The lines outside fenced code blocks."""
    fenced = ""
    for line in text.splitlines():
        opened = FENCE.match(line.strip())
        if opened and not fenced:
            fenced = opened.group(1)[0] * 3
        elif opened and fenced and line.strip().startswith(fenced):
            fenced = ""
        elif not fenced:
            yield line


def code_lines(text: str) -> Iterator[tuple[str, str]]:
    """(language, line) of every line inside a fenced code block."""
    fenced, language = "", ""
    for line in text.splitlines():
        opened = FENCE.match(line.strip())
        if opened and not fenced:
            fenced, language = opened.group(1)[0] * 3, line.strip().lstrip("`~").strip()
        elif opened and fenced and line.strip().startswith(fenced):
            fenced = ""
        elif fenced:
            yield language, line


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text (links and code reduced to their text),
    lower-cased, everything but letters, digits, spaces, hyphens and underscores dropped,
    spaces made hyphens."""
    text = LINK.sub(lambda found: found["text"], heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub makes for a page's headings, a repeated one numbered -1, -2…"""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose(path.read_text(encoding="utf-8")):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        base = slug(heading.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> Iterator[str]:
    for line in prose(path.read_text(encoding="utf-8")):
        for found in LINK.finditer(CODE_SPAN.sub("", line)):
            yield found["target"]



def load_script(name: str) -> Any:
    """A script of scripts/ as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
