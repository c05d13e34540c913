"""The documentation stands on its own: every link in README.md and docs/*.md, and every
``docs/<page>.md#anchor`` the code cites, points to a file of the repository and to a heading
that exists; nothing cites the method or design notes that used to live outside it."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# Where the code, presets, scripts and tests cite the docs.
CITING_DIRS = ("ltray", "scripts", "search_spaces", "tests")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".sh"}

# Citations of documents outside the repository (split so that this file does not match them).
FORBIDDEN = (
    "METHODS" + " §",
    "../shared/" + "METHODS",
    "DESIGN" + ".md",
    "DESIGN" + " §",
)

_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HTML_TAG = re.compile(r"<[^>]+>")
_CITATION = re.compile(r"\bdocs/([A-Za-z0-9_.-]+\.md)(?:#([A-Za-z0-9_-]+))?")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: rendered text, lower case, punctuation and symbols
    dropped (letters, digits, marks, ``-`` and ``_`` kept), each space → ``-``."""
    text = _LINK.sub(r"\1", heading)  # a link renders as its text
    text = _CODE_SPAN.sub(r"\2", text)
    text = _HTML_TAG.sub("", text).strip().lower()
    kept = [
        ch for ch in text if ch.isalnum() or ch in " -_" or unicodedata.category(ch).startswith("M")
    ]
    return "".join(kept).replace(" ", "-")


def _content_lines(text: str) -> list[str]:
    """Lines outside fenced and indented code blocks; inline code spans blanked out."""
    out, fenced, prev_blank, in_indented = [], False, True, False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            out.append("")
            continue
        indented = line.startswith(("    ", "\t")) and (prev_blank or in_indented)
        in_indented = indented and bool(line.strip())
        prev_blank = not line.strip()
        if fenced or indented:
            out.append("")
            continue
        out.append(_CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line))
    return out


def anchors(path: Path) -> set[str]:
    """Every anchor the headings of a markdown file produce (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    raw = path.read_text(encoding="utf-8").splitlines()
    content = _content_lines(path.read_text(encoding="utf-8"))
    for i, line in enumerate(content):
        text = None
        m = _ATX.match(raw[i]) if line else None
        if m:
            text = m.group(2)
        elif i and line and _SETEXT.match(line):
            prev = content[i - 1]
            if prev.strip() and not prev.lstrip().startswith(("#", "|", "-", "*", ">")):
                text = raw[i - 1].strip()
        if text is None:
            continue
        base = slug(text)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition."""
    out = []
    for no, line in enumerate(_content_lines(path.read_text(encoding="utf-8")), start=1):
        out += [(no, m.group(2)) for m in _LINK.finditer(line)]
        ref = _REF_DEF.match(line)
        if ref:
            out.append((no, ref.group(1)))
    return out


def _target_problem(source: Path, target: str) -> str | None:
    """Why ``target`` (a link found in ``source``) is broken, or None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
        if target.lower().startswith(("http://", "https://", "mailto:")):
            return None  # external: not checked
        return f"{target}: only http(s) links may leave the repository"
    path_part, _, anchor = target.partition("#")
    dest = (source.parent / path_part).resolve() if path_part else source
    if not dest.is_relative_to(ROOT):
        return f"{target}: points outside the repository ({dest})"
    if not dest.exists():
        return f"{target}: no such file in the repository ({dest.relative_to(ROOT)})"
    if anchor:
        if dest.suffix != ".md" or not dest.is_file():
            return f"{target}: an anchor into a file that is not markdown"
        if anchor not in anchors(dest):
            known = ", ".join(sorted(anchors(dest)))
            return f"{target}: {dest.relative_to(ROOT)} has no heading #{anchor}; known: {known}"
    return None


def _citing_files() -> list[Path]:
    files = []
    for d in CITING_DIRS:
        for p in (ROOT / d).rglob("*"):
            if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts:
                files.append(p)
    return sorted([ROOT / "README.md", *files])


# --------------------------------------------------------------------------- the slug rules


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("KT", "kt"),
        ("Memory module", "memory-module"),
        ("d-scaling", "d-scaling"),
        ("One `ltray tune` trial, from YAML to MLflow", "one-ltray-tune-trial-from-yaml-to-mlflow"),
        ("Where a change goes", "where-a-change-goes"),
        ("τ-norm (post hoc)", "τ-norm-post-hoc"),
        ("[Linked](other.md) title", "linked-title"),
        ("A — B", "a--b"),
        ("snake_case *stays*", "snake_case-stays"),
    ],
)
def test_slug(heading, expected):
    assert slug(heading) == expected


def test_duplicate_headings_get_numbered_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n## Notes\n\n```\n# not a heading\n```\n\n## Notes\n\nSetext\n---\n")
    assert anchors(page) == {"top", "notes", "notes-1", "setext"}


def test_links_skip_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "[a](a.md) `[b](b.md)`\n\n```\n[c](c.md)\n```\n\n    [d](d.md)\n\n[e]: e.md#x\n"
    )
    assert [t for _, t in links(page)] == ["a.md", "e.md#x"]


# --------------------------------------------------------------------------- the repository


def test_doc_pages_exist():
    for name in ("methods.md", "architecture.md"):
        assert (ROOT / "docs" / name).is_file(), name


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_links_resolve(doc):
    problems = [
        f"{doc.relative_to(ROOT)}:{no}: {problem}"
        for no, target in links(doc)
        if (problem := _target_problem(doc, target))
    ]
    assert not problems, "\n".join(problems)


def test_code_citations_resolve():
    """Every ``docs/<page>.md#anchor`` written in code, presets, scripts and tests exists."""
    problems = []
    for path in _citing_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for no, line in enumerate(text.splitlines(), start=1):
            for m in _CITATION.finditer(line):
                page = ROOT / "docs" / m.group(1)
                where = f"{path.relative_to(ROOT)}:{no}: {m.group(0)}"
                if not page.is_file():
                    problems.append(f"{where}: no such page")
                elif m.group(2) and m.group(2) not in anchors(page):
                    problems.append(f"{where}: no heading #{m.group(2)} in docs/{m.group(1)}")
    assert not problems, "\n".join(problems)


def test_no_citation_of_documents_outside_the_repository():
    problems = []
    for path in sorted({*_citing_files(), *DOC_FILES}):
        text = path.read_text(encoding="utf-8", errors="replace")
        for no, line in enumerate(text.splitlines(), start=1):
            problems += [
                f"{path.relative_to(ROOT)}:{no}: {bad!r}" for bad in FORBIDDEN if bad in line
            ]
    assert not problems, "\n".join(problems)
