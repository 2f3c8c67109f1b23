"""Training-time diagnostics as summary rows (eval/summarize_training.py), so the tables can show them.

Two kinds of rows (``decoding: training``), from the run's metrics.jsonl:

* tail means (:data:`DIAGNOSTICS`): the logged value averaged over the last ``tail`` share of training, for
  quantities that settle (``vis_dep_expert`` / ``vis_dep_on_policy``, the mean s_t of the trainer,
  docs/design.md#58-diagnostics; ``grad_expert_share``; ``expert_p_fact_end``);
* curve points (:data:`CURVES`) for quantities that move: ``<name>_step0``, the value logged at the first
  step (computed by that step's forward, before the first optimizer update: the start of the run, but one
  batch of a handful of experts), ``<name>_first`` (the mean of the first ``window`` logged steps, inside
  the learning-rate warm-up), ``<name>_min`` and ``<name>_min_step`` (the lowest ``window``-step trailing
  mean and the step it ends at) and ``<name>_last`` (the mean of the last ``window`` logged steps). For
  the expert fact-token p (``expert_p_fact_*``) and, beside it, the on-policy fact accuracy of the
  rollouts (``fact_acc_train_*``). Means over the first and last 30% of training hid a dip and a net fall;
  :func:`curve_sentence` compares windows of the same short size and names the dip between them.

Idempotent: the rows carry a key (run, checkpoint, task, suite, tail, window and the hash of
metrics.jsonl), and a rerun on the same metrics adds nothing.
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
ROWS_VERSION = 3  # 2: curve points instead of 30% window means; 3: with the first-window mean
# summary prefix -> trainer key, summarised by its curve points (step 0, minimum, last)
CURVES = {"expert_p_fact": "expert/p_fact", "fact_acc_train": "fact_accuracy"}
CURVE_LABELS = {"expert_p_fact": "expert fact-token p", "fact_acc_train": "on-policy fact accuracy"}


def logged_steps(metrics_path: Path) -> list[dict[str, Any]]:
    """The logged steps of metrics.jsonl in step order (a step logged twice, as after a resume: the later
    line wins)."""
    by_step = {row["step"]: row for _, row in read_jsonl(metrics_path) if "step" in row}
    if not by_step:
        raise UserError(f"{metrics_path}: no logged steps. Fix: train the run first (train/rl.py)")
    return [by_step[step] for step in sorted(by_step)]


def _finite(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        return None
    return float(value)


def tail_means(metrics_path: Path, tail: float) -> dict[str, tuple[float, int]]:
    """Mean and count of each diagnostic (DIAGNOSTICS) over the last ``tail`` share of logged steps
    (NaN/absent skipped)."""
    rows = logged_steps(metrics_path)
    last_step = rows[-1]["step"]
    out = {}
    for name, key in DIAGNOSTICS.items():
        values = [
            v for r in rows if r["step"] > last_step * (1.0 - tail) and (v := _finite(r, key)) is not None
        ]
        if values:
            out[name] = (sum(values) / len(values), len(values))
    return out


def curve_points(metrics_path: Path, window: int = 20) -> dict[str, tuple[float, int]]:
    """Per CURVES entry: ``_step0`` (the value at step 1, logged from the forward before the first update;
    absent when the log does not start at step 1), ``_first`` (the mean of the first ``window`` logged
    values), ``_min`` / ``_min_step`` (the lowest trailing mean over ``window`` logged values, and the step
    that window ends at) and ``_last`` (the mean of the last ``window`` logged values); each as (value,
    number of logged values behind it)."""
    if window < 1:
        raise UserError(f"--window {window}: must be >= 1")
    rows = logged_steps(metrics_path)
    out: dict[str, tuple[float, int]] = {}
    for name, key in CURVES.items():
        points = [(r["step"], v) for r in rows if (v := _finite(r, key)) is not None]
        if not points:
            continue
        if points[0][0] == 1:
            out[f"{name}_step0"] = (points[0][1], 1)
        w = min(window, len(points))
        means = [
            (points[i][0], sum(v for _, v in points[i - w + 1 : i + 1]) / w)
            for i in range(w - 1, len(points))
        ]
        low_step, low = min(means, key=lambda m: m[1])  # the earliest of equal minima
        out[f"{name}_first"] = (means[0][1], w)
        out[f"{name}_min"] = (low, w)
        out[f"{name}_min_step"] = (float(low_step), w)
        out[f"{name}_last"] = (means[-1][1], w)
    return out


def curve_sentence(points: dict[str, tuple[float, int]], name: str) -> str | None:
    """One sentence that reads a curve from its points (never typed): its first, lowest and last
    ``window``-step means, the value at step 1 alone, and whether the run ended above or below its start.
    Start and end are means of the same size: one step is one batch (a handful of experts), too few to
    carry a comparison on its own."""
    if f"{name}_last" not in points:
        return None
    first, w = points[f"{name}_first"]
    last = points[f"{name}_last"][0]
    low, low_step = points[f"{name}_min"][0], int(points[f"{name}_min_step"][0])
    text = f"{CURVE_LABELS[name]}: first {w} steps {first:.3f}"
    if f"{name}_step0" in points:
        text += f" (step 1 alone, before any update: {points[f'{name}_step0'][0]:.3f})"
    text += f", lowest {low:.3f} ({w}-step mean ending at step {low_step}), last {w} steps {last:.3f}"
    change = last - first
    text += f": ended {'above' if change > 0 else 'below'} its start ({change:+.3f})"
    if low < min(first, last):
        text += f" after a dip of {low - first:+.3f}"
    return text + "."


def summarize_run(
    run_dir: Path,
    run: str,
    method: str,
    seed: int | None,
    summary: Path,
    task: str = "synthetic_test",
    suite: str = "tiny",
    tail: float = 0.3,
    window: int = 20,
) -> list[dict[str, Any]] | None:
    """Append the tail means and curve points of ``run_dir/metrics.jsonl`` to ``summary``; returns the rows,
    or None when the summary already holds them (same metrics, same settings)."""
    metrics_path = run_dir / "metrics.jsonl"
    means = {**tail_means(metrics_path, tail), **curve_points(metrics_path, window)}
    ident = {
        "run": run,
        "checkpoint": str(run_dir.resolve()),
        "task": task,
        "suite": suite,
        "tail": tail,
        "metrics_sha256": sha256_file(metrics_path),
        "rows": ROWS_VERSION,  # a new set of rows is a new key: a rerun adds them to older summaries
        "window": window,
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
