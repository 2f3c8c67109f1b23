"""Plot the visual-dependency measures against the ground truth, one point per run (issue 18).

    python eval/plot_grounding.py --summary committed=results/tiny_v1/summary.jsonl \
        --summary demo=results/tiny_demo/summary.jsonl \
        --json results/tiny_v1/plots/grounding_vs_truth.json \
        --out results/tiny_v1/plots/grounding_vs_truth.png
    python eval/plot_grounding.py --from-json results/tiny_v1/plots/grounding_vs_truth.json \
        --out results/tiny_v1/plots/grounding_vs_truth.png      # redraw from the committed data
    python eval/plot_grounding.py --summary results/tiny/summary.jsonl \
        --task-alias synthetic_test=sealed_test --task-alias synthetic_test_twins=sealed_test_twins \
        --json results/tiny/plots/grounding_vs_truth.json \
        --out results/tiny/plots/grounding_vs_truth.png      # the decisive run's sealed rows

Reads, per run, twin tracking and fact accuracy (ground truth) and the s_t measures (fact-token s_t of the
common oracle text at the rollout temperature, own-reasoning s_t at T = 1) plus the expert fact-token p for
reference; writes them and their Pearson correlations over the runs to ``--json`` and draws the plot from
that JSON (tgrl/evaluation/grounding_plot.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tgrl.evaluation.grounding_plot import gather, plot, write_json
from tgrl.evaluation.tables import InputError, parse_task_aliases
from tgrl.utils import UserError, cli


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--summary",
        action="append",
        default=[],
        help="[LABEL=]summary JSONL (repeatable; LABEL prefixes runs)",
    )
    p.add_argument("--json", type=Path, help="where the gathered data goes (with --summary)")
    p.add_argument("--from-json", type=Path, help="redraw from a JSON this script wrote")
    p.add_argument("--out", type=Path, required=True, help="the PNG")
    p.add_argument(
        "--task-alias",
        action="append",
        default=[],
        help="NAMED_TASK=SUMMARY_TASK: e.g. synthetic_test's measures from sealed_test rows (repeatable)",
    )
    args = p.parse_args(argv)
    try:
        aliases = parse_task_aliases(args.task_alias)
    except InputError as err:
        raise UserError(str(err)) from None
    if bool(args.summary) == bool(args.from_json):
        raise UserError("give --summary FILE (with --json OUT) or --from-json FILE")
    if args.summary:
        if args.json is None:
            raise UserError("--summary needs --json OUT: the plot is drawn from the data it writes")
        specs = [spec.partition("=") for spec in args.summary]
        summaries = [(label, Path(path)) if sep else (None, Path(label)) for label, sep, path in specs]
        write_json(gather(summaries, aliases), args.json)
        source = args.json
    else:
        source = args.from_json
    data = json.loads(source.read_text())
    plot(data, args.out)
    for pair, corr in data["correlations"].items():
        shown = "n/a" if corr["r"] is None else f"{corr['r']:+.2f}"
        print(f"[plot_grounding] r({pair}) = {shown} over {corr['runs']} runs")
    print(f"[plot_grounding] {args.out}")


if __name__ == "__main__":
    main()
