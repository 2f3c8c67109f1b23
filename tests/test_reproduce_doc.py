"""The README's first table is the generated headline table (the ``results/<run>/tables/tiny_headline.md``
it links, verbatim), and REPRODUCE.md links every generated tiny table instead of copying it: a regenerated
table that the README does not show, or a REPRODUCE link to a table that is gone, fails here."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEADLINE_LINK = re.compile(r"\]\((results/[a-z0-9_]+/tables)/tiny_headline\.md\)")
TABLE_LINK = re.compile(r"\]\((results/[a-z0-9_]+/tables)/([a-z_]+)\.md\)")


def test_readme_shows_the_generated_headline_table():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = HEADLINE_LINK.findall(text)
    assert len(set(links)) == 1, f"README.md should link exactly one headline table, found {links}"
    headline = REPO / links[0] / "tiny_headline.md"
    rows = [line for line in headline.read_text().splitlines() if line.startswith("| ")]
    assert len(rows) >= 4
    readme = text.splitlines()
    missing = [row for row in rows if row not in readme]
    assert not missing, f"README.md lacks these rows of {headline.relative_to(REPO)}: {missing}"


def test_reproduce_links_the_generated_tables_that_exist():
    doc = (REPO / "REPRODUCE.md").read_text(encoding="utf-8")
    linked = set(TABLE_LINK.findall(doc))
    assert {"tiny", "tiny_grounding", "tiny_ablations", "tiny_tuning"} <= {name for _, name in linked}
    gone = [f"{folder}/{name}.md" for folder, name in linked if not (REPO / folder / f"{name}.md").is_file()]
    assert not gone, f"REPRODUCE.md links tables that do not exist: {gone}"


INTERVAL = re.compile(r"\[([+-]?\d+\.\d), ([+-]?\d+\.\d)\]")


def _generated_intervals(tables: Path) -> set[tuple[str, str]]:
    """The 95% intervals of the registered and exploratory tables, rounded as the docs print them, in both
    orientations (a reading may give b - a: 'costs 3.9 [2.1, 5.8]' for an effect of -3.9)."""
    import csv

    found = set()
    for name in ("tiny_registered", "tiny_exploratory"):
        for row in csv.DictReader((tables / f"{name}.csv").open()):
            if row["ci_lo"]:
                lo, hi = float(row["ci_lo"]), float(row["ci_hi"])
                found |= {(f"{lo:.1f}", f"{hi:.1f}"), (f"{-hi:.1f}", f"{-lo:.1f}")}
    return {(a.replace("-0.0", "0.0"), b.replace("-0.0", "0.0")) for a, b in found}


def _unsigned(pair: tuple[str, str]) -> tuple[str, str]:
    return tuple(v.lstrip("+") for v in pair)


def test_every_effect_interval_in_the_readings_comes_from_the_generated_tables():
    """The effect intervals the README's bullets and REPRODUCE 5.3-5.5 quote are those of
    tiny_registered / tiny_exploratory (rounded to one decimal): a typed or stale interval fails here."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    folder = REPO / HEADLINE_LINK.findall(readme)[0]
    generated = _generated_intervals(folder)
    bullets = readme[readme.index("## What it shows so far") : readme.index("## Two commands")]
    bullets = "\n".join(line for line in bullets.splitlines() if not line.startswith("|"))  # table rows
    doc = (REPO / "REPRODUCE.md").read_text(encoding="utf-8")
    reading = doc[doc.index("### 5.3 ") : doc.index("### 5.6 ")]
    quoted = INTERVAL.findall(bullets) + INTERVAL.findall(reading)
    assert len(quoted) >= 20
    stray = [q for q in quoted if _unsigned(q) not in {_unsigned(g) for g in generated}]
    assert not stray, (
        f"intervals not in {folder.relative_to(REPO)}/tiny_{{registered,exploratory}}.csv: {stray}"
    )


def test_the_replication_section_quotes_the_v2_and_v3_tables():
    """REPRODUCE 5.7 (protocol v3) quotes intervals of v3's generated tables or, beside them, v2's."""
    doc = (REPO / "REPRODUCE.md").read_text(encoding="utf-8")
    section = doc[doc.index("### 5.7 ") : doc.index("## 6. ")]
    assert "results/tiny_v3/tables/tiny_replication.md" in section
    generated = _generated_intervals(REPO / "results/tiny/tables") | _generated_intervals(
        REPO / "results/tiny_v3/tables"
    )
    quoted = INTERVAL.findall(section)
    assert len(quoted) >= 4
    stray = [q for q in quoted if _unsigned(q) not in {_unsigned(g) for g in generated}]
    assert not stray, f"intervals in REPRODUCE 5.7 not in the v2 or v3 tables: {stray}"
