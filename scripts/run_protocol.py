"""Run the tiny mini-replication's fair protocol (tgrl/protocol.py): tune on validation, then test once.

    python scripts/run_protocol.py --protocol train/tiny_protocol.yaml \
        --work checkpoints/tiny_repro --data data/tiny_repro --out results/tiny [--jobs 2]

Needs the weak base (WORK/base) and the filtered expert sets (DATA/experts, DATA/experts_nofilter) that
scripts/reproduce_tiny.sh builds first. Stages, each resumable (finished trainings have a done marker,
finished evaluations a summary row; a rerun only does what is missing):

1. tune: every grid entry of every method, seed 0, scored on the validation split (synthetic_val);
2. select: the best validation accuracy per method (ties: the earlier entry) -> OUT/selected.json and
   the tuning table OUT/tables/tiny_tuning.{md,csv};
3. final: the selected entries at every seed, the ablations (one key of TGRL's selected entry changed)
   and the weak base, scored once on the test and shifted splits (greedy, and avg@8 at T=1), with the
   teacher-forced expert content-token probability and the training diagnostics; plus, as evaluations of
   their own (each with its own settings key), the visual dependency s_t of each checkpoint's own greedy
   reasoning on the test split (tgrl/grounding.py), the counterfactual twin split of the test split
   (synthetic_test_twins: twin tracking, move invariance), the blind control (--blind: accuracy with
   the images blanked, and the multimodal gain) and the s_t at the fact tokens of the oracle trajectories
   at the run's rollout temperature (probe --fact-dependency). Added to a finished protocol, a rerun runs
   only the evaluations whose keys the summary lacks.

Runs go JOBS at a time (each a single-threaded process); the first failure stops the scheduling and names
its log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import yaml

from tgrl.evaluation.runner import append_locked, finished_keys
from tgrl.protocol import (
    Protocol,
    RunSpec,
    ablation_runs,
    estimate_minutes,
    final_runs,
    load_protocol,
    progress_minutes,
    seed_major,
    select,
    training_budget,
    tuning_runs,
    tuning_table,
)
from tgrl.sealing import (
    MANIFEST,
    ScoringLog,
    check_inputs,
    freeze,
    input_hashes,
    keep_inputs,
    require_frozen,
    restore_inputs,
)
from tgrl.synthetic import build_sealed_splits
from tgrl.utils import (
    UserError,
    atomic_write_text,
    cli,
    keep_gzipped,
    read_jsonl,
    sha256_file,
    weights_sha256,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
DONE = ".tgrl_done"


class Runner:
    """Trains and scores protocol runs with the repo's own CLIs (train/*.py, eval/*.py).

    Resumable per run and without checkpoints: a run whose stage finished has a ``protocol_done`` row in
    the summary (key: the run's spec and stage), so a rerun, also from a fresh clone with only the committed
    results, skips it before training; its curves are copied to OUT/curves/<run>.metrics.jsonl.gz."""

    def __init__(
        self,
        protocol: Protocol,
        work: Path,
        data: Path,
        out: Path,
        quick: bool = False,
        rescore: str | None = None,
    ) -> None:
        self.protocol, self.work, self.data, self.out = protocol, work, data, out
        self.quick = quick  # demo: no avg@8 (2 min per checkpoint on 2 cores) and no validation of the base
        self.rescore = rescore  # a reason to score a checkpoint on a sealed split again (logged)
        self.summary = out / "summary.jsonl"
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.recipes = protocol.recipes if protocol.recipes.is_absolute() else REPO / protocol.recipes
        self.selection_files = {task: data / rel for task, rel in protocol.selection_tasks.items()}
        synthetic = data / "synthetic"
        self.test_files = {
            "synthetic_test": synthetic / "test.jsonl",
            "synthetic_shifted": synthetic / "shifted.jsonl",
        }
        self.sealed = protocol.sealed is not None and not quick  # the demo never touches a sealed split
        if self.sealed:
            self.sealed_dir = data / protocol.sealed["folder"]
            self.test_files = {
                t: self.sealed_dir / f"{s}.jsonl"
                for t, s in (("sealed_test", "test"), ("sealed_shifted", "shifted"))
            }

    @property
    def test_task(self) -> str:
        return next(iter(self.test_files))

    # ------------------------------------------------------------------ commands
    def sh(self, log: Path, *cmd: object) -> None:
        with open(log, "a") as fh:
            fh.write(f"\n$ {' '.join(map(str, cmd))}\n")
            fh.flush()
            code = subprocess.call([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        if code:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            raise RuntimeError(f"failed (exit {code}): {lines[-1] if lines else ''} (log: {log})")

    def train(self, run: RunSpec) -> Path:
        """Train ``run`` (skipped when its done marker exists); returns its checkpoint folder."""
        out = self.work / run.name
        if (out / DONE).exists():
            return out
        log = self.logs / f"{run.name}.log"
        base, budget = self.work / "base", self.protocol.budget_steps
        train_file = self.data / run.train_set / "train.jsonl"
        overrides = {k: v for k, v in run.overrides.items() if k != "sft_steps"}
        common = [f"seed={run.seed}", f"train_file={train_file}"]
        if run.kind == "sft":
            steps = overrides.pop("max_steps", budget)
            self.sh(
                log, PY, "train/sft.py", "--config", self.recipes / f"{run.recipe}.yaml", f"output_dir={out}",
                f"model_name_or_path={base}", f"max_steps={steps}", *common, *_kv(overrides),
            )  # fmt: skip
        else:
            start = base
            rl_steps = budget
            if run.kind == "sft_rl":
                sft_steps = int(run.overrides["sft_steps"])
                start, rl_steps = self.work / f"{run.name}_sft", budget - sft_steps
                if not (start / DONE).exists():
                    self.sh(
                        log, PY, "train/sft.py", "--config", self.recipes / "sft.yaml", f"output_dir={start}",
                        f"model_name_or_path={base}", f"max_steps={sft_steps}", *common,
                    )  # fmt: skip
                    (start / DONE).touch()
            self.sh(log, PY, "train/rl.py", *self.rl_argv(run, out, start, rl_steps))
        (out / DONE).touch()
        self.keep_curves(run.name, out)
        return out

    def rl_argv(self, run: RunSpec, out: Path, start: Path, rl_steps: int) -> list[object]:
        """train/rl.py's arguments for ``run``: its recipe, then the protocol's keys (the run's grid entry
        and ablation overrides win)."""
        overrides = {k: v for k, v in run.overrides.items() if k != "sft_steps"}
        return [
            "--config", self.recipes / f"{run.recipe}.yaml", f"output_dir={out}",
            f"model_name_or_path={start}", f"max_steps={rl_steps}", "save_steps=100",
            "resume_from_checkpoint=auto", f"seed={run.seed}",
            f"train_file={self.data / run.train_set / 'train.jsonl'}", *_kv(overrides),
        ]  # fmt: skip

    def build_train_sets(self, runs: list[RunSpec]) -> None:
        """The filtered expert sets the unfinished runs train on (the protocol's train_sets: filter flags
        beyond the common ones, data_prep/filter_trajectories.py; a set already built is a no-op)."""
        for name in sorted({r.train_set for r in runs if not self.stage_done(r, "final")}):
            try:
                self.sh(
                    self.logs / f"train_set_{name}.log", PY, "data_prep/filter_trajectories.py",
                    "--data", self.data / "synthetic" / "train.jsonl",
                    "--trajectories", self.data / "teacher" / "trajectories.jsonl", "--out", self.data / name,
                    "--policy", self.work / "base", "--max-completion-tokens", 64, "--no-progress",
                    *self.protocol.train_sets[name],
                )  # fmt: skip
            except RuntimeError as err:
                raise UserError(f"training set {name}: {err}") from None

    def keep_curves(self, name: str, checkpoint: Path) -> None:
        """OUT/curves/<run>.metrics.jsonl.gz: the run's training curves beside its rows (plots without the
        checkpoint)."""
        metrics = checkpoint / "metrics.jsonl"
        if metrics.is_file():
            keep_gzipped(metrics, self.out / "curves" / f"{name}.metrics.jsonl.gz")

    def rollout_temperature(self, recipe: str | None) -> float:
        """The temperature a run's rollouts sample at (its recipe's ``temperature``); the base and SFT,
        which have none, get GRPO's: the temperature every RL run from them samples at."""
        for name in (recipe, "grpo"):
            path = self.recipes / f"{name}.yaml"
            if name and path.is_file():
                value = yaml.safe_load(path.read_text()).get("temperature")
                if value is not None:
                    return float(value)
        raise UserError(f"{self.recipes}: no recipe gives a rollout temperature (grpo.yaml: temperature)")

    def evaluate(
        self,
        name: str,
        method: str,
        seed: int,
        checkpoint: Path,
        tasks: dict[str, Path],
        final: bool,
        temperature: float | None = None,
    ) -> None:
        """Score ``checkpoint`` greedily on ``tasks`` (task name -> JSONL); ``final`` (a run scored once on
        the test splits) adds each one's twin split and, on the first of them, the grounding evaluation,
        avg@8 (not in demo mode), the blind control and the expert-token probes (T = 1, and s_t at the
        fact tokens at ``temperature``, the run's rollout temperature; default GRPO's)."""
        temperature = temperature if temperature is not None else self.rollout_temperature(None)
        log = self.logs / f"{name}.eval.log"
        jsonl = [arg for task, path in tasks.items() for arg in ("--jsonl", f"{task}={path}")]
        ident = ["--out", self.work / "eval", "--summary", self.summary, "--run", name, "--method", method]
        ident += ["--seed", seed]
        evaluation = ["eval/run_lmms_eval.py", "--model", checkpoint, "--suite", "tiny"]
        commands = [[*evaluation, *jsonl, *ident]]
        if final:
            test_task, test_file = next(iter(tasks.items()))
            test = ["--jsonl", f"{test_task}={test_file}"]
            limits = self.protocol.final_eval  # the secondary measures read the first N items (None: all)
            grounding = _limit(limits["grounding_items"])
            # grounding of the checkpoint's own greedy reasoning: its own settings key, so the greedy rows
            # above stay valid and are not recomputed (its acc rows repeat theirs: same greedy responses)
            commands.append([*evaluation, *test, "--visual-dependency", *grounding, *ident])
            if not self.quick:  # sampled behaviour: mean accuracy of 8 samples at T=1 (test split)
                avg = _limit(limits["avg_items"])
                commands.append([*evaluation, *test, "--decoding", "avg@8", *avg, *ident])
            for task, path in tasks.items():  # each split's counterfactual twins (make_synthetic --twins,
                twins = path.with_name(f"{path.stem}_twins.jsonl")  # build_sealed_splits): grounding
                commands.append([*evaluation, "--jsonl", f"{task}_twins={twins}", *ident])
            blind = _limit(limits["blind_items"])
            if blind:  # the multimodal gain pairs the blind rows with a sighted evaluation of the same items
                commands.append([*evaluation, *test, *blind, *ident])
            commands.append([*evaluation, *test, "--blind", *blind, *ident])
            probe = ["eval/probe_expert_tokens.py", "--model", checkpoint, "--jsonl", test_file]
            probe += ["--task", test_task, *grounding, *ident[2:]]
            commands.append(probe)
            commands.append([*probe, "--temperature", temperature, "--fact-dependency"])
        # one process for all of them: the imports (~30 s on 2 cores) once, not once per command
        self.sh(log, PY, "eval/run_batch.py", json.dumps([[str(a) for a in c] for c in commands]))

    def score_final(
        self, name: str, method: str, seed: int, checkpoint: Path, temperature: float | None = None
    ) -> None:
        """The final evaluation on the test splits; sealed splits only under a frozen selection, once per
        checkpoint, every scoring in OUT/scoring_log.jsonl."""
        if not self.sealed:
            self.evaluate(
                name, method, seed, checkpoint, self.test_files, final=True, temperature=temperature
            )
            return
        manifest = require_frozen(self.out, self.out / "selected.json", self.protocol.path, self.sealed_dir)
        log = ScoringLog(self.out, manifest["selection_sha256"])
        weights = weights_sha256(checkpoint)
        data = {task: sha256_file(path) for task, path in self.test_files.items()}
        for task in self.test_files:
            log.start(name, weights, task, data[task], self.rescore)
        self.evaluate(name, method, seed, checkpoint, self.test_files, final=True, temperature=temperature)
        for task in self.test_files:
            log.scored(name, weights, task, data[task])

    def record_budget(self, run: RunSpec, checkpoint: Path) -> None:
        """Budget rows (optimizer steps, sequences, training minutes) beside the run's test rows."""
        if any(
            r.get("run") == run.name
            and r.get("metric") == "optimizer_steps"
            and r.get("task") == self.test_task
            for r in self.rows()
        ):
            return
        minutes = 0.0
        for folder in (checkpoint, self.work / f"{run.name}_sft"):
            results = folder / "train_results.json"
            if results.is_file():
                minutes += json.loads(results.read_text()).get("train_runtime", 0.0) / 60
        values = {**training_budget(self.protocol, run), "train_minutes": minutes}
        common = {"run": run.name, "method": run.method, "seed": run.seed, "task": self.test_task}
        common.update(decoding="training", suite="tiny", checkpoint=str(checkpoint), config=run.label)
        append_locked(
            self.summary, [{**common, "metric": k, "value": float(v), "n": 1} for k, v in values.items()]
        )

    def rows(self) -> list[dict]:
        return (
            [row for _, row in read_jsonl(self.summary, tolerate_torn_tail=True)]
            if self.summary.is_file()
            else []
        )

    # ------------------------------------------------------------------ resumability without checkpoints
    def stage_key(self, run: RunSpec | None, stage: str) -> str:
        """What a finished stage of a run is: its spec, the stage and the tasks it was scored on."""
        tasks = self.selection_files if stage == "tune" else self.test_files
        spec = asdict(run) if run is not None else {"name": "base"}
        ident = {
            "run": spec,
            "stage": stage,
            "budget_steps": self.protocol.budget_steps,
            "tasks": sorted(tasks),
        }
        return (
            f"protocol-{stage}-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
        )

    def stage_done(self, run: RunSpec | None, stage: str) -> bool:
        return self.stage_key(run, stage) in finished_keys(self.summary)

    def mark_done(self, run: RunSpec | None, stage: str, minutes: float) -> None:
        """The ``protocol_done`` row that lets a rerun skip this stage (its value: the stage's minutes)."""
        name = run.name if run else "base"
        row = {
            "key": self.stage_key(run, stage), "run": name, "method": run.method if run else "base",
            "seed": run.seed if run else 0,
            "task": self.test_task if stage != "tune" else next(iter(self.selection_files)),
            "metric": "protocol_done", "value": minutes, "n": 1, "decoding": "protocol", "stage": stage,
            "suite": "tiny", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }  # fmt: skip
        append_locked(self.summary, [row])

    # ------------------------------------------------------------------ stages
    def tune(self, run: RunSpec) -> str:
        if self.stage_done(run, "tune"):
            return "skipped (its rows are in the summary)"
        t0 = time.time()
        checkpoint = self.train(run)
        self.evaluate(run.name, run.method, run.seed, checkpoint, self.selection_files, final=False)
        self.mark_done(run, "tune", (time.time() - t0) / 60)
        return f"trained and scored on validation in {(time.time() - t0) / 60:.1f} min"

    def final(self, run: RunSpec) -> str:
        if self.stage_done(run, "final"):
            return "skipped (its rows are in the summary)"
        t0 = time.time()
        checkpoint = self.train(run)
        temperature = float(run.overrides.get("temperature") or self.rollout_temperature(run.recipe))
        self.score_final(run.name, run.method, run.seed, checkpoint, temperature)
        if run.kind != "sft":
            self.sh(
                self.logs / f"{run.name}.eval.log", PY, "eval/summarize_training.py", "--run-dir", checkpoint,
                "--run", run.name, "--method", run.method, "--seed", run.seed, "--summary", self.summary,
                "--task", self.test_task,
            )  # fmt: skip
        self.record_budget(run, checkpoint)
        self.mark_done(run, "final", (time.time() - t0) / 60)
        return f"trained and scored on {', '.join(self.test_files)} in {(time.time() - t0) / 60:.1f} min"

    def base_tune(self) -> str:
        """The weak base on the validation splits (the tuning table's reference row)."""
        if self.stage_done(None, "tune"):
            return "skipped (its rows are in the summary)"
        t0 = time.time()
        self.evaluate("base", "base", 0, self.work / "base", self.selection_files, final=False)
        self.mark_done(None, "tune", (time.time() - t0) / 60)
        return f"scored on validation in {(time.time() - t0) / 60:.1f} min"

    def base(self) -> str:
        """The weak base on the test splits, like every final run."""
        if self.stage_done(None, "final"):
            return "skipped (its rows are in the summary)"
        t0 = time.time()
        self.score_final("base", "base", 0, self.work / "base")
        self.mark_done(None, "final", (time.time() - t0) / 60)
        return f"scored on {', '.join(self.test_files)} in {(time.time() - t0) / 60:.1f} min"


def write_runs(out: Path, work: Path, runs: list[RunSpec], protocol: Protocol) -> None:
    """OUT/runs.json: the scored runs with their figure group (eval/plot_training.py --runs-json): the main
    methods in one set of overlays, the ablations (with TGRL for reference) in another; ``metrics`` is the
    run's curves kept under OUT (plots without the checkpoints)."""
    listed = []
    for run in runs:
        group = "ablations" if run.method in protocol.ablations else "main"
        entry = {"name": run.name, "method": run.method, "group": group, "checkpoint": str(work / run.name)}
        curves = out / "curves" / f"{run.name}.metrics.jsonl.gz"
        if curves.is_file():
            entry["metrics"] = str(curves)
        listed.append(entry)
        if run.method == "tgrl" and protocol.ablations:
            listed.append({**listed[-1], "group": "ablations"})
    write_json(out / "runs.json", listed)


def demo(protocol: Protocol, runner: Runner, args: argparse.Namespace, t0: float) -> None:
    """The short version (make demo): the committed selection, one seed, no tuning and no ablations."""
    if not args.selected.is_file():
        raise UserError(f"{args.selected}: no selection. Fix: run the full protocol once (make reproduce)")
    chosen = json.loads(args.selected.read_text())
    selected = chosen["selected"]
    methods = args.methods or list(protocol.methods)
    unknown = sorted(set(methods) - set(protocol.methods))
    if unknown:
        raise UserError(f"--methods {unknown}: not in {protocol.path} (methods: {sorted(protocol.methods)})")
    changed = [m for m in methods if chosen.get("entries", {}).get(m) != protocol.grid(m)[selected[m]]]
    if changed:
        raise UserError(
            f"{args.selected}: the entries chosen for {changed} are no longer at those grid positions of "
            f"{protocol.path}. Fix: rerun the tuning stage, or restore the grid"
        )
    runs = [r for r in final_runs(protocol, selected) if r.method in methods and r.seed == protocol.seeds[0]]
    say(
        t0,
        f"demo: {', '.join(f'{r.method} [{r.label}]' for r in runs)} from {args.selected}, seed "
        f"{protocol.seeds[0]}",
    )
    # training first: the base's evaluation would hold a core while a run waits
    pool(args.jobs, [(r.name, runner.final, r) for r in runs] + [("base", lambda _: runner.base(), None)], t0)
    write_runs(args.out, args.work, runs, protocol)
    say(t0, "done")


def _limit(items: int | None) -> list[str]:
    return [] if items is None else ["--limit", str(items)]


def _kv(overrides: dict) -> list[str]:
    return [f"{key}={value}" for key, value in overrides.items()]


def pool(jobs: int, tasks: list, t0: float | None = None) -> None:
    """Run ``(label, fn, arg)`` tasks ``jobs`` at a time, one progress line per finished task (``fn``
    returns what it did); the first failure cancels what has not started."""
    t0 = time.time() if t0 is None else t0
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        futures = {ex.submit(fn, arg): label for label, fn, arg in tasks}
        for count, future in enumerate(as_completed(futures), start=1):
            if future.exception() is not None:
                for other in futures:
                    other.cancel()
                raise UserError(f"{futures[future]}: {future.exception()}")
            say(t0, f"[{count}/{len(futures)}] {futures[future]}: {future.result() or 'done'}")


def say(t0: float, message: str) -> None:
    print(f"[protocol +{(time.time() - t0) / 60:.0f} min] {message}", flush=True)


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", type=Path, default=REPO / "train/tiny_protocol.yaml")
    p.add_argument(
        "--work", type=Path, required=True, help="checkpoints of the runs (WORK/base is the start)"
    )
    p.add_argument("--data", type=Path, required=True, help="synthetic splits and filtered expert sets")
    p.add_argument("--out", type=Path, required=True, help="summary.jsonl, selected.json, tables")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument(
        "--stage",
        choices=["tune", "freeze", "all"],
        default="all",
        help="tune: stop after the selection; freeze: also build the sealed splits and freeze the selection "
        "(OUT/sealed_manifest.json); all: everything, freezing first when not frozen yet",
    )
    p.add_argument(
        "--selected",
        type=Path,
        help="demo mode: skip tuning, train the entries this selected.json (a full run's) chose, seed 0 only",
    )
    p.add_argument("--methods", nargs="+", help="with --selected: only these methods (default: all)")
    p.add_argument(
        "--rescore", metavar="REASON", help="score a checkpoint on a sealed split again (logged with REASON)"
    )
    p.add_argument(
        "--restore-inputs",
        action="store_true",
        help="put the frozen base and training sets of OUT/inputs into WORK and DATA where absent (a fresh "
        "clone resuming a frozen protocol; reproduce_tiny.sh does this before building a base)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="print where the protocol is and the wall time left, from the minutes of its finished stages "
        "in OUT/summary.jsonl (tgrl.protocol.progress_minutes; before any tuning stage finished, an estimate "
        "from recorded runs: estimate_minutes); runs nothing",
    )
    args = p.parse_args(argv)
    protocol = load_protocol(args.protocol)
    if args.restore_inputs:
        restored = restore_inputs(args.out, args.work / "base", args.data)
        print(f"[protocol] restored from {args.out / 'inputs'}: {', '.join(restored) or 'nothing (present)'}")
        return
    if args.plan:
        rows = [row for _, row in read_jsonl(args.out / "summary.jsonl")]
        progress = progress_minutes(protocol, rows, args.jobs)  # the protocol's own finished stages
        print(json.dumps(progress or estimate_minutes(protocol, rows, args.jobs), indent=1))
        return
    if not (args.work / "base").is_dir():
        raise UserError(f"{args.work / 'base'}: no weak base. Fix: run scripts/reproduce_tiny.sh (stage 3)")
    args.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(
        protocol, args.work, args.data, args.out, quick=args.selected is not None, rescore=args.rescore
    )
    t0 = time.time()

    if args.selected:
        demo(protocol, runner, args, t0)
        return
    runs = tuning_runs(protocol)
    per_method = len(runs) // len(protocol.methods)
    say(
        t0,
        f"tune: {len(runs)} runs ({len(protocol.methods)} methods x {per_method} (entry, seed) pairs, "
        f"seeds {protocol.tuning_seeds}, {protocol.budget_steps} optimizer steps each), scored on "
        f"{', '.join(protocol.selection_tasks)}",
    )
    pool(
        args.jobs,
        [("base", lambda _: runner.base_tune(), None)] + [(r.name, runner.tune, r) for r in runs],
        t0,
    )
    rows = runner.rows()
    selected = select(protocol, rows)
    grid = {m: protocol.grid(m)[i] for m, i in selected.items()}
    selected_file = args.out / "selected.json"
    if not (selected_file.is_file() and json.loads(selected_file.read_text())["selected"] == selected):
        write_json(selected_file, {"protocol": str(args.protocol), "selected": selected, "entries": grid})
    md, csv = tuning_table(protocol, rows, selected)
    caption = (
        f"Greedy validation accuracy of every tuning configuration (mean over seeds {protocol.tuning_seeds}; "
        f"selection score: the mean over {' and '.join(protocol.selection_tasks)}; {protocol.budget_steps} "
        f"optimizer steps from the weak base, {protocol.path.name}); the selected entry (best selection "
        "score, ties to the earlier entry) is the one trained with every seed and scored on the test splits. "
        f"Generated by scripts/run_protocol.py from {runner.summary}; do not edit by hand.\n\n"
    )
    atomic_write_text(
        args.out / "tables" / "tiny_tuning.md",
        "## Tiny tier: tuning on the validation split\n\n" + caption + md,
    )
    atomic_write_text(args.out / "tables" / "tiny_tuning.csv", csv)
    say(t0, "selected: " + ", ".join(f"{m} [{protocol.methods[m]['grid'][i]}]" for m, i in selected.items()))
    if args.stage == "tune":
        return
    finals = seed_major(protocol, final_runs(protocol, selected) + ablation_runs(protocol, selected))
    runner.build_train_sets(finals)
    if runner.sealed:
        seal(protocol, runner, args, t0)
        if args.stage == "freeze":
            return

    say(
        t0,
        f"final: {len(finals) + 1} runs (selected entries x seeds {protocol.seeds}, ablations at the same "
        f"seeds, the base), scored on {', '.join(runner.test_files)}",
    )
    pool(
        args.jobs, [("base", lambda _: runner.base(), None)] + [(r.name, runner.final, r) for r in finals], t0
    )
    write_runs(args.out, args.work, finals, protocol)
    say(t0, "done")


def seal(protocol: Protocol, runner: Runner, args: argparse.Namespace, t0: float) -> None:
    """Build the sealed splits (a new generator seed) and freeze the selection before anything scores them,
    with the hashes of the base and the training sets (and copies in OUT/inputs); a resumed protocol whose
    base or sets differ from the frozen ones stops here, before any training."""
    spec = protocol.sealed
    build_sealed_splits(
        runner.sealed_dir,
        args.data / "synthetic",
        int(spec["seed"]),
        int(spec["n_test"]),
        int(spec["n_shifted"]),
        spec.get("twin_sources"),
    )
    prereg = protocol.raw.get("preregistration")
    base, sets = args.work / "base", {name: args.data / name for name in protocol.train_sets}
    inputs = input_hashes(base, sets)
    first = not (args.out / MANIFEST).is_file()
    manifest = freeze(
        args.out,
        args.out / "selected.json",
        protocol.path,
        runner.sealed_dir,
        REPO / prereg if prereg else None,
        inputs,
    )
    if first:  # the inputs every later run starts from, kept beside the results for a resume elsewhere
        keep_inputs(
            args.out, base, {name: path for name, path in sets.items() if (path / "train.jsonl").is_file()}
        )
    check_inputs(manifest, inputs, args.out / MANIFEST)
    say(t0, f"frozen: selection {manifest['selection_sha256'][:12]} ({args.out / MANIFEST})")


if __name__ == "__main__":
    main()
