"""The registered (or exploratory) comparisons of one protocol beside the same comparisons run again.

    python eval/replication_table.py --original results/tiny/tables/tiny_registered.csv \
        --rerun results/tiny_v3/tables/tiny_registered.csv --labels v2 v3 \
        --out results/tiny_v3/tables/tiny_replication

Writes OUT.md and OUT.csv: per comparison both effects with their intervals and verdicts, whether the
rerun's effect lies inside the original's 95% interval, and the outcome (replicated, reversed, not
replicated, resolved only in the rerun, not resolved in either): tgrl/evaluation/registered.py.
"""

from __future__ import annotations

import argparse

from tgrl.evaluation.registered import render_replication
from tgrl.utils import atomic_write_text, cli


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", required=True, help="a table CSV of eval/registered_comparisons.py")
    p.add_argument("--rerun", required=True, help="the same table from the rerun")
    p.add_argument("--labels", nargs=2, default=["original", "rerun"], metavar=("FIRST", "SECOND"))
    p.add_argument("--out", required=True, help="output path without extension (.md and .csv are written)")
    args = p.parse_args(argv)
    md, csv, counts = render_replication(args.original, args.rerun, tuple(args.labels))
    atomic_write_text(f"{args.out}.md", md)
    atomic_write_text(f"{args.out}.csv", csv)
    print(f"{sum(counts.values())} comparisons: {counts} -> {args.out}.{{md,csv}}")


if __name__ == "__main__":
    main()
