"""Training curves (PNG) from the trainer's metrics JSONL: one figure per run and overlays across runs.

    python eval/plot_training.py --metrics RUN/metrics.jsonl [RUN2/metrics.jsonl ...] --out DIR --smooth 25
    python eval/plot_training.py --runs-json results/tiny/runs.json --out results/tiny/plots --smooth 20

Panels, outputs and seed pooling: docs/metrics.md#training-metrics (code: tgrl/evaluation/plots.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tgrl.evaluation.plots import InputError, load_metrics, plot_runs, run_labels


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="PNG training curves from metrics JSONL files.")
    ap.add_argument("--metrics", nargs="+", default=[], help="<run>/metrics.jsonl, one or more")
    ap.add_argument(
        "--runs-json", help="runs.json of scripts/run_protocol.py: [{name, method, group, checkpoint}, ...]"
    )
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--smooth", type=int, default=1, help="moving-average window in logged steps (1 = raw)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    groups = None
    try:
        paths = [Path(p) for p in args.metrics]
        runs = {label: load_metrics(p) for label, p in zip(run_labels(paths), paths, strict=True)}
        if args.runs_json:
            listed = json.loads(Path(args.runs_json).read_text())
            groups = {}
            for run in listed:
                # the curves the protocol kept under OUT (no checkpoint needed), else the checkpoint's
                metrics = Path(run.get("metrics") or Path(run["checkpoint"]) / "metrics.jsonl")
                if metrics.is_file():  # SFT runs log no RL metrics
                    runs[run["name"]] = load_metrics(metrics)
                    groups.setdefault(run["group"], [])
                    if run["method"] not in groups[run["group"]]:
                        groups[run["group"]].append(run["method"])
    except (InputError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not runs:
        print("error: no runs: give --metrics or --runs-json", file=sys.stderr)
        return 2
    for path in plot_runs(runs, Path(args.out), args.smooth, groups):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
