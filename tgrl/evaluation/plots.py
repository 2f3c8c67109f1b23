"""Training curves (PNG) from the trainer's metrics JSONL (eval/plot_training.py): one figure per run and
overlays across runs, the seeds of a method pooled into a mean and a band.

The loss is a poor health signal for GRPO-style training (docs/design.md#103-results), so the panels show
reward, accuracy, length, entropy and TGRL's grounding curves. Each panel's candidate metric keys are in
:data:`PANELS`; panels, outputs and seed pooling: docs/metrics.md#training-metrics.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on CPU boxes and CI
import matplotlib.pyplot as plt  # noqa: E402

# panel title -> {series label -> candidate keys, first present wins}. Edit here when the trainer's names
# change.
PANELS: dict[str, dict[str, list[str]]] = {
    "reward": {
        "reward": ["reward", "rewards/mean", "reward/mean"],
    },
    "accuracy": {
        "on-policy": [
            "accuracy/on_policy",
            "acc/on_policy",
            "rewards/accuracy_reward/mean",
            "rewards/accuracy/mean",
            "accuracy",
        ],
        "expert": ["accuracy/expert", "acc/expert"],
    },
    "completion length": {
        "length": ["completions/mean_length", "completion_length", "response_length", "length/mean"],
    },
    "entropy": {
        "entropy": ["entropy", "entropy/mean", "policy_entropy"],
    },
    # docs/metrics.md: the expert's content tokens (p_mean is dominated by template tokens at p ~ 1)
    "expert content-token p": {
        "fact tokens": ["expert/p_fact"],
        "tokens with p < 0.5": ["expert/p_low"],
    },
    # grad/expert_share is |g_exp| / (|g_on| + |g_exp|), not a share of the update (docs/metrics.md)
    "expert gradient-norm ratio": {
        "|g_exp| / (|g_on| + |g_exp|)": ["grad/expert_share"],
    },
    "visual dependency s_t": {
        "expert tokens": ["vis_dep/expert", "vis_dep_expert", "s_t/expert"],
        "on-policy tokens": ["vis_dep/on_policy", "vis_dep_on_policy", "s_t/on_policy"],
    },
    "fact accuracy": {
        "on-policy traces": ["fact_accuracy", "fact_acc", "facts/accuracy", "fact_acc/on_policy"],
    },
}


class InputError(Exception):
    """A problem in a metrics file: one line on stderr, exit status 2."""


def load_metrics(path: Path) -> dict[int, dict[str, float]]:
    """step -> {key: value} with numeric values only; a step logged twice keeps its later line. A ``.gz``
    file (the protocol's kept curves, OUT/curves/) is read the same way."""
    if not path.is_file():
        raise InputError(f"{path}: metrics file not found")
    steps: dict[int, dict[str, float]] = {}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"{path} line {line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(d, dict):
                raise InputError(f"{path} line {line_no}: expected a JSON object")
            step = d.get("step")
            if isinstance(step, bool) or not isinstance(step, int | float):
                continue  # e.g. a final summary line without a step: not a curve point
            vals = {}
            for k, v in d.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    vals[k.removeprefix("train/")] = float(v)
            steps[int(step)] = vals
    return steps


def series(steps: dict[int, dict[str, float]], candidates: list[str]) -> tuple[list[int], list[float]] | None:
    """The first candidate key present in this run, as (steps, values)."""
    for key in candidates:
        xs = [s for s in sorted(steps) if key in steps[s]]
        if xs:
            return xs, [steps[s][key] for s in xs]
    return None


def smooth(ys: list[float], window: int) -> list[float]:
    """Trailing moving average (window 1 = raw); the first points average over what exists so far."""
    if window <= 1:
        return ys
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def save_atomic(fig, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def draw(ax, xs: list[int], ys: list[float], window: int, **kw) -> None:
    if window > 1:
        ax.plot(xs, ys, alpha=0.2, linewidth=0.8, color=kw.get("color"))
    ax.plot(xs, smooth(ys, window), linewidth=1.5, **kw)


def grid_axes(n: int, title: str):
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, list(axes.flat[:n])


def legend_below(fig, axes) -> None:
    """One legend for the figure, below the panels (legends drawn inside the axes covered the curves)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        ncol = min(4, len(entries))
        fig.legend(entries.values(), entries.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol)


def run_labels(paths: list[Path]) -> list[str]:
    """The run directory's name; parent dirs are added when two runs would share a label."""
    labels = [p.parent.name or p.stem for p in paths]
    for i, p in enumerate(paths):
        if labels.count(labels[i]) > 1:
            labels[i] = f"{p.parent.parent.name}/{p.parent.name}"
    return labels


STYLE_NAMES = ("solid:", "dashed:", "dotted:", "dash-dot:")  # names of the overlay line styles, in order
SEED_SUFFIX = re.compile(r"(?:_c\d+)?_s(?:eed)?\d+$")


def method_of(run: str) -> str:
    """``tgrl_s2`` or ``tgrl_c2_s2`` (the protocol's config and seed) -> ``tgrl``: the overlays draw the
    seeds of one method as one curve and band."""
    return SEED_SUFFIX.sub("", run)


def seed_band(
    curves: list[tuple[list[int], list[float]]],
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean, min and max over seeds at the steps every seed logged (resumed or shorter runs may
    miss some)."""
    common = sorted(set.intersection(*(set(xs) for xs, _ in curves)))
    at = [dict(zip(xs, ys, strict=True)) for xs, ys in curves]
    cols = [[a[x] for a in at] for x in common]
    return common, [sum(c) / len(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]


def plot_runs(
    runs: dict[str, dict[int, dict[str, float]]],
    out: Path,
    window: int,
    groups: dict[str, list[str]] | None = None,
) -> list[Path]:
    """One figure per run and the overlays into ``out``; returns the files written. A run without any
    known key gets a warning and no figure.

    ``groups`` (name -> methods) draws one overlay set per group, ``overlay_<name>.png`` and
    ``overlay_<name>_<panel>.png`` (e.g. the main methods apart from the ablations, so neither figure
    holds more curves than a reader can follow); None: one set over every method (``overlay.png``)."""
    out.mkdir(parents=True, exist_ok=True)
    suffix = f" (moving average over {window} steps)" if window > 1 else ""

    # which (panel, series) exist in which run
    found = {
        run: {
            p: {s: hit for s, keys in sers.items() if (hit := series(steps, keys))}
            for p, sers in PANELS.items()
        }
        for run, steps in runs.items()
    }
    written = []
    for run, panels in found.items():
        present = [p for p in PANELS if panels[p]]
        if not present:
            print(
                f"warning: {run}: none of the known metric keys found (see PANELS in {__file__})",
                file=sys.stderr,
            )
            continue
        fig, axes = grid_axes(len(present), run + suffix)
        for ax, p in zip(axes, present, strict=True):
            for i, (s, (xs, ys)) in enumerate(panels[p].items()):
                draw(ax, xs, ys, window, label=s, color=f"C{i}")
            ax.set_title(p)
            ax.set_xlabel("step")
        fig.tight_layout()
        legend_below(fig, [ax for ax, p in zip(axes, present, strict=True) if len(panels[p]) > 1])
        path = out / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', run)}.png"
        save_atomic(fig, path)
        written.append(path)

    # overlays: colour = method (its seeds averaged, min-max band), line style = series within a panel
    present = [p for p in PANELS if any(found[r][p] for r in found)]
    styles = ["-", "--", ":", "-."]
    methods: dict[str, list[str]] = {}
    for run in found:
        methods.setdefault(method_of(run), []).append(run)

    def overlay(ax, p: str, names: list[str]) -> None:
        for i, method in enumerate(names):
            members, color = methods[method], f"C{i % 10}"
            for j, s in enumerate(PANELS[p]):
                curves = [
                    (xs, smooth(ys, window))
                    for run in members
                    if (hit := found[run][p].get(s))
                    for xs, ys in [hit]
                ]
                if not curves:
                    continue
                xs, mean, lo, hi = seed_band(curves)
                seeds = f" ({len(curves)} seeds)" if len(curves) > 1 else ""
                # the legend names methods (colour); a panel's line styles are named in its title
                ax.plot(
                    xs,
                    mean,
                    linewidth=1.5,
                    color=color,
                    linestyle=styles[j % len(styles)],
                    label=method + seeds,
                )
                if len(curves) > 1:
                    ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
        series_names = list(PANELS[p])
        if len(series_names) > 1:
            keys = ", ".join(f"{STYLE_NAMES[j % len(styles)]} {s}" for j, s in enumerate(series_names))
            ax.set_title(f"{p}\n({keys})", fontsize=10)
        else:
            ax.set_title(p)
        ax.set_xlabel("step")

    sets = groups or {"": list(methods)}
    for group, wanted in sets.items():
        names = [m for m in wanted if m in methods]
        shown = [p for p in present if any(found[r][p] for m in names for r in methods[m])]
        if not names or not shown:
            continue
        stem = f"overlay_{group}" if group else "overlay"
        title = f"{group or 'all'} methods, mean and min-max over seeds" + suffix
        fig, axes = grid_axes(len(shown), title)
        for ax, p in zip(axes, shown, strict=True):
            overlay(ax, p, names)
        fig.tight_layout()
        legend_below(fig, axes)
        save_atomic(fig, out / f"{stem}.png")
        written.append(out / f"{stem}.png")
        for p in shown:
            fig, ax = plt.subplots(figsize=(6, 4))
            overlay(ax, p, names)
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
            fig.tight_layout()
            path = out / f"{stem}_{re.sub(r'[^A-Za-z0-9]+', '_', p).strip('_')}.png"
            save_atomic(fig, path)
            written.append(path)
    return written
