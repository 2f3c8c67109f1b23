"""The fair comparison protocol of the tiny mini-replication: which runs, which one is selected, budgets.

Rules (docs/tiny_tier.md#7-fair-protocol, REPRODUCE.md section 5), all encoded in one YAML file
(train/tiny_protocol.yaml):

* every method starts from the same weak base and gets the same budget of optimizer steps, counted the
  same way: an SFT step and an RL step both count 1, and SFT-then-RL spends part of the budget on SFT;
  sequences seen and wall time are reported beside it;
* every method gets a tuning grid of the same size over its own knobs (the learning rate for all, the
  expert-term knobs for the guided methods, the SFT steps for the SFT methods), trained with the
  ``tuning_seeds`` (default: the first seed) and scored greedily on the ``selection_tasks`` (validation
  splits; default synthetic_val);
* the selected configuration (best mean greedy validation accuracy over the tuning seeds and selection
  tasks; ties go to the earlier grid entry) is trained with every seed, and only those runs (and the weak
  base) are scored on the test and shifted splits, once (sealed splits: tgrl/sealing.py);
* ablations change exactly one key of TGRL's selected configuration (a recipe key, or the training set:
  one data key), at every seed.

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
SELECTION_DECODING = "greedy"  # an avg@8 (or grounding) validation row never replaces the greedy score


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


# How many items of the (first) test split the final evaluation's secondary measures read (None: all). The
# primary accuracy is always scored on every item. A limited blind control gets a sighted greedy evaluation
# of the same items as its partner for the multimodal gain (mg_<metric>).
FINAL_EVAL_LIMITS: dict[str, int | None] = {"grounding_items": None, "avg_items": None, "blind_items": None}


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
    tuning_seeds: list[int] = field(default_factory=list)  # seeds of every grid entry (default: seeds[0])
    selection_tasks: dict[str, str] = field(default_factory=lambda: {SELECTION_TASK: "synthetic/val.jsonl"})
    sealed: dict[str, Any] | None = None  # {seed, n_test, n_shifted, twin_sources, folder}: tgrl/sealing.py
    final_eval: dict[str, int | None] = field(default_factory=lambda: dict(FINAL_EVAL_LIMITS))
    train_sets: dict[str, list[str]] = field(default_factory=lambda: {"experts": []})  # name -> filter flags
    raw: dict[str, Any] = field(default_factory=dict)  # the whole file (optional sections: sealed, ...)

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
    seeds = [int(s) for s in raw["seeds"]]
    tuning_seeds = [int(s) for s in raw.get("tuning_seeds") or seeds[:1]]
    if not tuning_seeds or not set(tuning_seeds) <= set(seeds):
        raise UserError(f"{where}: tuning_seeds {tuning_seeds} must be a non-empty subset of seeds {seeds}")
    selection_tasks = raw.get("selection_tasks") or {SELECTION_TASK: "synthetic/val.jsonl"}
    if not isinstance(selection_tasks, dict):
        raise UserError(f"{where}: selection_tasks must map a task name to its JSONL under the data folder")
    sets = raw.get("train_sets") or {"experts": []}
    train_sets = {str(k): [str(f) for f in (v or [])] for k, v in sets.items()}
    for name, spec in ablations.items():
        if spec.get("train_set", "experts") not in train_sets:
            raise UserError(f"{where}: ablations.{name}.train_set {spec['train_set']!r} is not in train_sets")
    sealed = raw.get("sealed")
    if sealed is not None:
        missing = [k for k in ("seed", "n_test", "n_shifted") if k not in (sealed or {})]
        if missing:
            raise UserError(f"{where}: sealed needs {missing} (a new generator seed and the split sizes)")
        sealed = {"folder": "sealed", **sealed}
    final_eval = dict(FINAL_EVAL_LIMITS)
    for key, value in (raw.get("final_eval") or {}).items():
        if key not in FINAL_EVAL_LIMITS or not (value is None or (isinstance(value, int) and value > 0)):
            raise UserError(
                f"{where}: final_eval.{key}: {value!r}. Fix: keys {sorted(FINAL_EVAL_LIMITS)}, each a "
                "positive item count or null (all items)"
            )
        final_eval[key] = value
    return Protocol(
        path=path,
        budget_steps=budget,
        seeds=seeds,
        methods=methods,
        ablations=ablations,
        rollouts_per_step=int(raw["rollouts_per_step"]),
        sft_batch=int(raw["sft_batch"]),
        recipes=Path(raw["recipes"]),
        tuning_seeds=tuning_seeds,
        selection_tasks={str(k): str(v) for k, v in selection_tasks.items()},
        sealed=sealed,
        final_eval=final_eval,
        train_sets=train_sets,
        raw=raw,
    )


def tuning_runs(protocol: Protocol) -> list[RunSpec]:
    """Every grid entry of every method at every tuning seed (scored on the validation splits)."""
    return [
        RunSpec(name, spec["kind"], spec["recipe"], i, seed, dict(entry))
        for name, spec in protocol.methods.items()
        for i, entry in enumerate(spec["grid"])
        for seed in protocol.tuning_seeds
    ]


def select(protocol: Protocol, rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Per method, the grid index with the best mean greedy validation accuracy over its tuning seeds and
    the selection tasks (ties: earlier entry).

    ``rows`` are summary rows (results/.../summary.jsonl); a tuning run without a validation row is an
    error naming the run and the task, never a silent pick among the rest."""
    scores = validation_scores(protocol, rows)
    for run in tuning_runs(protocol):
        for task in protocol.selection_tasks:
            if (run.name, task) not in scores:
                raise UserError(
                    f"no {task} {SELECTION_METRIC} ({SELECTION_DECODING}) row for run {run.name}: the tuning "
                    "stage is not finished. Fix: rerun the protocol (it resumes)"
                )
    means = entry_scores(protocol, scores)
    return {
        name: max(range(len(protocol.grid(name))), key=lambda i, name=name: (means[(name, i)], -i))
        for name in protocol.methods
    }


def entry_scores(protocol: Protocol, scores: dict[tuple[str, str], float]) -> dict[tuple[str, int], float]:
    """(method, grid index) -> mean of its validation scores over tuning seeds and selection tasks (the
    entries with every score)."""
    out = {}
    for name in protocol.methods:
        for i in range(len(protocol.grid(name))):
            values = [
                scores.get((f"{name}_c{i}_s{seed}", task))
                for seed in protocol.tuning_seeds
                for task in protocol.selection_tasks
            ]
            if all(v is not None for v in values):
                out[(name, i)] = sum(values) / len(values)
    return out


def validation_scores(protocol: Protocol, rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """(run name, selection task) -> greedy validation accuracy (the last row of a run wins; rows of
    another decoding, such as avg@8, never count)."""
    scores = {}
    for row in rows:
        if (
            row.get("task") in protocol.selection_tasks
            and row.get("metric") == SELECTION_METRIC
            and row.get("decoding", "greedy") == SELECTION_DECODING
        ):
            scores[(row["run"], row["task"])] = float(row["value"])
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
    """TGRL's selected entry with one change each, at every seed (paired with TGRL's runs): ``overrides``
    of the ablation win."""
    entry = protocol.grid(base_method)[selected[base_method]]
    return [
        RunSpec(
            name,
            "rl",
            spec["recipe"],
            selected[base_method],
            seed,
            {**entry, **(spec.get("overrides") or {})},
            spec.get("train_set", "experts"),
        )
        for name, spec in protocol.ablations.items()
        for seed in protocol.seeds
    ]


def seed_major(protocol: Protocol, runs: list[RunSpec]) -> list[RunSpec]:
    """``runs`` ordered seed by seed (stable within a seed): a protocol stopped part-way leaves complete
    paired seeds, every method and ablation at each, and the tuning seeds' checkpoints, still on disk, are
    scored first."""
    return sorted(runs, key=lambda run: protocol.seeds.index(run.seed))


def training_budget(protocol: Protocol, run: RunSpec) -> dict[str, int]:
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
    """(Markdown, CSV) of every grid entry's greedy validation scores (means over the tuning seeds), the
    selection score and the selected entry marked; from summary rows (other decodings never count)."""
    rows = list(rows)
    scores = entry_scores(protocol, validation_scores(protocol, rows))
    task = next(iter(protocol.selection_tasks))
    by_run: dict[str, dict[str, float]] = {}
    for row in rows:
        if row.get("task") == task and row.get("decoding", "greedy") == SELECTION_DECODING:
            by_run.setdefault(row["run"], {})[row["metric"]] = float(row["value"])
    metrics = [("acc_sum", "sum"), ("acc_diff", "diff"), ("acc_cmp", "cmp"), ("fact_acc", "fact acc")]
    score_label = "selection score (" + " + ".join(protocol.selection_tasks) + ")"
    header = ["method", "grid entry", "seeds", score_label, *(f"{task} {label}" for _, label in metrics)]
    header.append("selected")
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv = [",".join(f'"{h}"' if "," in h else h for h in header)]
    for name in protocol.methods:
        for i, entry in enumerate(protocol.grid(name)):
            runs = [f"{name}_c{i}_s{seed}" for seed in protocol.tuning_seeds]
            cells = [_pct(_mean([by_run.get(r, {}).get(key) for r in runs])) for key, _ in metrics]
            label = config_label(entry)
            mark = "yes" if selected.get(name) == i else ""
            seeds = " ".join(map(str, protocol.tuning_seeds))
            md.append(
                "| " + " | ".join([name, label, seeds, _pct(scores.get((name, i))), *cells, mark]) + " |"
            )
            csv.append(",".join([name, f'"{label}"', seeds, _pct(scores.get((name, i))), *cells, mark]))
    base = by_run.get("base", {})
    if base:
        base_score = _mean(
            [validation_scores(protocol, rows).get(("base", t)) for t in protocol.selection_tasks]
        )
        cells = [_pct(base.get(k)) for k, _ in metrics]
        md.append(
            "| " + " | ".join(["base", "(weak base, start of every run)", "", _pct(base_score), *cells, ""])
        )
        md[-1] += " |"
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


def _mean(values: list[float | None]) -> float | None:
    """The mean when every value is there, else None (an unfinished entry shows no number)."""
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


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


PROCESS_SECONDS = 30.0  # start-up of one train / eval process on the 2-core tier (imports + model load)


def plan_counts(protocol: Protocol) -> dict[str, int]:
    """How many trainings and scorings the full protocol runs (whatever the selection: the selected entry's
    tuning seeds are reused, so each method adds len(seeds) - len(tuning_seeds) trainings)."""
    methods, seeds, tuning = len(protocol.methods), len(protocol.seeds), len(protocol.tuning_seeds)
    entries = len(protocol.grid(next(iter(protocol.methods))))
    reused = len(set(protocol.tuning_seeds) & set(protocol.seeds))
    counts = {
        "tuning_trainings": methods * entries * tuning,
        "final_new_trainings": methods * (seeds - reused),
        "ablation_trainings": len(protocol.ablations) * seeds,
        "final_scorings": methods * seeds + len(protocol.ablations) * seeds + 1,  # + the weak base
        "tuning_scorings": methods * entries * tuning + 1,
    }
    counts["trainings"] = (
        counts["tuning_trainings"] + counts["final_new_trainings"] + counts["ablation_trainings"]
    )
    return counts


def estimate_minutes(protocol: Protocol, rows: Iterable[dict[str, Any]], jobs: int = 2) -> dict[str, Any]:
    """The protocol's wall time from recorded runs (a summary.jsonl): per-method training minutes (its
    ``train_minutes`` rows, measured while ``jobs`` runs shared the cores; an ablation without rows: TGRL's),
    each evaluation's ``eval_seconds`` (greedy validation, greedy test + shifted, --visual-dependency, avg@8;
    the probe's forward taken as the grounding pass's ``grounding_seconds``), plus PROCESS_SECONDS per
    process; the sum over all runs divided by ``jobs``. Returns the parts and the arithmetic."""
    rows = list(rows)
    train: dict[str, list[float]] = {}
    evals: dict[str, list[float]] = {}
    seen = set()
    for row in rows:
        if row.get("metric") == "train_minutes":
            train.setdefault(row["method"], []).append(float(row["value"]))
        if row.get("metric") == "vis_dep_reasoning" and row.get("grounding_seconds") is not None:
            evals.setdefault("probe", []).append(float(row["grounding_seconds"]))
        if "eval_seconds" not in row or (row["run"], row.get("key")) in seen:
            continue
        seen.add((row["run"], row.get("key")))  # one row per evaluation (a row per metric shares it)
        vis = bool((row.get("settings") or {}).get("visual_dependency"))
        kind = "visdep" if vis else f"{row['task'].split('_')[-1]}_{row.get('decoding', 'greedy')}"
        evals.setdefault(kind, []).append(float(row["eval_seconds"]))

    def mean(values: list[float] | None, what: str) -> float:
        if not values:
            raise UserError(f"no recorded {what} in the summary: cannot estimate the protocol's time")
        return sum(values) / len(values)

    tgrl = mean(train.get("tgrl"), "tgrl train_minutes")
    per_method = {
        m: mean(train.get(m), f"{m} train_minutes") + PROCESS_SECONDS / 60 for m in protocol.methods
    }
    for m, spec in protocol.methods.items():
        if spec["kind"] == "sft_rl":
            per_method[m] += PROCESS_SECONDS / 60  # its SFT stage is a process of its own
    per_ablation = {a: mean(train.get(a) or [tgrl], a) + PROCESS_SECONDS / 60 for a in protocol.ablations}
    val = len(protocol.selection_tasks) * mean(evals.get("val_greedy"), "validation eval_seconds")
    tune_eval = (val + PROCESS_SECONDS) / 60
    final_eval = (
        mean(evals.get("test_greedy"), "test eval_seconds")
        + mean(evals.get("shifted_greedy"), "shifted eval_seconds")
        + mean(evals.get("visdep"), "--visual-dependency eval_seconds")
        + mean(evals.get("test_avg@8"), "avg@8 eval_seconds")
        + mean(evals.get("probe"), "grounding_seconds")
        + 2 * PROCESS_SECONDS  # one batch (greedy, grounding, avg@8, probe: eval/run_batch.py), the summary
    ) / 60
    counts = plan_counts(protocol)
    entries = len(protocol.grid(next(iter(protocol.methods))))
    new_seeds = counts["final_new_trainings"] // len(protocol.methods)
    parts = {
        "tuning": sum(per_method.values()) * entries * len(protocol.tuning_seeds)
        + counts["tuning_scorings"] * tune_eval,
        "final": sum(per_method.values()) * new_seeds
        + sum(per_ablation.values()) * len(protocol.seeds)
        + counts["final_scorings"] * final_eval,
    }
    total = sum(parts.values())
    return {
        "train_minutes": {**per_method, **per_ablation},
        "tuning_eval_minutes": tune_eval,
        "final_eval_minutes": final_eval,
        "cpu_minutes": parts,
        "jobs": jobs,
        "wall_minutes": total / jobs,
        "counts": counts,
    }


def progress_minutes(
    protocol: Protocol, rows: Iterable[dict[str, Any]], jobs: int = 2
) -> dict[str, Any] | None:
    """Where the protocol is and what is left, from its own ``protocol_done`` rows (each holds its stage's
    minutes, training and scoring, measured while ``jobs`` ran at once): stages done and their minutes, and
    the stages left at the mean minutes of their kind. Kinds: a method's tuning stage; a final stage at a
    tuning seed (scoring only: the tuning checkpoint is reused); a final stage that trains, per method or
    ablation (without rows yet: its tuning stage plus a scoring; an ablation: TGRL's). None until every
    method has a finished tuning stage."""
    stages: dict[tuple[str, str], tuple[str, int, float]] = {}  # (stage, run) -> (method, seed, minutes)
    for row in rows:
        if row.get("metric") == "protocol_done" and row.get("run") != "base":
            stages[(row["stage"], row["run"])] = (row["method"], int(row["seed"]), float(row["value"]))
    done = [(stage, method, seed, v) for (stage, _), (method, seed, v) in stages.items()]
    tune = _means({m: [v for st, m2, _, v in done if st == "tune" and m2 == m] for m in protocol.methods})
    if None in tune.values():
        return None
    tuning = set(protocol.tuning_seeds)
    scoring = [v for st, _, s, v in done if st == "final" and s in tuning]
    score = sum(scoring) / len(scoring) if scoring else min(tune.values())
    trained = [(m, v) for st, m, s, v in done if st == "final" and s not in tuning]
    trains = _means(
        {m: [v for m2, v in trained if m2 == m] for m in [*protocol.methods, *protocol.ablations]}
    )
    for m in protocol.methods:
        trains[m] = trains[m] if trains[m] is not None else tune[m] + score
    for a in protocol.ablations:
        trains[a] = trains[a] if trains[a] is not None else trains["tgrl"]
    entries = len(protocol.grid(next(iter(protocol.methods))))
    left = 0.0
    for m in protocol.methods:
        tuned = sum(st == "tune" and m2 == m for st, m2, _, _ in done)
        left += tune[m] * (entries * len(protocol.tuning_seeds) - tuned)
    finished = {(m, s) for st, m, s, _ in done if st == "final"}
    for m in [*protocol.methods, *protocol.ablations]:
        for seed in protocol.seeds:
            if (m, seed) not in finished:
                left += score if (m in protocol.methods and seed in tuning) else trains[m]
    counts = plan_counts(protocol)
    total = counts["tuning_trainings"] + (len(protocol.methods) + len(protocol.ablations)) * len(
        protocol.seeds
    )
    return {
        "stages_done": len(done),
        "stages_total": total,
        "minutes_done": sum(d[3] for d in done) / jobs,
        "minutes_left": left / jobs,
        "per_stage_minutes": {"tune": tune, "final_scoring_only": score, "final_training": trains},
        "jobs": jobs,
    }


def _means(values: dict[str, list[float]]) -> dict[str, float | None]:
    return {k: (sum(v) / len(v) if v else None) for k, v in values.items()}
