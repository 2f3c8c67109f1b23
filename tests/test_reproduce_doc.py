"""The README's first table is the generated headline table (results/tiny/tables/tiny_headline.md,
verbatim), and REPRODUCE.md links every generated tiny table instead of copying it: a regenerated table
that the README does not show, or a REPRODUCE link to a table that is gone, fails here."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TABLES = REPO / "results" / "tiny" / "tables"


def test_readme_shows_the_generated_headline_table():
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    rows = [line for line in (TABLES / "tiny_headline.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) >= 4
    missing = [row for row in rows if row not in readme]
    assert not missing, f"README.md lacks these rows of results/tiny/tables/tiny_headline.md: {missing}"


def test_reproduce_links_the_generated_tables_that_exist():
    doc = (REPO / "REPRODUCE.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"results/tiny/tables/([a-z_]+)\.md", doc))
    assert {"tiny", "tiny_grounding", "tiny_ablations", "tiny_tuning"} <= linked
    assert all((TABLES / f"{name}.md").is_file() for name in linked), linked
