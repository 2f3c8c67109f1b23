"""Training-time diagnostics as summary rows (eval/summarize_training.py), so the tables can show them.

The visual-dependency diagnostic of docs/design.md#58-diagnostics (mean s_t, expert vs on-policy) is measured
by the trainer, not by evaluation: :func:`summarize_run` averages the logged values over the last ``tail``
share of training and appends them as summary rows (``metric: vis_dep_expert`` / ``vis_dep_on_policy``,
``decoding: training``), next to the evaluation rows of the same run. Idempotent: the rows carry a
key (run, checkpoint, task, suite, tail and the hash of metrics.jsonl), and a rerun on the same
metrics adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from tgrl.evaluation.runner import append_locked, finished_keys
from tgrl.utils import UserError, git_commit, package_versions, read_jsonl, sha256_file

# summary metric -> trainer key, averaged over the last ``tail`` share of the run (the run's end) ...
DIAGNOSTICS = {
    "vis_dep_expert": "vis_dep/expert",
    "vis_dep_on_policy": "vis_dep/on_policy",
    "expert_p_fact_end": "expert/p_fact",  # docs/metrics.md: does the expert term move the content tokens?
    "expert_p_low_end": "expert/p_low",
    "grad_expert_share": "grad/expert_share",
}
# ... and over the first ``tail`` share (the run's start), for "start -> end"
START_DIAGNOSTICS = {"expert_p_fact_start": "expert/p_fact", "expert_p_low_start": "expert/p_low"}


def tail_means(metrics_path: Path, tail: float) -> dict[str, tuple[float, int]]:
    """Mean and count of each diagnostic over the last ``tail`` share of logged steps (DIAGNOSTICS) and
    of START_DIAGNOSTICS over the first ``tail`` share (NaN/absent skipped)."""
    rows = [row for _, row in read_jsonl(metrics_path) if "step" in row]
    if not rows:
        raise UserError(f"{metrics_path}: no logged steps. Fix: train the run first (train/rl.py)")
    last_step = max(r["step"] for r in rows)
    out = {}
    windows = [
        (DIAGNOSTICS, lambda step: step > last_step * (1.0 - tail)),
        (START_DIAGNOSTICS, lambda step: step <= last_step * tail),
    ]
    for names, inside in windows:
        for name, key in names.items():
            values = [
                float(r[key])
                for r in rows
                if inside(r["step"]) and isinstance(r.get(key), int | float) and math.isfinite(float(r[key]))
            ]
            if values:
                out[name] = (sum(values) / len(values), len(values))
    return out


def summarize_run(
    run_dir: Path,
    run: str,
    method: str,
    seed: int | None,
    summary: Path,
    task: str = "synthetic_test",
    suite: str = "tiny",
    tail: float = 0.3,
) -> list[dict[str, Any]] | None:
    """Append the tail means of ``run_dir/metrics.jsonl`` to ``summary``; returns the rows, or None when
    the summary already holds them (same metrics, same settings)."""
    metrics_path = run_dir / "metrics.jsonl"
    means = tail_means(metrics_path, tail)
    ident = {
        "run": run,
        "checkpoint": str(run_dir.resolve()),
        "task": task,
        "suite": suite,
        "tail": tail,
        "metrics_sha256": sha256_file(metrics_path),
    }
    key = "train-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    if key in finished_keys(summary):
        return None
    common = {
        "key": key,
        "run": run,
        "method": method,
        "seed": seed,
        "checkpoint": str(run_dir.resolve()),
        "task": task,
        "decoding": "training",
        "suite": suite,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    rows = [{**common, "metric": name, "value": value, "n": n} for name, (value, n) in sorted(means.items())]
    append_locked(summary, rows)
    return rows
