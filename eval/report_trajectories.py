"""Write the trajectory report: one self-contained HTML page, every reasoning token coloured by s_t.

    python eval/report_trajectories.py --out report.html --input grpo=EVAL_DIR --input tgrl=EVAL_DIR2
    python eval/report_trajectories.py --out run.html --input checkpoints/tiny/tgrl_c0_s0

Inputs: evaluation folders run with --visual-dependency, a filter's trajectories.filtered.jsonl (scored
under ``--model``) or a training run's completions.jsonl; details in tgrl/evaluation/report.py. Errors
name the file and row and exit 2, writing nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tgrl.utils import UserError, cli, set_torch_threads


def parse_input(spec: str) -> tuple[str | None, Path]:
    """``LABEL=PATH`` or ``PATH`` (the label then comes from the input)."""
    label, sep, path = spec.partition("=")
    if sep and label and "/" not in label:
        return label, Path(path)
    return None, Path(spec)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--input",
        action="append",
        required=True,
        help="[LABEL=]PATH: an evaluation results folder or samples.jsonl, a teacher trajectory file, or a "
        "training run folder / completions.jsonl (repeatable; LABEL names the method on the page)",
    )
    p.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    p.add_argument(
        "--problems",
        action="append",
        default=[],
        help="problem JSONL(s) to join teacher / training rows with by id (found from the input's manifest "
        "or run config when recorded)",
    )
    p.add_argument("--model", help="checkpoint that scores s_t (and w_t) of samples that carry none")
    p.add_argument("--max-samples", type=int, default=300, help="cap on the samples shown (default 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample drawn past the cap, and of I~")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--skip-empty", action="store_true", help="leave empty completions out instead of failing")
    return p


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.max_samples < 1:
        raise UserError("--max-samples must be >= 1")
    set_torch_threads()
    from tgrl.evaluation.report import build_report

    counts = build_report(
        [parse_input(spec) for spec in args.input],
        args.out,
        problems=args.problems,
        model=args.model,
        max_samples=args.max_samples,
        seed=args.seed,
        skip_empty=args.skip_empty,
        batch_size=args.batch_size,
    )
    print(
        f"[report] {args.out.resolve()}: {counts['shown']} of {counts['total']} samples, "
        f"{counts['bytes'] / 1024:.0f} KiB"
    )


if __name__ == "__main__":
    main()
