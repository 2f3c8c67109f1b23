"""The fair comparison protocol of the tiny mini-replication: which runs, which one is selected, budgets.

Rules (docs/tiny_tier.md#7-fair-protocol, REPRODUCE.md section 5), all encoded in one YAML file
(train/tiny_protocol.yaml):

* every method starts from the same weak base and gets the same budget of optimizer steps, counted the
  same way: an SFT step and an RL step both count 1, and SFT-then-RL spends part of the budget on SFT;
  sequences seen and wall time are reported beside it;
* every method gets a tuning grid of the same size over its own knobs (the learning rate for all, the
  expert-term knobs for the guided methods, the SFT steps for the SFT methods), trained with seed 0 and
  scored on the validation split;
* the selected configuration (best validation accuracy; ties go to the earlier grid entry) is trained
  with the remaining seeds, and only those runs (and the weak base) are scored on the test and shifted
  splits, once;
* ablations change one key of TGRL's selected configuration.

This module holds the pure logic (plans, selection, budgets, the tuning table); scripts/run_protocol.py
runs the plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tgrl.utils import UserError, load_yaml_mapping

KINDS = ("rl", "sft", "sft_rl")
SELECTION_TASK = "synthetic_val"
SELECTION_METRIC = "acc"


@dataclass(frozen=True)
class RunSpec:
    """One training run of the protocol."""

    method: str  # the table's method name (tgrl, grpo, ...), also the summary rows' `method`
    kind: str  # rl | sft | sft_rl
    recipe: str  # recipe name in the recipe folder (rl stage for sft_rl)
    config_index: int  # position in the method's grid (ablations: the selected TGRL entry)
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)  # recipe keys (sft_steps: SFT stage of sft_rl)
    train_set: str = "experts"  # which filtered training set (experts | experts_nofilter)

    @property
    def name(self) -> str:
        return f"{self.method}_c{self.config_index}_s{self.seed}"

    @property
    def label(self) -> str:
        return config_label(self.overrides)


def config_label(overrides: dict[str, Any]) -> str:
    """A short, stable text for a grid entry: ``learning_rate=3e-05 expert_coef=4``."""
    return " ".join(f"{key}={_fmt(value)}" for key, value in overrides.items()) or "(recipe defaults)"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class Protocol:
    """The parsed protocol file."""

    path: Path
    budget_steps: int
    seeds: list[int]
    methods: dict[str, dict[str, Any]]  # method -> {kind, recipe, grid: [overrides, ...]}
    ablations: dict[str, dict[str, Any]]  # method -> {recipe, overrides, train_set}
    rollouts_per_step: int
    sft_batch: int
    recipes: Path  # folder of the methods' recipes

    def grid(self, method: str) -> list[dict[str, Any]]:
        return self.methods[method]["grid"]


def load_protocol(path: str | Path) -> Protocol:
    """Read and check the protocol file; errors name the file, the key and the fix."""
    path = Path(path)
    raw = load_yaml_mapping(path)
    where = f"{path}"
    for key in ("recipes", "budget_steps", "seeds", "methods", "rollouts_per_step", "sft_batch"):
        if key not in raw:
            raise UserError(f"{where}: missing key {key!r}. Fix: see train/tiny_protocol.yaml")
    methods = raw["methods"]
    sizes = {name: len(spec.get("grid") or []) for name, spec in methods.items()}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise UserError(
            f"{where}: every method needs a tuning grid of the same, non-zero size (fair protocol); got "
            f"{sizes}"
        )
    budget = int(raw["budget_steps"])
    for name, spec in methods.items():
        if spec.get("kind") not in KINDS:
            raise UserError(f"{where}: methods.{name}.kind must be one of {KINDS}, got {spec.get('kind')!r}")
        if "recipe" not in spec:
            raise UserError(f"{where}: methods.{name} needs a recipe")
        for i, entry in enumerate(spec["grid"]):
            if not isinstance(entry, dict):
                raise UserError(f"{where}: methods.{name}.grid[{i}] must be a mapping of recipe keys")
            if spec["kind"] == "sft_rl" and not 0 < int(entry.get("sft_steps", 0)) < budget:
                raise UserError(
                    f"{where}: methods.{name}.grid[{i}].sft_steps must be in (0, budget_steps={budget}): "
                    "SFT-then-RL spends part of the same budget on SFT"
                )
            if spec["kind"] == "sft" and int(entry.get("max_steps", budget)) > budget:
                raise UserError(f"{where}: methods.{name}.grid[{i}].max_steps exceeds budget_steps={budget}")
    ablations = raw.get("ablations") or {}
    for name, spec in ablations.items():
        if "recipe" not in spec:
            raise UserError(f"{where}: ablations.{name} needs a recipe")
    return Protocol(
        path=path,
        budget_steps=budget,
        seeds=[int(s) for s in raw["seeds"]],
        methods=methods,
        ablations=ablations,
        rollouts_per_step=int(raw["rollouts_per_step"]),
        sft_batch=int(raw["sft_batch"]),
        recipes=Path(raw["recipes"]),
    )


def tuning_runs(protocol: Protocol) -> list[RunSpec]:
    """Every grid entry of every method, with the first seed (scored on the validation split)."""
    seed = protocol.seeds[0]
    return [
        RunSpec(name, spec["kind"], spec["recipe"], i, seed, dict(entry))
        for name, spec in protocol.methods.items()
        for i, entry in enumerate(spec["grid"])
    ]


def select(protocol: Protocol, rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Per method, the grid index with the best validation accuracy of its seed-0 run (ties: earlier entry).

    ``rows`` are summary rows (results/.../summary.jsonl); a grid entry without a validation row is an
    error naming the run, never a silent pick among the rest."""
    scores = validation_scores(protocol, rows)
    selected = {}
    for run in tuning_runs(protocol):
        if run.name not in scores:
            raise UserError(
                f"no {SELECTION_TASK} {SELECTION_METRIC} row for run {run.name}: the tuning stage is not "
                "finished. Fix: rerun the protocol (it resumes)"
            )
    for name in protocol.methods:
        best = max(
            range(len(protocol.grid(name))), key=lambda i: (scores[f"{name}_c{i}_s{protocol.seeds[0]}"], -i)
        )
        selected[name] = best
    return selected


def validation_scores(protocol: Protocol, rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """run name -> validation accuracy (the last row of a run wins)."""
    scores = {}
    for row in rows:
        if row.get("task") == SELECTION_TASK and row.get("metric") == SELECTION_METRIC:
            scores[row["run"]] = float(row["value"])
    return scores


def final_runs(protocol: Protocol, selected: dict[str, int]) -> list[RunSpec]:
    """The selected entry of every method at every seed (the first seed's run is the tuning run)."""
    out = []
    for name, spec in protocol.methods.items():
        entry = spec["grid"][selected[name]]
        out += [
            RunSpec(name, spec["kind"], spec["recipe"], selected[name], s, dict(entry))
            for s in protocol.seeds
        ]
    return out


def ablation_runs(protocol: Protocol, selected: dict[str, int], base_method: str = "tgrl") -> list[RunSpec]:
    """TGRL's selected entry with one change each (first seed): ``overrides`` of the ablation win."""
    entry = protocol.grid(base_method)[selected[base_method]]
    return [
        RunSpec(
            name,
            "rl",
            spec["recipe"],
            selected[base_method],
            protocol.seeds[0],
            {**entry, **(spec.get("overrides") or {})},
            spec.get("train_set", "experts"),
        )
        for name, spec in protocol.ablations.items()
    ]


def budget_of(protocol: Protocol, run: RunSpec) -> dict[str, int]:
    """Optimizer steps (the budget, equal for all), and the split into SFT / RL steps and sequences."""
    total = protocol.budget_steps
    if run.kind == "sft":
        sft_steps, rl_steps = int(run.overrides.get("max_steps", total)), 0
    elif run.kind == "sft_rl":
        sft_steps = int(run.overrides["sft_steps"])
        rl_steps = total - sft_steps
    else:
        sft_steps, rl_steps = 0, total
    return {
        "optimizer_steps": sft_steps + rl_steps,
        "sft_steps": sft_steps,
        "rl_steps": rl_steps,
        "sequences": sft_steps * protocol.sft_batch + rl_steps * protocol.rollouts_per_step,
    }


def tuning_table(protocol: Protocol, rows: list[dict[str, Any]], selected: dict[str, int]) -> tuple[str, str]:
    """(Markdown, CSV) of every grid entry's validation scores, the selected entry marked; from summary
    rows."""
    by_run: dict[str, dict[str, float]] = {}
    for row in rows:
        if row.get("task") == SELECTION_TASK:
            by_run.setdefault(row["run"], {})[row["metric"]] = float(row["value"])
    metrics = [
        ("acc", "val acc"),
        ("acc_sum", "sum"),
        ("acc_diff", "diff"),
        ("acc_cmp", "cmp"),
        ("fact_acc", "fact acc"),
    ]
    header = ["method", "grid entry", *(label for _, label in metrics), "selected"]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv = [",".join(header)]
    for run in tuning_runs(protocol):
        values = by_run.get(run.name, {})
        cells = [_pct(values.get(key)) for key, _ in metrics]
        mark = "yes" if selected.get(run.method) == run.config_index else ""
        md.append("| " + " | ".join([run.method, run.label, *cells, mark]) + " |")
        csv.append(",".join([run.method, f'"{run.label}"', *cells, mark]))
    base = by_run.get("base", {})
    if base:
        md.append(
            "| "
            + " | ".join(
                ["base", "(weak base, start of every run)", *(_pct(base.get(k)) for k, _ in metrics), ""]
            )
            + " |"
        )
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


def _pct(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def split_means(
    rows: Iterable[dict[str, Any]], task: str = "synthetic_test", decoding: str = "greedy"
) -> dict:
    """method -> metric -> mean over the method's runs (seeds) of the last row per (run, metric)."""
    latest: dict[tuple[str, str, str], float] = {}
    for row in rows:
        if row.get("task") == task and row.get("decoding", "greedy") == decoding:
            latest[(row["method"], row["run"], row["metric"])] = float(row["value"])
    grouped: dict[str, dict[str, list[float]]] = {}
    for (method, _, metric), value in latest.items():
        grouped.setdefault(method, {}).setdefault(metric, []).append(value)
    return {m: {k: sum(v) / len(v) for k, v in metrics.items()} for m, metrics in grouped.items()}


def reading(rows: Iterable[dict[str, Any]], methods: Iterable[str] = ("grpo", "tgrl")) -> str:
    """Two sentences that read the tiny table, written from the numbers (never typed): what went up from
    the weak base on the test split, what did not, and where to look."""
    rows = list(rows)
    means = split_means(rows)
    base = means.get("base")
    if not base:
        return "No weak-base test rows yet: nothing to read."
    parts, flat = [], []
    for method in methods:
        got = means.get(method)
        if not got or "acc" not in got:
            continue
        delta = 100 * (got["acc"] - base["acc"])
        text = f"{method}: accuracy {100 * base['acc']:.1f} -> {100 * got['acc']:.1f} ({delta:+.1f})"
        if "fact_acc" in got and "fact_acc" in base:
            text += f", fact accuracy {100 * base['fact_acc']:.1f} -> {100 * got['fact_acc']:.1f}"
        for sub in ("acc_diff", "acc_cmp"):
            if sub in got and sub in base and got[sub] - base[sub] < 0.02:
                flat.append(f"{method} {sub.removeprefix('acc_')}")
        parts.append(text)
    first = "From the weak base on the held-out test split, " + "; ".join(parts) + "."
    second = (
        ("Did not rise (under 2 points): " + ", ".join(flat) + ". ")
        if flat
        else "Every method shown rose on diff and cmp. "
    )
    second += (
        "Where to look: the training curves (expert content-token p, expert gradient-norm ratio, fact "
        "accuracy) "
        "show whether the expert term moved the policy."
    )
    return first + "\n" + second
