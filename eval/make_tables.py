"""Turn evaluation results into the paper's tables: Markdown, CSV and LaTeX, with ours | reported | delta.

    python eval/make_tables.py --summary results/summary.jsonl --tables eval/tables.yaml \
        --reported eval/reported.csv --out results/tables [--table main]

Every number is read from the summary (ours) or eval/reported.csv (published, each with its source); the
summary's format, the table spec and the statistics are described in tgrl/evaluation/tables.py. Errors in
the inputs end the program with a message that names the file and line, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from tgrl.evaluation.tables import InputError, parse_task_aliases, write_tables


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Markdown/CSV/LaTeX tables from results/summary.jsonl.")
    ap.add_argument(
        "--summary", nargs="+", default=["results/summary.jsonl"], help="one or more summary JSONL files"
    )
    ap.add_argument("--tables", default="eval/tables.yaml")
    ap.add_argument("--reported", default="eval/reported.csv")
    ap.add_argument("--out", default="results/tables")
    ap.add_argument("--table", action="append", help="only this table (repeatable); default: all")
    ap.add_argument(
        "--task-alias",
        action="append",
        default=[],
        metavar="SPEC_TASK=TASK",
        help="read a column's task from another split (repeatable), e.g. synthetic_test=sealed_test",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        aliases = parse_task_aliases(args.task_alias)
        write_tables(args.summary, args.tables, args.reported, args.out, args.table, aliases)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
