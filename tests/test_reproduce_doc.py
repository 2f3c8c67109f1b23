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
