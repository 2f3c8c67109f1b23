"""Append a run's training-time diagnostics to results/summary.jsonl so the tables can show them.

    python eval/summarize_training.py --run-dir checkpoints/tiny_tgrl_s0 --run tgrl_s0 --method tgrl --seed 0 \
        --summary results/tiny/summary.jsonl

The visual-dependency diagnostic (mean s_t on expert vs on-policy tokens, DESIGN 5.4/5.6) is measured
by the trainer, not by evaluation: this script averages the logged values over the last ``--tail``
share of training and writes them as summary rows (``metric: vis_dep_expert`` / ``vis_dep_on_policy``,
``decoding: training``), next to the evaluation rows of the same run. Idempotent: the rows carry a
key (run, checkpoint, task, suite, tail and the hash of metrics.jsonl), and a rerun on the same
metrics adds nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_lmms_eval import append_locked, finished_keys  # noqa: E402

from tgrl.utils import UserError, cli, git_commit, package_versions, read_jsonl, sha256_file  # noqa: E402

DIAGNOSTICS = {"vis_dep_expert": "vis_dep/expert", "vis_dep_on_policy": "vis_dep/on_policy"}


def tail_means(metrics_path: Path, tail: float) -> dict[str, tuple[float, int]]:
    """Mean and count of each diagnostic over the last ``tail`` share of logged steps (NaN/absent skipped)."""
    rows = [row for _, row in read_jsonl(metrics_path) if "step" in row]
    if not rows:
        raise UserError(f"{metrics_path}: no logged steps. Fix: train the run first (train/rl.py)")
    last_step = max(r["step"] for r in rows)
    start = last_step * (1.0 - tail)
    out = {}
    for name, key in DIAGNOSTICS.items():
        values = [
            float(r[key])
            for r in rows
            if r["step"] > start and isinstance(r.get(key), int | float) and math.isfinite(float(r[key]))
        ]
        if values:
            out[name] = (sum(values) / len(values), len(values))
    return out


@cli
def main(argv: list[str] | None = None) -> None:
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
    args = parser.parse_args(argv)
    metrics_path = args.run_dir / "metrics.jsonl"
    means = tail_means(metrics_path, args.tail)
    ident = {
        "run": args.run,
        "checkpoint": str(args.run_dir.resolve()),
        "task": args.task,
        "suite": args.suite,
        "tail": args.tail,
        "metrics_sha256": sha256_file(metrics_path),
    }
    key = "train-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    if key in finished_keys(args.summary):
        print(f"[summarize_training] {args.run}: already in {args.summary} (same metrics); nothing to do")
        return
    common = {
        "key": key,
        "run": args.run,
        "method": args.method,
        "seed": args.seed,
        "checkpoint": str(args.run_dir.resolve()),
        "task": args.task,
        "decoding": "training",
        "suite": args.suite,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    rows = [{**common, "metric": name, "value": value, "n": n} for name, (value, n) in sorted(means.items())]
    append_locked(args.summary, rows)
    print(
        f"[summarize_training] {args.run}: "
        + ", ".join(f"{r['metric']}={r['value']:.3f} (n={r['n']})" for r in rows)
    )


if __name__ == "__main__":
    main()
