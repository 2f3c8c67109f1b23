"""Visual-dependency measures against the ground truth, per run (eval/plot_grounding.py).

Why: a grounding measure earns a column only if it tracks what the image says. The synthetic scenes give
two ground-truth views of whether a model's reasoning carries what it sees: fact accuracy (stated counts
match the scene) and twin tracking (stated counts change exactly as the image did between a scene and its
counterfactual twin: scale-free, tgrl/evaluation/twins.py). This module gathers, per run of a summary
file, those two and the s_t measures (:data:`MEASURES`), writes them as JSON with the Pearson correlation of
every (s_t measure, ground truth) pair over the runs, and draws the scatter plot from that JSON alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tgrl.evaluation.plots import save_atomic
from tgrl.utils import UserError, atomic_write_text, read_jsonl

# name -> (task, metric, decoding, what it computes)
GROUND_TRUTH = {
    "twin_tracking": (
        "synthetic_test_twins",
        "twin_tracking",
        "greedy",
        "share of (scene, twin) pairs, one object removed or recoloured, whose greedy stated counts change "
        "by exactly the image's change",
    ),
    "fact_acc": (
        "synthetic_test",
        "fact_acc",
        "greedy",
        "share of greedy responses whose stated counts of both colours match the scene",
    ),
}
MEASURES = {
    "fact_token_s": (
        "synthetic_test",
        "expert_fact_s",
        "teacher_forced_t0.3",
        "mean s_t at the fact tokens of the oracle trajectory of each test item (a common text), both "
        "passes at logits / 0.3 (the RL rollout temperature); half the 14x14 patches black",
    ),
    "own_reasoning_s": (
        "synthetic_test",
        "vis_dep_reasoning",
        "greedy",
        "mean s_t over the <think> tokens of the model's own greedy response, at T = 1",
    ),
    "expert_fact_p": (
        "synthetic_test",
        "expert_fact_p",
        "teacher_forced",
        "teacher-forced probability (T = 1) of the oracle's fact tokens: confidence, for reference",
    ),
}


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r; None with fewer than 3 points or a constant series."""
    if len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / math.sqrt(sxx * syy)


def gather(summaries: list[tuple[str | None, Path]], aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """Per run of each (label, summary): every GROUND_TRUTH and MEASURES value it has (the latest row of
    each, a row over the whole split before one over a prefix (``limit``); a label prefixes the run names,
    ``label/run``, so two summaries' runs stay apart), and the correlation of each measure with each ground
    truth over the runs that have both. ``aliases`` maps a task named above to the task the summary's rows
    use (``synthetic_test`` -> ``sealed_test``)."""
    aliases = aliases or {}
    wanted = {(aliases.get(t, t), m, d): name for name, (t, m, d, _) in {**GROUND_TRUTH, **MEASURES}.items()}
    runs: dict[str, dict[str, Any]] = {}
    prefix_only: set[tuple[str, str]] = set()  # (run, measure) whose value so far is from a prefix
    for label, path in summaries:
        if not path.is_file():
            raise UserError(f"{path}: summary file not found")
        for _, row in read_jsonl(path):
            name = wanted.get((row.get("task"), row.get("metric"), row.get("decoding")))
            if name is None:
                continue
            run = f"{label}/{row['run']}" if label else row["run"]
            entry = runs.setdefault(run, {"run": run, "method": row.get("method"), "source": str(path)})
            prefix = row.get("limit") is not None
            if prefix and name in entry and (run, name) not in prefix_only:
                continue  # a whole-split value stands against a later prefix row
            entry[name] = float(row["value"])  # appended in time order: the last row wins
            (prefix_only.add if prefix else prefix_only.discard)((run, name))
    if not runs:
        raise UserError(
            f"{', '.join(str(p) for _, p in summaries)}: no grounding rows (twin split, probes, eval)"
        )
    correlations = {}
    for m in MEASURES:
        for g in GROUND_TRUTH:
            both = [r for r in runs.values() if m in r and g in r]
            r = pearson([x[m] for x in both], [x[g] for x in both])
            correlations[f"{m} ~ {g}"] = {"r": r, "runs": len(both)}
    return {
        "runs": [runs[name] for name in sorted(runs)],
        "correlations": correlations,
        "definitions": {k: v[3] for k, v in {**GROUND_TRUTH, **MEASURES}.items()},
        "sources": [str(p) for _, p in summaries],
        "task_aliases": aliases,
    }


def write_json(data: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def plot(data: dict[str, Any], out: Path) -> None:
    """One panel per (s_t measure, ground truth) with a point per run (labelled) and r in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [m for m in MEASURES if any(m in r for r in data["runs"])]
    truths = [g for g in GROUND_TRUTH if any(g in r for r in data["runs"])]
    if not measures or not truths:
        raise UserError("no run has both an s_t measure and a ground-truth measure: nothing to plot")
    fig, axes = plt.subplots(
        len(measures), len(truths), figsize=(4.8 * len(truths), 3.6 * len(measures)), squeeze=False
    )
    methods = sorted({str(r.get("method")) for r in data["runs"]})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    for i, m in enumerate(measures):
        for j, g in enumerate(truths):
            ax = axes[i][j]
            points = [r for r in data["runs"] if m in r and g in r]
            for r in points:
                ax.scatter(r[m], 100 * r[g], color=colours[str(r.get("method"))], s=36)
                ax.annotate(
                    r["run"], (r[m], 100 * r[g]), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
            corr = data["correlations"][f"{m} ~ {g}"]
            r_text = "r n/a" if corr["r"] is None else f"r = {corr['r']:+.2f}"
            ax.set_title(f"{r_text} over {corr['runs']} runs", fontsize=10)
            ax.set_xlabel(m.replace("_", " "))
            ax.set_ylabel(f"{g.replace('_', ' ')} (%)")
            ax.grid(alpha=0.3)
    fig.suptitle("Visual-dependency measures against the ground truth (one point per run)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(fig, out)
