"""Append a run's training-time diagnostics to results/summary.jsonl so the tables can show them.

    python eval/summarize_training.py --run-dir checkpoints/tiny_tgrl_s0 --run tgrl_s0 --method tgrl \\
        --seed 0 --summary results/tiny/summary.jsonl

The rows (tail means, and the points of the curves that move):
docs/metrics.md#training-curves-as-summary-rows.
Idempotent: the rows carry a key that includes the hash of metrics.jsonl, so a rerun adds nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tgrl.evaluation.training_summary import CURVES, curve_sentence, summarize_run
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
    parser.add_argument("--tail", type=float, default=0.3, help="share of the run the tail means cover")
    parser.add_argument("--window", type=int, default=20, help="logged steps per mean of the curve points")
    parser.add_argument("--summary", type=Path, default=Path("results/summary.jsonl"))
    return parser


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rows = summarize_run(
        args.run_dir,
        args.run,
        args.method,
        args.seed,
        args.summary,
        args.task,
        args.suite,
        args.tail,
        args.window,
    )
    if rows is None:
        print(f"[summarize_training] {args.run}: already in {args.summary} (same metrics); nothing to do")
        return
    print(
        f"[summarize_training] {args.run}: "
        + ", ".join(f"{r['metric']}={r['value']:.3f} (n={r['n']})" for r in rows)
    )
    points = {r["metric"]: (r["value"], r["n"]) for r in rows}
    for name in CURVES:
        if sentence := curve_sentence(points, name):
            print(f"[summarize_training] {args.run}: {sentence}")


if __name__ == "__main__":
    main()
