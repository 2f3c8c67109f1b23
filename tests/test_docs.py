"""The repository stands alone: every citation of a document points at a file and heading that
exist in the repository, and no file cites the notes the project was first written from (they are not
in the repository).

Citation forms checked (docs/design.md, "How code and docs cite this page"), in every file the repository
holds (git's tracked and untracked-but-not-ignored files; this file's own examples left out):
* ``path.md#anchor`` (code, recipes, docs): the file exists (relative to the citing file, else to the
  repo root) and has a heading whose GitHub anchor is ``anchor``;
* in Markdown, ``[text](#anchor)``: this file has that heading; ``[text](path)``: that file exists;
* ``path.md section N``, ``[path.md](path.md) section N``, ``path.md N.M``: that file has a heading
  numbered N (``## 5. ...``, ``### 5.5 ...``); in Markdown, a bare ``section N`` means this file's;
* ``docs/name.md``: the file exists.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()
MAX_BYTES = 2_000_000
# Only used when the repository is not a git checkout (a source archive): folders nobody writes.
SKIP_DIRS = {
    ".git",
    ".venv",
    ".cache",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "results",
    "checkpoints",
}

PATH_MD = r"(?:\.\.?/)*(?:[\w-]+/)*[\w.-]+\.md"
NOT_IN_PATH = r"(?<![\w/.-])"  # a citation starts a path: not inside a URL or a longer path
ANCHOR_CITE = re.compile(rf"{NOT_IN_PATH}({PATH_MD})#([\w-]+)")
SECTION_CITE = re.compile(  # path.md section N | [path.md](path.md) section N | path.md N.M
    rf"{NOT_IN_PATH}({PATH_MD})(?:\]\([^)\s]*\))?\)?,? \(?"
    r"(?:section (\d+(?:\.\d+)*)\b|(\d+\.\d+(?:\.\d+)*)(?!\w|\.\d))"
)
BARE_SECTION = re.compile(r"\b[Ss]ection (\d+(?:\.\d+)*)\b")  # in Markdown, when no file is named
ISSUE_SECTION = re.compile(r"\bissue \d+,? section \d+")
DOCS_PATH = re.compile(rf"{NOT_IN_PATH}(docs/[\w./-]*?\.md)\b")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
# The notes the project was first written from, none of them in the repository.
OUTSIDE = re.compile(
    "|".join(
        (
            r"\bDESIGN\b",  # DESIGN.md, "DESIGN 5.5"
            r"\bSTYLE\.md",
            r"ENV_FACTS",
            r"TINY_LEARNABILITY",
            r"\bBENCHMARKS\.md",
            r"\bALGORITHMS\.md",
            r"\.\./shared\b",
            r"/work/shared\b",
            r"\bshared/reference\b",
        )
    )
)
# a fast first look: every pattern above contains one of these words
OUTSIDE_WORDS = ("DESIGN", "STYLE", "ENV_FACTS", "TINY_LEARNABILITY", "BENCHMARKS", "ALGORITHMS", "shared")


def _walk() -> list[Path]:
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        out += [Path(root) / name for name in sorted(files)]
    return out


def repo_files() -> list[Path]:
    """The repository's files: git's tracked and untracked-but-not-ignored ones (no .venv, checkpoints,
    generated runs); a plain walk when this is not a git checkout."""
    try:
        listing = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return _walk()
    return sorted({REPO / name for name in listing.decode().split("\0") if name})


@cache
def text_files() -> tuple[Path, ...]:
    """The repository's text files (binaries, large data and deleted-but-tracked files left out)."""
    texts = []
    for path in repo_files():
        if path == THIS or not path.is_file() or path.stat().st_size > MAX_BYTES:
            continue
        if b"\0" not in path.read_bytes()[:8192]:
            texts.append(path)
    return tuple(texts)


@cache
def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: the rendered text (links keep their text), lower case,
    punctuation dropped (letters, digits, '_', '-' and spaces kept), each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


@cache
def headings(path: Path) -> tuple[tuple[str, ...], frozenset[str]]:
    """(heading texts, anchors) of a Markdown file, outside fenced code blocks; repeats get -1, -2, ..."""
    texts, anchors, seen = [], set(), {}
    fenced = False
    for line in read(path).splitlines():
        if re.match(r" {0,3}(```|~~~)", line):
            fenced = not fenced
            continue
        m = re.match(r" {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if fenced or not m:
            continue
        anchor = github_anchor(m.group(1))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        texts.append(m.group(1))
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return tuple(texts), frozenset(anchors)


def section_numbers(path: Path) -> set[str]:
    """The numbers of a Markdown file's numbered headings: '5' for '## 5. Tiny', '5.5' for '### 5.5 Loss'."""
    numbers = (re.match(r"(\d+(?:\.\d+)*)\.?\s", h) for h in headings(path)[0])
    return {m.group(1) for m in numbers if m}


def resolve(cited: str, source: Path) -> Path | None:
    """The cited file, relative to the citing file's folder, else to the repo root; None if absent or
    outside the repository."""
    for base in (source.parent, REPO):
        path = (base / cited).resolve()
        if path.exists() and path.is_relative_to(REPO):
            return path
    return None


def citation_problems(path: Path) -> list[str]:
    """What is wrong with the citations in one file (empty when all resolve)."""
    rel = path.relative_to(REPO)
    # only the lines that can cite (the regexes below then scan a tenth of the text)
    keys = (".md", "ection ", "](")
    text = "\n".join(line for line in read(path).splitlines() if any(key in line for key in keys))
    problems = []

    def cited_file(cited: str, what: str) -> Path | None:
        target = resolve(cited, path)
        if target is None or not target.is_file():
            problems.append(f"{rel}: {what}: no such file in the repository")
            return None
        return target

    for m in ANCHOR_CITE.finditer(text):
        cited, anchor = m.groups()
        target = cited_file(cited, f"{cited}#{anchor}")
        if target is not None and anchor not in headings(target)[1]:
            problems.append(f"{rel}: {cited}#{anchor}: {target.relative_to(REPO)} has no such heading")
    # where a section number belongs to a named file or an issue, not to this file
    cited_spans = [m.span() for m in ISSUE_SECTION.finditer(text)]
    for m in SECTION_CITE.finditer(text):
        cited_spans.append(m.span())
        cited, number = m.group(1), m.group(2) or m.group(3)
        target = cited_file(cited, f"{cited} section {number}")
        if target is not None and number not in section_numbers(target):
            problems.append(
                f"{rel}: {cited} section {number}: {target.relative_to(REPO)} has no such section"
            )
    for m in DOCS_PATH.finditer(text):
        cited_file(m.group(1), m.group(1))
    if path.suffix == ".md":
        for m in MD_LINK.finditer(text):
            link = m.group(1)
            if re.match(r"[a-z][\w+.-]*:", link):  # https:, mailto:
                continue
            file_part, _, anchor = link.partition("#")
            if file_part and resolve(file_part, path) is None:
                problems.append(f"{rel}: ({link}): no such file or folder in the repository")
            elif not file_part and anchor not in headings(path)[1]:
                problems.append(f"{rel}: (#{anchor}): no such heading in this file")
        for m in BARE_SECTION.finditer(text):
            named = any(start <= m.start() < end for start, end in cited_spans)
            if not named and m.group(1) not in section_numbers(path):
                problems.append(f"{rel}: section {m.group(1)}: no such section in this file")
    return problems


def outside_citations(path: Path) -> list[str]:
    """Lines of one file that cite the notes outside the repository."""
    text = read(path)
    if not any(word in text for word in OUTSIDE_WORDS) or not OUTSIDE.search(text):
        return []
    return [
        f"{path.relative_to(REPO)}:{n}: {line.strip()[:120]}"
        for n, line in enumerate(text.splitlines(), 1)
        if OUTSIDE.search(line)
    ]


def test_every_citation_points_at_an_existing_file_and_heading():
    files = text_files()
    assert REPO / "docs" / "design.md" in files and REPO / "tgrl" / "trainer.py" in files, (
        "file listing broke"
    )
    problems = [p for path in files for p in citation_problems(path)]
    assert not problems, "broken citations:\n" + "\n".join(problems)


def test_no_file_cites_the_notes_outside_the_repository():
    hits = [hit for path in text_files() for hit in outside_citations(path)]
    assert not hits, "files outside the repository are cited (cite docs/*.md instead):\n" + "\n".join(hits)


def test_the_checker_catches_broken_citations(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    design = "# Design\n\n## 5. Algorithm\n\n### 5.5 Loss\n\n```\n# 9. x\n```\n"  # fenced: no heading
    (tmp_path / "docs" / "design.md").write_text(design)
    (tmp_path / "README.md").write_text("# Readme\n\n## 1. Install\n")
    good = tmp_path / "good.py"
    good.write_text(
        "# docs/design.md#55-loss, docs/design.md section 5.5, docs/design.md#5-algorithm\n"
        "# docs/design.md 5.5. docs/design.md (section 5)\n"
        "# [README.md](README.md) section 1, docs/design.md, https://x.org/docs/design.md#gone\n"
    )
    assert citation_problems(good) == []
    bad = tmp_path / "bad.py"
    bad.write_text(
        "# docs/design.md#56-loss docs/design.md section 9 docs/nothere.md#x docs/gone.md\n"
        "# docs/design.md 5.6, docs/design.md section 5.5.1, [README.md](README.md) section 2\n"
        "# docs/design.md section 9.1 (9. is a heading only inside a code block)\n"
    )
    problems = citation_problems(bad)
    # 56-loss, section 9, nothere.md (as a citation and as a path), gone.md, 5.6, 5.5.1, README's 2, 9.1
    assert len(problems) == 9, "\n".join(problems)
    doc = tmp_path / "docs" / "guide.md"
    doc.write_text(
        "# Guide\n\n## 2. Use\n\nSee [x](#2-use), [y](design.md#55-loss), section 2, issue 6, section 3.\n"
        "Broken: [a](#3-use), [b](../docs/design.md#9-x), [c](missing.md), [d](../../README.md#1-install),"
        " section 4.\n"
    )
    problems = citation_problems(doc)
    # a, b, c, d as a link and as a citation (../../ leaves the repository), section 4
    assert len(problems) == 6, "\n".join(problems)


def test_the_outside_patterns_catch_every_form(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    cited = [
        "see DESIGN 5.5",
        "(DESIGN.md section 6)",
        "STYLE.md",
        "ENV_FACTS: torch",
        "TINY_LEARNABILITY",
        "BENCHMARKS.md",
        "ALGORITHMS.md",
        "../shared/reference/luffy.md",
        "/work/shared/x",
    ]
    clean = [
        "docs/design.md#55-loss",
        "design decisions",
        "PAPER_BENCHMARKS = 3",
        "OUTPUT=/path/on/shared/storage",
    ]
    notes = tmp_path / "notes.py"
    notes.write_text("\n".join(cited + clean) + "\n")
    assert [hit.split(":")[1] for hit in outside_citations(notes)] == [
        str(n) for n in range(1, len(cited) + 1)
    ]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("5.5 Loss", "55-loss"),
        ("5. The TGRL algorithm", "5-the-tgrl-algorithm"),
        ("10.1 Errors", "101-errors"),
        ("`p_min`: zeroed tokens", "p_min-zeroed-tokens"),
        ("tgrl — Trajectory-Guided RL", "tgrl--trajectory-guided-rl"),
        ("1.1 [LUFFY](https://github.com/ElliottYan/LUFFY) (2025)", "11-luffy-2025"),
        (
            "Hardware, time and memory (estimates, arithmetic shown)",
            "hardware-time-and-memory-estimates-arithmetic-shown",
        ),
    ],
)
def test_github_anchor(heading, anchor):
    assert github_anchor(heading) == anchor


def test_every_tgrl_switch_is_in_the_design_switch_table():
    """Every field TGRLConfig adds to TRL's GRPOConfig (read from the source: importing TRL takes seconds)."""
    tree = ast.parse(read(REPO / "tgrl" / "tgrl_config.py"))
    (config,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "TGRLConfig"]
    ours = {stmt.target.id for stmt in config.body if isinstance(stmt, ast.AnnAssign)}
    assert len(ours) > 20, ours
    design = read(REPO / "docs" / "design.md")
    table = design[design.index("### 5.9 Switches") : design.index("## 6. ")]
    missing = sorted(name for name in ours if f"`{name}`" not in table)
    assert not missing, f"TGRLConfig switches missing from docs/design.md#59-switches: {missing}"
