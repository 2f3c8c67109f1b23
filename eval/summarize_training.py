"""Append a run's training-time diagnostics to results/summary.jsonl so the tables can show them.

    python eval/summarize_training.py --run-dir checkpoints/tiny_tgrl_s0 --run tgrl_s0 --method tgrl \
        --seed 0 --summary results/tiny/summary.jsonl

The visual-dependency diagnostic of docs/design.md#58-diagnostics (mean s_t, expert vs on-policy) is measured
by the trainer, not by evaluation: this script averages the logged values over the last ``--tail``
share of training and writes them as summary rows (``metric: vis_dep_expert`` / ``vis_dep_on_policy``,
``decoding: training``), next to the evaluation rows of the same run. Idempotent: the rows carry a
key (run, checkpoint, task, suite, tail and the hash of metrics.jsonl), and a rerun on the same
metrics adds nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tgrl.evaluation.training_summary import summarize_run
from tgrl.utils import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="the trainer's output_dir (has metrics.jsonl)"
    )
    parser.add_argument("--run", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--task", default="synthetic_test", help="task the rows sit beside in the tables")
    parser.add_argument("--suite", default="tiny")
    parser.add_argument("--tail", type=float, default=0.3, help="share of the run to average over")
    parser.add_argument("--summary", type=Path, default=Path("results/summary.jsonl"))
    return parser


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rows = summarize_run(
        args.run_dir, args.run, args.method, args.seed, args.summary, args.task, args.suite, args.tail
    )
    if rows is None:
        print(f"[summarize_training] {args.run}: already in {args.summary} (same metrics); nothing to do")
        return
    print(
        f"[summarize_training] {args.run}: "
        + ", ".join(f"{r['metric']}={r['value']:.3f} (n={r['n']})" for r in rows)
    )


if __name__ == "__main__":
    main()
